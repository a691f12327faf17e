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
/// Over version 2 the proofs cover each TLS connection's exporter value,
/// so a proof carried from one connection to the other cannot verify,
/// whatever the nonces say. Relaying between two *different* honest peers
/// (a man in the middle) is `faults_private::a_man_in_the_middle_gets_nothing`.
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
        // The victim dialled us: we are the TLS server on conn1.
        let mut conn1 = match Wire::server(stream) {
            Ok(w) => w,
            Err(e) => {
                note(&format!("reflection: conn1 TLS: {e}"));
                continue;
            }
        };
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
            let Ok(mut conn2) = Wire::client(stream) else {
                continue;
            };
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
        let s =
            Swarm::start_with_tracker(41, &["--max-upload", "512K"], &["--announce-interval", "2"]);
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

/// An authenticated connection to `to` from `from` (an address of
/// 127.0.0.0/8), after a right handshake for `root`.
fn session_from(from: [u8; 4], to: SocketAddr, root: &[u8; 32]) -> Option<Wire> {
    let connect = async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::from((from, 0))).ok()?;
        let stream = socket.connect(to).await.ok()?;
        stream.into_std().ok()
    };
    let stream = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(connect)?;
    stream.set_nonblocking(false).ok()?;
    let mut w = Wire::client(stream).ok()?;
    match w.handshake(root, Role::Initiator, 0, true) {
        Ok(true) => Some(w),
        _ => None,
    }
}

/// Sends `frame` again and again (inside the channel) without reading
/// anything, until a write has been blocked for 2 s (the peer stopped
/// reading) or `max` bytes or 20 s are spent. Returns the bytes sent.
fn flood(w: &mut Wire, frame: &[u8], max: usize) -> usize {
    let _ = w.stream.set_write_timeout(Some(Duration::from_secs(2)));
    let chunk: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 4096)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while sent < max && Instant::now() < deadline {
        match w.send_raw(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(_) => break,
        }
    }
    sent
}

/// Whether the peer has closed `w` (written to in a loop: a reset shows as
/// a failed write), within `limit`.
fn closed_within(w: &mut Wire, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let _ = w.stream.set_write_timeout(Some(Duration::from_millis(500)));
    let keepalive = Message::KeepAlive.to_vec();
    while Instant::now() < deadline {
        if let Err(e) = w.send_raw(&keepalive) {
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A peer that asks and never reads costs the sharer a bounded amount of
/// memory, and is disconnected: thousands of manifest requests (a folder's
/// manifest is hundreds of KiB) and megabytes of block requests.
#[test]
fn a_peer_that_never_reads_is_bounded_and_dropped() {
    scenario(Duration::from_secs(150), || {
        let tracker = crate::harness::Tracker::start(&[]);
        let dir = tempfile::tempdir().expect("a scratch directory");
        let top = dir.path().join("many");
        std::fs::create_dir(&top).expect("a folder");
        for i in 0..4000 {
            std::fs::write(top.join(format!("file-{i:05}.txt")), [b'x'; 1]).expect("a file");
        }
        let central = tracker.addr.to_string();
        let mut sharer = crate::lab::Proc::local(
            "sharer",
            &[
                "share",
                top.to_str().expect("UTF-8"),
                "--tracker",
                &central,
                "--listen",
                "127.0.0.1:0",
                "--json",
            ],
        );
        let addr = sharer.listening();
        let root = crate::lab::ticket_root(&crate::lab::ticket_of(&mut sharer));
        let before = crate::harness::rss_kib(sharer.pid());

        // 5,000 manifest requests, nothing read.
        let mut a = session_from([127, 0, 0, 1], addr, &root).expect("a session");
        let sent_a = flood(&mut a, &Message::ManifestRequest.to_vec(), 5000 * 5);
        // Block requests by the million (17 bytes each), nothing read.
        let mut b = session_from([127, 0, 0, 1], addr, &root).expect("a session");
        let request = Message::Request {
            piece: 0,
            offset: 0,
            len: 1,
        }
        .to_vec();
        let sent_b = flood(&mut b, &request, 36 << 20);
        std::thread::sleep(Duration::from_secs(2));
        let after = crate::harness::rss_kib(sharer.pid());
        note(&format!(
            "never-reading peers: sent {sent_a} B of manifest requests and {sent_b} B of block requests; sharer RSS {before} -> {after} KiB"
        ));
        assert!(
            after < before + 64 * 1024,
            "the sharer grew from {before} to {after} KiB"
        );
        // Asking twice for the manifest is a violation: closed at once.
        assert!(
            closed_within(&mut a, Duration::from_secs(5)),
            "manifest flood: still open"
        );
        // A peer that leaves our answers unread is dropped.
        assert!(
            closed_within(&mut b, Duration::from_secs(45)),
            "request flood: still open"
        );
        sharer.assert_no_panic();
    });
}

/// Sessions that hold a slot and do nothing cannot lock honest getters
/// out: one address gets at most its share of the slots, and when every
/// slot is taken the longest-idle session makes room.
#[test]
fn idle_sessions_do_not_lock_out_getters() {
    scenario(Duration::from_secs(120), || {
        let s = Swarm::start(43, &[]);
        let root = s.served.root;
        // 4 addresses x 32 sessions: the sharer's 128 slots.
        let mut idle = Vec::new();
        for host in 2..=5u8 {
            for _ in 0..32 {
                let w = session_from([127, 0, 0, host], s.sharer_addr, &root)
                    .unwrap_or_else(|| panic!("session {} from 127.0.0.{host}", idle.len()));
                idle.push(w);
            }
        }
        // A 33rd from one address gets no session.
        assert!(
            session_from([127, 0, 0, 2], s.sharer_addr, &root).is_none(),
            "a 33rd session from one address was accepted"
        );
        // They stay, sending only keep-alives.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let keeper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let keepalive = Message::KeepAlive.to_vec();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for w in &mut idle {
                        let _ = w.send_raw(&keepalive);
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
                idle.len()
            })
        };
        let mut g = s.get("out", &["--timeout", "40"]);
        finish(&mut g);
        assert_file_is(&s.out("out").join("content.bin"), s.data());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = keeper.join();
        s.sharer.assert_no_panic();
    });
}

/// Malformed or unsolicited frames end the session at once: a zero length
/// (without waiting for a fifth byte), a Block or a Manifest nobody asked for.
#[test]
fn malformed_and_unsolicited_frames_close_the_session() {
    scenario(Duration::from_secs(60), || {
        let s = Swarm::start(44, &[]);
        let cases: [(&str, Vec<u8>); 3] = [
            ("a zero frame length", vec![0, 0, 0, 0]),
            (
                "an unsolicited Block",
                Message::Block {
                    piece: 0,
                    offset: 0,
                    data: vec![0; 16],
                }
                .to_vec(),
            ),
            (
                "an unsolicited Manifest",
                Message::Manifest {
                    bytes: s.served.manifest_bytes.clone(),
                }
                .to_vec(),
            ),
        ];
        for (what, bytes) in cases {
            let mut w = s.dial_sharer();
            w.send_raw(&bytes).expect("sending");
            let (_, closed) = w.until_closed(Duration::from_secs(3));
            assert!(closed, "{what}: the sharer kept the connection open");
        }
        s.sharer.assert_no_panic();
    });
}
