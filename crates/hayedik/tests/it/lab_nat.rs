//! The NAT lab (see `lab.rs`): hosts behind "home routers" (network
//! namespaces doing nftables masquerade, letting in only established or
//! related traffic, dropping unsolicited packets to the router itself) and
//! "symmetric" ones (`masquerade fully-random`), all on an isolated
//! "internet" bridge with a tracker that runs `--relay`. Nothing here has a
//! link to this machine's network.
//!
//! ```text
//!   trk 198.18.0.1 (tracker --relay)          pub 198.18.0.N (public seeder)
//!   rX 198.18.0.N (eth0) | 10.0.N.1 (lan0) -- host 10.0.N.2 behind it
//! ```
//!
//! The UPnP scenarios use a [`Lab::routable`] lab instead (miniupnpd maps
//! nothing on a reserved external address): a router running
//! `miniupnpd-nftables` at `ROUTABLE_NET`.1 with the sharer behind it, and
//! a getter at `ROUTABLE_NET`.2 on the "internet".
//!
//! Every test needs root, `ip` and `nft`: each is `#[ignore]`d, so a plain
//! `cargo test` reports it as ignored; README's command (as root, with
//! `-- --include-ignored`) runs it, and fails it when the lab cannot run.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::scenario;
use crate::lab::{assert_file_is, note, place_copy, random_file, ticket_of, Host, Lab, Proc};

const MIB: usize = 1 << 20;
const NAME: &str = "content.bin";

/// `hayedik tracker --relay` on `host`:7410 (UDP, and TCP for the relay).
fn start_relay_tracker(host: &Host) -> Proc {
    let listen = host.addr(7410).to_string();
    let args = [
        "tracker",
        "--listen",
        &listen,
        "--relay",
        "--json",
        "--announce-interval",
        "2",
    ];
    let mut t = host.spawn("tracker", &args);
    t.wait_event("listening", Duration::from_secs(10));
    t
}

fn start_share(host: &Host, tracker: SocketAddr, file: &Path, extra: &[&str]) -> (Proc, String) {
    start_share_env(host, tracker, file, extra, &[])
}

fn start_share_env(
    host: &Host,
    tracker: SocketAddr,
    file: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, String) {
    let (tracker, listen) = (tracker.to_string(), host.addr(0).to_string());
    let mut args = vec![
        "share",
        file.to_str().expect("a UTF-8 path"),
        "--tracker",
        &tracker,
        "--listen",
        &listen,
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut s = host.spawn_env(&format!("share on {}", host.ip), env, &args);
    let ticket = ticket_of(&mut s);
    (s, ticket)
}

fn start_get(host: &Host, ticket: &str, out: &Path, extra: &[&str]) -> Proc {
    start_get_env(host, ticket, out, extra, &[])
}

fn start_get_env(
    host: &Host,
    ticket: &str,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let (listen, out) = (host.addr(0).to_string(), out.to_str().expect("UTF-8"));
    let mut args = vec!["get", ticket, "-o", out, "--listen", &listen, "--json"];
    args.extend_from_slice(extra);
    host.spawn_env(&format!("get on {}", host.ip), env, &args)
}

/// Hole punching off (`HAYEDIK_PUNCH=off`): the relay path alone.
const NO_PUNCH: &[(&str, &str)] = &[("HAYEDIK_PUNCH", "off")];

/// The `reachability` event of `p`.
fn reachability(p: &mut Proc) -> Value {
    p.wait_event("reachability", Duration::from_secs(40))
}

/// Waits for `done`, and notes how long the first byte took since `start`.
fn done_after(g: &mut Proc, start: Instant, what: &str) -> Value {
    let first = g.wait_progress(1, Duration::from_secs(60));
    note(&format!(
        "lab_nat {what}: first byte {:.2} s after get started",
        start.elapsed().as_secs_f64()
    ));
    if first["event"] == "done" {
        return first;
    }
    g.wait_event("done", Duration::from_secs(90))
}

/// A sharer behind router `ra` (symmetric or not) and a getter behind a
/// home router `rb`: neither can reach the other; both complete through
/// the relay, byte-identical. Between two home routers punching would
/// succeed, so that case runs with punching off; with a symmetric router
/// punching is on and fails, and the relay must still carry the file.
fn relayed_between_routers(test: &'static str, sharer_symmetric: bool) {
    let env = if sharer_symmetric { &[][..] } else { NO_PUNCH };
    scenario(Duration::from_secs(150), move || {
        let mut lab = Lab::new(test);
        let th = lab.host("trk");
        let (ra, rb) = (lab.host("ra"), lab.host("rb"));
        ra.home_router(sharer_symmetric);
        rb.home_router(false);
        let (a, b) = (lab.behind(&ra, "a"), lab.behind(&rb, "b"));
        let tracker = start_relay_tracker(&th);
        let data = random_file(&lab.path(NAME), 6 * MIB, 21);

        let (mut sharer, ticket) = start_share_env(&a, th.addr(7410), &lab.path(NAME), &[], env);
        let r = reachability(&mut sharer);
        assert_eq!(
            (&r["how"], &r["reachable"]),
            (&"relay".into(), &true.into()),
            "{r}"
        );
        let listed: SocketAddr = r["addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(listed.ip(), ra.ip, "listed under its router's address: {r}");

        let start = Instant::now();
        let mut g = start_get_env(&b, &ticket, &lab.path("out"), &[], env);
        let v = done_after(
            &mut g,
            start,
            if sharer_symmetric {
                "symmetric -> home, relay"
            } else {
                "home -> home, relay"
            },
        );
        assert_eq!(v["via"][listed.to_string()], "relay", "{v}");
        assert_file_is(&lab.path("out").join(NAME), &data);
        let gr = reachability(&mut g);
        assert_eq!(gr["how"], "relay", "{gr}");
        for p in [&tracker, &sharer, &g] {
            p.assert_no_panic();
        }
    });
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn lab_nat_two_home_routers_relay() {
    relayed_between_routers("lab_nat::lab_nat_two_home_routers_relay", false);
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn lab_nat_symmetric_sharer_relay() {
    relayed_between_routers("lab_nat::lab_nat_symmetric_sharer_relay", true);
}

/// A relayed sharer (behind a home router, upload capped) vanishes while
/// two getters behind different routers download from it; a public seeder
/// joins, everyone completes, and the public seeder is reached directly.
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn lab_nat_relayed_sharer_vanishes() {
    scenario(Duration::from_secs(180), || {
        let mut lab = Lab::new("lab_nat::lab_nat_relayed_sharer_vanishes");
        let th = lab.host("trk");
        let (ra, rb, rc) = (lab.host("ra"), lab.host("rb"), lab.host("rc"));
        let public = lab.host("pub");
        ra.home_router(false);
        rb.home_router(false);
        rc.home_router(true);
        let (a, b, c) = (
            lab.behind(&ra, "a"),
            lab.behind(&rb, "b"),
            lab.behind(&rc, "c"),
        );
        let tracker = start_relay_tracker(&th);
        let data = random_file(&lab.path(NAME), 8 * MIB, 22);
        let (mut sharer, ticket) =
            start_share(&a, th.addr(7410), &lab.path(NAME), &["--max-upload", "1M"]);
        let r = reachability(&mut sharer);
        assert_eq!(r["how"], "relay", "{r}");
        let hidden: SocketAddr = r["addr"].as_str().unwrap().parse().unwrap();

        let no_seed = ["--no-seed", "--timeout", "60"];
        let mut g1 = start_get(&b, &ticket, &lab.path("out1"), &no_seed);
        let mut g2 = start_get(&c, &ticket, &lab.path("out2"), &no_seed);
        g1.wait_progress(1, Duration::from_secs(60));
        sharer.kill();

        place_copy(&lab.path("seed"), NAME, &data);
        let mut seeder = start_get(&public, &ticket, &lab.path("seed"), &[]);
        let seeder_addr = seeder.listening();
        seeder.wait_event("seeding", Duration::from_secs(30));
        let sr = reachability(&mut seeder);
        assert_eq!(sr["how"], "direct", "{sr}");
        // The getter behind a home router may have punched through to the
        // hidden sharer (both home routers); the one behind a symmetric
        // router can only have used the relay.
        let (home, symmetric): (&[&str], &[&str]) = (&["relay", "punched"], &["relay"]);
        for (g, out, paths) in [(&mut g1, "out1", home), (&mut g2, "out2", symmetric)] {
            let v = g.wait_event("done", Duration::from_secs(90));
            g.expect_success(Duration::from_secs(15));
            assert_file_is(&lab.path(out).join(NAME), &data);
            assert_eq!(v["via"][seeder_addr.to_string()], "direct", "{v}");
            if v["from"][hidden.to_string()].as_u64().unwrap_or(0) > 0 {
                let via = v["via"][hidden.to_string()].as_str().unwrap_or_default();
                assert!(paths.contains(&via), "{v}");
            }
        }
        for p in [&tracker, &seeder, &g1, &g2] {
            p.assert_no_panic();
        }
    });
}

/// A public sharer and a getter behind a home router: the sharer is told
/// it is reachable directly, and the getter is served directly (the relay
/// stays unused).
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn lab_nat_public_sharer_direct() {
    scenario(Duration::from_secs(120), || {
        let mut lab = Lab::new("lab_nat::lab_nat_public_sharer_direct");
        let th = lab.host("trk");
        let (public, rb) = (lab.host("pub"), lab.host("rb"));
        rb.home_router(false);
        let b = lab.behind(&rb, "b");
        let tracker = start_relay_tracker(&th);
        let data = random_file(&lab.path(NAME), 6 * MIB, 23);
        let (mut sharer, ticket) = start_share(&public, th.addr(7410), &lab.path(NAME), &[]);
        let r = reachability(&mut sharer);
        assert_eq!(
            (&r["how"], &r["reachable"]),
            (&"direct".into(), &true.into()),
            "{r}"
        );
        let listed: SocketAddr = r["addr"].as_str().unwrap().parse().unwrap();
        let start = Instant::now();
        let mut g = start_get(&b, &ticket, &lab.path("out"), &["--no-seed"]);
        let v = done_after(&mut g, start, "public -> home, direct");
        g.expect_success(Duration::from_secs(15));
        assert_eq!(v["via"][listed.to_string()], "direct", "{v}");
        assert_file_is(&lab.path("out").join(NAME), &data);
        for p in [&tracker, &sharer, &g] {
            p.assert_no_panic();
        }
    });
}

/// A sharer behind a router running miniupnpd, with `--port-mapping` and
/// its embedded tracker; a getter on the "internet" side. The sharer maps
/// its TCP port and its tracker's two UDP ports, puts the router's address
/// in the ticket and is listed under it; the getter completes through the
/// mapping (`via` = `mapped`); when the sharer is stopped (SIGTERM) the
/// router holds no mapping any more. `only` restricts the protocols tried
/// (`HAYEDIK_PORTMAP_ONLY`); the client is pointed at the lab's router
/// (`HAYEDIK_PORTMAP_GATEWAY`), the only one it may ask.
fn mapped_behind_upnp_router(test: &'static str, only: &'static str, methods: &'static [&str]) {
    scenario(Duration::from_secs(150), move || {
        let mut lab = Lab::routable(test);
        let router = lab.host("ru");
        let outside = lab.host("out");
        let a = lab.behind(&router, "a");
        lab.upnp_router(&router);
        let gw = format!("10.0.{}.1", router.ip.octets()[3]);
        let data = random_file(&lab.path(NAME), 6 * MIB, 24);

        let file = lab.path(NAME);
        let args = [
            "share",
            file.to_str().expect("UTF-8"),
            "--port-mapping",
            "--json",
        ];
        let env = [
            ("HAYEDIK_PORTMAP_GATEWAY", gw.as_str()),
            ("HAYEDIK_PORTMAP_ONLY", only),
        ];
        let mut sharer = a.spawn_env("share behind the UPnP router", &env, &args);
        let ticket = ticket_of(&mut sharer);
        let t: hayedik_proto::ticket::Ticket = ticket.parse().expect("a ticket");
        assert_eq!(
            t.host,
            router.ip.to_string(),
            "the router's address in {ticket}"
        );
        let mapped: Vec<Value> = sharer
            .events()
            .iter()
            .filter(|v| v["event"] == "port_mapped")
            .cloned()
            .collect();
        assert_eq!(mapped.len(), 3, "TCP, tracker and swarm UDP: {mapped:?}");
        for m in &mapped {
            assert_eq!(m["gateway"], gw.as_str(), "{m}");
            assert!(methods.contains(&m["method"].as_str().unwrap_or("")), "{m}");
        }
        let r = reachability(&mut sharer);
        assert_eq!(
            (&r["how"], &r["reachable"]),
            (&"mapped".into(), &true.into()),
            "{r}"
        );
        let listed: SocketAddr = r["addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(listed.ip(), router.ip, "{r}");
        assert_eq!(
            lab.upnp_mappings(&router).len(),
            3,
            "{}",
            lab.upnp_log(&router)
        );

        let start = Instant::now();
        let mut g = start_get(&outside, &ticket, &lab.path("out"), &["--no-seed"]);
        let v = done_after(
            &mut g,
            start,
            &format!("UPnP router ({only}) -> outside, mapped"),
        );
        g.expect_success(Duration::from_secs(15));
        assert_eq!(v["via"][listed.to_string()], "mapped", "{v}");
        assert_file_is(&lab.path("out").join(NAME), &data);

        crate::harness::signal(sharer.pid(), "TERM").expect("kill -TERM");
        sharer.expect_success(Duration::from_secs(20));
        let left = lab.upnp_mappings(&router);
        assert!(
            left.is_empty(),
            "mappings left after the sharer stopped: {left:?}\n{}",
            lab.upnp_log(&router)
        );
        for p in [&sharer, &g] {
            p.assert_no_panic();
        }
    });
}

#[test]
#[ignore = "needs root: network namespaces, nftables, miniupnpd"]
fn lab_nat_upnp_router_mapped_pcp() {
    // miniupnpd answers PCP, so NAT-PMP is not needed.
    mapped_behind_upnp_router(
        "lab_nat::lab_nat_upnp_router_mapped_pcp",
        "pcp",
        &["pcp", "nat-pmp"],
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, miniupnpd"]
fn lab_nat_upnp_router_mapped_upnp() {
    mapped_behind_upnp_router(
        "lab_nat::lab_nat_upnp_router_mapped_upnp",
        "upnp",
        &["upnp"],
    );
}

/// `--port-mapping` behind a router that maps nothing (a plain home
/// router: no PCP, NAT-PMP or UPnP-IGD): a warning says so, and the share
/// goes on as without the flag (here through the relay).
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn lab_nat_port_mapping_refused_is_a_warning() {
    scenario(Duration::from_secs(150), || {
        let mut lab = Lab::new("lab_nat::lab_nat_port_mapping_refused_is_a_warning");
        let th = lab.host("trk");
        let (ra, rb) = (lab.host("ra"), lab.host("rb"));
        ra.home_router(false);
        rb.home_router(false);
        let (a, b) = (lab.behind(&ra, "a"), lab.behind(&rb, "b"));
        let tracker = start_relay_tracker(&th);
        let data = random_file(&lab.path(NAME), 2 * MIB, 25);
        let gw = format!("10.0.{}.1", ra.ip.octets()[3]);
        let (file, central, listen) = (
            lab.path(NAME),
            th.addr(7410).to_string(),
            a.addr(0).to_string(),
        );
        let args = [
            "share",
            file.to_str().expect("UTF-8"),
            "--tracker",
            &central,
            "--listen",
            &listen,
            "--port-mapping",
            "--json",
        ];
        let env = [("HAYEDIK_PORTMAP_GATEWAY", gw.as_str())];
        let mut sharer = a.spawn_env("share, no mapping router", &env, &args);
        let w = sharer.wait_event("warning", Duration::from_secs(30));
        let message = w["message"].as_str().unwrap_or("");
        assert!(
            message.contains("port mapping failed") && message.contains(&gw),
            "{w}"
        );
        let ticket = ticket_of(&mut sharer);
        assert_eq!(sharer.count("port_mapped"), 0);
        let r = reachability(&mut sharer);
        assert_eq!(r["how"], "relay", "{r}");
        let mut g = start_get(&b, &ticket, &lab.path("out"), &["--no-seed"]);
        g.wait_event("done", Duration::from_secs(90));
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&lab.path("out").join(NAME), &data);
        for p in [&tracker, &sharer, &g] {
            p.assert_no_panic();
        }
    });
}

/// `get --port-mapping` behind the miniupnpd router, a public sharer and a
/// tracker outside: the getter maps its TCP port, the tracker's probe
/// reaches it there (`reachability` `mapped`, at the router's address), the
/// file arrives whole, and the mapping is gone once the seeding `get` is
/// stopped (SIGTERM).
#[test]
#[ignore = "needs root: network namespaces, nftables, miniupnpd"]
fn lab_nat_upnp_router_mapped_getter() {
    scenario(Duration::from_secs(150), || {
        let mut lab = Lab::routable("lab_nat::lab_nat_upnp_router_mapped_getter");
        let th = lab.host("trk");
        let public = lab.host("pub");
        let router = lab.host("ru");
        let b = lab.behind(&router, "b");
        lab.upnp_router(&router);
        let gw = format!("10.0.{}.1", router.ip.octets()[3]);
        let tracker = start_relay_tracker(&th);
        let data = random_file(&lab.path(NAME), 4 * MIB, 26);
        let (mut sharer, ticket) = start_share(&public, th.addr(7410), &lab.path(NAME), &[]);

        let (out, listen) = (lab.path("out"), b.addr(0).to_string());
        let args = [
            "get",
            &ticket,
            "-o",
            out.to_str().expect("UTF-8"),
            "--listen",
            &listen,
            "--port-mapping",
            "--json",
        ];
        let env = [("HAYEDIK_PORTMAP_GATEWAY", gw.as_str())];
        let mut g = b.spawn_env("get behind the UPnP router", &env, &args);
        let m = g.wait_event("port_mapped", Duration::from_secs(30));
        assert_eq!(
            (&m["protocol"], &m["gateway"]),
            (&"tcp".into(), &gw.as_str().into()),
            "{m}"
        );
        let r = reachability(&mut g);
        assert_eq!(
            (&r["how"], &r["reachable"]),
            (&"mapped".into(), &true.into()),
            "{r}"
        );
        assert_eq!(
            r["addr"], m["addr"],
            "listed at the mapped address: {r} {m}"
        );
        g.wait_event("done", Duration::from_secs(90));
        assert_file_is(&out.join(NAME), &data);
        assert_eq!(
            lab.upnp_mappings(&router).len(),
            1,
            "{}",
            lab.upnp_log(&router)
        );
        crate::harness::signal(g.pid(), "TERM").expect("kill -TERM");
        g.expect_success(Duration::from_secs(20));
        let left = lab.upnp_mappings(&router);
        assert!(left.is_empty(), "mappings left after get exited: {left:?}");
        sharer.kill();
        for p in [&tracker, &g] {
            p.assert_no_panic();
        }
    });
}

/// How the routers of a punching scenario behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routers {
    /// Two home routers: the punch must succeed.
    Home,
    /// Two home routers whose input chain accepts unsolicited traffic to
    /// the router itself (NAT-LAB.md: an early punch packet then gets a
    /// conntrack entry that remaps the host's later packets): punched or
    /// relayed, the file must arrive.
    HomeOpenInput,
    /// The getter behind a symmetric router: the relay.
    SymmetricGetter,
}

/// A sharer behind router `ra` and a getter behind `rb`, a tracker with a
/// relay, punching on: the file arrives, by the path `routers` allows.
/// Returns the `via` of the sharer and the seconds to the first byte.
fn punched_between_routers(test: &'static str, routers: Routers, size: usize) -> (String, f64) {
    let (tx, rx) = std::sync::mpsc::channel();
    scenario(Duration::from_secs(150), move || {
        let mut lab = Lab::new(test);
        let th = lab.host("trk");
        let (ra, rb) = (lab.host("ra"), lab.host("rb"));
        ra.home_router(false);
        rb.home_router(routers == Routers::SymmetricGetter);
        if routers == Routers::HomeOpenInput {
            ra.accept_input_from_wan();
            rb.accept_input_from_wan();
        }
        let (a, b) = (lab.behind(&ra, "a"), lab.behind(&rb, "b"));
        let tracker = start_relay_tracker(&th);
        let data = random_file(&lab.path(NAME), size, 23);
        let (mut sharer, ticket) = start_share(&a, th.addr(7410), &lab.path(NAME), &[]);
        let r = reachability(&mut sharer);
        let listed: SocketAddr = r["addr"].as_str().unwrap().parse().unwrap();
        let start = Instant::now();
        let mut g = start_get(&b, &ticket, &lab.path("out"), &["--no-seed"]);
        let first = g.wait_progress(1, Duration::from_secs(60));
        let ttfb = start.elapsed().as_secs_f64();
        let v = if first["event"] == "done" {
            first
        } else {
            g.wait_event("done", Duration::from_secs(90))
        };
        assert_file_is(&lab.path("out").join(NAME), &data);
        let via = v["via"][listed.to_string()]
            .as_str()
            .unwrap_or_default()
            .to_string();
        note(&format!(
            "lab_nat punch {routers:?}: via {via}, first byte {ttfb:.2} s, done in {} s",
            v["seconds"]
        ));
        match routers {
            Routers::Home => assert_eq!(via, "punched", "{v}"),
            Routers::HomeOpenInput => assert!(via == "punched" || via == "relay", "{v}"),
            Routers::SymmetricGetter => assert_eq!(via, "relay", "{v}"),
        }
        for p in [&tracker, &sharer, &g] {
            p.assert_no_panic();
        }
        let _ = tx.send((via, ttfb));
    });
    rx.recv().expect("the scenario reports")
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn lab_nat_two_home_routers_punched() {
    punched_between_routers(
        "lab_nat::lab_nat_two_home_routers_punched",
        Routers::Home,
        6 * MIB,
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn lab_nat_home_routers_open_input_still_deliver() {
    punched_between_routers(
        "lab_nat::lab_nat_home_routers_open_input_still_deliver",
        Routers::HomeOpenInput,
        6 * MIB,
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn lab_nat_symmetric_getter_relay() {
    punched_between_routers(
        "lab_nat::lab_nat_symmetric_getter_relay",
        Routers::SymmetricGetter,
        6 * MIB,
    );
}

/// Figures for docs/performance.md (not a test of speed: it prints):
/// `HAYEDIK_PUNCH_RUNS` runs per router pair (20 for the table, 2 by
/// default so that CI's run of every ignored test stays short), the path
/// each took and the time to the first byte.
#[test]
#[ignore = "needs root; a measurement: prints figures"]
fn lab_nat_punch_success_rates() {
    let runs: usize = std::env::var("HAYEDIK_PUNCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for routers in [
        Routers::Home,
        Routers::HomeOpenInput,
        Routers::SymmetricGetter,
    ] {
        let mut paths = std::collections::BTreeMap::<String, Vec<f64>>::new();
        for _ in 0..runs {
            let (via, ttfb) =
                punched_between_routers("lab_nat::lab_nat_punch_success_rates", routers, MIB);
            paths.entry(via).or_default().push(ttfb);
        }
        for (via, t) in &paths {
            let mean = t.iter().sum::<f64>() / t.len() as f64;
            eprintln!(
                "FIGURE punch {routers:?}: {via} {}/{runs}, first byte mean {mean:.2} s",
                t.len()
            );
        }
    }
}

/// CPU seconds (user and system) `pid` has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Figures for docs/performance.md (prints, asserts only the file and the
/// path): `HAYEDIK_PUNCH_MIB` MiB (256 for the table, 64 by default) from a sharer behind one
/// home router to a getter behind another, punched (or, with
/// `HAYEDIK_PUNCH=off` in the test's environment, relayed), with the CPU
/// seconds both processes spent on it.
#[test]
#[ignore = "needs root; a measurement: prints figures"]
fn lab_nat_punched_throughput() {
    scenario(Duration::from_secs(300), || {
        let mib: usize = std::env::var("HAYEDIK_PUNCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let mut lab = Lab::new("lab_nat::lab_nat_punched_throughput");
        let th = lab.host("trk");
        let (ra, rb) = (lab.host("ra"), lab.host("rb"));
        ra.home_router(false);
        rb.home_router(false);
        let (a, b) = (lab.behind(&ra, "a"), lab.behind(&rb, "b"));
        let tracker = start_relay_tracker(&th);
        let data = random_file(&lab.path(NAME), mib * MIB, 24);
        let (mut sharer, ticket) = start_share(&a, th.addr(7410), &lab.path(NAME), &[]);
        let r = reachability(&mut sharer);
        let listed: SocketAddr = r["addr"].as_str().unwrap().parse().unwrap();
        let sharer_cpu = cpu_secs(sharer.pid());
        let mut g = start_get(&b, &ticket, &lab.path("out"), &[]);
        let v = g.wait_event("done", Duration::from_secs(240));
        let getter_cpu = cpu_secs(g.pid());
        let sharer_cpu = cpu_secs(sharer.pid()) - sharer_cpu;
        let via = v["via"][listed.to_string()].clone();
        let secs = v["seconds"].as_f64().unwrap_or(0.0);
        let gib = (mib as f64) / 1024.0;
        eprintln!(
            "FIGURE punched throughput: {mib} MiB via {via} in {secs:.2} s = {:.0} MiB/s; CPU getter {getter_cpu:.2} s + sharer {sharer_cpu:.2} s = {:.2} CPU s/GiB",
            mib as f64 / secs,
            (getter_cpu + sharer_cpu) / gib
        );
        assert_file_is(&lab.path("out").join(NAME), &data);
        for p in [&tracker, &sharer, &g] {
            p.assert_no_panic();
        }
    });
}
