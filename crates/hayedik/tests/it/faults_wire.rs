//! Attacks on the peer wire found by an outside review, each reproduced
//! whole against the real binary on loopback (docs/reliability.md lists
//! them): a reflected handshake, a bare connection, a peer that never
//! reads, idle sessions that fill every slot, and malformed or unsolicited
//! frames.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use hayedik_proto::manifest::swarm_key;
use hayedik_proto::peer::{Message, Role};
use hayedik_proto::tracker::PeerState;

use crate::faults_rogue::{finish, Swarm};
use crate::harness::scenario;
use crate::lab::{assert_file_is, note};
use crate::rogue::{announce_as, Got, Wire};

/// What the reflection attack obtained.
#[derive(Debug, Default)]
struct Loot {
    /// Connections from the victim to the attacker's listener.
    dialled: usize,
    /// Messages the victim sent after the handshake, on either connection.
    after_handshake: Vec<String>,
    /// The length of the manifest, if the victim sent it.
    manifest: Option<usize>,
    /// The root, computed from that manifest.
    root: Option<[u8; 32]>,
}

/// The reflection attack of the review, with nothing but the swarm key:
/// list a listener in the swarm as a downloader; when a victim dials it
/// (conn1, the victim's nonce N1 and the port it serves on, both from its
/// Hello), open conn2 to that same victim with Hello nonce N1, and carry
/// the victim's proofs from each connection to the other. Runs until
/// `limit` or until `victims` dials were tried.
///
/// Relaying between two *different* honest peers (a man in the middle) is
/// another attack, which plaintext version 1 cannot stop: see
/// docs/reliability.md; the encrypted wire closes it.
fn reflect(swarm: SocketAddr, key: [u8; 32], victims: usize, limit: Duration) -> Loot {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
    let port = listener.local_addr().expect("its address").port();
    listener.set_nonblocking(true).expect("non-blocking");
    announce_as(swarm, &key, port, PeerState::Downloading);
    let deadline = Instant::now() + limit;
    let mut loot = Loot::default();
    let step = Duration::from_secs(5);
    while Instant::now() < deadline && loot.dialled < victims {
        let (stream, _) = match listener.accept() {
            Ok(x) => x,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        stream.set_nonblocking(false).expect("blocking");
        loot.dialled += 1;
        let mut conn1 = Wire::new(stream);
        let (n1, victim) = match conn1.recv(step) {
            Got::Msg(Message::Hello {
                nonce, listen_port, ..
            }) => (nonce, SocketAddr::from(([127, 0, 0, 1], listen_port))),
            other => {
                note(&format!("reflection: conn1 began with {other:?}"));
                continue;
            }
        };
        for target in [victim] {
            let Ok(stream) = std::net::TcpStream::connect_timeout(&target, step) else {
                continue;
            };
            let mut conn2 = Wire::new(stream);
            if conn2.send(&Message::hello(key, n1, 0)).is_err() {
                continue;
            }
            let (n2, mac2) = match (conn2.recv(step), conn2.recv(step)) {
                (Got::Msg(Message::Hello { nonce, .. }), Got::Msg(Message::Proof { mac })) => {
                    (nonce, mac)
                }
                other => {
                    note(&format!("reflection: {target} answered {other:?}"));
                    continue;
                }
            };
            // The victim's responder proof on conn2 is the one it expects
            // from us on conn1, for our claimed nonce n2.
            let _ = conn1.send(&Message::hello(key, n2, port));
            let _ = conn1.send(&Message::Proof { mac: mac2 });
            let mac1 = match conn1.recv(step) {
                Got::Msg(Message::Proof { mac }) => mac,
                other => {
                    note(&format!("reflection: conn1 then said {other:?}"));
                    break;
                }
            };
            let _ = conn2.send(&Message::Proof { mac: mac1 });
            for conn in [&mut conn1, &mut conn2] {
                let _ = conn.send(&Message::ManifestRequest);
                let (got, _) = conn.until_closed(Duration::from_secs(3));
                for m in got {
                    if let Message::Manifest { bytes } = &m {
                        loot.manifest = Some(bytes.len());
                        loot.root = Some(*blake3::hash(bytes).as_bytes());
                    }
                    loot.after_handshake.push(format!("{:?}", m.kind()));
                }
            }
            break;
        }
    }
    loot
}

/// Critical: someone who knows only the swarm key must not get the content
/// by reflecting a peer's handshake onto itself, neither from a sharer nor
/// from a getter.
#[test]
fn reflected_handshake_gets_nothing() {
    scenario(Duration::from_secs(120), || {
        // Peers announce every 2 s, so they learn of the attacker quickly.
        let s = Swarm::start_with_tracker(41, &["--max-upload", "512K"], &["--announce-interval", "2"]);
        let key = swarm_key(&s.served.root);
        let mut g = s.get("out", &["--timeout", "60"]);
        let loot = reflect(s.swarm_addr(), key, 2, Duration::from_secs(30));
        note(&format!("reflection against sharer and getter: {loot:?}"));
        assert!(loot.dialled >= 1, "no peer dialled the attacker: {loot:?}");
        assert!(
            loot.manifest.is_none() && loot.root.is_none() && loot.after_handshake.is_empty(),
            "the reflected handshake was accepted: {loot:?}"
        );
        // The honest getter is not disturbed.
        finish(&mut g);
        assert_file_is(&s.out("out").join("content.bin"), s.data());
        s.sharer.assert_no_panic();
    });
}

/// A bare connection gets nothing from a sharer, not even its Hello (which
/// names the swarm), until it sends a Hello for the swarm.
#[test]
fn bare_connection_learns_nothing() {
    scenario(Duration::from_secs(60), || {
        let s = Swarm::start(42, &[]);
        let mut w = Wire::connect(s.sharer_addr);
        match w.recv(Duration::from_secs(2)) {
            Got::Timeout => {}
            other => panic!("the sharer spoke first: {other:?}"),
        }
        // Another swarm's Hello: only a Goodbye comes back.
        w.send(&Message::hello(swarm_key(&[9; 32]), rand::random(), 0))
            .expect("sending Hello");
        let (got, closed) = w.until_closed(Duration::from_secs(5));
        assert!(closed, "the connection stayed open");
        assert!(
            got.iter().all(|m| matches!(m, Message::Goodbye { .. })),
            "the sharer answered another swarm's Hello with {got:?}"
        );
        // The right swarm: the handshake works.
        let mut w = Wire::connect(s.sharer_addr);
        assert_eq!(
            w.handshake(&s.served.root, Role::Initiator, 0, true),
            Ok(true)
        );
    });
}
