//! Peers through the real binary on loopback: one sharer and one getter,
//! odd and empty files, the original design's whole story with a
//! standalone tracker, several seeders at once, and getters that trade.
//! Faults are in `peers_faults`, files on disk in `peers_disk`, hostile
//! peers in `peers_hostile`, the command line in `peers_cli`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::swarm_harness::{
    assert_same_file, names_in, note, scenario, tempdir, write_random, Node, MIB, SOON,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Shares a file of `len` bytes; one getter fetches it, exits, and the
/// sharer stops: every event the contract names is checked.
fn share_and_get_once(len: usize, seed: u64) {
    let work = tempdir();
    let (path, data) = write_random(work.path(), "payload.bin", len, seed);
    let mut sharer = Node::share("sharer", &path, &[]);
    let sharer_addr = sharer.listening();
    let t = sharer.ticket();
    assert_eq!(t["bytes"], len as u64, "{t}");
    assert_eq!(
        (&t["name"], &t["files"], &t["folder"]),
        (&"payload.bin".into(), &1.into(), &false.into()),
        "{t}"
    );
    let ticket = t["ticket"].as_str().unwrap().to_string();
    let pieces = t["pieces"].as_u64().unwrap();
    assert_eq!(pieces == 0, len == 0, "{t}");

    let out = work.path().join("out");
    let mut getter = Node::get("getter", &ticket, &out, &["--no-seed"]);
    let m = getter.wait_event("manifest");
    assert_eq!(m["name"], "payload.bin");
    assert_eq!(m["bytes"], len as u64);
    assert_eq!(m["pieces"], pieces);
    let done = getter.done(SOON);
    getter.expect_success();
    assert_eq!(done.bytes, len as u64);
    assert_eq!(done.reused, 0);
    assert_eq!(done.path, out.join("payload.bin"));
    assert!(done.seconds >= 0.0);
    if len > 0 {
        assert_eq!(done.sources(), BTreeSet::from([sharer_addr]), "{done:?}");
        assert_eq!(done.received(), len as u64, "{done:?}");
    } else {
        assert_eq!(done.received(), 0, "{done:?}");
    }
    assert_same_file(&done.path, &data);
    assert_eq!(names_in(&out), ["payload.bin"], "side files left");
    assert!(
        getter.history().iter().all(|v| v["event"] != "seeding"),
        "--no-seed must not seed"
    );
    for p in getter.history().iter().filter(|v| v["event"] == "progress") {
        assert!(p["bytes_done"].as_u64() <= p["bytes_total"].as_u64(), "{p}");
        assert_eq!(p["bytes_total"], len as u64, "{p}");
        assert!(p["peers"].is_u64() && p["rate"].is_u64(), "{p}");
    }

    let stopped = sharer.stop();
    let uploaded = stopped["uploaded"].as_u64().expect("stopped.uploaded");
    assert!(uploaded >= len as u64, "{stopped}");
    assert!(stopped["downloaded"].is_u64(), "{stopped}");
    // The shared file is read, never written.
    assert_same_file(&path, &data);
}

#[test]
fn peers_one_sharer_one_getter() {
    scenario(LIMIT, || share_and_get_once(4 * MIB + 1, 1));
}

#[test]
fn peers_odd_sized_file() {
    scenario(LIMIT, || share_and_get_once(3 * MIB + 12_345, 2));
}

#[test]
fn peers_empty_file() {
    scenario(LIMIT, || share_and_get_once(0, 3));
}

/// The original design end to end: a standalone tracker; the sharer creates
/// the swarm; a getter finishes and seeds; the sharer leaves; a new getter
/// gets everything from the earlier getter.
#[test]
fn peers_whole_story_with_a_standalone_tracker() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 6 * MIB + 777;
        let (path, data) = write_random(work.path(), "story.bin", len, 4);
        let (mut tracker, central) = Node::tracker();
        let mut sharer = Node::share(
            "sharer",
            &path,
            &["--tracker", &format!("127.0.0.1:{}", central.port())],
        );
        let sharer_addr = sharer.listening();
        let t = sharer.ticket();
        let ticket = t["ticket"].as_str().unwrap().to_string();
        // The swarm tracker the central tracker launched is the ticket's port.
        let created = tracker.wait_event("swarm_created");
        let port = created["port"].as_u64().unwrap();
        assert!(
            ticket.starts_with(&format!("hayedik://127.0.0.1:{port}/")),
            "{ticket}"
        );
        tracker.wait_for("swarm_confirmed", SOON, |v| {
            v["event"] == "swarm_confirmed" && v["port"] == port
        });

        let dir_a = work.path().join("a");
        let mut a = Node::get("getter A", &ticket, &dir_a, &[]);
        let a_addr = a.listening();
        let done_a = a.done(SOON);
        a.wait_event("seeding");
        assert_eq!(done_a.sources(), BTreeSet::from([sharer_addr]));
        assert_same_file(&done_a.path, &data);

        let stopped = sharer.stop();
        assert!(
            stopped["uploaded"].as_u64().unwrap() >= len as u64,
            "{stopped}"
        );

        let dir_b = work.path().join("b");
        let mut b = Node::get("getter B", &ticket, &dir_b, &["--no-seed"]);
        let done_b = b.done(SOON);
        b.expect_success();
        assert_eq!(
            done_b.sources(),
            BTreeSet::from([a_addr]),
            "B must get everything from A, the sharer is gone: {done_b:?}"
        );
        assert_eq!(done_b.received(), len as u64);
        assert_same_file(&done_b.path, &data);

        let stopped = a.stop();
        assert!(
            stopped["uploaded"].as_u64().unwrap() >= len as u64,
            "{stopped}"
        );
        assert_eq!(
            stopped["downloaded"].as_u64(),
            Some(len as u64),
            "{stopped}"
        );
        tracker.stop();
    });
}

/// The sharer and two getters that finished seed at a capped rate; a new
/// getter receives verified bytes from all three.
#[test]
fn peers_three_seeders_one_getter() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 64 * MIB;
        let cap = ["--max-upload", "16M"];
        let (path, data) = write_random(work.path(), "big.bin", len, 5);
        let mut sharer = Node::share("sharer", &path, &cap);
        let s_addr = sharer.listening();
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let mut a = Node::get("seeder A", &ticket, &work.path().join("a"), &cap);
        let mut b = Node::get("seeder B", &ticket, &work.path().join("b"), &cap);
        let (a_addr, b_addr) = (a.listening(), b.listening());
        for g in [&mut a, &mut b] {
            let done = g.done(Duration::from_secs(30));
            g.wait_event("seeding");
            assert_same_file(&done.path, &data);
        }

        let mut c = Node::get("getter C", &ticket, &work.path().join("c"), &["--no-seed"]);
        let done = c.done(Duration::from_secs(30));
        c.expect_success();
        assert_same_file(&done.path, &data);
        assert_eq!(
            done.sources(),
            BTreeSet::from([s_addr, a_addr, b_addr]),
            "C must receive from all three seeders: {done:?}"
        );
        assert!(done.from.values().all(|&n| n > 0), "{done:?}");
        assert_eq!(done.received(), len as u64, "{done:?}");
        for n in [&mut sharer, &mut a, &mut b] {
            n.stop();
        }
    });
}

/// Four getters at once from a sharer whose upload is capped: they trade
/// pieces, so the sharer uploads well under the four copies it would send
/// alone, and the getters send each other at least one and a half.
///
/// How much the sharer sends is a matter of timing: it uploads at its cap
/// for as long as any getter still misses a piece (every getter keeps a
/// session to it, and the sharer holds every piece), so its copies are its
/// cap times the getters' time. Measured (2026-12-04): 1.62 to 1.95 copies
/// in 12 runs, two at a time, on an idle 2-core machine; 2.11 once in CI
/// with another test on both cores (getters done in 3.1 s); 1.6 to 2.2 in
/// earlier sessions. A cap of 8 MB/s instead of 20 gave 1.73 to 1.95 in 6
/// runs: the ratio does not come from the getters' speed. Hence a bound of
/// 2.5 copies, with margin over what was seen.
#[test]
fn peers_four_getters_trade_pieces() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 32 * MIB;
        let (path, data) = write_random(work.path(), "popular.bin", len, 6);
        let mut sharer = Node::share("sharer", &path, &["--max-upload", "20M"]);
        let s_addr = sharer.listening();
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let mut getters: Vec<Node> = (0..4)
            .map(|i| {
                Node::get(
                    &format!("getter {i}"),
                    &ticket,
                    &work.path().join(format!("g{i}")),
                    &[],
                )
            })
            .collect();
        let addrs: Vec<_> = getters.iter_mut().map(|g| g.listening()).collect();
        let mut from_others = 0;
        for g in getters.iter_mut() {
            let done = g.done(Duration::from_secs(30));
            g.wait_event("seeding");
            assert_same_file(&done.path, &data);
            assert_eq!(done.received(), len as u64, "{done:?}");
            for (addr, n) in &done.from {
                assert!(
                    *addr == s_addr || addrs.contains(addr),
                    "unknown source {addr}: {done:?}"
                );
                if *addr != s_addr {
                    from_others += n;
                }
            }
        }
        assert!(from_others > 0, "the getters traded nothing");
        let stopped = sharer.stop();
        let uploaded = stopped["uploaded"].as_u64().unwrap();
        note(&format!(
            "four getters: the sharer uploaded {:.2} copies",
            uploaded as f64 / len as f64
        ));
        assert!(
            uploaded <= 5 * len as u64 / 2,
            "the sharer uploaded {uploaded} bytes, more than 2.5 copies of {len}: the getters did not trade enough"
        );
        let mut uploaded_by_getters = 0;
        for g in getters.iter_mut() {
            uploaded_by_getters += g.stop()["uploaded"].as_u64().unwrap();
        }
        assert!(
            uploaded_by_getters >= 3 * len as u64 / 2,
            "getters uploaded {uploaded_by_getters} bytes in all, less than 1.5 copies of {len}"
        );
    });
}
