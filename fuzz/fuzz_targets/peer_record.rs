#![no_main]
//! hayedik's own TLS 1.3 record layer after the handshake
//! (`peer/record.rs`): the first byte picks what happens to the rest.
//!
//! - even: the rest as records from the network, opened one after the
//!   other: no panic, and nothing opens unless the fuzzer forged a tag;
//! - odd: the rest as plaintext, sealed in records of at most 2^14 bytes
//!   and opened by the other direction's keys: the same bytes come back.

use hayedik::peer::record::{self, Content, Keys, HEADER, MAX_PLAIN, OVERHEAD};
use hayedik::peer::secure::rustls::crypto::cipher::{AeadKey, Iv};
use hayedik::peer::secure::rustls::ConnectionTrafficSecrets;
use libfuzzer_sys::fuzz_target;

fn keys() -> Keys {
    let secrets = ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from([0x42; 32]),
        iv: Iv::from([0x17; 12]),
    };
    Keys::new(0, &secrets).expect("keys")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut rx = keys();
    if mode & 1 == 0 {
        let mut buf = rest.to_vec();
        let mut at = 0;
        while let Ok(Some(body)) = record::body_len(&buf[at..]) {
            let end = at + HEADER + body;
            if end > buf.len() {
                break;
            }
            match rx.open(&mut buf[at..end]) {
                Ok(Content::Data(r)) => assert!(r.end <= HEADER + body),
                Ok(Content::CloseNotify) | Err(_) => break,
            }
            at = end;
        }
    } else {
        let mut tx = keys();
        for chunk in rest.chunks(MAX_PLAIN) {
            let mut rec = vec![0; chunk.len() + OVERHEAD];
            rec[HEADER..HEADER + chunk.len()].copy_from_slice(chunk);
            let n = tx.seal(&mut rec, chunk.len(), record::INNER_DATA).expect("seal");
            assert_eq!(n, rec.len());
            match rx.open(&mut rec) {
                Ok(Content::Data(r)) => assert_eq!(&rec[r], chunk),
                other => panic!("a sealed record did not open: {other:?}"),
            }
        }
    }
});
