#![no_main]
//! Arbitrary bytes through the manifest decoder (and the same bytes behind a
//! valid magic and version, to get past the first check). Whatever decodes
//! must re-encode to exactly the same bytes, hash to the same root, and have
//! a consistent piece layout.

use hayedik_proto::manifest::{find_case_collision, validate_path, Manifest, MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    let Ok(m) = Manifest::decode(bytes) else {
        return;
    };
    assert_eq!(m.encode(), bytes, "re-encoding differs");
    assert_eq!(m.validate(), Ok(()));
    assert_eq!(Manifest::verify(bytes, &m.root()), Ok(m.clone()));
    let mut total = 0u64;
    for file in 0..m.files.len() {
        for piece in m.file_pieces(file).expect("file index in range") {
            let loc = m.piece_location(piece).expect("piece in range");
            assert_eq!(loc.file, file);
            assert!(loc.len > 0 && loc.len <= m.piece_size);
            total += u64::from(loc.len);
        }
    }
    assert_eq!(total, m.total_bytes());
    assert_eq!(m.piece_location(m.piece_count()), None);
    // One top name; folder entries hold nothing.
    let top = m.top_name();
    assert!(m.files.iter().all(|f| f.path.split('/').next() == Some(top)));
    assert!(m.files.iter().all(|f| !f.directory || (f.size == 0 && !f.executable)));
    let _ = find_case_collision(&m.files);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut prefixed = MAGIC.to_vec();
    prefixed.push(VERSION);
    prefixed.extend_from_slice(data);
    check(&prefixed);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = validate_path(s);
    }
});
