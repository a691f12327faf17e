#![no_main]
//! Arbitrary bytes through the relay's hello decoder; whatever decodes must
//! re-encode to the bytes it used.

use hayedik_proto::relay::Hello;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((hello, used)) = Hello::decode(data) {
        assert_eq!(hello.to_vec(), &data[..used]);
    }
});
