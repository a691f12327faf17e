//! The multi-host lab: hosts in network namespaces on one bridge, the real
//! binary run inside them, and nftables for loss, firewalls and partitions.
//! Also the process and file helpers every fault test shares.
//!
//! One lab (every name starts with `hzlab-PID-SEQ-`, so parallel tests never
//! collide and the leftovers of a crashed run are found by prefix):
//!
//! ```text
//!   hzlab-PID-SEQ-br      the bridge's namespace: br0, with v1..vN enslaved
//!   hzlab-PID-SEQ-ROLE    one per host: lo, and eth0 = 198.18.0.N/24,
//!                         a veth whose other end is vN on the bridge
//! ```
//!
//! Addresses come from 198.18.0.0/15 (the benchmarking range). Every lab has
//! a bridge of its own, so every lab may use 198.18.0.1 and up. A lab made
//! with [`Lab::routable`] uses [`ROUTABLE_NET`] instead (miniupnpd refuses
//! to map on a reserved external address), and while it exists a table in
//! this machine's own namespace drops anything addressed to that range.
//!
//! [`Lab`] deletes its namespaces when dropped, after killing whatever still
//! runs in them, even when the test panicked; [`Lab::new`] first removes
//! the labs of test processes that no longer exist. Without root, `ip` or
//! `nft`, [`Lab::new`] fails the test with the reason ([`cannot_run`]).
//!
//! A test that needs root or a kernel feature is marked
//! `#[ignore = "needs root: ..."]`: a plain `cargo test` reports it as
//! ignored, never as passed, and README's command (as root, with
//! `-- --include-ignored`) runs it, where anything missing fails it.
//!
//! [`Proc`] is one run of the binary (in a lab host or on loopback) whose
//! `--json` events are read on a thread, so tests wait for events instead of
//! sleeping; dropping it kills the process.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use serde_json::Value;

use crate::harness::{signal, BIN};

/// Every namespace of every lab starts with this.
const PREFIX: &str = "hzlab-";
static SEQ: AtomicU32 = AtomicU32::new(0);
/// The only non-reserved range the labs use (a /24, for the hosts of a
/// [`Lab::routable`] lab): it exists only inside the lab's namespaces, and
/// this machine's own namespace drops what is addressed to it.
pub const ROUTABLE_NET: [u8; 3] = [11, 0, 14];
/// Prefix of the guard tables in this machine's namespace (nftables names
/// take no '-'): `hzlab_PID_SEQ`.
const GUARD_PREFIX: &str = "hzlab_";

/// Prints a line on the real stderr: libtest captures `eprintln!`, and a
/// test's notes (timings, counts) are worth seeing even when it passes.
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Fails `test`, which cannot run here because of `why` (not root, a tool
/// or a kernel feature missing). Such a test is `#[ignore]`d, so it only
/// runs when asked for (`--include-ignored`), and then it must not pass
/// without having run.
pub fn cannot_run(test: &str, why: &str) -> ! {
    panic!(
        "{test} cannot run here: {why}. It is #[ignore]d for this reason: run it as root \
         with README's test command (`-- --include-ignored`), or leave out \
         --include-ignored to have it reported as ignored"
    )
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs `program args`; its stdout, or what went wrong.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{program}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip args`, panicking with its error when it fails.
fn ip(args: &[&str]) {
    if let Err(e) = run("ip", args) {
        panic!("lab set-up: {e}");
    }
}

/// Why the lab cannot run here, or `None` when it can (checked once: root,
/// `ip` and `nft` present, and a namespace can really be created).
pub fn lab_unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        if !is_root() {
            return Some("needs root (network namespaces, nftables)".into());
        }
        for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
            if run(tool, &[arg]).is_err() {
                return Some(format!(
                    "`{tool}` is missing (apt-get install iproute2 nftables)"
                ));
            }
        }
        cleanup_leftovers();
        let probe = format!("{PREFIX}{}-probe", std::process::id());
        let made = run("ip", &["netns", "add", &probe]);
        let _ = run("ip", &["netns", "del", &probe]);
        made.err()
            .map(|e| format!("cannot create a network namespace: {e}"))
    })
    .clone()
}

/// Deletes the namespaces of labs whose test process is gone, killing what
/// still runs in them.
fn cleanup_leftovers() {
    if let Ok(tables) = run("nft", &["list", "tables", "inet"]) {
        for name in tables.lines().filter_map(|l| l.strip_prefix("table inet ")) {
            let Some(rest) = name.trim().strip_prefix(GUARD_PREFIX) else {
                continue;
            };
            let pid = rest.split('_').next().and_then(|p| p.parse::<u32>().ok());
            if !pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
                let _ = run("nft", &["delete", "table", "inet", name.trim()]);
            }
        }
    }
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            delete_namespace(name);
        }
    }
}

/// Kills every process in namespace `ns`, then deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let _ = signal(pid, "KILL");
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// A set of hosts on one bridge, each in its own network namespace.
pub struct Lab {
    name: String,
    bridge: String,
    /// Host namespaces, in creation order.
    hosts: Vec<String>,
    /// The first three octets of the hosts' addresses on the bridge.
    net: [u8; 3],
    /// The guard table in this machine's namespace ([`Lab::routable`]).
    guard: Option<String>,
    /// Daemons started in the lab (killed and reaped before the teardown).
    daemons: Vec<Child>,
    /// Scratch files of the test (content, output directories, state).
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// A lab with its bridge and no host yet; fails `test` with the reason
    /// when labs cannot run here.
    pub fn new(test: &str) -> Lab {
        Lab::with_net(test, [198, 18, 0])
    }

    /// A lab whose hosts on the bridge take addresses in [`ROUTABLE_NET`]:
    /// first a table in this machine's own namespace drops anything
    /// addressed to that range (removed with the lab), so nothing can
    /// leave for it even by mistake.
    pub fn routable(test: &str) -> Lab {
        if let Some(why) = lab_unavailable() {
            cannot_run(test, &why);
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let table = format!("{GUARD_PREFIX}{}_{seq}", std::process::id());
        let [a, b, c] = ROUTABLE_NET;
        let script = format!(
            "table inet {table} {{
               chain output {{ type filter hook output priority -300; policy accept;
                 ip daddr {a}.{b}.{c}.0/24 drop
               }}
               chain forward {{ type filter hook forward priority -300; policy accept;
                 ip daddr {a}.{b}.{c}.0/24 drop
               }}
             }}\n"
        );
        if let Err(e) = run_with_input("nft", &["-f", "-"], Some(&script)) {
            panic!("lab set-up: the guard table for {a}.{b}.{c}.0/24: {e}");
        }
        let mut lab = Lab::with_net(test, ROUTABLE_NET);
        lab.guard = Some(table);
        lab
    }

    fn with_net(test: &str, net: [u8; 3]) -> Lab {
        if let Some(why) = lab_unavailable() {
            cannot_run(test, &why);
        }
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            bridge: format!("{name}-br"),
            name,
            hosts: Vec::new(),
            net,
            guard: None,
            daemons: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix("hayedik-lab-")
                .tempdir()
                .expect("a scratch directory"),
        };
        ip(&["netns", "add", &lab.bridge]);
        ip(&["-n", &lab.bridge, "link", "set", "lo", "up"]);
        ip(&["-n", &lab.bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lab.bridge, "link", "set", "br0", "up"]);
        lab
    }

    /// Adds a host named `role` (a few letters: it ends up in a namespace
    /// name) with the next address, 198.18.0.1 (or [`ROUTABLE_NET`].1) for
    /// the first.
    pub fn host(&mut self, role: &str) -> Host {
        let n = u8::try_from(self.hosts.len() + 1).expect("at most 254 hosts");
        let ns = format!("{}-{role}", self.name);
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        let port = format!("v{n}");
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.bridge,
        ]);
        ip(&["-n", &self.bridge, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.bridge, "link", "set", &port, "up"]);
        let addr = Ipv4Addr::new(self.net[0], self.net[1], self.net[2], n);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        Host { ns, ip: addr }
    }

    /// Adds a host named `role` on a LAN of its own behind `router` (a
    /// host of this lab, made a router with [`Host::home_router`]): the
    /// router's `lan0` is 10.0.N.1/24 and the new host's `eth0` 10.0.N.2/24,
    /// N being the router's last octet, with a default route via the
    /// router. Nothing on this LAN has any other link.
    pub fn behind(&mut self, router: &Host, role: &str) -> Host {
        let n = router.ip.octets()[3];
        let ns = format!("{}-{role}", self.name);
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", "lan0", "netns",
            &router.ns,
        ]);
        let (gw, addr) = (Ipv4Addr::new(10, 0, n, 1), Ipv4Addr::new(10, 0, n, 2));
        ip(&[
            "-n",
            &router.ns,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            "lan0",
        ]);
        ip(&["-n", &router.ns, "link", "set", "lan0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()]);
        Host { ns, ip: addr }
    }

    /// Makes `router` (a host of this lab with one LAN behind it, see
    /// [`Lab::behind`]) a home router that also runs Debian's
    /// `miniupnpd-nftables` (UPnP-IGD, NAT-PMP and PCP) for its LAN: NAT
    /// and filtering as [`Host::home_router`], in the `inet filter` table
    /// miniupnpd adds its mappings to (chains `miniupnpd`,
    /// `prerouting_miniupnpd`, `postrouting_miniupnpd`). It serves only
    /// `lan0`, maps only for the LAN (secure mode), ports 1024 and up. The
    /// router's external address must not be reserved: use a lab made with
    /// [`Lab::routable`]. Waits until it answers NAT-PMP.
    pub fn upnp_router(&mut self, router: &Host) {
        if run("sh", &["-c", "command -v miniupnpd"]).is_err() {
            cannot_run(
                "a UPnP lab",
                "`miniupnpd` is missing (apt-get install miniupnpd-nftables)",
            );
        }
        router.forwarding();
        let script = "table inet filter {
               chain forward { type filter hook forward priority 0; policy accept;
                 iifname \"eth0\" ct state established,related accept
                 iifname \"eth0\" jump miniupnpd
                 iifname \"eth0\" drop
               }
               chain miniupnpd {
               }
               chain prerouting { type nat hook prerouting priority -100; policy accept;
                 jump prerouting_miniupnpd
               }
               chain postrouting { type nat hook postrouting priority 100; policy accept;
                 jump postrouting_miniupnpd
                 oifname \"eth0\" masquerade
               }
               chain prerouting_miniupnpd {
               }
               chain postrouting_miniupnpd {
               }
               chain input { type filter hook input priority 0; policy accept;
                 iifname \"eth0\" ct state established,related accept
                 iifname \"eth0\" meta l4proto icmp accept
                 iifname \"eth0\" drop
               }
             }\n";
        if let Err(e) = run_with_input(
            "ip",
            &["netns", "exec", &router.ns, "nft", "-f", "-"],
            Some(script),
        ) {
            panic!("UPnP router nftables in {}: {e}", router.ns);
        }
        let n = router.ip.octets()[3];
        let conf = self.path(&format!("miniupnpd-{n}.conf"));
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=eth0\nlistening_ip=lan0\nhttp_port=0\nenable_natpmp=yes\n\
                 enable_upnp=yes\nsecure_mode=yes\nsystem_uptime=yes\n\
                 uuid=3d3cec3a-8cf0-11e0-98ee-0000000000{n:02x}\n\
                 allow 1024-65535 10.0.{n}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
            ),
        )
        .expect("writing miniupnpd's configuration");
        let log = std::fs::File::create(self.path(&format!("miniupnpd-{n}.log")))
            .expect("miniupnpd's log file");
        let pid = self.path(&format!("miniupnpd-{n}.pid"));
        let child = Command::new("ip")
            .args(["netns", "exec", &router.ns, "miniupnpd", "-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting miniupnpd in {}: {e}", router.ns));
        self.daemons.push(child);
        // Up once it listens for NAT-PMP/PCP (its log says so).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.upnp_log(router).contains("Listening for NAT-PMP") {
            assert!(
                Instant::now() < deadline,
                "miniupnpd did not start in {}:\n{}",
                router.ns,
                self.upnp_log(router)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// What miniupnpd on `router` logged.
    pub fn upnp_log(&self, router: &Host) -> String {
        let n = router.ip.octets()[3];
        std::fs::read_to_string(self.path(&format!("miniupnpd-{n}.log"))).unwrap_or_default()
    }

    /// The forwarding rules miniupnpd holds on `router` now (the `dnat`
    /// rules of its `prerouting_miniupnpd` chain, one per mapping).
    pub fn upnp_mappings(&self, router: &Host) -> Vec<String> {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &router.ns,
                "nft",
                "list",
                "chain",
                "inet",
                "filter",
                "prerouting_miniupnpd",
            ],
        )
        .unwrap_or_else(|e| panic!("listing miniupnpd's rules: {e}"));
        out.lines()
            .filter(|l| l.contains("dnat"))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        for ns in self.hosts.iter().rev() {
            delete_namespace(ns);
        }
        delete_namespace(&self.bridge);
        // Last: nothing addressed to the range is left to guard against.
        if let Some(table) = &self.guard {
            let _ = run("nft", &["delete", "table", "inet", table]);
        }
    }
}

/// One host of a lab.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// `IP:port` of this host.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// `hayedik ARGS...` run in this host, as process `name`.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_env(name, &[], args)
    }

    /// Like [`Host::spawn`], with `env` added to its environment.
    pub fn spawn_env(&self, name: &str, env: &[(&str, &str)], args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, BIN]).args(args);
        cmd.envs(env.iter().copied());
        Proc::spawn(name, cmd)
    }

    /// Replaces this host's lab firewall (`table inet lab`) with `chains`,
    /// nftables syntax, in one transaction.
    pub fn nft(&self, chains: &str) {
        let script =
            format!("table inet lab\ndelete table inet lab\ntable inet lab {{\n{chains}\n}}\n");
        if let Err(e) = run_with_input(
            "ip",
            &["netns", "exec", &self.ns, "nft", "-f", "-"],
            Some(&script),
        ) {
            panic!("nftables in {}: {e}\n{script}", self.ns);
        }
    }

    /// Makes this host a home router for the LAN [`Lab::behind`] puts
    /// behind it: forwarding on, its `eth0` (on the lab's "internet"
    /// bridge) masqueraded, only established or related traffic let in from
    /// `eth0` (forwarded or to the router itself: unsolicited packets are
    /// dropped, as NAT-LAB.md found real routers need). `symmetric` maps
    /// every new flow to a random port (`masquerade fully-random`), as a
    /// symmetric NAT does.
    pub fn home_router(&self, symmetric: bool) {
        self.forwarding();
        let random = if symmetric { " fully-random" } else { "" };
        let script = format!(
            "table ip nat {{
               chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
                 oifname \"eth0\" masquerade{random}
               }}
             }}
             table ip filter {{
               chain forward {{ type filter hook forward priority 0; policy accept;
                 iifname \"eth0\" ct state established,related accept
                 iifname \"eth0\" drop
               }}
               chain input {{ type filter hook input priority 0; policy accept;
                 iifname \"eth0\" ct state established,related accept
                 iifname \"eth0\" meta l4proto icmp accept
                 iifname \"eth0\" drop
               }}
             }}\n"
        );
        if let Err(e) = run_with_input(
            "ip",
            &["netns", "exec", &self.ns, "nft", "-f", "-"],
            Some(&script),
        ) {
            panic!("router nftables in {}: {e}\n{script}", self.ns);
        }
    }

    /// A [`Host::home_router`] whose input chain also accepts unsolicited
    /// traffic from `eth0` to the router itself (some real routers do).
    pub fn accept_input_from_wan(&self) {
        if let Err(e) = run(
            "ip",
            &[
                "netns", "exec", &self.ns, "nft", "flush", "chain", "ip", "filter", "input",
            ],
        ) {
            panic!("router input chain in {}: {e}", self.ns);
        }
    }

    /// Turns IPv4 forwarding on in this host.
    fn forwarding(&self) {
        if let Err(e) = run(
            "ip",
            // Through sh, not sysctl: nothing beyond iproute2 and nftables.
            &[
                "netns",
                "exec",
                &self.ns,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward",
            ],
        ) {
            panic!("lab set-up: {e}");
        }
    }

    /// Removes this host's lab firewall.
    pub fn clear_nft(&self) {
        self.nft("");
    }

    /// Drops `percent` % of the UDP datagrams this host receives, at random.
    pub fn udp_loss(&self, percent: u32) {
        self.nft(&format!(
            "chain input {{ type filter hook input priority 0; policy accept;
               meta l4proto udp numgen random mod 100 < {percent} drop
             }}"
        ));
    }

    /// A stateful firewall: only replies to what this host sent get in.
    pub fn stateful_firewall(&self) {
        self.nft(
            "chain input { type filter hook input priority 0; policy drop;
               iif lo accept
               ct state established,related accept
             }",
        );
    }

    /// Cuts this host off: nothing in, nothing out (no reset either: the
    /// others see silence, as across a broken link).
    pub fn partition(&self) {
        self.nft(
            "chain input { type filter hook input priority 0; policy drop; iif lo accept
             }
             chain output { type filter hook output priority 0; policy drop; oif lo accept
             }",
        );
    }

    /// Takes this host's link down or brings it back.
    pub fn set_link(&self, up: bool) {
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }
}

/// One run of the binary with `--json`: its events and its stderr.
pub struct Proc {
    pub name: String,
    child: Child,
    events: Receiver<Value>,
    /// Received events that no wait has taken yet.
    pending: VecDeque<Value>,
    /// Every event received, in order.
    pub history: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `cmd` with piped output.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        // The tests read diagnostic log lines (bans, changes on disk):
        // logs are opt-in since issue 17.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // A home of its own, unless the caller chose one (to share it).
        if !cmd.get_envs().any(|(k, _)| k == "HAYEDIK_HOME") {
            cmd.env("HAYEDIK_HOME", crate::harness::isolated_home());
        }
        cmd.env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v["event"].is_string() => v,
                    _ => serde_json::json!({"event": "__not_an_event", "line": line}),
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            events,
            pending: VecDeque::new(),
            history: Vec::new(),
            stderr,
        }
    }

    /// `hayedik ARGS...` on this machine's own network (loopback tests).
    pub fn local(name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Proc::spawn(name, cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process printed on stderr (its last 64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stderr once `pred` holds of it, or as it is after `limit`: the
    /// thread collecting it may trail the events on stdout.
    pub fn stderr_when(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        crate::harness::text_when(|| self.stderr(), limit, pred)
    }

    fn context(&self) -> String {
        let err = self.stderr();
        let start = err.len().saturating_sub(3000);
        let start = (start..err.len())
            .find(|&i| err.is_char_boundary(i))
            .unwrap_or(0);
        format!(
            "{}: events {:?}\nstderr tail:\n{}",
            self.name,
            self.history,
            &err[start..]
        )
    }

    fn received(&mut self, v: Value) -> Value {
        assert_ne!(
            v["event"], "__not_an_event",
            "{} printed a line that is not a JSON event: {v}",
            self.name
        );
        self.history.push(v.clone());
        v
    }

    /// The first event not yet taken that `pred` accepts, within `limit`.
    pub fn try_wait_for(
        &mut self,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.events.recv_timeout(left).ok()?;
            let v = self.received(v);
            if pred(&v) {
                return Some(v);
            }
            self.pending.push_back(v);
        }
    }

    /// Like [`Proc::try_wait_for`], panicking with the process's output when
    /// nothing comes.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        match self.try_wait_for(limit, pred) {
            Some(v) => v,
            None => panic!(
                "waiting {limit:?} for {what} from {}\n{}",
                self.name,
                self.context()
            ),
        }
    }

    /// The next event named `name` (an `error` event fails the wait at once).
    pub fn wait_event(&mut self, name: &str, limit: Duration) -> Value {
        let v = self.wait_for(name, limit, |v| v["event"] == name || v["event"] == "error");
        if v["event"] == "error" && name != "error" {
            panic!(
                "{} failed while waiting for {name}: {v}\n{}",
                self.name,
                self.context()
            );
        }
        v
    }

    /// Waits for a `progress` event with at least `bytes` done.
    pub fn wait_progress(&mut self, bytes: u64, limit: Duration) -> Value {
        self.wait_for(&format!("{bytes} bytes done"), limit, |v| {
            (v["event"] == "progress" && v["bytes_done"].as_u64() >= Some(bytes))
                || v["event"] == "done"
                || v["event"] == "error"
        })
    }

    /// The `addr` of the `listening` event.
    pub fn listening(&mut self) -> SocketAddr {
        let v = self.wait_event("listening", Duration::from_secs(10));
        v["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad listening event {v}"))
    }

    /// Every event received so far (without waiting).
    pub fn events(&mut self) -> &[Value] {
        while let Ok(v) = self.events.try_recv() {
            let v = self.received(v);
            self.pending.push_back(v);
        }
        &self.history
    }

    /// How many events named `name` were received so far.
    pub fn count(&mut self, name: &str) -> usize {
        self.events().iter().filter(|v| v["event"] == name).count()
    }

    /// The exit status, if it exits within `limit`.
    pub fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for a child") {
                // What it printed last.
                while let Ok(v) = self.events.recv_timeout(Duration::from_millis(500)) {
                    let v = self.received(v);
                    self.pending.push_back(v);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status; panics when it takes longer than `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match self.exit_within(limit) {
            Some(s) => s,
            None => panic!(
                "{} did not exit within {limit:?}\n{}",
                self.name,
                self.context()
            ),
        }
    }

    /// Expects exit status 0 within `limit`.
    pub fn expect_success(&mut self, limit: Duration) {
        let status = self.wait_exit(limit);
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            self.name,
            self.context()
        );
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Open file descriptors of the process now.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails when the process panicked (a backtrace or a panic message).
    pub fn assert_no_panic(&self) {
        let err = self.stderr();
        assert!(
            !err.contains("panicked at") && !err.contains("stack backtrace"),
            "{} panicked:\n{}",
            self.name,
            self.context()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            note(&format!(
                "--- {} at the failure:\n{}",
                self.name,
                self.context()
            ));
        }
    }
}

/// Reads a pipe on a thread into a string (its tail, for failure messages).
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
            s.push_str(&String::from_utf8_lossy(&buf[..n]));
            if s.len() > 64 * 1024 {
                let cut = s.len() - 32 * 1024;
                let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                s.drain(..cut);
            }
        }
    });
    text
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Writes `len` pseudo-random bytes from `seed` to `path`; returns them.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let data = random_bytes(len, seed);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    data
}

/// Fails unless the file at `path` holds exactly `expected`.
pub fn assert_file_is(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(
        got.len(),
        expected.len(),
        "{} has the wrong length",
        path.display()
    );
    if got != expected {
        let first = got.iter().zip(expected).position(|(a, b)| a != b);
        panic!(
            "{} differs from the shared file at byte {first:?}",
            path.display()
        );
    }
}

/// Copies `data` to `dir/name` (a complete copy, for a seeding `get`).
pub fn place_copy(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("creating a directory");
    std::fs::write(dir.join(name), data).expect("writing a copy");
}

/// `ticket` of a sharer's `ticket` event.
pub fn ticket_of(sharer: &mut Proc) -> String {
    let v = sharer.wait_event("ticket", Duration::from_secs(40));
    v["ticket"].as_str().expect("a ticket string").to_string()
}

/// The swarm port of a ticket `hayedik://HOST:PORT/ROOT`.
pub fn ticket_port(ticket: &str) -> u16 {
    let t: hayedik_proto::ticket::Ticket = ticket.parse().expect("a valid ticket");
    t.port
}

/// The root of a ticket.
pub fn ticket_root(ticket: &str) -> [u8; 32] {
    let t: hayedik_proto::ticket::Ticket = ticket.parse().expect("a valid ticket");
    t.root
}
