//! The Mainline DHT (issue 16, docs/dht.md): three `dht-node`s on loopback
//! bootstrapping from each other; a sharer announcing in them; a getter
//! with the old ticket completing while the tracker is dead or has
//! forgotten the swarm; a rogue announcing fake peers; the config file;
//! no DHT socket without flag or config; bad flags. Every node here is on
//! loopback, and every `--dht` run passes `--dht-bootstrap` or a config
//! naming local nodes: nothing ever reaches the public DHT.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{isolated_home, run_to_exit, udp_sockets};
use crate::swarm_harness::{assert_same_file, scenario, tempdir, write_random, Node, MIB, SOON};

const LIMIT: Duration = Duration::from_secs(120);

/// Three `dht-node`s on loopback: the first alone, the second joining it,
/// the third joining both. Returns them and their addresses.
fn three_nodes() -> (Vec<Node>, Vec<String>) {
    let mut nodes = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..3 {
        let mut args = vec!["dht-node", "--listen", "127.0.0.1:0", "--json"];
        for a in &addrs {
            args.extend(["--dht-bootstrap", a.as_str()]);
        }
        let mut n = Node::spawn(&format!("dht node {i}"), &args);
        let addr = n.listening();
        assert!(addr.ip().is_loopback());
        addrs.push(addr.to_string());
        nodes.push(n);
    }
    (nodes, addrs)
}

fn bootstrap_args(addrs: &[String]) -> Vec<&str> {
    addrs
        .iter()
        .flat_map(|a| ["--dht-bootstrap", a.as_str()])
        .collect()
}

fn tracker_on(listen: &str) -> (Node, SocketAddr) {
    let mut t = Node::spawn("tracker", &["tracker", "--listen", listen, "--json"]);
    let addr = t.listening();
    (t, addr)
}

fn ticket_of(node: &mut Node) -> String {
    node.ticket()["ticket"].as_str().unwrap().to_string()
}

/// A getter with `ticket` and the DHT ends with the right bytes.
fn get_through_dht(name: &str, ticket: &str, out: &Path, addrs: &[String], data: &[u8]) {
    let mut args = vec!["--no-seed"];
    args.extend(bootstrap_args(addrs));
    let mut getter = Node::get(name, ticket, out, &args);
    getter.wait_event("dht");
    let done = getter.done(Duration::from_secs(60));
    getter.expect_success();
    assert_same_file(&done.path, data);
    getter.assert_no_panic();
}

/// The dht-nodes saw at least one announce between them (their figures
/// come every 10 s when they changed), and stop cleanly.
fn stop_nodes(mut nodes: Vec<Node>, expect_announces: bool) {
    if expect_announces {
        let deadline = Instant::now() + Duration::from_secs(25);
        let announced = |n: &mut Node| {
            n.history()
                .iter()
                .any(|v| v["event"] == "dht_node" && v["announces"].as_u64() > Some(0))
        };
        while !nodes.iter_mut().any(announced) {
            assert!(
                Instant::now() < deadline,
                "no dht-node reported an announce"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for n in nodes.iter_mut() {
        n.stop();
        n.assert_no_panic();
    }
}

/// The ticket outlives its tracker: the sharer announces in the DHT, the
/// tracker is killed, and a getter with the old ticket finds the sharer in
/// the DHT; then the tracker comes back without its state (the swarm
/// forgotten) and another getter still completes through the DHT.
#[test]
fn dht_get_completes_when_the_tracker_is_dead_or_forgot_the_swarm() {
    scenario(LIMIT, || {
        let (nodes, addrs) = three_nodes();
        let work = tempdir();
        let (path, data) = write_random(work.path(), "far.bin", 3 * MIB, 1701);
        let (mut tracker, central) = tracker_on("127.0.0.1:0");
        let central_s = central.to_string();
        let mut share_args = vec!["--tracker", central_s.as_str()];
        share_args.extend(bootstrap_args(&addrs[..2]));
        let mut sharer = Node::share("sharer", &path, &share_args);
        let ticket = ticket_of(&mut sharer);
        let dht = sharer.wait_event("dht");
        assert!(
            dht["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{dht}"
        );

        tracker.kill9();
        get_through_dht(
            "getter A",
            &ticket,
            &work.path().join("a"),
            &addrs[2..],
            &data,
        );

        // Back on the same address, without state: the swarm is forgotten.
        let (mut tracker, again) = tracker_on(&central_s);
        assert_eq!(again, central);
        get_through_dht(
            "getter B",
            &ticket,
            &work.path().join("b"),
            &addrs[1..2],
            &data,
        );
        tracker.stop();
        sharer.stop();
        sharer.assert_no_panic();
        stop_nodes(nodes, true);
    });
}

/// A peer that answers every connection with garbage, counting them.
fn garbage_peer(stop: Arc<AtomicBool>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    seen.fetch_add(1, Ordering::Relaxed);
                    let _ = s.write_all(&[0xAB; 4096]);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (addr, count)
}

/// A rogue announces fake peers for the swarm's hash in the DHT (a port
/// that refuses, a peer that talks garbage) before the real sharer: the
/// getter dials them (they came through the DHT), drops them, and still
/// finishes with the right bytes within the scenario's bound.
#[test]
#[allow(deprecated)]
fn dht_rogue_fake_peers_do_not_stop_a_get() {
    scenario(LIMIT, || {
        let (nodes, addrs) = three_nodes();
        let work = tempdir();
        let (path, data) = write_random(work.path(), "rogue.bin", MIB, 1702);
        // The root (hence the hash) is known once shared; share first
        // with the embedded tracker and no DHT, to learn the ticket.
        let mut first = Node::share("first sharer", &path, &[]);
        let ticket_v = first.ticket();
        first.stop();
        let root_hex = ticket_v["root"].as_str().unwrap();
        let mut root = [0u8; 32];
        for (i, b) in root.iter_mut().enumerate() {
            *b = u8::from_str_radix(&root_hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let hash = mainline::Id::from_bytes(hayedik::dht::info_hash(&root)).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let (garbage, garbage_hits) = garbage_peer(stop.clone());
        let refusing = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let boot: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        let mut rogues = Vec::new();
        for port in [garbage.port(), refusing.port()] {
            let rogue = mainline::Dht::builder()
                .bootstrap(&boot)
                .bind_address(std::net::Ipv4Addr::LOCALHOST)
                .build()
                .unwrap();
            // The first query may come before the nodes know each other.
            let mut tries = 0;
            while let Err(e) = rogue.announce_peer(hash, Some(port)) {
                tries += 1;
                assert!(tries < 20, "the rogue could not announce: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            rogues.push(rogue);
        }

        let mut sharer = Node::share("sharer", &path, &bootstrap_args(&addrs[..1]));
        let ticket = ticket_of(&mut sharer);
        sharer.wait_event("dht");
        // The getter must find the real sharer through the DHT: give it a
        // ticket whose tracker is gone.
        let (mut t, dead) = tracker_on("127.0.0.1:0");
        t.kill9();
        let root_part = ticket.rsplit('/').next().unwrap();
        let dead_ticket = format!("hayedik://{dead}/{root_part}");
        let started = Instant::now();
        get_through_dht(
            "getter",
            &dead_ticket,
            &work.path().join("g"),
            &addrs[1..],
            &data,
        );
        assert!(started.elapsed() < Duration::from_secs(60));
        assert!(
            garbage_hits.load(Ordering::Relaxed) > 0,
            "the getter never dialed the peer the rogue announced"
        );
        stop.store(true, Ordering::Relaxed);
        drop(rogues);
        sharer.stop();
        stop_nodes(nodes, true);
    });
}

/// `config.toml` with `dht = true` turns the DHT on (a `dht` event and one
/// more UDP socket than a sharer without it); without flag or config no
/// DHT socket is opened; `--no-dht` overrides the config; a bad config
/// file is a clear error, exit 2.
#[test]
fn dht_config_file_turns_it_on_and_nothing_opens_it_otherwise() {
    scenario(LIMIT, || {
        let (nodes, addrs) = three_nodes();
        let work = tempdir();
        let (path, _) = write_random(work.path(), "conf.bin", MIB / 4, 1703);
        let (mut tracker, central) = tracker_on("127.0.0.1:0");
        let central_s = central.to_string();
        let path_s = path.to_str().unwrap();
        let args = |extra: &[&'static str]| {
            let mut a = vec![
                "share",
                path_s,
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--tracker",
                central_s.as_str(),
            ];
            a.extend(extra);
            a
        };

        let mut plain = Node::spawn("plain sharer", &args(&[]));
        plain.ticket();
        let plain_udp = udp_sockets(plain.pid());

        let home = isolated_home();
        std::fs::create_dir_all(home.join("config")).unwrap();
        std::fs::write(
            home.join("config").join("config.toml"),
            format!("dht = true\ndht_bootstrap = [\"{}\"]\n", addrs[0]),
        )
        .unwrap();
        let mut configured = Node::spawn_in("configured sharer", &args(&[]), &home);
        configured.ticket();
        configured.wait_event("dht");
        let configured_udp = udp_sockets(configured.pid());
        assert_eq!(
            configured_udp,
            plain_udp + 1,
            "the DHT node is one UDP socket more"
        );

        let mut refused = Node::spawn_in("--no-dht sharer", &args(&["--no-dht"]), &home);
        refused.ticket();
        assert_eq!(udp_sockets(refused.pid()), plain_udp);

        // Events are in order: the `dht` event would come before `ticket`.
        for n in [&mut plain, &mut refused] {
            assert!(
                !n.history().iter().any(|v| v["event"] == "dht"),
                "{} opened the DHT",
                n.name
            );
            n.stop();
        }
        configured.stop();

        std::fs::write(home.join("config").join("config.toml"), "dht = maybe\n").unwrap();
        let mut bad = Node::spawn_in("bad config", &args(&[]), &home);
        let err = bad.expect_failure(2, SOON);
        assert!(err.contains("config.toml"), "{err}");
        tracker.stop();
        stop_nodes(nodes, false);
    });
}

/// A bad `--dht-bootstrap` or an IPv6 `dht-node --listen` is a usage
/// error: exit 2, saying why.
#[test]
fn dht_bad_addresses_are_usage_errors() {
    for args in [
        &["share", "nothing-here", "--dht-bootstrap", "nowhere"][..],
        &["share", "nothing-here", "--dht-bootstrap", "127.0.0.1"][..],
        &[
            "get",
            "hayedik://127.0.0.1:1/00",
            "--dht-bootstrap",
            "[::1]:6881",
        ][..],
        &["dht-node", "--listen", "[::1]:0"][..],
        &["share", "nothing-here", "--dht", "--no-dht"][..],
    ] {
        let exit = run_to_exit(args);
        assert_eq!(exit.status.code(), Some(2), "{args:?}: {}", exit.stderr);
        assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
    }
    let exit = run_to_exit(&["share", "x", "--dht-bootstrap", "[::1]:6881"]);
    assert!(exit.stderr.contains("IPv4"), "{}", exit.stderr);
}

/// With the DHT on, a tracker that is gone does not end a `get`: it warns
/// once that it looks in the DHT instead, and, nobody having announced
/// the content there, `--timeout` still ends it (exit 1, saying so).
#[test]
fn dht_get_warns_once_and_still_times_out_when_nothing_progresses() {
    scenario(LIMIT, || {
        let (nodes, addrs) = three_nodes();
        let (mut t, dead) = tracker_on("127.0.0.1:0");
        t.kill9();
        let ticket = format!("hayedik://{dead}/{}", "5a".repeat(32));
        let work = tempdir();
        let out = work.path().join("g");
        let mut args = vec![
            "get",
            ticket.as_str(),
            "-o",
            out.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--no-seed",
            "--timeout",
            "4",
        ];
        args.extend(bootstrap_args(&addrs));
        let mut getter = Node::spawn("lonely getter", &args);
        getter.wait_event("dht");
        let warning = getter.wait_for("the DHT warning", SOON, |v| {
            v["event"] == "warning"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("looking for peers in the DHT instead"))
        });
        assert!(warning["message"]
            .as_str()
            .unwrap()
            .contains(&dead.to_string()));
        getter.expect_failure(1, Duration::from_secs(20));
        let error = getter.wait_event("error");
        let warnings = getter
            .history()
            .iter()
            .filter(|v| v["event"] == "warning")
            .count();
        assert_eq!(warnings, 1, "warned once");
        assert!(
            error["message"].as_str().unwrap().contains("DHT"),
            "{error}"
        );
        stop_nodes(nodes, false);
    });
}
