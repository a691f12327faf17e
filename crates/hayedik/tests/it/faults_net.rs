//! Network faults in the lab (see `lab.rs`): a tracker and peers on hosts
//! of their own, the real binary in each, and the network made to fail:
//! UDP loss into the tracker's host, stateful firewalls, a seeder
//! partitioned away, the tracker killed and restarted, a getter's link down.
//! Each scenario ends with a byte-identical file and no panic anywhere.
//!
//! Every test needs root, `ip` and `nft`: each is `#[ignore]`d, so a plain
//! `cargo test` reports it as ignored; README's command (as root, with
//! `-- --include-ignored`) runs it, and fails it when the lab cannot run.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::scenario;
use crate::lab::{
    assert_file_is, place_copy, random_file, ticket_of, ticket_port, Host, Lab, Proc,
};

const MIB: usize = 1 << 20;
const NAME: &str = "content.bin";
/// The tracker's announce interval in the lab: peers learn of each other
/// within seconds.
const INTERVAL: &str = "2";

/// `hayedik tracker` on `host`:7410, once listening.
fn start_tracker(host: &Host, extra: &[&str]) -> Proc {
    let listen = host.addr(7410).to_string();
    let mut args = vec![
        "tracker",
        "--listen",
        &listen,
        "--json",
        "--announce-interval",
        INTERVAL,
    ];
    args.extend_from_slice(extra);
    let mut t = host.spawn("tracker", &args);
    t.wait_event("listening", Duration::from_secs(10));
    t
}

/// `hayedik share FILE --tracker ...` on `host`; returns it and its ticket.
fn start_share(host: &Host, tracker: SocketAddr, file: &Path, extra: &[&str]) -> (Proc, String) {
    let (tracker, listen) = (tracker.to_string(), host.addr(0).to_string());
    let file = file.to_str().expect("a UTF-8 path");
    let mut args = vec![
        "share",
        file,
        "--tracker",
        &tracker,
        "--listen",
        &listen,
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut s = host.spawn(&format!("share on {}", host.ip), &args);
    let ticket = ticket_of(&mut s);
    (s, ticket)
}

/// `hayedik get TICKET -o OUT` on `host`.
fn start_get(host: &Host, ticket: &str, out: &Path, extra: &[&str]) -> Proc {
    let (listen, out) = (host.addr(0).to_string(), out.to_str().expect("UTF-8"));
    let mut args = vec!["get", ticket, "-o", out, "--listen", &listen, "--json"];
    args.extend_from_slice(extra);
    let mut g = host.spawn(&format!("get on {}", host.ip), &args);
    g.listening();
    g
}

fn no_panics(procs: &[&Proc]) {
    for p in procs {
        p.assert_no_panic();
    }
}

/// Random UDP loss into the tracker's host: the sharer's handshake, every
/// announce and two downloads complete, and retries never create a second
/// swarm.
fn lossy(test: &str, percent: u32) {
    let mut lab = Lab::new(test);
    let (th, sh) = (lab.host("trk"), lab.host("shr"));
    let (h1, h2) = (lab.host("g1"), lab.host("g2"));
    th.udp_loss(percent);
    let mut tracker = start_tracker(&th, &[]);
    let data = random_file(&lab.path(NAME), 16 * MIB, u64::from(percent));
    let (sharer, ticket) = start_share(&sh, th.addr(7410), &lab.path(NAME), &[]);
    let mut a = start_get(&h1, &ticket, &lab.path("out1"), &["--no-seed"]);
    let mut b = start_get(&h2, &ticket, &lab.path("out2"), &["--no-seed"]);
    for g in [&mut a, &mut b] {
        g.wait_event("done", Duration::from_secs(90));
        g.expect_success(Duration::from_secs(15));
    }
    assert_file_is(&lab.path("out1").join(NAME), &data);
    assert_file_is(&lab.path("out2").join(NAME), &data);
    assert_eq!(
        tracker.count("swarm_created"),
        1,
        "retries created another swarm: {:?}",
        tracker.events()
    );
    assert_eq!(tracker.count("swarm_confirmed"), 1);
    no_panics(&[&tracker, &sharer, &a, &b]);
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn udp_loss_10_percent() {
    scenario(Duration::from_secs(150), || {
        lossy("faults_net::udp_loss_10_percent", 10)
    });
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn udp_loss_30_percent() {
    scenario(Duration::from_secs(150), || {
        lossy("faults_net::udp_loss_30_percent", 30)
    });
}

/// Packets the lab firewall's final `counter drop` rule of `host` dropped.
fn firewall_drops(host: &Host) -> u64 {
    let listing = crate::lab::run(
        "ip",
        &[
            "netns", "exec", &host.ns, "nft", "list", "table", "inet", "lab",
        ],
    )
    .expect("listing the lab firewall");
    listing
        .lines()
        .filter(|l| l.contains("drop"))
        .filter_map(|l| {
            let rest = l.split("counter packets ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Only replies get in: established or related, and a counted drop for the
/// rest (the swarm port's OFFER, from a port the peer never sent to).
fn counted_stateful_firewall(host: &Host) {
    host.nft(
        "chain input { type filter hook input priority 0; policy accept;
           iif lo accept
           ct state established,related accept
           counter drop
         }",
    );
}

/// Peers behind stateful firewalls that only let replies in. The sharer's
/// swarm handshake completes (the OFFER from the new swarm port is dropped;
/// the one from the central port, which the sharer wrote to, gets through),
/// and a firewalled getter downloads from an open sharer by dialing out.
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn stateful_firewall() {
    scenario(Duration::from_secs(90), || {
        let mut lab = Lab::new("faults_net::stateful_firewall");
        let (th, walled, open, getter) = (
            lab.host("trk"),
            lab.host("fw"),
            lab.host("open"),
            lab.host("gfw"),
        );
        counted_stateful_firewall(&walled);
        counted_stateful_firewall(&getter);
        let mut tracker = start_tracker(&th, &[]);
        let data = random_file(&lab.path(NAME), 16 * MIB, 7);

        let (walled_sharer, walled_ticket) =
            start_share(&walled, th.addr(7410), &lab.path(NAME), &[]);
        let port = ticket_port(&walled_ticket);
        tracker.wait_for("the walled swarm confirmed", Duration::from_secs(5), |v| {
            v["event"] == "swarm_confirmed" && v["port"] == port
        });
        assert!(
            firewall_drops(&walled) >= 1,
            "the swarm port's OFFER should have been dropped by the firewall"
        );

        // The same content: the open sharer joins the walled one's swarm
        // (stable swarms, docs/protocol.md), so one ticket.
        let (open_sharer, ticket) = start_share(&open, th.addr(7410), &lab.path(NAME), &[]);
        assert_eq!(ticket, walled_ticket);
        let mut g = start_get(&getter, &ticket, &lab.path("out"), &["--no-seed"]);
        g.wait_event("done", Duration::from_secs(60));
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&lab.path("out").join(NAME), &data);
        assert_eq!(tracker.count("swarm_created"), 1, "{:?}", tracker.events());
        assert_eq!(tracker.count("swarm_confirmed"), 1);
        no_panics(&[&tracker, &walled_sharer, &open_sharer, &g]);
    });
}

/// A sharer behind a stateful firewall (or a NAT) serves by dialing the
/// downloaders the tracker lists: incoming connections never reach it, and
/// only the sharer has the manifest at first.
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn firewalled_sharer_serves_by_dialing_out() {
    scenario(Duration::from_secs(90), || {
        let mut lab = Lab::new("faults_net::firewalled_sharer_serves_by_dialing_out");
        let (th, walled, getter) = (lab.host("trk"), lab.host("fw"), lab.host("g"));
        walled.stateful_firewall();
        let tracker = start_tracker(&th, &[]);
        let data = random_file(&lab.path(NAME), 4 * MIB, 8);
        let (sharer, ticket) = start_share(&walled, th.addr(7410), &lab.path(NAME), &[]);
        let mut g = start_get(
            &getter,
            &ticket,
            &lab.path("out"),
            &["--no-seed", "--timeout", "30"],
        );
        g.wait_event("done", Duration::from_secs(40));
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&lab.path("out").join(NAME), &data);
        no_panics(&[&tracker, &sharer, &g]);
    });
}

/// Two seeders; one is cut off (no packets in or out, no reset) while the
/// getter downloads from both, for 30 s. The getter gives up on the silent
/// connection, finishes from the other seeder before the partition heals,
/// and after healing the swarm serves a new getter.
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn seeder_partitioned_mid_transfer() {
    scenario(Duration::from_secs(150), || {
        let mut lab = Lab::new("faults_net::seeder_partitioned_mid_transfer");
        let (th, h1, h2) = (lab.host("trk"), lab.host("s1"), lab.host("s2"));
        let (hg, hg2) = (lab.host("g"), lab.host("g2"));
        let tracker = start_tracker(&th, &[]);
        let data = random_file(&lab.path(NAME), 32 * MIB, 9);
        let (s1, ticket) =
            start_share(&h1, th.addr(7410), &lab.path(NAME), &["--max-upload", "3M"]);
        place_copy(&lab.path("seed2"), NAME, &data);
        let mut s2 = start_get(&h2, &ticket, &lab.path("seed2"), &["--max-upload", "3M"]);
        s2.wait_event("seeding", Duration::from_secs(30));

        let mut g = start_get(&hg, &ticket, &lab.path("out"), &["--no-seed"]);
        g.wait_for("progress from both seeders", Duration::from_secs(30), |v| {
            v["event"] == "progress"
                && v["peers"].as_u64() >= Some(2)
                && v["bytes_done"].as_u64() >= Some(4 * MIB as u64)
        });
        h1.partition();
        let cut = Instant::now();
        let done = g.wait_event("done", Duration::from_secs(29));
        let took = cut.elapsed();
        crate::lab::note(&format!(
            "seeder_partitioned_mid_transfer: done {took:?} after the partition, from {}",
            done["from"]
        ));
        let from = done["from"].as_object().expect("from is an object");
        let s2_addr = s2_listed(&mut s2, &h2);
        assert!(
            from.get(&s2_addr).and_then(|v| v.as_u64()) > Some(0),
            "the other seeder ({s2_addr}) should have served: {from:?}"
        );
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&lab.path("out").join(NAME), &data);

        // Heal after 30 s: the cut-off seeder is still there and the swarm
        // serves again.
        std::thread::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed()));
        h1.clear_nft();
        let mut g2 = start_get(&hg2, &ticket, &lab.path("out2"), &["--no-seed"]);
        g2.wait_event("done", Duration::from_secs(60));
        g2.expect_success(Duration::from_secs(15));
        assert_file_is(&lab.path("out2").join(NAME), &data);
        let mut s1 = s1;
        assert!(s1.is_running(), "the partitioned sharer exited");
        no_panics(&[&tracker, &s1, &s2, &g, &g2]);
    });
}

/// The address a seeding `get` is listed under.
fn s2_listed(s2: &mut Proc, host: &Host) -> String {
    let port = s2
        .events()
        .iter()
        .find(|v| v["event"] == "listening")
        .and_then(|v| v["addr"].as_str())
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .expect("the seeder's listening event");
    host.addr(port).to_string()
}

/// The tracker is SIGKILLed during a transfer and restarted with the same
/// `--state`: the transfer goes on (peers talk TCP to each other), the swarm
/// comes back on the same port, and a new getter with the old ticket joins.
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn sigkill_restart_with_state() {
    scenario(Duration::from_secs(150), || {
        let mut lab = Lab::new("faults_net::sigkill_restart_with_state");
        let (th, sh, h1, h2) = (
            lab.host("trk"),
            lab.host("shr"),
            lab.host("g1"),
            lab.host("g2"),
        );
        let state = lab.path("state");
        let state_arg = state.to_str().expect("UTF-8").to_string();
        let mut tracker = start_tracker(&th, &["--state", &state_arg]);
        let data = random_file(&lab.path(NAME), 32 * MIB, 10);
        let (sharer, ticket) =
            start_share(&sh, th.addr(7410), &lab.path(NAME), &["--max-upload", "3M"]);
        let port = ticket_port(&ticket);
        let mut g1 = start_get(&h1, &ticket, &lab.path("out1"), &["--no-seed"]);
        g1.wait_progress(4 * MIB as u64, Duration::from_secs(30));

        tracker.kill();
        let mut tracker = start_tracker(&th, &["--state", &state_arg]);
        tracker.wait_for("the swarm restored", Duration::from_secs(10), |v| {
            v["event"] == "swarm_restored" && v["port"] == port
        });
        let mut g2 = start_get(&h2, &ticket, &lab.path("out2"), &["--no-seed"]);
        for g in [&mut g1, &mut g2] {
            g.wait_event("done", Duration::from_secs(60));
            g.expect_success(Duration::from_secs(15));
        }
        assert_file_is(&lab.path("out1").join(NAME), &data);
        assert_file_is(&lab.path("out2").join(NAME), &data);
        assert_eq!(tracker.count("swarm_created"), 0, "{:?}", tracker.events());
        no_panics(&[&tracker, &sharer, &g1, &g2]);
    });
}

/// The getter's host loses its link for 15 s in the middle of a download;
/// when the link returns, the getter reconnects and finishes.
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn getter_link_down_then_back() {
    scenario(Duration::from_secs(150), || {
        let mut lab = Lab::new("faults_net::getter_link_down_then_back");
        let (th, sh, hg) = (lab.host("trk"), lab.host("shr"), lab.host("g"));
        let tracker = start_tracker(&th, &[]);
        let data = random_file(&lab.path(NAME), 16 * MIB, 11);
        let (sharer, ticket) =
            start_share(&sh, th.addr(7410), &lab.path(NAME), &["--max-upload", "2M"]);
        let mut g = start_get(
            &hg,
            &ticket,
            &lab.path("out"),
            &["--no-seed", "--timeout", "60"],
        );
        g.wait_progress(2 * MIB as u64, Duration::from_secs(30));
        hg.set_link(false);
        std::thread::sleep(Duration::from_secs(15));
        hg.set_link(true);
        let back = Instant::now();
        g.wait_event("done", Duration::from_secs(75));
        crate::lab::note(&format!(
            "getter_link_down_then_back: done {:?} after the link came back",
            back.elapsed()
        ));
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&lab.path("out").join(NAME), &data);
        no_panics(&[&tracker, &sharer, &g]);
    });
}

/// The getter's link goes down for good: after `--timeout` without progress
/// it fails with one clear line and exit 1, keeping what it verified; rerun
/// with the link back, it resumes and finishes.
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn getter_link_down_fails_after_timeout_then_resumes() {
    scenario(Duration::from_secs(120), || {
        let mut lab = Lab::new("faults_net::getter_link_down_fails_after_timeout_then_resumes");
        let (th, sh, hg) = (lab.host("trk"), lab.host("shr"), lab.host("g"));
        let tracker = start_tracker(&th, &[]);
        let data = random_file(&lab.path(NAME), 16 * MIB, 12);
        let (sharer, ticket) =
            start_share(&sh, th.addr(7410), &lab.path(NAME), &["--max-upload", "2M"]);
        let out = lab.path("out");
        let mut g = start_get(&hg, &ticket, &out, &["--no-seed", "--timeout", "6"]);
        g.wait_progress(3 * MIB as u64, Duration::from_secs(30));
        hg.set_link(false);
        let down = Instant::now();
        let status = g.wait_exit(Duration::from_secs(40));
        let took = down.elapsed();
        assert_eq!(status.code(), Some(1), "{}", g.stderr());
        assert!(took >= Duration::from_secs(5), "gave up after {took:?}");
        let err = g.stderr();
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line:\n{err}"));
        assert!(line.contains("no progress for 6 s"), "{line}");
        assert!(g.count("error") == 1, "{:?}", g.events());
        assert!(
            !out.join(NAME).exists(),
            "a partial file under the final name"
        );
        assert!(out.join(format!(".{NAME}.hayedik-part")).exists());
        assert!(out.join(format!(".{NAME}.hayedik-resume")).exists());

        hg.set_link(true);
        let mut again = start_get(&hg, &ticket, &out, &["--no-seed"]);
        let done = again.wait_event("done", Duration::from_secs(60));
        assert!(
            done["reused"].as_u64() >= Some(MIB as u64),
            "verified pieces were not kept: {done}"
        );
        again.expect_success(Duration::from_secs(15));
        assert_file_is(&out.join(NAME), &data);
        no_panics(&[&tracker, &sharer, &g, &again]);
    });
}
