#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

const KIB: u32 = 1024;

fn file(path: &str, size: u64) -> FileEntry {
    FileEntry::file(path, size, false)
}

/// A manifest whose piece hashes are just their index, for layout tests.
fn manifest(files: Vec<FileEntry>, piece_size: u32) -> Manifest {
    let n = expected_pieces(&files, piece_size).unwrap();
    let pieces = (0..n).map(|i| [i as u8; 32]).collect();
    Manifest::new(files, piece_size, pieces).unwrap()
}

#[test]
fn single_file_vector() {
    let m = Manifest::new(
        vec![FileEntry::file("a.txt", 1025, true)],
        1024,
        vec![[0x11; 32], [0x22; 32]],
    )
    .unwrap();
    let mut want = b"HYDKMAN".to_vec();
    want.push(1); // version
    want.extend_from_slice(&[0, 0, 4, 0]); // piece size 1024
    want.extend_from_slice(&[0, 0, 0, 1]); // one file
    want.extend_from_slice(&[0, 5]); // path length
    want.extend_from_slice(b"a.txt");
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 4, 1]); // size 1025
    want.push(1); // executable
    want.extend_from_slice(&[0, 0, 0, 2]); // two pieces
    want.extend_from_slice(&[0x11; 32]);
    want.extend_from_slice(&[0x22; 32]);
    assert_eq!(m.encode(), want);
    assert_eq!(m.encoded_len(), want.len());
    assert_eq!(Manifest::decode(&want).unwrap(), m);
    assert_eq!(m.root(), *blake3::hash(&want).as_bytes());
    assert_eq!(Manifest::verify(&want, &m.root()).unwrap(), m);
    assert_eq!(
        Manifest::verify(&want, &[0; 32]),
        Err(ManifestError::RootMismatch)
    );
}

#[test]
fn empty_file_has_no_pieces() {
    let m = manifest(vec![file("empty", 0)], MIN_PIECE_SIZE);
    assert_eq!(m.piece_count(), 0);
    assert_eq!(m.total_bytes(), 0);
    assert_eq!(m.piece_len(0), None);
    assert_eq!(m.file_pieces(0), Some(0..0));
    assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
}

#[test]
fn pieces_are_aligned_per_file() {
    let ps = 4 * KIB;
    let m = manifest(
        vec![
            file("t/a", 10_000),   // pieces 0, 1, 2 (2 is 1808 bytes)
            file("t/dir/b", 0),    // none
            file("t/dir/c", 4096), // piece 3, full
            file("t/d", 1),        // piece 4, one byte
        ],
        ps,
    );
    assert_eq!(m.piece_count(), 5);
    assert_eq!(m.total_bytes(), 14_097);
    assert_eq!(m.piece_len(0), Some(4096));
    assert_eq!(m.piece_len(2), Some(10_000 - 8192));
    assert_eq!(m.piece_len(3), Some(4096));
    assert_eq!(m.piece_len(4), Some(1));
    assert_eq!(m.piece_len(5), None);
    assert_eq!(
        m.piece_location(2),
        Some(PieceLocation {
            file: 0,
            offset: 8192,
            len: 1808
        })
    );
    assert_eq!(
        m.piece_location(3),
        Some(PieceLocation {
            file: 2,
            offset: 0,
            len: 4096
        })
    );
    assert_eq!(m.file_pieces(0), Some(0..3));
    assert_eq!(m.file_pieces(1), Some(3..3));
    assert_eq!(m.file_pieces(2), Some(3..4));
    assert_eq!(m.file_pieces(3), Some(4..5));
    assert_eq!(m.file_pieces(4), None);
    assert_eq!(m.piece_hash(4), Some(&[4; 32]));
    assert_eq!(m.piece_hash(5), None);
}

#[test]
fn piece_size_choice() {
    const MIB: u64 = 1 << 20;
    assert_eq!(choose_piece_size(0), 1 << 20);
    assert_eq!(choose_piece_size(1), 1 << 20);
    assert_eq!(choose_piece_size(16_384 * MIB), 1 << 20);
    assert_eq!(choose_piece_size(16_384 * MIB + 1), 2 << 20);
    // 1 TiB: 64 MiB pieces, 16,384 hashes, a 512 KiB manifest.
    assert_eq!(choose_piece_size(1 << 40), 64 << 20);
    assert_eq!(choose_piece_size(u64::MAX), MAX_PIECE_SIZE);
    for shift in 0..64 {
        let total = 1u64 << shift;
        let ps = choose_piece_size(total);
        assert!(ps.is_power_of_two() && ps >= PREFERRED_MIN_PIECE_SIZE);
        assert!(ps == MAX_PIECE_SIZE || total.div_ceil(ps.into()) <= TARGET_MAX_PIECES);
    }
}

#[test]
fn derived_keys_are_blake3_derive_key() {
    let root = [7u8; 32];
    assert_eq!(
        swarm_key(&root),
        blake3::derive_key("hayedik swarm key v1", &root)
    );
    assert_eq!(
        peer_auth_key(&root),
        blake3::derive_key("hayedik peer auth v1", &root)
    );
    assert_ne!(swarm_key(&root), peer_auth_key(&root));
    // Known answer, so another implementation can check itself.
    assert_eq!(
        crate::ticket::hex(&swarm_key(&[0; 32])),
        "1bb35b5ca78d1f51156533951ff652c166697b879480dac9c4258ed70abe5775"
    );
}

#[test]
fn paths() {
    for ok in [
        "a",
        "a.txt",
        ".hidden",
        "dir/sub/file.tar.gz",
        "COM10",
        "LPT0",
        "console",
        "naïve résumé.pdf",
        "a b",
        "...a",
    ] {
        assert_eq!(validate_path(ok), Ok(()), "{ok:?}");
    }
    let bad: &[(&str, PathError)] = &[
        ("", PathError::Empty),
        ("/etc/passwd", PathError::Absolute),
        ("../x", PathError::DotComponent),
        ("a/../../x", PathError::DotComponent),
        ("a/./b", PathError::DotComponent),
        (".", PathError::DotComponent),
        ("..", PathError::DotComponent),
        ("a//b", PathError::EmptyComponent),
        ("a/", PathError::EmptyComponent),
        ("..\\x", PathError::Backslash),
        ("a\\b", PathError::Backslash),
        ("C:x", PathError::Colon),
        ("c:/windows", PathError::Colon),
        ("file.txt:stream", PathError::Colon),
        ("a\0b", PathError::Control),
        ("a\nb", PathError::Control),
        ("a\u{7f}", PathError::Control),
        ("a\u{85}", PathError::Control),
        ("CON", PathError::Reserved),
        ("con.txt", PathError::Reserved),
        ("dir/Nul.tar.gz", PathError::Reserved),
        ("con.d/x", PathError::Reserved),
        ("aux", PathError::Reserved),
        ("com1", PathError::Reserved),
        ("LPT9.log", PathError::Reserved),
        ("COM¹", PathError::Reserved),
        ("conin$", PathError::Reserved),
        ("a.", PathError::TrailingDotOrSpace),
        ("a ", PathError::TrailingDotOrSpace),
        ("dir./a", PathError::TrailingDotOrSpace),
    ];
    for (path, err) in bad {
        assert_eq!(validate_path(path), Err(*err), "{path:?}");
    }
    assert_eq!(validate_path(&"a".repeat(255)), Ok(()));
    assert_eq!(
        validate_path(&"a".repeat(256)),
        Err(PathError::ComponentTooLong)
    );
    let deep = vec!["a"; 64].join("/");
    assert_eq!(validate_path(&deep), Ok(()));
    assert_eq!(validate_path(&format!("{deep}/a")), Err(PathError::TooDeep));
    let long = vec!["a".repeat(200); 21].join("/"); // 4220 bytes
    assert_eq!(validate_path(&long), Err(PathError::TooLong));

    assert!(is_single_plain_name("movie.mkv"));
    assert!(!is_single_plain_name("dir/movie.mkv"));
    assert!(!is_single_plain_name(".."));
    assert!(!is_single_plain_name(""));
}

#[test]
fn duplicates_and_file_folder_conflicts() {
    let dup = |paths: &[&str]| {
        let files: Vec<_> = paths.iter().map(|p| file(&format!("top/{p}"), 0)).collect();
        Manifest::new(files, MIN_PIECE_SIZE, vec![])
    };
    assert!(dup(&["a", "b", "a.txt", "a!", "a/b.txt/c"]).is_err());
    assert!(dup(&["a", "b", "a.txt", "a!", "c/a"]).is_ok());
    assert!(matches!(
        dup(&["x/y", "x/y"]),
        Err(ManifestError::DuplicatePath { .. })
    ));
    assert!(matches!(
        dup(&["a/b/c", "a.txt", "a!", "a/b"]),
        Err(ManifestError::DuplicatePath { .. })
    ));
    assert!(dup(&["a/b", "a/c", "ab/c"]).is_ok());
    // Names that differ only in case are valid in a manifest (Linux holds
    // them); a download onto a case-folding file system refuses them.
    let m = dup(&["x/Readme", "x/README", "y"]).unwrap();
    assert_eq!(
        find_case_collision(&m.files),
        Some(("top/x/Readme".into(), "top/x/README".into()))
    );
    let m = dup(&["a", "A/b"]).unwrap();
    assert!(find_case_collision(&m.files).is_some());
    let m = dup(&["a/b", "a/c", "ab/c"]).unwrap();
    assert_eq!(find_case_collision(&m.files), None);
    // Unicode case folds too.
    let m = dup(&["ÉTÉ", "été"]).unwrap();
    assert!(find_case_collision(&m.files).is_some());
}

#[test]
fn one_top_name() {
    let m = |files: Vec<FileEntry>| Manifest::new(files, MIN_PIECE_SIZE, vec![]);
    assert!(matches!(
        m(vec![file("a/x", 0), file("b/x", 0)]),
        Err(ManifestError::SeveralTops { .. })
    ));
    assert!(matches!(
        m(vec![file("a", 0), file("b", 0)]),
        Err(ManifestError::SeveralTops { .. })
    ));
    let single = m(vec![file("a", 0)]).unwrap();
    assert!(single.is_single_file());
    assert_eq!(single.top_name(), "a");
    let tree = m(vec![file("dir/x", 0), FileEntry::folder("dir/empty")]).unwrap();
    assert!(!tree.is_single_file());
    assert_eq!(tree.top_name(), "dir");
    // A one-file folder is a folder, not a single file.
    assert!(!m(vec![file("dir/x", 0)]).unwrap().is_single_file());
    assert!(!m(vec![FileEntry::folder("dir")]).unwrap().is_single_file());
}

#[test]
fn folder_entries() {
    let m = Manifest::new(
        vec![
            file("t/a", 5),
            FileEntry::folder("t/empty"),
            FileEntry::folder("t/deep/er"),
        ],
        MIN_PIECE_SIZE,
        vec![[1; 32]],
    )
    .unwrap();
    let bytes = m.encode();
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    // The folder flag is bit 1.
    let at = bytes.windows(7).position(|w| w == b"t/empty").unwrap() + 7;
    assert_eq!(&bytes[at..at + 9], &[0, 0, 0, 0, 0, 0, 0, 0, 2]);
    // A folder with a size, or executable, or something beneath it.
    let bad = |f: FileEntry| Manifest::new(vec![file("t/a", 5), f], MIN_PIECE_SIZE, vec![[1; 32]]);
    let mut sized = FileEntry::folder("t/d");
    sized.size = 1;
    assert!(matches!(bad(sized), Err(ManifestError::BadFolder { .. })));
    let mut exec = FileEntry::folder("t/d");
    exec.executable = true;
    assert!(matches!(bad(exec), Err(ManifestError::BadFolder { .. })));
    assert!(matches!(
        bad(FileEntry::folder("t/a")),
        Err(ManifestError::DuplicatePath { .. })
    ));
    assert!(matches!(
        Manifest::new(
            vec![FileEntry::folder("t/d"), file("t/d/x", 0)],
            MIN_PIECE_SIZE,
            vec![]
        ),
        Err(ManifestError::DuplicatePath { .. })
    ));
    // Unknown flag bits are refused.
    let mut raw = bytes.clone();
    raw[at + 8] = 4;
    assert!(matches!(
        Manifest::decode(&raw),
        Err(ManifestError::BadFlags { .. })
    ));
}

/// The encoding of `m` with the u32 at `offset` replaced.
fn patch_u32(m: &Manifest, offset: usize, v: u32) -> Vec<u8> {
    let mut b = m.encode();
    b[offset..offset + 4].copy_from_slice(&v.to_be_bytes());
    b
}

#[test]
fn hostile_manifests() {
    let m = manifest(vec![file("a", 3000)], KIB);
    let good = m.encode();
    assert!(Manifest::decode(&good).is_ok());

    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        Manifest::decode(&trailing),
        Err(ManifestError::TrailingBytes)
    );
    assert_eq!(
        Manifest::decode(&good[..good.len() - 1]),
        Err(ManifestError::Truncated)
    );
    let mut magic = good.clone();
    magic[0] = b'X';
    assert_eq!(Manifest::decode(&magic), Err(ManifestError::BadMagic));
    let mut version = good.clone();
    version[7] = 2;
    assert_eq!(
        Manifest::decode(&version),
        Err(ManifestError::UnsupportedVersion(2))
    );
    for ps in [0, 3, 1000, 512, MAX_PIECE_SIZE * 2, u32::MAX] {
        assert_eq!(
            Manifest::decode(&patch_u32(&m, 8, ps)),
            Err(ManifestError::BadPieceSize(ps))
        );
    }
    // Piece size 2048 needs two hashes for 3000 bytes, not three.
    assert_eq!(
        Manifest::decode(&patch_u32(&m, 8, 2048)),
        Err(ManifestError::PieceCount {
            expected: 2,
            found: 3
        })
    );
    for count in [0, MAX_FILES + 1, u32::MAX] {
        assert_eq!(
            Manifest::decode(&patch_u32(&m, 12, count)),
            Err(ManifestError::FileCount(count.into()))
        );
    }
    // A plausible file count with no room for the entries is short, and
    // nothing is allocated for it.
    assert_eq!(
        Manifest::decode(&patch_u32(&m, 12, MAX_FILES)),
        Err(ManifestError::Truncated)
    );
    let count_at = good.len() - 4 - 3 * 32;
    assert_eq!(
        Manifest::decode(&patch_u32(&m, count_at, u32::MAX)),
        Err(ManifestError::PieceCount {
            expected: 3,
            found: u32::MAX.into()
        })
    );
    let mut flags = good.clone();
    flags[count_at - 1] = 0x04;
    assert_eq!(
        Manifest::decode(&flags),
        Err(ManifestError::BadFlags { index: 0, flags: 4 })
    );
    // The folder flag on a file with a size.
    flags[count_at - 1] = 0x02;
    assert!(matches!(
        Manifest::decode(&flags),
        Err(ManifestError::BadFolder { index: 0, .. })
    ));
    assert_eq!(
        Manifest::decode(&vec![0; MAX_MANIFEST_BYTES + 1]),
        Err(ManifestError::TooLarge {
            len: MAX_MANIFEST_BYTES + 1
        })
    );
    // Sizes whose sum overflows.
    let huge = Manifest {
        files: vec![file("t/a", u64::MAX), file("t/b", 1)],
        piece_size: MAX_PIECE_SIZE,
        pieces: vec![],
    };
    assert_eq!(
        Manifest::decode(&huge.encode()),
        Err(ManifestError::SizeOverflow)
    );
    assert_eq!(huge.validate(), Err(ManifestError::SizeOverflow));
}

#[test]
fn hostile_paths_are_rejected_by_decode() {
    for path in [
        "../../etc/passwd",
        "/etc/passwd",
        "a/../b",
        "C:\\x",
        "NUL",
        "a\0",
    ] {
        let m = Manifest {
            files: vec![file(path, 0)],
            piece_size: KIB,
            pieces: vec![],
        };
        assert!(
            matches!(
                Manifest::decode(&m.encode()),
                Err(ManifestError::BadPath { index: 0, .. })
            ),
            "{path:?}"
        );
    }
    let mut b = manifest(vec![file("ab", 0)], KIB).encode();
    b[18] = 0xFF; // first path byte: not UTF-8
    assert_eq!(
        Manifest::decode(&b),
        Err(ManifestError::PathNotUtf8 { index: 0 })
    );
}

#[test]
fn oversize_manifest_is_refused_by_validate() {
    // 131,072 pieces: the hashes alone fill the limit.
    let n = MAX_PIECES as u64;
    let m = Manifest {
        files: vec![file("big", n * u64::from(KIB))],
        piece_size: KIB,
        pieces: vec![[0; 32]; n as usize],
    };
    assert!(matches!(m.validate(), Err(ManifestError::TooLarge { .. })));
    assert!(matches!(
        Manifest::decode(&m.encode()),
        Err(ManifestError::TooLarge { .. })
    ));
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_é -]{0,10}[a-zA-Z0-9_é-](\\.[a-z]{1,4})?"
}

pub(crate) fn arb_manifest() -> impl Strategy<Value = Manifest> {
    (
        proptest::collection::vec(
            (
                proptest::option::of(arb_name()),
                arb_name(),
                0u64..40_000,
                any::<bool>(),
                any::<bool>(),
            ),
            1..5,
        ),
        10u32..14,
        any::<[u8; 32]>(),
    )
        .prop_map(|(entries, shift, seed)| {
            let files: Vec<FileEntry> = entries
                .into_iter()
                .enumerate()
                .map(|(i, (dir, name, size, executable, folder))| {
                    // The index keeps paths distinct, and "d" dirs apart from files.
                    let path = match dir {
                        Some(d) => format!("top/d{i}{d}/{name}"),
                        None => format!("top/f{i}{name}"),
                    };
                    if folder && size % 4 == 0 {
                        FileEntry::folder(path)
                    } else {
                        FileEntry::file(path, size, executable)
                    }
                })
                .collect();
            let piece_size = 1u32 << shift;
            let n = expected_pieces(&files, piece_size).unwrap_or(0);
            let pieces = (0..n)
                .map(|i| *blake3::keyed_hash(&seed, &i.to_be_bytes()).as_bytes())
                .collect();
            Manifest {
                files,
                piece_size,
                pieces,
            }
        })
}

proptest! {
    #[test]
    fn roundtrip(m in arb_manifest()) {
        prop_assert_eq!(m.validate(), Ok(()));
        let bytes = m.encode();
        prop_assert_eq!(bytes.len(), m.encoded_len());
        prop_assert_eq!(Manifest::decode(&bytes), Ok(m.clone()));
        prop_assert_eq!(Manifest::verify(&bytes, &m.root()), Ok(m.clone()));
        // The pieces of each file tile it exactly.
        for (i, f) in m.files.iter().enumerate() {
            let range = m.file_pieces(i).unwrap();
            let mut offset = 0u64;
            for p in range {
                let loc = m.piece_location(p).unwrap();
                prop_assert_eq!((loc.file, loc.offset), (i, offset));
                prop_assert!(loc.len > 0 && loc.len <= m.piece_size);
                offset += u64::from(loc.len);
            }
            prop_assert_eq!(offset, f.size);
        }
        prop_assert_eq!(m.piece_location(m.piece_count()), None);
    }

    #[test]
    fn truncations_are_errors(m in arb_manifest()) {
        let bytes = m.encode();
        for cut in 0..bytes.len() {
            prop_assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Manifest::decode(&bytes);
        let mut prefixed = MAGIC.to_vec();
        prefixed.push(VERSION);
        prefixed.extend_from_slice(&bytes);
        if let Ok(m) = Manifest::decode(&prefixed) {
            // Canonical: whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(m.encode(), prefixed);
        }
    }

    #[test]
    fn mutations_never_panic_and_stay_canonical(
        m in arb_manifest(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = m.encode();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if let Ok(d) = Manifest::decode(&bytes) {
            prop_assert_eq!(d.encode(), bytes);
        }
    }

    #[test]
    fn path_validation_never_panics(s in "\\PC{0,40}", t in ".{0,40}") {
        for p in [&s, &t] {
            if validate_path(p).is_ok() {
                prop_assert!(!p.starts_with('/'));
                prop_assert!(p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                prop_assert!(!p.contains('\\') && !p.contains(':'));
            }
        }
    }
}
