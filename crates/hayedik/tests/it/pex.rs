//! Peer exchange (peer wire 2.1, `peer/pex.rs`): a getter finds through it
//! the peers a tracker that lists one peer per answer never named, and
//! keeps finding them once that tracker is gone; hostile PeerExchange
//! messages from a ticket holder are bounded and ignored; a peer that only
//! speaks plain version 2 (ALPN `hayedik/2`) still transfers and is sent
//! no peer exchange.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hayedik::peer::secure::{self, rustls};
use hayedik_proto::peer::{Message, MessageType, Role, ALPN_PEX, ALPN_V2, MAX_PEX_PAYLOAD};

use crate::rogue::{Got, Served, Wire};
use crate::swarm_harness::{
    assert_same_file, note, scenario, tempdir, write_random, Node, MIB, SOON,
};

const LIMIT: Duration = Duration::from_secs(120);

/// `hayedik tracker` on loopback listing at most one peer per answer and
/// asking for announces only every ten minutes.
fn stingy_tracker() -> (Node, SocketAddr) {
    let mut t = Node::spawn(
        "tracker",
        &[
            "tracker",
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--max-listed",
            "1",
            "--announce-interval",
            "600",
        ],
    );
    let addr = t.listening();
    (t, addr)
}

fn ticket_of(sharer: &mut Node) -> String {
    sharer.ticket()["ticket"]
        .as_str()
        .expect("ticket")
        .to_string()
}

/// A tracker that lists one peer per answer, a sharer and three seeders;
/// a getter starts, the tracker is killed once the getter is in the
/// swarm, and the getter ends with bytes from all four: peer exchange
/// found the three the tracker never listed to it.
#[test]
fn pex_finds_the_peers_the_tracker_did_not_list() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 32 * MIB;
        let (path, data) = write_random(work.path(), "pex.bin", len, 16);
        let (mut tracker, central) = stingy_tracker();
        let mut sharer = Node::share(
            "sharer",
            &path,
            &["--tracker", &format!("127.0.0.1:{}", central.port())],
        );
        let mut expected = vec![sharer.listening()];
        let ticket = ticket_of(&mut sharer);
        let mut seeders = Vec::new();
        for i in 0..3 {
            let mut p = Node::get(
                &format!("seeder {i}"),
                &ticket,
                &work.path().join(format!("seeder{i}")),
                &[],
            );
            expected.push(p.listening());
            p.done(Duration::from_secs(40));
            p.wait_event("seeding");
            seeders.push(p);
        }
        let mut getter = Node::get(
            "getter",
            &ticket,
            &work.path().join("getter"),
            &["--no-seed", "--max-download", "2M"],
        );
        getter.wait_event("manifest");
        tracker.kill9();
        let done = getter.done(Duration::from_secs(60));
        getter.expect_success();
        note(&format!("pex: from {:?}", done.from));
        assert_same_file(&done.path, &data);
        expected.sort();
        assert_eq!(
            done.sources().into_iter().collect::<Vec<_>>(),
            expected,
            "bytes from the sharer and all three seeders: {done:?}"
        );
        assert!(done.from.values().all(|&n| n > 0), "{done:?}");
        for mut p in seeders {
            p.stop();
        }
        sharer.stop();
    });
}

/// Counts the TCP connections made to an address, on a thread, until
/// dropped.
struct Trap {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Trap {
    fn bind(addr: &str) -> Trap {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {
                        h.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Trap { addr, hits, stop }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    fn wait_hit(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.hits() > 0 {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.hits() > 0
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A ticket holder dialling `addr` with these ALPN protocols, through the
/// handshake (announcing `listen_port`).
fn holder(addr: SocketAddr, alpn: &[&[u8]], root: &[u8; 32], listen_port: u16) -> Wire {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    let mut config = (*secure::client_config().unwrap()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let conn = rustls::ClientConnection::new(Arc::new(config), secure::server_name()).unwrap();
    let mut w = Wire::start(stream, conn.into()).unwrap();
    assert!(
        w.handshake(root, Role::Initiator, listen_port, true)
            .unwrap(),
        "the peer's proof"
    );
    w
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

/// Whether the peer closes the connection within `limit` (messages it
/// sends before are skipped).
fn closes(w: &mut Wire, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match w.recv(deadline.saturating_duration_since(Instant::now())) {
            Got::Msg(_) => continue,
            Got::Closed | Got::Invalid(_) => return true,
            Got::Timeout => return false,
        }
    }
}

/// A rogue holding the ticket sends the getter hostile PeerExchange
/// messages: addresses of the getter itself and of the tracker (ignored,
/// never dialled, while a valid address in the same message is), a frame
/// above the limit, 10,000 addresses, garbage and a flood (each ends that
/// connection). The getter finishes with the right file.
#[test]
fn pex_hostile_messages_are_bounded_and_ignored() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 8 * MIB;
        let (path, data) = write_random(work.path(), "hostile.bin", len, 17);
        let (mut tracker, central) = Node::tracker();
        let mut sharer = Node::share(
            "sharer",
            &path,
            &["--tracker", &format!("127.0.0.1:{}", central.port())],
        );
        let ticket = ticket_of(&mut sharer);
        let swarm_port: u16 = ticket
            .trim_start_matches("hayedik://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the ticket's port");
        let root = Served::file("hostile.bin", &data).root;
        let mut getter = Node::get(
            "getter",
            &ticket,
            &work.path().join("getter"),
            &["--max-download", "1M"],
        );
        let g = getter.listening();
        // The getter's port on another of its loopback addresses, the
        // tracker's address over TCP, and an honest-looking address.
        let at_self = Trap::bind(&format!("127.0.0.3:{}", g.port()));
        let at_tracker = Trap::bind(&format!("127.0.0.1:{swarm_port}"));
        let control = Trap::bind("127.0.0.1:0");

        let mut w = holder(g, &[ALPN_PEX, ALPN_V2], &root, 41_001);
        let pointed = Message::PeerExchange {
            added: vec![
                g,
                at_self.addr,
                at_tracker.addr,
                "127.0.0.1:0".parse().unwrap(),
                "0.0.0.0:9".parse().unwrap(),
                "224.0.0.1:9".parse().unwrap(),
                "255.255.255.255:9".parse().unwrap(),
                control.addr,
            ],
            dropped: vec![at_self.addr],
        };
        w.send(&pointed).unwrap();
        assert!(
            control.wait_hit(Duration::from_secs(10)),
            "the valid address was dialled"
        );
        assert!(!closes(&mut w, Duration::from_secs(1)), "no violation");
        // A second message right away: a flood.
        w.send(&pointed).unwrap();
        assert!(closes(&mut w, Duration::from_secs(5)), "a flood ends it");

        let mut big = ((MAX_PEX_PAYLOAD + 2) as u32).to_be_bytes().to_vec();
        big.push(MessageType::PeerExchange as u8);
        let mut ten_thousand = vec![0xFF];
        for i in 0..10_000u32 {
            ten_thousand.push(4);
            ten_thousand.extend_from_slice(&[10, 1, (i >> 8) as u8, i as u8, 0x1F, 0x90]);
        }
        ten_thousand.push(0);
        let hostile: [(&str, Vec<u8>); 4] = [
            ("above the limit", big),
            ("10,000 addresses", frame(12, &ten_thousand)),
            ("an unknown family", frame(12, &[1, 9, 1, 2, 3, 4, 0, 1, 0])),
            ("51 addresses", {
                let mut p = vec![51];
                for _ in 0..51 {
                    p.extend_from_slice(&[4, 10, 0, 0, 1, 0, 80]);
                }
                p.push(0);
                frame(12, &p)
            }),
        ];
        for (i, (what, bytes)) in hostile.iter().enumerate() {
            let mut w = holder(g, &[ALPN_PEX, ALPN_V2], &root, 41_002 + i as u16);
            let _ = w.send_raw(bytes);
            assert!(closes(&mut w, Duration::from_secs(5)), "{what}");
        }

        let done = getter.done(Duration::from_secs(60));
        assert_same_file(&done.path, &data);
        getter.wait_event("seeding");
        thread::sleep(Duration::from_secs(1));
        assert_eq!(at_self.hits(), 0, "the getter dialled itself");
        assert_eq!(at_tracker.hits(), 0, "the getter dialled the tracker");
        getter.assert_no_panic();
        getter.stop();
        sharer.stop();
        tracker.stop();
    });
}

/// A peer that offers only `hayedik/2` (no peer exchange) still fetches
/// the manifest and a piece, and is sent no PeerExchange, while a 2.1 peer
/// connected at the same time hears of the sharer's other peer; a
/// PeerExchange sent on a version 2 connection is a violation.
#[test]
fn pex_old_peers_still_transfer() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 2 * MIB;
        let (path, data) = write_random(work.path(), "old.bin", len, 18);
        let root = Served::file("old.bin", &data).root;
        let mut sharer = Node::share("sharer", &path, &[]);
        let s = sharer.listening();
        let ticket = ticket_of(&mut sharer);
        let mut other = Node::get("other", &ticket, &work.path().join("other"), &[]);
        let other_addr = other.listening();
        other.done(SOON);

        let mut old = holder(s, &[ALPN_V2], &root, 0);
        let mut new = holder(s, &[ALPN_PEX, ALPN_V2], &root, 0);
        old.send(&Message::ManifestRequest).unwrap();
        match old.recv_matching(SOON, |m| matches!(m, Message::Manifest { .. })) {
            Got::Msg(Message::Manifest { bytes }) => {
                assert_eq!(blake3::hash(&bytes).as_bytes(), &root)
            }
            other => panic!("no manifest for an old peer: {other:?}"),
        }
        old.send(&Message::Request {
            piece: 0,
            offset: 0,
            len: MIB as u32,
        })
        .unwrap();
        let (mut got_block, mut got_pex) = (false, false);
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            match old.recv(Duration::from_millis(200)) {
                Got::Msg(Message::Block {
                    piece,
                    offset,
                    data: d,
                }) => {
                    assert_eq!((piece, offset), (0, 0));
                    assert_eq!(&d[..], &data[..MIB]);
                    got_block = true;
                }
                Got::Msg(Message::PeerExchange { .. }) => got_pex = true,
                Got::Msg(_) | Got::Timeout => {}
                Got::Closed | Got::Invalid(_) => panic!("the old peer's session ended"),
            }
        }
        assert!(got_block, "the old peer got its block");
        assert!(!got_pex, "peer exchange sent to an old peer");
        match new.recv_matching(Duration::from_secs(10), |m| {
            matches!(m, Message::PeerExchange { .. })
        }) {
            Got::Msg(Message::PeerExchange { added, .. }) => {
                assert!(added.contains(&other_addr), "{added:?}")
            }
            other => panic!("no peer exchange for a 2.1 peer: {other:?}"),
        }
        // PEX where it was not agreed ends that session.
        old.send(&Message::PeerExchange {
            added: vec![],
            dropped: vec![],
        })
        .unwrap();
        assert!(closes(&mut old, Duration::from_secs(5)));
        other.stop();
        sharer.stop();
    });
}
