//! Tests of the download lifecycle on real files: resume, reuse, refusal to
//! overwrite, and a full disk (on a small tmpfs). The tmpfs tests need root:
//! they are `#[ignore]`d, so a plain `cargo test` reports them as ignored;
//! README's command (as root, with `-- --include-ignored`) runs them, and
//! fails them when they cannot mount.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::*;

mod part_files;

const PIECE: u64 = 1024;

/// Some content, its layout and its piece hashes.
struct Content {
    data: Vec<u8>,
    layout: PieceLayout,
    hashes: Vec<blake3::Hash>,
    root: [u8; 32],
}

impl Content {
    fn new(len: usize, seed: u8) -> Self {
        Self::with_piece(len, seed, PIECE)
    }

    fn with_piece(len: usize, seed: u8, piece: u64) -> Self {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
            .collect();
        let layout = PieceLayout::new(len as u64, piece).expect("layout");
        let hashes: Vec<_> = (0..layout.piece_count())
            .map(|i| blake3::hash(self_piece(&data, &layout, i)))
            .collect();
        let mut h = blake3::Hasher::new();
        hashes.iter().for_each(|x| {
            h.update(x.as_bytes());
        });
        Content {
            root: *h.finalize().as_bytes(),
            data,
            layout,
            hashes,
        }
    }

    fn piece(&self, i: u32) -> &[u8] {
        self_piece(&self.data, &self.layout, i)
    }

    fn verify(&self) -> impl Fn(u32, &[u8; 32]) -> bool + Sync + '_ {
        move |i, hash| {
            self.hashes
                .get(i as usize)
                .is_some_and(|h| h.as_bytes() == hash)
        }
    }

    fn target(&self, dir: &Path) -> Target {
        Target::single(
            dir.to_path_buf(),
            "file.bin",
            self.layout.clone(),
            self.root,
        )
    }

    fn open(&self, dir: &Path) -> Result<Opened, StorageError> {
        Download::open(&self.target(dir), &self.verify(), &|_, _| {})
    }

    fn open_partial(&self, dir: &Path) -> Download {
        match self.open(dir) {
            Ok(Opened::Partial(d)) => d,
            other => panic!("expected a partial download, got {other:?}"),
        }
    }

    /// Writes and marks `pieces`.
    fn put(&self, d: &Download, pieces: impl IntoIterator<Item = u32>) {
        for i in pieces {
            d.write_piece(i, self.piece(i)).expect("write");
            assert!(d.mark_verified(i));
        }
    }
}

/// What the peer does with a [`Download`], for these tests: pieces are
/// written through [`Download::storage`] (as the disk thread does, errors
/// mapped the same way), and what is missing is read from `have` and
/// `wanted`.
trait Pieces {
    fn write_piece(&self, index: u32, data: &[u8]) -> Result<(), StorageError>;
    fn read_piece(&self, index: u32, layout: &PieceLayout) -> Vec<u8>;
    fn missing(&self) -> Vec<u32>;
    fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }
}

impl Pieces for Download {
    fn write_piece(&self, index: u32, data: &[u8]) -> Result<(), StorageError> {
        let storage = self.storage();
        let offset = storage.layout().piece_offset(index);
        storage
            .write_at(offset, data)
            .map_err(|e| StorageError::io(Op::Writing, self.final_path(), e))
    }

    fn read_piece(&self, index: u32, layout: &PieceLayout) -> Vec<u8> {
        let mut buf = vec![0; layout.piece_len(index) as usize];
        self.storage()
            .read_at(layout.piece_offset(index), &mut buf)
            .expect("read");
        buf
    }

    fn missing(&self) -> Vec<u32> {
        let have = self.have();
        self.wanted().ones().filter(|&p| !have.get(p)).collect()
    }
}

fn self_piece<'a>(data: &'a [u8], layout: &PieceLayout, i: u32) -> &'a [u8] {
    let start = layout.piece_offset(i) as usize;
    &data[start..start + layout.piece_len(i) as usize]
}

fn final_path(dir: &Path) -> PathBuf {
    dir.join("file.bin")
}

fn part_path(dir: &Path) -> PathBuf {
    dir.join(".file.bin.hayedik-part")
}

fn resume_path(dir: &Path) -> PathBuf {
    dir.join(".file.bin.hayedik-resume")
}

fn resume_on_disk(dir: &Path) -> ResumeState {
    ResumeState::decode(&fs::read(resume_path(dir)).expect("read resume")).expect("decode")
}

fn ones(b: &Bitfield) -> Vec<u32> {
    b.ones().collect()
}

#[test]
fn shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Download>();
    send_sync::<CompleteFile>();
    send_sync::<MemoryStorage>();
    send_sync::<StorageError>();
}

#[test]
fn fresh_download_with_odd_size_then_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("new/sub");
    let c = Content::new(10 * 1024 + 17, 1);
    let d = c.open_partial(&out);
    assert_eq!(d.missing().len(), 11);
    assert_eq!(d.reused_bytes(), 0);
    assert!(d.warnings().is_empty(), "{:?}", d.warnings());
    assert!(!final_path(&out).exists());
    assert!(!part_path(&out).exists(), "created with its first piece");
    assert_eq!(resume_on_disk(&out).have.count(), 0);

    c.put(&d, [10]);
    assert_eq!(
        fs::metadata(part_path(&out)).expect("part").len(),
        c.data.len() as u64
    );
    c.put(&d, (0..10).rev());
    assert!(!d.mark_verified(3), "marking twice");
    assert!(!d.mark_verified(11), "out of range");
    assert!(d.is_complete());
    assert_eq!(d.read_piece(10, &c.layout), c.piece(10));
    let done = d.finish().expect("finish");
    assert_eq!(done.path, final_path(&out));
    assert_eq!(fs::read(final_path(&out)).expect("read"), c.data);
    assert!(!part_path(&out).exists());
    assert!(!resume_path(&out).exists());
    assert_eq!(done.storage.len(), c.data.len() as u64);
    assert_eq!(
        fs::read_dir(&out).expect("dir").count(),
        1,
        "only the final file is left"
    );
}

#[test]
fn resume_after_a_crash_keeps_only_saved_pieces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(8 * 1024, 2);
    let d = c.open_partial(dir.path());
    c.put(&d, [0, 2, 5]);
    d.save().expect("save");
    c.put(&d, [6]); // marked but not saved
    d.write_piece(7, c.piece(7)).expect("write"); // written, never marked
    drop(d); // a crash: no finish
             // The part file is not newer than the resume file: only the claimed
             // pieces are checked (mtimes set explicitly: clock ticks are coarse).
    set_part_mtime(dir.path(), -1);

    let d = c.open_partial(dir.path());
    assert_eq!(ones(&d.have()), [0, 2, 5]);
    assert_eq!(d.reused_bytes(), 3 * 1024);
    assert_eq!(d.missing(), [1, 3, 4, 6, 7]);
    assert!(d.warnings().is_empty(), "{:?}", d.warnings());
    c.put(&d, d.missing());
    d.save().expect("save");
    d.finish().expect("finish");
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), c.data);
}

#[test]
fn pieces_written_after_the_last_save_are_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(8 * 1024, 2);
    let d = c.open_partial(dir.path());
    c.put(&d, [0, 2, 5]);
    d.save().expect("save");
    c.put(&d, [6]); // marked but not saved (a full disk, a crash)
    d.write_piece(7, c.piece(7)).expect("write"); // written, never marked
    drop(d);
    // The part file changed after the resume file: all of it is rechecked.
    set_part_mtime(dir.path(), 1);

    let d = c.open_partial(dir.path());
    assert_eq!(ones(&d.have()), [0, 2, 5, 6, 7]);
    assert_eq!(d.reused_bytes(), 5 * 1024);
    assert_eq!(d.missing(), [1, 3, 4]);
    assert_eq!(d.warnings().len(), 1, "{:?}", d.warnings());
    c.put(&d, d.missing());
    d.save().expect("save");
    d.finish().expect("finish");
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), c.data);
}

/// Sets the part file's mtime `secs` seconds from the resume file's.
fn set_part_mtime(dir: &Path, secs: i64) {
    let resume = fs::metadata(resume_path(dir))
        .and_then(|m| m.modified())
        .expect("resume mtime");
    let t = if secs >= 0 {
        resume + std::time::Duration::from_secs(secs as u64)
    } else {
        resume - std::time::Duration::from_secs((-secs) as u64)
    };
    fs::File::options()
        .write(true)
        .open(part_path(dir))
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
}

#[test]
fn a_lying_resume_file_costs_a_download_not_correctness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(6 * 1024, 3);
    let d = c.open_partial(dir.path());
    c.put(&d, [0, 1, 2]);
    d.save().expect("save");
    drop(d);
    // The resume file claims everything; pieces 1 and 4 hold wrong bytes.
    let mut lie = resume_on_disk(dir.path());
    lie.have = Bitfield::full(6);
    fs::write(resume_path(dir.path()), lie.encode()).expect("write");
    let mut part = fs::read(part_path(dir.path())).expect("read part");
    part[1024 + 10..1024 + 15].copy_from_slice(b"wrong");
    fs::write(part_path(dir.path()), part).expect("write part");
    // Not newer than the resume file: only what it claims is checked.
    set_part_mtime(dir.path(), -1);

    let d = c.open_partial(dir.path());
    assert_eq!(ones(&d.have()), [0, 2]);
    assert_eq!(d.warnings().len(), 1, "{:?}", d.warnings());
    assert!(d.warnings()[0].contains("4 pieces"), "{:?}", d.warnings());
    // The resume file on disk no longer lies.
    assert_eq!(ones(&resume_on_disk(dir.path()).have), [0, 2]);
    c.put(&d, d.missing());
    d.finish().expect("finish");
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), c.data);
}

#[test]
fn a_damaged_resume_file_is_discarded_and_the_part_file_rechecked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(5 * 1024 + 1, 4);
    let d = c.open_partial(dir.path());
    c.put(&d, [1, 3, 5]);
    d.save().expect("save");
    d.write_piece(4, c.piece(4)).expect("write"); // never saved
    drop(d);
    let mut bytes = fs::read(resume_path(dir.path())).expect("read");
    bytes[70] ^= 0x40;
    fs::write(resume_path(dir.path()), bytes).expect("write");

    let d = c.open_partial(dir.path());
    // Rehashing recovers every piece that is right, saved or not.
    assert_eq!(ones(&d.have()), [1, 3, 4, 5]);
    assert!(
        d.warnings()[0].contains("checksum mismatch"),
        "{:?}",
        d.warnings()
    );
    assert_eq!(ones(&resume_on_disk(dir.path()).have), [1, 3, 4, 5]);
    drop(d);

    // Garbage, an empty file, or a huge one: discarded the same way.
    for junk in [vec![], vec![0xAB; 3], vec![0; 10_000]] {
        fs::write(resume_path(dir.path()), junk).expect("write");
        let d = c.open_partial(dir.path());
        assert_eq!(ones(&d.have()), [1, 3, 4, 5]);
        assert!(d.warnings()[0].starts_with("discarding resume file"));
    }

    // No resume file at all.
    fs::remove_file(resume_path(dir.path())).expect("remove");
    let d = c.open_partial(dir.path());
    assert_eq!(ones(&d.have()), [1, 3, 4, 5]);
    assert!(
        d.warnings()[0].starts_with("no resume file"),
        "{:?}",
        d.warnings()
    );
}

#[test]
fn a_resume_file_for_other_content_is_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(4 * 1024, 5);
    let other = Content::new(4 * 1024, 6);
    let d = other.open_partial(dir.path());
    other.put(&d, 0..3);
    d.save().expect("save");
    drop(d);
    // Same name, same size, other content: nothing of it verifies.
    let d = c.open_partial(dir.path());
    assert_eq!(d.have().count(), 0);
    assert!(
        d.warnings()[0].contains("for other content"),
        "{:?}",
        d.warnings()
    );
    assert_eq!(resume_on_disk(dir.path()).root, c.root);
    drop(d);

    // Same root but another piece layout.
    let mut state = resume_on_disk(dir.path());
    state.piece_size = 512;
    state.have = Bitfield::full(8);
    fs::write(resume_path(dir.path()), state.encode()).expect("write");
    let d = c.open_partial(dir.path());
    assert!(
        d.warnings()[0].contains("another piece layout"),
        "{:?}",
        d.warnings()
    );
}

#[test]
fn a_complete_copy_is_reused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(7 * 1024 + 3, 7);
    fs::write(final_path(dir.path()), &c.data).expect("write");
    let before = fs::metadata(final_path(dir.path()))
        .expect("meta")
        .modified()
        .expect("mtime");
    let seen = std::sync::Mutex::new(0u64);
    let progress = |done, total| {
        assert_eq!(total, c.data.len() as u64);
        let mut s = seen.lock().expect("lock");
        *s = (*s).max(done);
    };
    let Ok(Opened::Complete(done)) = Download::open(&c.target(dir.path()), &c.verify(), &progress)
    else {
        panic!("expected reuse");
    };
    assert_eq!(*seen.lock().expect("lock"), c.data.len() as u64);
    assert_eq!(done.reused_bytes, c.data.len() as u64);
    assert_eq!(done.path, final_path(dir.path()));
    let mut buf = vec![0; 1024];
    done.storage.read_at(1024, &mut buf).expect("read");
    assert_eq!(buf, c.piece(1));
    assert!(done.storage.write_at(0, b"x").is_err(), "opened read-only");
    assert!(!part_path(dir.path()).exists());
    assert!(!resume_path(dir.path()).exists());
    let after = fs::metadata(final_path(dir.path()))
        .expect("meta")
        .modified()
        .expect("mtime");
    assert_eq!(before, after);
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), c.data);
}

#[test]
fn reuse_cleans_up_side_files_left_by_a_crash_in_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(3 * 1024, 8);
    let d = c.open_partial(dir.path());
    c.put(&d, 0..3);
    // The file takes its final name as soon as its pieces are saved.
    d.save().expect("save");
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), c.data);
    assert!(!part_path(dir.path()).exists());
    // As if a crash came after the link, before the part name was removed
    // and before finish removed the resume file.
    fs::hard_link(final_path(dir.path()), part_path(dir.path())).expect("link");
    drop(d);
    assert!(matches!(c.open(dir.path()), Ok(Opened::Complete(_))));
    assert!(!resume_path(dir.path()).exists());
    assert!(!part_path(dir.path()).exists());
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), c.data);
}

#[test]
fn a_different_file_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(4 * 1024, 9);
    let path = final_path(dir.path());
    let mut half = c.data.clone();
    half[3 * 1024..].fill(0); // three pieces right, one wrong
    let cases: [(&[u8], &str); 4] = [
        (b"hello", "5 bytes, expected 4096"),
        (&Content::new(4 * 1024, 10).data, "its bytes differ"),
        (&half, "its bytes differ"),
        (b"", "0 bytes, expected 4096"),
    ];
    for (bytes, reason) in cases {
        fs::write(&path, bytes).expect("write");
        let err = c.open(dir.path()).expect_err("must refuse");
        let msg = err.to_string();
        assert!(
            matches!(err, StorageError::DestinationExists { .. }),
            "{msg}"
        );
        assert!(msg.contains(reason), "{msg}");
        assert!(msg.contains("refusing to overwrite it"), "{msg}");
        assert_eq!(fs::read(&path).expect("read"), bytes);
        assert!(!part_path(dir.path()).exists());
    }
    fs::remove_file(&path).expect("remove");
    fs::create_dir(&path).expect("mkdir");
    let err = c.open(dir.path()).expect_err("must refuse");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn finish_never_clobbers_a_file_that_appeared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(3 * 1024, 11);
    let d = c.open_partial(dir.path());
    c.put(&d, 0..2);
    d.save().expect("save");
    fs::write(final_path(dir.path()), b"someone else's").expect("write");
    c.put(&d, [2]);
    let err = d.finish().expect_err("must refuse");
    assert!(
        matches!(err, StorageError::DestinationExists { .. }),
        "{err}"
    );
    assert_eq!(
        fs::read(final_path(dir.path())).expect("read"),
        b"someone else's"
    );
    // Nothing is lost: move the other file away and rerun.
    fs::remove_file(final_path(dir.path())).expect("remove");
    let d = c.open_partial(dir.path());
    assert!(d.is_complete());
    assert_eq!(d.reused_bytes(), 3 * 1024);
    d.finish().expect("finish");
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), c.data);
}

#[test]
fn finish_refuses_an_incomplete_download() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(3 * 1024, 12);
    let d = c.open_partial(dir.path());
    c.put(&d, [0, 2]);
    let err = d.finish().expect_err("incomplete");
    assert!(
        matches!(err, StorageError::Incomplete { missing: 1, .. }),
        "{err}"
    );
    assert!(!final_path(dir.path()).exists());
}

#[test]
fn empty_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(0, 0);
    // Nothing to download: the empty file is written at once.
    let Ok(Opened::Complete(done)) = c.open(dir.path()) else {
        panic!("expected an immediate completion");
    };
    assert_eq!(done.path, final_path(dir.path()));
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), b"");
    assert!(!resume_path(dir.path()).exists());
    let Ok(Opened::Complete(done)) = c.open(dir.path()) else {
        panic!("expected reuse");
    };
    assert_eq!(done.reused_bytes, 0);
}

#[test]
fn bad_pieces_and_names_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(2 * 1024 + 5, 13);
    let d = c.open_partial(dir.path());
    // Past the end of the content: refused, the file never grows.
    let end = c.data.len() as u64;
    assert!(d.storage().write_at(end - 1, b"xy").is_err());
    assert!(d.storage().write_at(end, b"x").is_err());
    let out = dir.path().join("out");
    for name in [
        "../x",
        "..",
        "",
        "/abs",
        "a/../b",
        "a//b",
        "a\\b",
        ".x.hayedik-part",
        "t/.x.hayedik-resume",
        "t/.x.hayedik-resume.tmp",
    ] {
        let t = Target::single(out.clone(), name, c.layout.clone(), c.root);
        let r = Download::open(&t, &c.verify(), &|_, _| {});
        assert!(
            matches!(r, Err(StorageError::UnsafePaths { .. })),
            "{name:?}: {r:?}"
        );
        assert!(!out.exists(), "nothing written for {name:?}");
    }
}

#[cfg(unix)]
#[test]
fn a_symlink_at_the_part_name_is_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("outside");
    fs::write(&outside, b"precious").expect("write");
    let out = dir.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    std::os::unix::fs::symlink(&outside, part_path(&out)).expect("symlink");
    let c = Content::new(2 * 1024, 14);
    assert!(c.open(&out).is_err());
    assert_eq!(fs::read(&outside).expect("read"), b"precious");
}

#[test]
fn many_threads_write_mark_and_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Content::new(64 * 1024 + 100, 15);
    let d = Arc::new(c.open_partial(dir.path()));
    let n = c.layout.piece_count();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (d, c) = (Arc::clone(&d), &c);
            s.spawn(move || {
                for i in (t..n).step_by(4) {
                    d.write_piece(i, c.piece(i)).expect("write");
                    d.mark_verified(i);
                    d.save().expect("save");
                }
            });
        }
    });
    let d = Arc::into_inner(d).expect("sole owner");
    assert_eq!(resume_on_disk(dir.path()).have.count(), n);
    d.finish().expect("finish");
    assert_eq!(fs::read(final_path(dir.path())).expect("read"), c.data);
}

/// A tmpfs mounted for one test, unmounted when dropped (even on panic).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options`; fails the test, saying why, when it
    /// cannot (not root, no `mount`): such a test must not pass unrun.
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { dir },
            Ok(o) => panic!(
                "cannot mount a tmpfs here (this test is #[ignore]d: run it as root, \
                 with README's test command): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run `mount` (this test is #[ignore]d: run it as root): {e}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn a_full_disk_loses_no_verified_piece() {
    let fs_ = Tmpfs::mount("size=1m");
    let dir = fs_.path().join("out");
    let c = Content::with_piece(2 << 20, 16, 64 << 10); // 2 MiB on a 1 MiB disk
    let n = c.layout.piece_count();
    let d = c.open_partial(&dir);
    let mut saved = Vec::new();
    let mut failure = None;
    for i in 0..n {
        if let Err(e) = d.write_piece(i, c.piece(i)) {
            failure = Some(e);
            break;
        }
        d.mark_verified(i);
        match d.save() {
            Ok(()) => saved.push(i),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("the disk must fill up");
    println!("after {} pieces: {err}", saved.len());
    assert!(err.is_disk_full(), "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with("disk full: "), "{msg}");
    assert!(
        msg.contains("free space and rerun the same command to resume"),
        "{msg}"
    );
    assert!(!saved.is_empty());
    // The resume file is intact and claims only saved pieces.
    let on_disk = ones(&resume_on_disk(&dir).have);
    assert_eq!(on_disk, saved);
    // Saving again on the full disk fails cleanly or succeeds; never lies.
    let _ = d.save();
    let state = resume_on_disk(&dir);
    let part = MemoryStorage::from_vec(fs::read(part_path(&dir)).expect("read part"));
    let claimed: Vec<u32> = state.have.ones().collect();
    assert!(claimed.len() >= saved.len());
    let check = verify_pieces(&part, &c.layout, &state.have, &c.verify(), &|_, _| {});
    assert_eq!(ones(&check.expect("verify")), claimed);
    drop((d, part));

    // Free space, rerun: the download resumes where it stopped.
    fs_.remount("size=4m");
    let d = c.open_partial(&dir);
    // At least what was claimed; pieces written after the last save are
    // recovered too when the part file is newer than the resume file.
    let have = ones(&d.have());
    assert!(
        claimed.iter().all(|i| have.contains(i)),
        "{have:?} {claimed:?}"
    );
    c.put(&d, d.missing());
    d.finish().expect("finish");
    assert_eq!(fs::read(final_path(&dir)).expect("read"), c.data);
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn a_read_only_directory_gives_a_clear_error() {
    let fs_ = Tmpfs::mount("size=1m,ro");
    let c = Content::new(2 * 1024, 17);
    let err = c.open(fs_.path()).expect_err("read-only");
    assert!(matches!(err, StorageError::NotWritable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot write to {}", fs_.path().display())),
        "{err}"
    );
    assert!(
        err.to_string().ends_with("choose a writable -o DIR"),
        "{err}"
    );
}
