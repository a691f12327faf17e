#![no_main]
//! Arbitrary in-channel handshake messages against hayedik's handshake
//! state machine (`peer/handshake.rs`), either role: the first byte picks
//! the role, the rest is decoded as frames, one after another, and fed to
//! it until it fails, finishes or the bytes run out. Nothing may panic; a
//! handshake finishes only after a proof that verifies, which arbitrary
//! bytes (without the root and this connection's binding) cannot make,
//! except by replaying the exact proof computed here as a seed.

use std::net::SocketAddr;

use hayedik::peer::handshake::{Handshake, Keys};
use hayedik_proto::manifest::{peer_auth_key, swarm_key};
use hayedik_proto::peer::{decode_frame, Message, Role};
use libfuzzer_sys::fuzz_target;

/// The root and channel binding the seeds are made with.
const ROOT: [u8; 32] = [0; 32];
const BINDING: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&role, mut rest)) = data.split_first() else {
        return;
    };
    let role = if role & 1 == 0 {
        Role::Initiator
    } else {
        Role::Responder
    };
    let keys = Keys {
        swarm_key: swarm_key(&ROOT),
        auth_key: peer_auth_key(&ROOT),
        listen_port: 7,
        nonces: Default::default(),
    };
    let remote = SocketAddr::from(([127, 0, 0, 1], 9));
    let (mut h, first) = Handshake::new(&keys, BINDING, role, remote);
    assert_eq!(first.is_empty(), role == Role::Responder);
    while let Ok(Some((m, used))) = decode_frame(rest) {
        rest = &rest[used..];
        match h.on_message(m) {
            Ok((send, done)) => {
                // Nothing but a Hello and a Proof leaves during a handshake.
                assert!(send
                    .iter()
                    .all(|m| matches!(m, Message::Hello { .. } | Message::Proof { .. })));
                if done.is_some() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
});
