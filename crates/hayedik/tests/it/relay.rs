//! The relay of `hayedik tracker --relay` on loopback, through the real
//! binary. A sharer that listens on 127.0.0.2 but announces from
//! 127.0.0.1 is listed at an address nobody can connect to: the tracker's
//! probe fails, so it registers at the relay, and getters reach it there.
//! (Behind real NATs: the lab, `lab_nat`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::swarm_harness::{assert_same_file, scenario, tempdir, write_random, Node, MIB, SOON};

const LIMIT: Duration = Duration::from_secs(90);

/// A tracker with `--relay` (and `extra`), once listening; its UDP address
/// and the relay's TCP address.
fn relay_tracker(extra: &[&str]) -> (Node, SocketAddr, SocketAddr) {
    let mut args = vec!["tracker", "--listen", "127.0.0.1:0", "--relay", "--json"];
    args.extend(extra);
    let mut t = Node::spawn("tracker", &args);
    let addr = t.listening();
    let relay = t.wait_event("relay");
    let relay: SocketAddr = relay["addr"].as_str().unwrap().parse().unwrap();
    (t, addr, relay)
}

/// A sharer listed at 127.0.0.1:PORT but listening on 127.0.0.2:PORT only.
/// Hole punching is off for it (`HAYEDIK_PUNCH=off`: it does not opt in,
/// so getters do not punch to it): on loopback nothing would stop a
/// punched QUIC path, and these tests are about the relay.
/// 127.0.0.1:PORT is held bound and not listening (a connection there is
/// refused) while the test binary runs: the tracker's probe of the listed
/// address can never reach another test's listener that took that port.
fn hidden_sharer(name: &str, path: &Path, tracker: SocketAddr, extra: &[&str]) -> Node {
    let tracker = tracker.to_string();
    let listen = format!("127.0.0.2:{}", refusing_port());
    let mut args = vec![
        "share",
        path.to_str().unwrap(),
        "--tracker",
        &tracker,
        "--listen",
        &listen,
        "--json",
    ];
    args.extend(extra);
    Node::spawn_env(
        name,
        &args,
        &crate::harness::isolated_home(),
        &[("HAYEDIK_PUNCH", "off")],
    )
}

/// A port of 127.0.0.1 bound by a TCP socket that does not listen, kept
/// until the test binary exits: nobody else can listen there, and a
/// connection to it is refused.
fn refusing_port() -> u16 {
    use rustix::net::{AddressFamily, SocketType};
    static HELD: std::sync::Mutex<Vec<std::net::TcpStream>> = std::sync::Mutex::new(Vec::new());
    let fd =
        rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("a TCP socket");
    rustix::net::bind(&fd, &SocketAddr::from(([127, 0, 0, 1], 0))).expect("binding 127.0.0.1:0");
    // Not connected: only its local address is asked of it.
    let socket = std::net::TcpStream::from(fd);
    let port = socket.local_addr().expect("its bound address").port();
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    port
}

/// Waits for the `reachability` event; returns it.
fn reachability(node: &mut Node) -> Value {
    node.wait_event_within("reachability", Duration::from_secs(30))
}

#[test]
fn relay_reaches_a_sharer_nobody_can_dial() {
    scenario(LIMIT, || {
        let (_tracker, tracker, relay) = relay_tracker(&[]);
        assert_eq!(
            relay, tracker,
            "the relay's default is the tracker's IP and port"
        );
        let work = tempdir();
        let (path, data) = write_random(work.path(), "payload.bin", 3 * MIB + 17, 41);
        let mut sharer = hidden_sharer("sharer", &path, tracker, &[]);
        let listen = sharer.listening();
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let r = reachability(&mut sharer);
        let listed = SocketAddr::from(([127, 0, 0, 1], listen.port()));
        assert_eq!(r["how"], "relay", "{r}");
        assert_eq!(r["reachable"], true, "{r}");
        assert_eq!(r["addr"], listed.to_string(), "{r}");

        let out = work.path().join("out");
        // Seeding after the download: it lives long enough to hear its probe.
        let mut getter = Node::get("getter", &ticket, &out, &[]);
        let g = reachability(&mut getter);
        assert_eq!(
            (&g["how"], &g["reachable"]),
            (&"direct".into(), &true.into()),
            "{g}"
        );
        let v = getter.wait_event_within("done", Duration::from_secs(40));
        getter.stop();
        let done = crate::swarm_harness::Done::from_event(&v);
        assert_eq!(done.sources(), [listed].into(), "{v}");
        assert_eq!(v["via"][listed.to_string()], "relay", "{v}");
        assert_same_file(&done.path, &data);
        sharer.stop();
    });
}

/// A tracker that runs no relay: the hidden sharer is told nobody can
/// reach it, and what to do.
#[test]
fn relay_absent_says_none() {
    scenario(LIMIT, || {
        let (_tracker, tracker) = Node::tracker();
        let work = tempdir();
        let (path, _) = write_random(work.path(), "payload.bin", 1000, 42);
        let mut sharer = hidden_sharer("sharer", &path, tracker, &[]);
        sharer.ticket();
        let r = reachability(&mut sharer);
        assert_eq!(
            (&r["how"], &r["reachable"]),
            (&"none".into(), &false.into()),
            "{r}"
        );
        sharer.stop();
    });
}

/// Sends a DIAL for `target` under `key` from `source`; the relay's answer
/// byte, or `None` when it closed without one (the rate limit).
fn dial_from(
    source: [u8; 4],
    relay: SocketAddr,
    key: [u8; 32],
    target: SocketAddr,
) -> (Option<u8>, Option<TcpStream>) {
    let socket = socket2_free_connect(source, relay);
    let Some(mut s) = socket else {
        return (None, None);
    };
    let hello = hayedik_proto::relay::Hello::Dial { key, target }.to_vec();
    if s.write_all(&hello).is_err() {
        return (None, None);
    }
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => (Some(b[0]), Some(s)),
        _ => (None, None),
    }
}

/// A TCP connection to `to` from `source` (a loopback address).
fn socket2_free_connect(source: [u8; 4], to: SocketAddr) -> Option<TcpStream> {
    // std cannot bind before connecting; a tokio socket can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().ok()?;
        s.bind(SocketAddr::from((source, 0))).ok()?;
        let s = tokio::time::timeout(Duration::from_secs(5), s.connect(to))
            .await
            .ok()?
            .ok()?;
        s.into_std().ok()
    })
    .inspect(|s| s.set_nonblocking(false).unwrap())
}

/// A bounded flood of relay sessions from 127.0.0.3 meets the per-IP caps
/// (sessions, connection rate), and a getter on 127.0.0.1 is served all the
/// while.
#[test]
fn relay_caps_hold_under_a_flood_from_one_address() {
    scenario(LIMIT, || {
        let (mut t, tracker, relay) = relay_tracker(&[
            "--relay-max-sessions-per-ip",
            "2",
            "--relay-conns-per-ip-per-sec",
            "5",
            "--relay-conn-burst",
            "10",
        ]);
        let work = tempdir();
        let (path, data) = write_random(work.path(), "payload.bin", 2 * MIB, 43);
        let mut sharer = hidden_sharer("sharer", &path, tracker, &[]);
        let listen = sharer.listening();
        let v = sharer.ticket();
        let ticket = v["ticket"].as_str().unwrap().to_string();
        let root = hayedik_proto::hex::decode32(v["root"].as_str().unwrap()).unwrap();
        assert_eq!(reachability(&mut sharer)["how"], "relay");
        let key = hayedik::relay::relay_key(&root);
        let target = SocketAddr::from(([127, 0, 0, 1], listen.port()));

        // The flood: 60 DIALs from one address, holding what it gets.
        let mut held = Vec::new();
        let (mut ok, mut busy, mut closed) = (0, 0, 0);
        for _ in 0..60 {
            match dial_from([127, 0, 0, 3], relay, key, target) {
                (Some(0), Some(s)) => {
                    ok += 1;
                    held.push(s);
                }
                (Some(3), _) => busy += 1,
                (None, _) => closed += 1,
                (other, _) => panic!("unexpected answer {other:?}"),
            }
        }
        assert!(ok <= 2, "{ok} sessions from one address past a cap of 2");
        assert!(busy >= 1, "no session was refused as busy");
        assert!(closed >= 1, "the connection rate never closed a connection");

        // Meanwhile, another address is served.
        let out = work.path().join("out");
        let mut getter = Node::get("getter", &ticket, &out, &["--no-seed"]);
        let v = getter.wait_event_within("done", Duration::from_secs(40));
        getter.expect_success();
        assert_eq!(v["via"][target.to_string()], "relay", "{v}");
        let done = crate::swarm_harness::Done::from_event(&v);
        assert_same_file(&done.path, &data);
        drop(held);
        sharer.stop();
        // The counters reached the tracker's events.
        let stats = t.wait_for("relay counters with refusals", SOON * 2, |v| {
            v["event"] == "relay" && v["refused"].as_u64().unwrap_or(0) > 0
        });
        assert!(stats["sessions_total"].as_u64().unwrap() >= 1, "{stats}");
    });
}

/// A relayed sharer killed mid-transfer: the getter finishes from a direct
/// seeder that joins later.
#[test]
fn relay_peer_vanishing_mid_transfer() {
    scenario(LIMIT, || {
        let (_tracker, tracker, _) = relay_tracker(&[]);
        let work = tempdir();
        let len = 8 * MIB;
        let (path, data) = write_random(work.path(), "payload.bin", len, 44);
        let mut hidden = hidden_sharer("hidden sharer", &path, tracker, &["--max-upload", "1M"]);
        let listen = hidden.listening();
        let ticket = hidden.ticket()["ticket"].as_str().unwrap().to_string();
        assert_eq!(reachability(&mut hidden)["how"], "relay");

        let out = work.path().join("out");
        let mut getter = Node::get("getter", &ticket, &out, &["--no-seed"]);
        getter.wait_for("some bytes through the relay", SOON * 2, |v| {
            v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) > 0
        });
        hidden.kill9();
        // A second copy, served directly.
        let seed_dir = work.path().join("seed");
        std::fs::create_dir_all(&seed_dir).unwrap();
        std::fs::copy(&path, seed_dir.join("payload.bin")).unwrap();
        let mut seeder = Node::get("seeder", &ticket, &seed_dir, &[]);
        let seeder_addr = SocketAddr::from(([127, 0, 0, 1], seeder.listening().port()));
        seeder.wait_event("seeding");
        let v = getter.wait_event_within("done", Duration::from_secs(60));
        getter.expect_success();
        let done = crate::swarm_harness::Done::from_event(&v);
        assert_same_file(&done.path, &data);
        let hidden_addr = SocketAddr::from(([127, 0, 0, 1], listen.port()));
        assert!(done.from.get(&hidden_addr).copied().unwrap_or(0) > 0, "{v}");
        assert_eq!(v["via"][hidden_addr.to_string()], "relay", "{v}");
        assert!(done.from.get(&seeder_addr).copied().unwrap_or(0) > 0, "{v}");
        assert_eq!(v["via"][seeder_addr.to_string()], "direct", "{v}");
        seeder.stop();
    });
}
