#![no_main]
//! Arbitrary bytes through the resume file decoder, as they are and resealed
//! with a valid checksum (so the fuzzer reaches the fields behind it).
//! Whatever decodes must re-encode to exactly the same bytes: the encoding
//! is canonical, and a decoded state says nothing its bytes do not.

use hayedik::storage::ResumeState;
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    let Ok(state) = ResumeState::decode(bytes) else {
        return;
    };
    assert_eq!(state.encode(), bytes, "re-encoding differs");
    assert_eq!(ResumeState::encoded_len(state.have.len()), bytes.len());
    assert!(state.have.count() <= state.have.len());
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(blake3::hash(data).as_bytes());
    check(&sealed);
});
