//! The private wire (peer protocol version 2, docs/peer-protocol.md)
//! against the real binary on loopback: version 1 peers are refused
//! clearly, a man in the middle without the root and a replayed handshake
//! get nothing, damaged TLS records close the session with a strike, and
//! (as root) a capture of loopback shows nothing of the content, the root
//! or the swarm key.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hayedik_proto::manifest::swarm_key;
use hayedik_proto::peer::{decode_frame, Message, MessageType, Role, V1_REFUSAL};

use crate::faults_rogue::{ban_lines, finish, Swarm};
use crate::harness::scenario;
use crate::lab::{assert_file_is, note, random_bytes, Proc};
use crate::rogue::{announce_seeder, create_swarm, plain_exchange, Act, Got, Wire};

const NAME: &str = "content.bin";

/// A plaintext version 1 Hello gets a plaintext Goodbye telling it to
/// upgrade, and the connection is closed; a version 2 getter whose only
/// peer is a version 1 listener (which closes at the first TLS byte, as
/// version 1 does) fails saying so.
#[test]
fn version_1_peers_are_refused_clearly() {
    scenario(Duration::from_secs(60), || {
        let s = Swarm::start(61, &[]);
        let mut hello = Message::hello(swarm_key(&s.served.root), rand::random(), 0).to_vec();
        hello[5 + 4] = 1;
        let (got, closed) = plain_exchange(s.sharer_addr, &hello, Duration::from_secs(5));
        assert!(closed, "the connection of a version 1 peer stayed open");
        match decode_frame(&got) {
            Ok(Some((Message::Goodbye { reason }, used))) if used == got.len() => {
                assert_eq!(reason, V1_REFUSAL)
            }
            other => panic!("a version 1 Hello got {other:?} ({got:?})"),
        }

        // A version 1 listener: reads the dialler's first bytes, sees a
        // length prefix far too large (0x1603...), closes.
        let old = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let old_port = old.local_addr().expect("its address").port();
        thread::spawn(move || {
            while let Ok((mut c, _)) = old.accept() {
                let mut head = [0u8; 4];
                let _ = c.read_exact(&mut head);
            }
        });
        let root: [u8; 32] = rand::random();
        let port = create_swarm(s.tracker.addr, &root, old_port);
        let ticket = format!(
            "hayedik://127.0.0.1:{port}/{}",
            hayedik_proto::ticket::hex(&root)
        );
        let out = s.out("old");
        let mut g = crate::faults_rogue::get(&ticket, &out, &["--timeout", "6"]);
        let status = g.wait_exit(Duration::from_secs(30));
        let err = g.stderr();
        assert!(!status.success(), "the getter succeeded:\n{err}");
        assert!(
            err.contains("protocol version 1"),
            "the getter did not say why:\n{err}"
        );
        s.sharer.assert_no_panic();
    });
}

/// What a man in the middle saw.
#[derive(Debug, Default, Clone)]
struct MitmLog {
    dialled: u32,
    /// Kinds of the messages the getter sent (to the sharer, relayed).
    from_getter: Vec<MessageType>,
    /// Kinds of the messages the sharer sent (to the getter, relayed).
    from_sharer: Vec<MessageType>,
    /// Goodbye reasons, from either side.
    goodbyes: Vec<String>,
    /// What the sharer said to a proof the relay made up.
    forged_answer: Vec<String>,
}

/// A man in the middle without the root: listed as a seeder; when a peer
/// dials it, it terminates that TLS connection with its own certificate,
/// opens its own TLS connection to the sharer, and relays the messages
/// between the two. When the getter stops (it cannot verify the relayed
/// proof), it sends the sharer a proof it made up.
fn mitm(sharer: SocketAddr, log: Arc<Mutex<MitmLog>>, stop: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
    let port = listener.local_addr().expect("its address").port();
    listener.set_nonblocking(true).expect("non-blocking");
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((stream, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let log = log.clone();
            thread::spawn(move || relay(stream, sharer, &log));
        }
    });
    port
}

fn relay(stream: TcpStream, sharer: SocketAddr, log: &Mutex<MitmLog>) {
    let lock = || log.lock().unwrap_or_else(|e| e.into_inner());
    lock().dialled += 1;
    let Ok(mut g) = Wire::server(stream) else {
        return;
    };
    let mut s = Wire::connect(sharer);
    let deadline = Instant::now() + Duration::from_secs(10);
    let step = Duration::from_millis(50);
    let (mut g_open, mut s_open) = (true, true);
    while Instant::now() < deadline && (g_open || s_open) {
        if g_open {
            match g.recv(step) {
                Got::Msg(m) => {
                    lock().from_getter.push(m.kind());
                    if let Message::Goodbye { reason } = &m {
                        lock().goodbyes.push(format!("getter: {reason}"));
                        // The getter gave up: try a proof of our own.
                        let _ = s.send(&Message::Proof {
                            mac: rand::random(),
                        });
                        let (got, _) = s.until_closed(Duration::from_secs(3));
                        for m in got {
                            lock().forged_answer.push(format!("{m:?}"));
                        }
                        return;
                    }
                    let _ = s.send(&m);
                }
                Got::Timeout => {}
                _ => g_open = false,
            }
        }
        if s_open {
            match s.recv(step) {
                Got::Msg(m) => {
                    lock().from_sharer.push(m.kind());
                    if let Message::Goodbye { reason } = &m {
                        lock().goodbyes.push(format!("sharer: {reason}"));
                    }
                    let _ = g.send(&m);
                }
                Got::Timeout => {}
                _ => s_open = false,
            }
        }
    }
}

/// A relay that terminates TLS on both sides with its own keys, without
/// the root: the getter refuses the sharer's relayed proof (it was made
/// for another TLS connection), so it never proves itself; the sharer
/// refuses a proof the relay makes up; nothing but Hellos, a Proof and
/// Goodbyes crosses, and the getter gets the file from the sharer alone.
#[test]
fn a_man_in_the_middle_gets_nothing() {
    scenario(Duration::from_secs(90), || {
        // Capped, so that the getter meets the relay before it is done.
        let s = Swarm::start(62, &["--max-upload", "2M"]);
        let log = Arc::new(Mutex::new(MitmLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let port = mitm(s.sharer_addr, log.clone(), stop.clone());
        announce_seeder(s.swarm_addr(), &s.served.root, port);
        let mut g = s.get("out", &["--timeout", "30"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while log
            .lock()
            .map(|l| l.forged_answer.is_empty())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "no relayed handshake: {log:?}");
            thread::sleep(Duration::from_millis(50));
        }
        let done = finish(&mut g);
        stop.store(true, Ordering::Relaxed);
        assert_file_is(&s.out("out").join(NAME), s.data());
        let log = log.lock().map(|l| l.clone()).unwrap_or_default();
        note(&format!("man in the middle: {log:?}"));
        assert!(
            log.from_getter
                .iter()
                .all(|k| matches!(k, MessageType::Hello | MessageType::Goodbye)),
            "the getter sent more than a Hello through the relay: {log:?}"
        );
        assert!(
            log.from_sharer
                .iter()
                .all(|k| matches!(k, MessageType::Hello | MessageType::Proof)),
            "the sharer sent more than its Hello and proof through the relay: {log:?}"
        );
        assert!(
            log.goodbyes.iter().any(|r| r == "getter: wrong proof"),
            "{log:?}"
        );
        assert!(
            log.forged_answer.iter().all(|m| m.contains("Goodbye"))
                && log.forged_answer.iter().any(|m| m.contains("wrong proof")),
            "the sharer's answer to a made-up proof: {log:?}"
        );
        let relay = format!("127.0.0.1:{port}");
        assert!(done["from"][&relay].as_u64().unwrap_or(0) == 0, "{done}");
        g.assert_no_panic();
        s.sharer.assert_no_panic();
    });
}

/// Relays TCP both ways between an accepted connection and `to`, keeping
/// a copy of what the dialler sent; returns the listener's port.
fn recorder(to: SocketAddr, sent: Arc<Mutex<Vec<u8>>>, got: Arc<Mutex<usize>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
    let port = listener.local_addr().expect("its address").port();
    thread::spawn(move || {
        let Ok((mut a, _)) = listener.accept() else {
            return;
        };
        let Ok(mut b) = TcpStream::connect(to) else {
            return;
        };
        let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
            return;
        };
        thread::spawn(move || {
            let mut buf = [0u8; 16 << 10];
            while let Ok(n @ 1..) = b2.read(&mut buf) {
                *got.lock().unwrap_or_else(|e| e.into_inner()) += n;
                if a2.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut buf = [0u8; 16 << 10];
        while let Ok(n @ 1..) = a.read(&mut buf) {
            sent.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
            if b.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    port
}

/// The bytes a real dialler sent (its TLS handshake, Hello, proof and a
/// manifest request, which got it the manifest), replayed to the same
/// listener on a new connection, get no session: the listener's new key
/// share makes the recorded TLS Finished worthless, and it closes at once
/// (an accepted session would stay open).
#[test]
fn a_replayed_handshake_fails() {
    scenario(Duration::from_secs(60), || {
        let s = Swarm::start(63, &[]);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::new(Mutex::new(0usize));
        let port = recorder(s.sharer_addr, sent.clone(), got.clone());
        let mut w = Wire::connect(SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(
            w.handshake(&s.served.root, Role::Initiator, 0, true),
            Ok(true)
        );
        w.send(&Message::ManifestRequest).expect("asking");
        match w.recv_matching(Duration::from_secs(5), |m| {
            matches!(m, Message::Manifest { .. })
        }) {
            Got::Msg(_) => {}
            other => panic!("the recorded session got no manifest: {other:?}"),
        }
        let flight = sent.lock().map(|v| v.clone()).unwrap_or_default();
        let original = *got.lock().unwrap_or_else(|e| e.into_inner());
        let (back, closed) = plain_exchange(s.sharer_addr, &flight, Duration::from_secs(3));
        note(&format!(
            "replay: {} bytes replayed; the original session got {original} bytes, the replay {}",
            flight.len(),
            back.len()
        ));
        assert!(closed, "the replayed handshake was kept open");
        assert!(
            back.len() < original,
            "the replay got as much as the real session ({} >= {original})",
            back.len()
        );
        drop(w);
        s.sharer.assert_no_panic();
    });
}

/// One way of damaging the TLS records that carry `frames`.
fn damaged(w: &mut Wire, how: &str, frames: &[Vec<u8>]) -> Vec<u8> {
    match how {
        "flipped" => {
            let mut r = w.seal(&frames[0]);
            let at = r.len() - 3;
            r[at] ^= 0x01;
            r
        }
        "truncated" => {
            // A record cut short, then the next one: the rest of the first
            // is taken from the second, which does not decrypt.
            let mut r = w.seal(&frames[0]);
            r.truncate(r.len() - 5);
            r.extend(w.seal(&frames[1]));
            r
        }
        "reordered" => {
            let first = w.seal(&frames[0]);
            let mut r = w.seal(&frames[1]);
            r.extend(first);
            r
        }
        "oversized" => {
            // Longer than any TLS 1.3 record may be (2^14 + 256).
            let len: u16 = (1 << 14) + 257;
            let mut r = vec![0x17, 0x03, 0x03];
            r.extend_from_slice(&len.to_be_bytes());
            r.resize(5 + len as usize, 0xA5);
            r
        }
        other => panic!("no damage called {other}"),
    }
}

/// Flipped, truncated, reordered and oversized TLS records after a right
/// handshake: each closes the session without serving the request they
/// carry, and each is a strike: after two, the address (the one the
/// sessions said they serve on) is banned. And a seeder that holds the
/// root but flips a bit in the records of its blocks writes nothing into
/// the getter's file and is banned.
#[test]
fn damaged_records_close_the_session_with_a_strike() {
    scenario(Duration::from_secs(90), || {
        let s = Swarm::start(64, &["--max-upload", "2M"]);
        let frames = vec![
            Message::ManifestRequest.to_vec(),
            Message::Request {
                piece: 0,
                offset: 0,
                len: 16 << 10,
            }
            .to_vec(),
        ];
        for (i, how) in ["flipped", "truncated", "reordered", "oversized"]
            .into_iter()
            .enumerate()
        {
            // The sessions of one kind say they serve on one port: one
            // listed address, which two strikes get banned.
            let listen_port = 40_990 + i as u16;
            for _ in 0..2 {
                let mut w = Wire::connect(s.sharer_addr);
                assert_eq!(
                    w.handshake(&s.served.root, Role::Initiator, listen_port, true),
                    Ok(true),
                    "{how}: handshake"
                );
                match w.recv(Duration::from_secs(5)) {
                    Got::Msg(Message::Bitfield { .. }) => {}
                    other => panic!("{how}: expected the sharer's Bitfield, got {other:?}"),
                }
                let bytes = damaged(&mut w, how, &frames);
                w.send_tcp(&bytes).expect("sending");
                let mut served = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(5);
                let closed = loop {
                    match w.recv(deadline.saturating_duration_since(Instant::now())) {
                        Got::Msg(m) => served.push(m.kind()),
                        Got::Timeout => break false,
                        Got::Closed | Got::Invalid(_) => break true,
                    }
                };
                assert!(closed, "{how}: the session stayed open");
                assert!(
                    !served
                        .iter()
                        .any(|k| matches!(k, MessageType::Manifest | MessageType::Block)),
                    "{how}: the sharer served {served:?}"
                );
            }
            let mut w = Wire::connect(s.sharer_addr);
            let _ = w.handshake(&s.served.root, Role::Initiator, listen_port, true);
            let (got, closed) = w.until_closed(Duration::from_secs(5));
            assert!(closed, "{how}: a banned address kept its session");
            assert!(
                got.iter()
                    .any(|m| matches!(m, Message::Goodbye { reason } if reason == "banned")),
                "{how}: two damaged sessions did not get the address banned: {got:?}"
            );
        }

        // The other direction: a seeder with the root, damaged records.
        let rogue = s.rogue(Act::FlipRecord);
        let mut g = s.get("out", &["--timeout", "30"]);
        let done = finish(&mut g);
        assert_file_is(&s.out("out").join(NAME), s.data());
        let log = rogue.log();
        assert!(log.requests >= 1, "the rogue was never asked: {log:?}");
        let rogue_addr = rogue.addr.to_string();
        assert!(
            done["from"][&rogue_addr].as_u64().unwrap_or(0) == 0,
            "{done}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ban_lines(&g.stderr())
            .iter()
            .any(|l| l.contains(&rogue_addr))
        {
            if Instant::now() > deadline {
                // --no-seed: the getter may be done before a second strike.
                note(&format!(
                    "damaged records: the rogue {rogue_addr} was not banned before the getter finished ({log:?})"
                ));
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        g.assert_no_panic();
        s.sharer.assert_no_panic();
    });
}

/// TCP payloads seen on loopback, per flow (source, destination).
type Flows = HashMap<(SocketAddr, SocketAddr), Vec<u8>>;

/// Captures every packet on every interface with an `AF_PACKET` socket
/// until `stop`; keeps the TCP payloads (not UDP: the tracker's announces
/// carry the swarm key by design).
fn capture(stop: Arc<AtomicBool>) -> thread::JoinHandle<Result<Flows, String>> {
    use rustix::net::{eth, recv, socket, sockopt, AddressFamily, RecvFlags, SocketType};
    let fd = socket(AddressFamily::PACKET, SocketType::RAW, Some(eth::ALL));
    thread::spawn(move || {
        let fd = fd.map_err(|e| format!("an AF_PACKET socket: {e}"))?;
        sockopt::set_socket_timeout(
            &fd,
            sockopt::Timeout::Recv,
            Some(Duration::from_millis(100)),
        )
        .map_err(|e| e.to_string())?;
        // Room for bursts (the transfer is capped too, so nothing is lost).
        let _ = sockopt::set_socket_recv_buffer_size(&fd, 32 << 20);
        let mut flows = Flows::new();
        let mut last: Vec<u8> = Vec::new();
        // Loopback's MTU is 64 KiB: a whole frame, headers included, fits.
        let mut buf = vec![0u8; 1 << 17];
        while !stop.load(Ordering::Relaxed) {
            let n = match recv(&fd, &mut buf[..], RecvFlags::empty()) {
                Ok((n, _)) => n.min(buf.len()),
                Err(_) => continue,
            };
            let p = &buf[..n];
            // Loopback shows each packet twice (sent, received).
            if p == &last[..] {
                continue;
            }
            last = p.to_vec();
            if let Some((from, to, payload)) = tcp_payload(p) {
                if !payload.is_empty() {
                    flows
                        .entry((from, to))
                        .or_default()
                        .extend_from_slice(payload);
                }
            }
        }
        Ok(flows)
    })
}

/// The addresses and payload of an Ethernet + IPv4 + TCP frame.
fn tcp_payload(p: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    if p.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = p.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = ip.get(ihl..total.min(ip.len()))?;
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let off = usize::from(tcp.get(12)? >> 4) * 4;
    Some((
        SocketAddr::from((src, sport)),
        SocketAddr::from((dst, dport)),
        tcp.get(off..)?,
    ))
}

/// As root: a capture of loopback while a getter downloads from a sharer
/// shows, in the peers' TCP streams, no 16-byte window of the file, not
/// the root and not the swarm key (the tracker's UDP is left out: its
/// announces carry the swarm key by design).
#[test]
#[ignore = "needs root: an AF_PACKET capture of loopback"]
fn a_capture_shows_nothing_of_the_content() {
    if !crate::lab::is_root() {
        crate::lab::cannot_run("a_capture_shows_nothing_of_the_content", "not root");
    }
    scenario(Duration::from_secs(90), || {
        let tracker = crate::harness::Tracker::start(&[]);
        let dir = tempfile::tempdir().expect("a scratch directory");
        let seed = u64::from(std::process::id()) ^ rand::random::<u64>();
        let data = random_bytes(1 << 20, seed);
        let file = dir.path().join(NAME);
        std::fs::write(&file, &data).expect("writing the content");
        let stop = Arc::new(AtomicBool::new(false));
        let capturing = capture(stop.clone());
        let central = tracker.addr.to_string();
        let mut sharer = Proc::local(
            "sharer",
            &[
                "share",
                file.to_str().expect("UTF-8"),
                "--tracker",
                &central,
                "--listen",
                "127.0.0.1:0",
                "--json",
                // Slow enough for the capture to keep every packet.
                "--max-upload",
                "4M",
            ],
        );
        let sharer_addr = sharer.listening();
        let ticket = crate::lab::ticket_of(&mut sharer);
        let root = crate::lab::ticket_root(&ticket);
        let out = dir.path().join("out");
        let mut g = crate::faults_rogue::get(&ticket, &out, &[]);
        let getter_port = g
            .events()
            .iter()
            .find(|e| e["event"] == "listening")
            .and_then(|e| e["addr"].as_str()?.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .expect("the getter's listening event");
        finish(&mut g);
        assert_file_is(&out.join(NAME), &data);
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let flows = match capturing.join() {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => crate::lab::cannot_run("a_capture_shows_nothing_of_the_content", &e),
            Err(_) => panic!("the capture thread panicked"),
        };
        let ports = [sharer_addr.port(), getter_port];
        let peers: Vec<(&(SocketAddr, SocketAddr), &Vec<u8>)> = flows
            .iter()
            .filter(|((a, b), _)| ports.contains(&a.port()) || ports.contains(&b.port()))
            .collect();
        let captured: usize = peers.iter().map(|(_, v)| v.len()).sum();
        note(&format!(
            "capture: {} TCP flows of the peers, {captured} payload bytes",
            peers.len()
        ));
        assert!(
            captured >= data.len(),
            "the capture missed the transfer ({captured} bytes)"
        );
        let windows: HashSet<&[u8]> = data.windows(16).collect();
        let key = swarm_key(&root);
        for ((a, b), bytes) in peers {
            assert!(
                !bytes.windows(16).any(|w| windows.contains(w)),
                "{a} -> {b}: a 16-byte window of the file crossed in the clear"
            );
            for (what, secret) in [("the root", &root), ("the swarm key", &key)] {
                assert!(
                    !bytes.windows(32).any(|w| w == &secret[..]),
                    "{a} -> {b}: {what} crossed in the clear"
                );
            }
        }
        sharer.assert_no_panic();
    });
}
