//! Part files that do not fit the content: another length (an older version
//! of the same name, a few bytes too many, cut short by hand or by a power
//! loss) or more than one name (a hard link to a file elsewhere).

use super::*;

/// The part file is `bytes`; no resume file.
fn plant_part(dir: &Path, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(part_path(dir), bytes).expect("write part");
}

/// Downloads what is missing, finishes, and checks the final file.
fn complete(c: &Content, d: &Download, dir: &Path) {
    c.put(d, d.missing());
    d.finish().expect("finish");
    let got = fs::read(final_path(dir)).expect("read");
    assert_eq!(got.len(), c.data.len(), "the final file's size");
    assert!(got == c.data, "the final file's bytes differ");
    assert!(!part_path(dir).exists());
}

#[test]
fn a_longer_part_file_is_cut_to_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(5 * 1024 + 7, 40);
    // This content and 4 KiB of zeros: every piece is reused.
    let mut bytes = c.data.clone();
    bytes.extend_from_slice(&[0; 4096]);
    plant_part(dir.path(), &bytes);
    let d = c.open_partial(dir.path());
    assert!(d.is_complete());
    assert_eq!(d.reused_bytes(), c.data.len() as u64);
    complete(&c, &d, dir.path());

    // An older, longer version of the same name: nothing of it is reused,
    // and none of its tail ends under the final name.
    let dir = tempfile::tempdir().expect("tempdir");
    let older = Content::new(8 * 1024, 41);
    let d = older.open_partial(dir.path());
    older.put(&d, [0, 1, 6, 7]);
    d.save().expect("save");
    drop(d);
    let d = c.open_partial(dir.path());
    assert_eq!(d.have().count(), 0);
    assert_eq!(
        fs::metadata(part_path(dir.path())).expect("part").len(),
        c.data.len() as u64
    );
    complete(&c, &d, dir.path());
}

#[test]
fn a_shorter_part_file_is_extended_and_its_pieces_kept() {
    // An older, shorter version: open works, nothing of it is reused.
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(6 * 1024 + 5, 42);
    let older = Content::new(3 * 1024, 43);
    let d = older.open_partial(dir.path());
    older.put(&d, 0..2);
    d.save().expect("save");
    drop(d);
    let d = c.open_partial(dir.path());
    assert_eq!(d.have().count(), 0);
    assert_eq!(
        fs::metadata(part_path(dir.path())).expect("part").len(),
        c.data.len() as u64
    );
    complete(&c, &d, dir.path());

    // This content cut in the middle of piece 3 (no resume file): the
    // whole pieces before the cut are kept, the rest is missing.
    let dir = tempfile::tempdir().expect("tempdir");
    plant_part(dir.path(), &c.data[..3 * 1024 + 500]);
    let d = c.open_partial(dir.path());
    assert_eq!(ones(&d.have()), [0, 1, 2]);
    complete(&c, &d, dir.path());

    // A power loss before the first sync: the resume file claims pieces
    // past the part file's end.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = c.open_partial(dir.path());
    c.put(&d, 0..6);
    d.save().expect("save");
    drop(d);
    fs::File::options()
        .write(true)
        .open(part_path(dir.path()))
        .and_then(|f| f.set_len(2 * 1024))
        .expect("truncate");
    let d = c.open_partial(dir.path());
    assert_eq!(ones(&d.have()), [0, 1]);
    complete(&c, &d, dir.path());
}

#[test]
fn a_part_file_of_another_size_never_takes_the_final_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(4 * 1024, 44);
    let d = c.open_partial(dir.path());
    c.put(&d, 0..4);
    // Something else grows the part file before its last save.
    fs::File::options()
        .write(true)
        .open(part_path(dir.path()))
        .and_then(|f| f.set_len(5 * 1024))
        .expect("grow");
    let err = d.finish().expect_err("a part file of another size");
    assert!(err.to_string().contains("5120 bytes"), "{err}");
    assert!(!final_path(dir.path()).exists());
    drop(d);
    // The rerun fits it to size and finishes.
    let d = c.open_partial(dir.path());
    assert!(d.is_complete());
    complete(&c, &d, dir.path());
}

#[cfg(unix)]
#[test]
fn a_part_file_with_other_hard_links_is_never_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    let c = Content::new(3 * 1024, 45);
    // Elsewhere, the size of the content, its first piece right.
    let outside = dir.path().join("outside");
    let mut precious = vec![0x5A; c.data.len()];
    precious[..1024].copy_from_slice(c.piece(0));
    fs::write(&outside, &precious).expect("write");
    fs::hard_link(&outside, part_path(&out)).expect("link");

    let d = c.open_partial(&out);
    assert_eq!(d.have().count(), 0, "nothing reused from the linked file");
    assert!(
        d.warnings().iter().any(|w| w.contains("hard link")),
        "{:?}",
        d.warnings()
    );
    complete(&c, &d, &out);
    assert_eq!(fs::read(&outside).expect("read"), precious);
}
