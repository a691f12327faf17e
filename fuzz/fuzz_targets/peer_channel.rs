#![no_main]
//! The record layer as hayedik uses it: a TLS 1.3 connection made with
//! hayedik's own client and server configurations (`peer/secure.rs`),
//! handshake completed in memory, then the first byte picks what the
//! server is fed:
//!
//! - even: the rest as raw bytes from the network (records, damaged or
//!   not): the server must not panic, and fails or yields plaintext that
//!   goes through the frame decoder;
//! - odd: the rest as plaintext that the client encrypts: the server must
//!   decrypt exactly those bytes, and the frames in it decode as they
//!   would without TLS.

use std::io::{Read, Write};

use hayedik::peer::secure::{self, rustls};
use hayedik_proto::peer::decode_frame;
use libfuzzer_sys::fuzz_target;

/// Moves what `from` has to send into `to`.
fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) {
    let mut wire = Vec::new();
    while from.wants_write() {
        if from.write_tls(&mut wire).is_err() {
            break;
        }
    }
    let mut rd = &wire[..];
    while !rd.is_empty() {
        match to.read_tls(&mut rd) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if to.process_new_packets().is_err() {
                    break;
                }
            }
        }
    }
}

fn frames(mut bytes: &[u8]) {
    while let Ok(Some((m, used))) = decode_frame(bytes) {
        assert_eq!(m.to_vec(), &bytes[..used]);
        bytes = &bytes[used..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (Ok(cc), Ok(sc)) = (secure::client_config(), secure::server_config()) else {
        return;
    };
    let Ok(client) = rustls::ClientConnection::new(cc, secure::server_name()) else {
        return;
    };
    let Ok(server) = rustls::ServerConnection::new(sc) else {
        return;
    };
    let (mut client, mut server): (rustls::Connection, rustls::Connection) =
        (client.into(), server.into());
    for _ in 0..4 {
        pump(&mut client, &mut server);
        pump(&mut server, &mut client);
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    let mut plain = Vec::new();
    if mode & 1 == 0 {
        let mut rd = rest;
        while !rd.is_empty() {
            match server.read_tls(&mut rd) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if server.process_new_packets().is_err() {
                        break;
                    }
                    let _ = server.reader().read_to_end(&mut plain);
                }
            }
        }
        // Whatever decrypted (nothing, unless the fuzzer forged a record)
        // goes through the frame decoder.
        frames(&plain);
    } else {
        client.set_buffer_limit(None);
        client.writer().write_all(rest).expect("plaintext into TLS");
        pump(&mut client, &mut server);
        let _ = server.reader().read_to_end(&mut plain);
        assert_eq!(plain, rest, "TLS changed the bytes");
        frames(&plain);
    }
});
