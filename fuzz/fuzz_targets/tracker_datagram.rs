#![no_main]
//! Arbitrary bytes through the tracker datagram decoder; whatever decodes must
//! re-encode to the same value.

use hayedik_proto::tracker::{decode_body, decode_header, Datagram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, body)) = decode_header(data) {
        let _ = decode_body(&header, body);
    }
    if let Ok(d) = Datagram::decode(data) {
        let again = Datagram::decode(&d.to_vec()).expect("re-encoded datagram decodes");
        assert_eq!(again, d);
    }
});
