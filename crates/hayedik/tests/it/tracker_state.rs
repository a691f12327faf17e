//! `hayedik tracker --state DIR`: swarms survive a restart (SIGTERM or
//! SIGKILL) on the same ports with the same keys, retired swarms do not come
//! back, and a bad state directory is one clear error line.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use hayedik_proto::tracker::{ErrorCode, PeerState};

use crate::harness::{
    ann, error_code, peers, run_to_exit, scenario, swarm_key, Client, Exit, Joined, Tracker,
};

const LIMIT: Duration = Duration::from_secs(40);

fn start_with_state(dir: &Path, extra: &[&str]) -> Tracker {
    let dir = dir.to_str().expect("a UTF-8 temporary path");
    let mut args = vec!["--state", dir];
    args.extend_from_slice(extra);
    Tracker::start(&args)
}

/// CONNECT and ANNOUNCE `key` as a seeder on TCP port `tcp`.
fn announce(c: &mut Client, j: &Joined, key: u8, tcp: u16) -> hayedik_proto::tracker::Message {
    let cid = c.connect(j.swarm);
    c.announce(
        j.swarm,
        cid,
        ann(swarm_key(key), tcp, PeerState::Complete, 0),
    )
    .0
}

#[test]
fn tracker_restores_swarms_after_sigterm() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let mut t = start_with_state(dir.path(), &[]);
        let mut a = Client::new();
        let mut b = Client::new();
        let bound = a.create_swarm(t.addr);
        let unbound = b.create_swarm(t.addr);
        t.wait_port_event("swarm_confirmed", bound.port);
        t.wait_port_event("swarm_confirmed", unbound.port);
        peers(announce(&mut a, &bound, 1, 5000));
        t.stop();

        let mut t = start_with_state(dir.path(), &[]);
        t.wait_port_event("swarm_restored", bound.port);
        t.wait_port_event("swarm_restored", unbound.port);
        // The same port answers with the same key, and refuses another.
        let mut c = Client::on(Ipv4Addr::new(127, 0, 0, 2));
        let m = announce(&mut c, &bound, 2, 6000);
        assert_eq!(error_code(&m), ErrorCode::WrongSwarmKey);
        let p = peers(announce(&mut c, &bound, 1, 6000));
        assert!(p.peers.is_empty(), "peer lists are soft state: {p:?}");
        let p = peers(announce(&mut a, &bound, 1, 5000));
        assert_eq!(p.seeders, 1, "a sees c");
        // The unbound swarm still waits for its confirmer's first announce.
        let m = announce(&mut c, &unbound, 3, 6000);
        assert_eq!(error_code(&m), ErrorCode::WrongSwarmKey);
        peers(announce(&mut b, &unbound, 3, 7000));
        let events = t.stop();
        assert!(
            events
                .iter()
                .all(|v| v["event"] != "swarm_created" && v["event"] != "error"),
            "{events:?}"
        );
    });
}

#[test]
fn tracker_restores_swarms_after_sigkill() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let mut t = start_with_state(dir.path(), &[]);
        let mut a = Client::new();
        let j = a.create_swarm(t.addr);
        // A crash right after the confirmation: the swarm was saved before
        // CONFIRMED left.
        t.wait_port_event("swarm_confirmed", j.port);
        t.kill_hard();

        let mut t = start_with_state(dir.path(), &[]);
        t.wait_port_event("swarm_restored", j.port);
        let mut c = Client::on(Ipv4Addr::new(127, 0, 0, 2));
        let m = announce(&mut c, &j, 1, 6000);
        assert_eq!(
            error_code(&m),
            ErrorCode::WrongSwarmKey,
            "the confirming address survived the crash"
        );
        // The key is bound, then a crash right after the PEERS reply.
        peers(announce(&mut a, &j, 1, 5000));
        t.kill_hard();

        let mut t = start_with_state(dir.path(), &[]);
        t.wait_port_event("swarm_restored", j.port);
        let m = announce(&mut c, &j, 2, 6000);
        assert_eq!(error_code(&m), ErrorCode::WrongSwarmKey, "the key survived");
        peers(announce(&mut c, &j, 1, 6000));
        t.stop();
    });
}

#[test]
fn tracker_retired_swarm_is_not_restored() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let mut t = start_with_state(dir.path(), &["--retire-after", "2"]);
        let mut a = Client::new();
        let j = a.create_swarm(t.addr);
        t.wait_port_event("swarm_confirmed", j.port);
        // Nobody announces: retired after about 2 s.
        t.wait_port_event("swarm_retired", j.port);
        a.send(
            j.swarm,
            &hayedik_proto::tracker::Datagram::new(1, hayedik_proto::tracker::Message::Connect),
        );
        a.expect_silence("CONNECT to a retired swarm");
        t.stop();

        let mut t = start_with_state(dir.path(), &["--retire-after", "2"]);
        // Restoring is started before the central tracker serves: once it
        // answers, a restore would already have been reported.
        a.challenge(t.addr);
        let events = t.events_within(crate::harness::SILENCE);
        assert!(
            events
                .iter()
                .all(|v| v["event"] != "swarm_restored" && v["event"] != "error"),
            "{events:?}"
        );
        UdpSocket::bind(j.swarm).expect("the retired swarm's port is free");
        t.stop();
    });
}

/// One line on stderr, starting with `error:` and naming `what`; exit 1.
fn assert_clear_error(exit: &Exit, what: &str) {
    assert_eq!(exit.status.code(), Some(1), "{exit:?}");
    let lines: Vec<&str> = exit
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {exit:?}");
    assert!(lines[0].starts_with("error: "), "{exit:?}");
    assert!(lines[0].contains(what), "{exit:?}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!exit.stderr.contains(bad), "{exit:?}");
    }
    // With --json, the same error as the last event.
    let events: Vec<serde_json::Value> = exit
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines on stdout"))
        .collect();
    let last = events.last().expect("an error event");
    assert_eq!(last["event"], "error", "{exit:?}");
    assert!(last["message"].as_str().unwrap().contains(what), "{exit:?}");
}

fn run_tracker_with_state(state: &Path) -> Exit {
    let state = state.to_str().expect("a UTF-8 temporary path");
    run_to_exit(&[
        "tracker",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--state",
        state,
    ])
}

#[test]
fn tracker_corrupted_state_file_is_a_clear_error() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let garbage: Vec<u8> = (0..20_000).map(|_| rand::random::<u8>()).collect();
        std::fs::write(dir.path().join("tracker.redb"), garbage).unwrap();
        let exit = run_tracker_with_state(dir.path());
        assert_clear_error(&exit, "tracker.redb");
    });
}

#[test]
fn tracker_damaged_record_is_a_clear_error() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        // A valid database holding a record that is not one.
        {
            let db = redb::Database::create(dir.path().join("tracker.redb")).unwrap();
            let table: redb::TableDefinition<u16, &[u8]> = redb::TableDefinition::new("swarms");
            let txn = db.begin_write().unwrap();
            txn.open_table(table)
                .unwrap()
                .insert(45_678, b"not a record".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let exit = run_tracker_with_state(dir.path());
        assert_clear_error(&exit, "45678");
    });
}

#[test]
fn tracker_state_path_that_is_a_file_is_a_clear_error() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let exit = run_tracker_with_state(&file);
        assert_clear_error(&exit, "not-a-dir");
    });
}

/// Tracker bug: after a restart, `Budget::restored` (tracker/limits.rs)
/// creates the creator IP's entry with `or_default()`, i.e. with 0 rate-limit
/// tokens and no refill time, so the first swarm-creating JOIN from that IP
/// is refused as rate limited (no reply) although it sent nothing before.
#[test]

fn tracker_first_join_after_restart_is_not_rate_limited() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let mut t = start_with_state(dir.path(), &[]);
        let mut a = Client::new();
        let j = a.create_swarm(t.addr);
        t.wait_port_event("swarm_confirmed", j.port);
        t.stop();
        let mut t = start_with_state(dir.path(), &[]);
        t.wait_port_event("swarm_restored", j.port);
        let cookie = a.challenge(t.addr);
        a.send(
            t.addr,
            &hayedik_proto::tracker::Datagram::new(
                1,
                hayedik_proto::tracker::Message::Join { cookie },
            ),
        );
        assert!(
            a.recv_within(crate::harness::REPLY_TIMEOUT).is_some(),
            "the first JOIN after the restart got no OFFER"
        );
        t.stop();
    });
}

/// Tracker bug: while a stored swarm waits to be restored (its port held by
/// another process, retried every 5 s), the central tracker's binder may give
/// that port to a new swarm as soon as it is free; once confirmed, the new
/// swarm overwrites the stored record of that port, and the old ticket now
/// points at a stranger's swarm. The binder should skip ports of stored swarms.
#[test]

fn tracker_new_swarm_never_takes_a_port_awaiting_restore() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let range = format!("{port}-{port}");
        let t = start_with_state(dir.path(), &["--swarm-ports", &range]);
        let mut a = Client::new();
        let j = a.create_swarm(t.addr);
        assert_eq!(j.port, port);
        peers(announce(&mut a, &j, 1, 5000));
        t.stop();
        // Another process holds the port while the tracker restarts.
        let held = UdpSocket::bind(j.swarm).unwrap();
        let mut t = start_with_state(dir.path(), &["--swarm-ports", &range]);
        let e = t.wait_event("error");
        assert!(
            e["message"].as_str().unwrap().contains(&port.to_string()),
            "{e}"
        );
        drop(held);
        // The only port of the range is reserved for the stored swarm: a
        // new JOIN (from another IP) must not get it, only ERROR 5.
        let mut b = Client::on(Ipv4Addr::new(127, 0, 0, 2));
        let cookie = b.challenge(t.addr);
        let (m, _) = b.request(t.addr, hayedik_proto::tracker::Message::Join { cookie });
        assert_eq!(
            error_code(&m),
            ErrorCode::RateLimited,
            "a new swarm got the stored swarm's port: {m:?}"
        );
        b.expect_silence("after the ERROR 5");
        // The stored swarm comes back on its port with its key.
        t.wait_port_event("swarm_restored", port);
        let m = announce(&mut b, &j, 2, 6000);
        assert_eq!(error_code(&m), ErrorCode::WrongSwarmKey);
        peers(announce(&mut b, &j, 1, 6000));
        t.stop();
    });
}

/// Issue 11, item 5, with `--state`: a swarm that nobody announced to is
/// restored, gets the whole `--retire-unannounced` from its restoration
/// (its sharer may still bind it), then is retired and not restored again;
/// a swarm announced to is kept.
#[test]
fn tracker_swarm_never_announced_to_is_retired_after_restore() {
    scenario(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let flags = ["--retire-unannounced", "2"];
        let mut t = start_with_state(dir.path(), &flags);
        let mut a = Client::new();
        let mut b = Client::new();
        let bound = a.create_swarm(t.addr);
        let unbound = b.create_swarm(t.addr);
        t.wait_port_event("swarm_confirmed", unbound.port);
        peers(announce(&mut a, &bound, 1, 5000));
        t.kill_hard();
        // Longer than the grace since the confirmation.
        std::thread::sleep(Duration::from_millis(2500));

        let mut t = start_with_state(dir.path(), &flags);
        let restored = std::time::Instant::now();
        t.wait_port_event("swarm_restored", bound.port);
        t.wait_port_event("swarm_restored", unbound.port);
        t.wait_port_event("swarm_retired", unbound.port);
        let after = restored.elapsed();
        assert!(
            after >= Duration::from_millis(1500),
            "retired {after:?} after the restore: the grace counts from it"
        );
        let events = t.events_within(Duration::from_secs(1));
        assert!(
            events.iter().all(|v| v["event"] != "swarm_retired"),
            "{events:?}"
        );
        peers(announce(&mut a, &bound, 1, 5000));
        t.stop();

        let mut t = start_with_state(dir.path(), &flags);
        t.wait_port_event("swarm_restored", bound.port);
        a.challenge(t.addr);
        let events = t.events_within(crate::harness::SILENCE);
        assert!(
            events
                .iter()
                .all(|v| v["event"] != "swarm_restored" || v["port"] != unbound.port),
            "{events:?}"
        );
        t.stop();
    });
}
