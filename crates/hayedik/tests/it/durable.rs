//! Durable tickets (issue 16): re-sharing the same content gives the same
//! ticket, with a standalone tracker and with the embedded one, and an old
//! ticket comes back to life after its tracker restarted without state or
//! after its swarm was retired (docs/protocol.md, "stable swarms").

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::isolated_home;
use crate::swarm_harness::{assert_same_file, scenario, tempdir, write_random, Node, MIB, SOON};

const LIMIT: Duration = Duration::from_secs(90);

/// `hayedik share PATH` with `HAYEDIK_HOME` at `home`; the embedded tracker
/// (public host 127.0.0.1) unless `tracker` names one.
fn share_in(name: &str, path: &Path, home: &Path, tracker: Option<SocketAddr>) -> Node {
    let path = path.to_str().unwrap();
    let tracker = tracker.map(|t| t.to_string());
    let mut args = vec!["share", path, "--listen", "127.0.0.1:0", "--json"];
    match &tracker {
        Some(t) => args.extend(["--tracker", t.as_str()]),
        None => args.extend(["--public-host", "127.0.0.1"]),
    }
    Node::spawn_in(name, &args, home)
}

fn ticket_of(node: &mut Node) -> String {
    node.ticket()["ticket"].as_str().unwrap().to_string()
}

/// The swarm port a ticket names.
fn port_of(ticket: &str) -> u16 {
    let rest = ticket.strip_prefix("hayedik://").unwrap();
    let hostport = rest.split('/').next().unwrap();
    hostport.rsplit(':').next().unwrap().parse().unwrap()
}

/// A getter with `ticket` ends with the right bytes.
fn get_ok(name: &str, ticket: &str, work: &Path, data: &[u8]) {
    let out = work.join(name);
    let mut getter = Node::get(name, ticket, &out, &["--no-seed"]);
    let done = getter.done(SOON);
    getter.expect_success();
    assert_same_file(&done.path, data);
}

fn tracker_on(listen: &str, extra: &[&str]) -> (Node, SocketAddr) {
    let mut args = vec!["tracker", "--listen", listen, "--json"];
    args.extend(extra);
    let mut t = Node::spawn("tracker", &args);
    let addr = t.listening();
    (t, addr)
}

fn swarm_events(t: &mut Node, name: &str) -> Vec<u16> {
    t.history()
        .iter()
        .filter(|v: &&Value| v["event"] == name)
        .filter_map(|v| v["port"].as_u64())
        .map(|p| p as u16)
        .collect()
}

/// Two sharers of the same content at one tracker (neither remembers
/// anything) print the same ticket: the second finds the swarm by its key
/// and joins it. The swarm outlives its first sharer: a getter fetches
/// from the second, and a third sharer later still gets the same ticket.
#[test]
fn durable_resharing_joins_the_swarm_standalone() {
    scenario(LIMIT, || {
        let work = tempdir();
        let (path, data) = write_random(work.path(), "same.bin", MIB, 1601);
        let (mut tracker, central) = tracker_on("127.0.0.1:0", &[]);
        let mut a = share_in("sharer A", &path, &isolated_home(), Some(central));
        let ticket = ticket_of(&mut a);
        let mut b = share_in("sharer B", &path, &isolated_home(), Some(central));
        assert_eq!(ticket_of(&mut b), ticket);
        a.stop();
        get_ok("getter", &ticket, work.path(), &data);
        b.stop();
        let mut c = share_in("sharer C", &path, &isolated_home(), Some(central));
        assert_eq!(ticket_of(&mut c), ticket);
        c.stop();
        assert_eq!(
            swarm_events(&mut tracker, "swarm_created"),
            [port_of(&ticket)]
        );
        // Other content gets its own swarm.
        let (other, _) = write_random(work.path(), "other.bin", 1000, 1602);
        let mut d = share_in("sharer D", &other, &isolated_home(), Some(central));
        assert_ne!(port_of(&ticket_of(&mut d)), port_of(&ticket));
        d.stop();
    });
}

/// With the embedded tracker, sharing the same content again on the same
/// machine (same data directory) gives the same ticket, and it works.
#[test]
fn durable_embedded_reshare_gives_the_same_ticket() {
    scenario(LIMIT, || {
        let work = tempdir();
        let home = isolated_home();
        let (path, data) = write_random(work.path(), "embedded.bin", MIB / 2, 1603);
        let mut first = share_in("first share", &path, &home, None);
        let ticket = ticket_of(&mut first);
        first.stop();
        let mut second = share_in("second share", &path, &home, None);
        assert_eq!(ticket_of(&mut second), ticket);
        get_ok("getter", &ticket, work.path(), &data);
        second.stop();
    });
}

/// A standalone tracker killed and restarted without `--state` forgot the
/// swarm: the sharer, sharing again, re-creates it on the port the old
/// ticket names, and a getter with the old ticket completes.
#[test]
fn durable_ticket_revived_after_tracker_restart_without_state() {
    scenario(LIMIT, || {
        let work = tempdir();
        let home = isolated_home();
        let (path, data) = write_random(work.path(), "revive.bin", MIB, 1604);
        // A port below the kernel's ephemeral range, on an address of its
        // own: an ephemeral one, once free, could be given to a socket of a
        // test running beside this one before the tracker binds it again
        // (seen once: "Address already in use").
        let listen = format!("{}:7410", own_loopback());
        wait_until_free(&listen);
        let (mut tracker, central) = tracker_on(&listen, &[]);
        let mut sharer = share_in("sharer", &path, &home, Some(central));
        let ticket = ticket_of(&mut sharer);
        sharer.stop();
        tracker.kill9();
        wait_until_free(&listen);
        let (mut tracker, again) = tracker_on(&listen, &[]);
        assert_eq!(again, central);
        let mut sharer = share_in("sharer again", &path, &home, Some(central));
        assert_eq!(ticket_of(&mut sharer), ticket);
        get_ok("getter", &ticket, work.path(), &data);
        sharer.stop();
        assert_eq!(
            swarm_events(&mut tracker, "swarm_created"),
            [port_of(&ticket)]
        );
    });
}

/// A swarm retired by its tracker (nobody announced for `--retire-after`)
/// comes back on the same port when its content is shared again.
#[test]
fn durable_ticket_revived_after_the_swarm_was_retired() {
    scenario(LIMIT, || {
        let work = tempdir();
        let home = isolated_home();
        let (path, data) = write_random(work.path(), "retired.bin", MIB, 1605);
        let (mut tracker, central) = tracker_on("127.0.0.1:0", &["--retire-after", "2"]);
        let mut sharer = share_in("sharer", &path, &home, Some(central));
        let ticket = ticket_of(&mut sharer);
        let port = port_of(&ticket);
        sharer.stop();
        tracker.wait_for("swarm_retired", Duration::from_secs(20), |v| {
            v["event"] == "swarm_retired" && v["port"] == port
        });
        let mut sharer = share_in("sharer again", &path, &home, Some(central));
        assert_eq!(ticket_of(&mut sharer), ticket);
        get_ok("getter", &ticket, work.path(), &data);
        sharer.stop();
        assert_eq!(swarm_events(&mut tracker, "swarm_created"), [port, port]);
    });
}

/// Waits until `addr` (UDP) can be bound: another test's embedded tracker
/// may hold `0.0.0.0:7410` for a while, which takes 7410 on every
/// loopback address. Once our tracker holds its address, an embedded
/// tracker that starts later moves to another port by itself.
fn wait_until_free(addr: &str) {
    let started = std::time::Instant::now();
    while std::net::UdpSocket::bind(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{addr} stayed taken for 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback address of its own for a tracker on the default port 7410
/// (what `get` assumes of a ticket's host when it revives a swarm): the
/// port is fixed, the address is not, so parallel tests do not meet.
fn own_loopback() -> String {
    let [_, b, c, d] = rand::random::<u32>().to_be_bytes();
    format!("127.{}.{}.{}", b.max(16), c, d.clamp(1, 254))
}

/// A `get` into a folder that holds a complete copy revives the swarm of
/// an old ticket: the tracker restarted without state and the sharer is
/// gone; the getter (which kept the manifest in its data directory when it
/// downloaded) verifies its copy, claims the ticket's port, and a new
/// getter with the old ticket downloads from it.
#[test]
fn durable_get_with_a_complete_copy_revives_the_ticket() {
    // Generous waits: the revival goes through a failed announce (its
    // 5 s deadline), a claim and a re-announce, on a loaded machine.
    scenario(Duration::from_secs(180), || {
        let work = tempdir();
        let (path, data) = write_random(work.path(), "kept.bin", MIB, 1606);
        let listen = format!("{}:7410", own_loopback());
        wait_until_free(&listen);
        let (mut tracker, central) = tracker_on(&listen, &[]);
        let mut sharer = share_in("sharer", &path, &isolated_home(), Some(central));
        let ticket = ticket_of(&mut sharer);
        let port = port_of(&ticket);
        let home = isolated_home();
        let copy = work.path().join("copy");
        let ticket_arg = ticket.as_str();
        let mut getter = Node::spawn_in(
            "getter",
            &[
                "get",
                ticket_arg,
                "-o",
                copy.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--timeout",
                "20",
                "--no-seed",
            ],
            &home,
        );
        getter.done(SOON);
        getter.expect_success();
        sharer.stop();
        tracker.kill9();
        wait_until_free(&listen);
        let (mut tracker, _) = tracker_on(&listen, &[]);
        // The old ticket's swarm is gone; the getter with its copy brings
        // it back.
        let mut keeper = Node::spawn_in(
            "keeper",
            &[
                "get",
                ticket_arg,
                "-o",
                copy.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--timeout",
                "20",
            ],
            &home,
        );
        let done = keeper.done(Duration::from_secs(40));
        assert_eq!(done.reused, MIB as u64);
        keeper.wait_event("seeding");
        tracker.wait_for("swarm_confirmed", Duration::from_secs(60), |v| {
            v["event"] == "swarm_confirmed" && v["port"] == port
        });
        let keeper_addr = keeper.listening();
        let out = work.path().join("new getter");
        let out_arg = out.to_str().unwrap();
        let mut fresh = Node::spawn(
            "new getter",
            &[
                "get",
                ticket_arg,
                "-o",
                out_arg,
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--timeout",
                "60",
                "--no-seed",
            ],
        );
        let done = fresh.done(Duration::from_secs(60));
        fresh.expect_success();
        assert_same_file(&done.path, &data);
        assert_eq!(done.sources(), [keeper_addr].into(), "{done:?}");
        keeper.stop();
    });
}

/// CLAIM and SWARM_AT against the real tracker, byte for byte through the
/// test client: a CLAIM without a cookie gets a CHALLENGE no larger than
/// itself; with one it creates a swarm bound to its key (both OFFERs, as a
/// JOIN) that a stranger may announce to; the key finds it; another key
/// cannot have its port; and a flood of CLAIMs from one address is held to
/// that address's JOIN budget (ERROR 5), opening a bounded number of ports.
#[test]
fn durable_claims_on_the_wire() {
    use crate::harness::{ann, error_code, Client, Tracker};
    use hayedik_proto::tracker::{Datagram, ErrorCode, Message, PeerState};
    scenario(LIMIT, || {
        let t = Tracker::start(&[]);
        let mut c = Client::new();
        let key = [0x42; 32];
        let claim = |cookie, swarm_key, port| Message::Claim {
            cookie,
            swarm_key,
            port,
        };
        let (m, len) = c.request(t.addr, claim(0, key, 0));
        assert_eq!(len, 20);
        let Message::Challenge { cookie } = m else {
            panic!("{m:?}")
        };
        let tid = c.tid();
        c.send(t.addr, &Datagram::new(tid, claim(cookie, key, 0)));
        let j = c.offers(t.addr, tid);
        c.confirm(&j);
        // Bound to the key at once: a stranger announces first.
        let mut s = Client::on([127, 0, 0, 1]);
        let cid = s.connect(j.swarm);
        let (m, _) = s.announce(j.swarm, cid, ann(key, 4000, PeerState::Complete, 0));
        assert!(matches!(m, Message::Peers(_)), "{m:?}");
        let cookie = s.challenge(t.addr);
        for port in [0, j.port, 40000] {
            let (m, len) = s.request(t.addr, claim(cookie, key, port));
            assert_eq!((m, len), (Message::SwarmAt { port: j.port }, 22));
        }
        let (m, _) = s.request(t.addr, claim(cookie, [0x43; 32], j.port));
        assert_eq!(error_code(&m), ErrorCode::WrongSwarmKey);
        let (m, _) = s.request(t.addr, claim(cookie, [0x43; 32], 80));
        assert_eq!(error_code(&m), ErrorCode::RateLimited);

        // A flood: 200 CLAIMs for fresh keys with a valid cookie.
        let baseline = t.udp_sockets();
        let mut f = Client::new();
        let cookie = f.challenge(t.addr);
        let mut refused = 0;
        for i in 0..200u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            let tid = f.tid();
            f.send(t.addr, &Datagram::new(tid, claim(cookie, k, 0)));
            // One ERROR 5, or two OFFERs.
            let (d, _, _) = f.recv();
            if let Message::Error { code, .. } = d.message {
                assert_eq!(code, ErrorCode::RateLimited);
                refused += 1;
            } else {
                let _ = f.recv();
            }
        }
        let opened = t.udp_sockets() - baseline;
        eprintln!("200 CLAIMs: {refused} refused, {opened} sockets opened");
        assert!(refused >= 150, "{refused} refused");
        assert!(opened <= 50, "{opened} sockets opened");
        t.stop();
    });
}

/// `tracker --max-listed N`: every answer lists at most N peers (the
/// sample's size, for swarms that must find each other by peer exchange or
/// the DHT, and for tests of them); 0 is a usage error.
#[test]
fn durable_tracker_max_listed() {
    use crate::harness::{ann, peers, run_to_exit, Client, Tracker};
    use hayedik_proto::tracker::PeerState;
    scenario(LIMIT, || {
        let exit = run_to_exit(&["tracker", "--listen", "127.0.0.1:0", "--max-listed", "0"]);
        assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
        let t = Tracker::start(&["--max-listed", "1"]);
        let mut sharer = Client::new();
        let j = sharer.create_swarm(t.addr);
        let key = [0x51; 32];
        for (i, c) in [&mut sharer, &mut Client::new(), &mut Client::new()]
            .into_iter()
            .enumerate()
        {
            let cid = c.connect(j.swarm);
            let (m, _) = c.announce(
                j.swarm,
                cid,
                ann(key, 5000 + i as u16, PeerState::Complete, 0),
            );
            assert!(peers(m).peers.len() <= 1);
        }
        let mut asker = Client::new();
        let cid = asker.connect(j.swarm);
        let (m, _) = asker.announce(j.swarm, cid, ann(key, 0, PeerState::Asking, 50));
        let p = peers(m);
        assert_eq!((p.peers.len(), p.seeders), (1, 3), "{p:?}");
        t.stop();
    });
}
