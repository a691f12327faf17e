//! The tracker benchmark: `cargo bench --bench tracker` (or `bash bench/tracker.sh`,
//! which also installs opentracker). It prints figures and asserts nothing.
//!
//! The real `hayedik tracker` binary runs as a separate process, pinned to
//! CPU 0 with `taskset`; this process is the load generator, pinned to CPU 1:
//! one thread, a few non-blocking UDP sockets, each keeping a small window of
//! requests in flight, for a fixed time per phase. Phases:
//!
//! - (a) swarm creations per second, each the full handshake: JOIN,
//!   CHALLENGE, JOIN with the cookie, the two OFFERs, CONFIRM, CONFIRMED;
//! - (b) ANNOUNCE -> PEERS per second on 1 swarm of 100 peers;
//! - (c) the same over 1,000 swarms of 100 peers each.
//!
//! (b) and (c) also run against Debian's opentracker (BEP 15 UDP protocol,
//! same generator, same pinning, its whitelist listing the info hashes),
//! and against the floor: this program run again as the least that any UDP
//! tracker does, one socket that answers each request with a fixed reply of
//! opentracker's size, so that the kernel's share of an announce (receiving
//! one datagram and sending one) is measured on its own; and against the
//! port floor, the same with a socket per swarm in one epoll set, as
//! hayedik's port-per-swarm design has: what the kernel alone costs such a
//! tracker per announce.
//! Every phase gets a fresh tracker process, so its peak memory (VmHWM) is
//! that phase's. The tracker's CPU time is read from `/proc/PID/stat`
//! (utime + stime) before and after the measured interval: `getrusage`'s
//! `RUSAGE_CHILDREN` only counts children that were waited for.
//!
//! Phases (b) and (c) also report memory: bytes per idle swarm and per
//! listed peer (VmRSS before and after), descriptors per swarm, and how many
//! swarms the tracker's open-file limit allows (docs/performance.md).
//!
//! Environment: `HAYEDIK_BENCH_SECS` (measured seconds per phase, default 5),
//! `HAYEDIK_BENCH_SWARMS` (swarm counts of phase (c), default `1000,10000`),
//! `HAYEDIK_BENCH_BASELINE` (path of another hayedik binary, e.g. main's,
//! run beside this build in every phase: an A/B comparison in one run),
//! `HAYEDIK_BENCH_BIN` (the binary measured as this build, e.g. one from
//! `cargo build --release`, whose code layout is the product's),
//! `HAYEDIK_BENCH_WINDOW` (requests in flight per socket, default 2),
//! `HAYEDIK_BENCH_MAX_SWARMS` (cap on swarms created in phase (a), default
//! 20,000: each holds a port), `HAYEDIK_BENCH_OPENTRACKER=0` (skip it),
//! `HAYEDIK_BENCH_FLOOR=0` (skip both floors).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hayedik_proto::manifest::swarm_key;
use hayedik_proto::tracker::{Announce, Datagram, Message, PeerState};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Peers asked for in every announce, in both protocols.
const WANTED: u16 = 50;
/// A socket whose requests got no reply for this long counts them as lost.
const LOST_AFTER: Duration = Duration::from_millis(100);
/// Upper bound on any setup step (creating swarms, CONNECTs, warm-up), per
/// 1,000 swarms (at least one).
const SETUP_LIMIT: Duration = Duration::from_secs(60);

fn setup_limit(swarms: usize) -> Duration {
    SETUP_LIMIT
        * u32::try_from(swarms.div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1)
}
/// BEP 15's protocol id, in a CONNECT.
const BEP15_MAGIC: u64 = 0x417_2710_1980;

/// Set in the floor's own process (this program run again): the port it
/// serves on.
const FLOOR_PORT_ENV: &str = "HAYEDIK_BENCH_FLOOR_SERVE";

/// Set in the port floor's own process: `SOCKETS:PATH`, how many sockets
/// it binds and the file it lists their ports in.
const PORT_FLOOR_ENV: &str = "HAYEDIK_BENCH_PORT_FLOOR_SERVE";

fn main() {
    if let Ok(port) = std::env::var(FLOOR_PORT_ENV) {
        serve_floor(&port);
        return;
    }
    if let Ok(spec) = std::env::var(PORT_FLOOR_ENV) {
        serve_port_floor(&spec);
        return;
    }
    let settings = Settings::from_env();
    let pin = Pinning::detect();
    pin.pin_self();
    let _autogroup = pin.boost_session();
    println!("hayedik tracker benchmark");
    println!(
        "  {} rounds of {} s per phase, {} peers per swarm, {:?} swarms in (c), {} requests in flight per socket",
        settings.rounds,
        settings.secs.as_secs_f64(),
        settings.peers,
        settings.swarms,
        settings.window
    );
    if let Some(b) = &settings.bin {
        println!("  this build: {b} (HAYEDIK_BENCH_BIN)");
    }
    if let Some(b) = &settings.baseline {
        println!("  baseline: {b} (HAYEDIK_BENCH_BASELINE), run beside this build in every phase");
    }
    println!(
        "  (a) stops at {} swarms (each holds a port and a descriptor); {} handshakes in flight per socket",
        settings.max_creations, settings.handshakes
    );
    println!("  {}", pin.describe());
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "  load average before the run: {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let mut record = |label: &str, r: Result<Figure, String>| match r {
        Ok(f) => {
            println!(
                "  {label}: {} {}/s, {:.2} CPU s per M",
                thousands(f.rate()),
                short_unit(f.unit),
                f.cpu_per_million()
            );
            figures.push(f);
        }
        Err(e) => {
            println!("  FAILED: {label}: {e}");
            notes.push(format!("{label}: {e}"));
        }
    };
    let rounds = settings.rounds;
    let this = settings
        .bin
        .clone()
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_hayedik").to_string());
    let mut hayediks = vec![("hayedik", this.as_str())];
    if let Some(b) = &settings.baseline {
        hayediks.push(("baseline", b.as_str()));
    }
    for round in 1..=rounds {
        for &(name, bin) in &hayediks {
            record(
                &format!("(a) {name}, round {round}/{rounds}"),
                hayedik_creations(&settings, &pin, name, bin),
            );
        }
    }
    let mut opentracker_ok = settings.opentracker;
    let mut phases = vec![1];
    phases.extend(settings.swarms.iter().copied());
    for &swarms in &phases {
        let phase = &phase_name(swarms)[..3];
        // Alternate the trackers, so that all see the same moments of
        // whatever else the machine is doing.
        for round in 1..=rounds {
            for &(name, bin) in &hayediks {
                record(
                    &format!("{phase} {name}, round {round}/{rounds}"),
                    hayedik_announces(&settings, &pin, swarms, name, bin),
                );
            }
            if opentracker_ok {
                let r = opentracker_announces(&settings, &pin, swarms);
                if let Err(e) = &r {
                    if e.starts_with("cannot start") {
                        opentracker_ok = false;
                    }
                }
                record(&format!("{phase} opentracker, round {round}/{rounds}"), r);
            }
            if settings.floor {
                record(
                    &format!("{phase} {FLOOR}, round {round}/{rounds}"),
                    floor_announces(&settings, &pin, swarms),
                );
                record(
                    &format!("{phase} {PORT_FLOOR}, round {round}/{rounds}"),
                    port_floor_announces(&settings, &pin, swarms),
                );
            }
        }
    }
    if !settings.opentracker {
        notes.push("opentracker skipped (HAYEDIK_BENCH_OPENTRACKER=0)".into());
    }
    let medians = medians(&figures);
    print_table(&medians);
    print_memory(&medians);
    print_ratios(&medians, &phases);
    println!();
    println!("one reply of each announce phase (after the warm-up):");
    for m in medians.iter().filter(|m| !m.figure.reply.is_empty()) {
        println!(
            "  {:<29} {:<12} {}",
            m.figure.phase, m.figure.tracker, m.figure.reply
        );
    }
    for n in notes {
        println!("note: {n}");
    }
}

/// What can be tuned from the environment.
struct Settings {
    secs: Duration,
    window: usize,
    handshakes: usize,
    rounds: usize,
    peers: usize,
    /// Swarm counts of phase (c) (`HAYEDIK_BENCH_SWARMS`, default 1000,10000).
    swarms: Vec<usize>,
    max_creations: usize,
    opentracker: bool,
    /// Also measure the floors ([`serve_floor`], [`serve_port_floor`];
    /// `HAYEDIK_BENCH_FLOOR=0` skips them).
    floor: bool,
    /// Another hayedik binary run beside this one (`HAYEDIK_BENCH_BASELINE`),
    /// e.g. main's, for an A/B comparison in the same run.
    baseline: Option<String>,
    /// The binary measured as "hayedik" (`HAYEDIK_BENCH_BIN`), instead of
    /// the one this bench built: `cargo bench` builds it with the
    /// dev-dependencies' features, so its symbols differ from a `cargo
    /// build --release` and hot-text.ld does not apply to it.
    bin: Option<String>,
}

impl Settings {
    fn from_env() -> Self {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        }
        let secs: f64 = var("HAYEDIK_BENCH_SECS", 5.0);
        Self {
            secs: Duration::from_secs_f64(secs.clamp(0.5, 120.0)),
            window: var("HAYEDIK_BENCH_WINDOW", 2usize).clamp(1, 64),
            handshakes: var("HAYEDIK_BENCH_HANDSHAKES", 4usize).clamp(1, 64),
            rounds: var("HAYEDIK_BENCH_ROUNDS", 3usize).clamp(1, 20),
            peers: 100,
            swarms: std::env::var("HAYEDIK_BENCH_SWARMS")
                .unwrap_or_else(|_| "1000,10000".into())
                .split(',')
                .filter_map(|v| v.trim().parse().ok())
                .map(|n: usize| n.clamp(2, 15_000))
                .collect(),
            // Each swarm holds a port and a descriptor of the tracker.
            max_creations: var("HAYEDIK_BENCH_MAX_SWARMS", 20_000usize)
                .min(fd_limit().saturating_sub(1000))
                .clamp(100, 25_000),
            opentracker: std::env::var("HAYEDIK_BENCH_OPENTRACKER").as_deref() != Ok("0"),
            floor: std::env::var("HAYEDIK_BENCH_FLOOR").as_deref() != Ok("0"),
            baseline: std::env::var("HAYEDIK_BENCH_BASELINE")
                .ok()
                .filter(|v| !v.is_empty()),
            bin: std::env::var("HAYEDIK_BENCH_BIN")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------
// Processes: pinning, CPU time, peak memory, kill on drop.

/// CPU 0 for the tracker, CPU 1 for this generator, when `taskset` exists and
/// there are two CPUs to pin to; both at nice -20 when run as root, so that
/// other work on the machine (a build) disturbs the figures less.
struct Pinning {
    enabled: bool,
    why_not: String,
    boost: bool,
}

impl Pinning {
    fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let why_not = if !taskset {
            "taskset not found (util-linux): nothing pinned, the figures mix both cores".into()
        } else if cpus < 2 {
            format!("{cpus} CPU available: nothing pinned, tracker and generator share it")
        } else {
            String::new()
        };
        let boost = is_root() && std::env::var("HAYEDIK_BENCH_NICE").as_deref() != Ok("0");
        Self {
            enabled: why_not.is_empty(),
            why_not,
            boost,
        }
    }

    fn describe(&self) -> String {
        let pinned = if self.enabled {
            "tracker pinned to CPU 0, load generator (this process, one thread) to CPU 1 (taskset)"
                .to_string()
        } else {
            self.why_not.clone()
        };
        let boost = if self.boost {
            "both at nice -20"
        } else {
            "default priority (nice -20 needs root; HAYEDIK_BENCH_NICE=0 turns it off)"
        };
        format!("{pinned}; {boost}")
    }

    fn pin_self(&self) {
        let me = std::process::id().to_string();
        if self.enabled {
            let _ = Command::new("taskset")
                .args(["-cp", "1", &me])
                .stdout(Stdio::null())
                .status();
        }
        if self.boost {
            let _ = Command::new("renice")
                .args(["-n", "-20", "-p", &me])
                .stdout(Stdio::null())
                .status();
        }
    }

    /// With autogroup scheduling, nice only ranks processes of one session:
    /// the session's group is raised too, and put back by the guard.
    fn boost_session(&self) -> Option<AutogroupGuard> {
        if !self.boost {
            return None;
        }
        let path = "/proc/self/autogroup";
        let before = std::fs::read_to_string(path).ok()?;
        let nice: i32 = before.split_whitespace().last()?.parse().ok()?;
        std::fs::write(path, "-20").ok()?;
        Some(AutogroupGuard { nice })
    }

    /// A command running `program` on the tracker's CPU (`nice` and
    /// `taskset` exec it in place: the child's pid is the program's).
    fn command(&self, program: &str) -> Command {
        let mut argv: Vec<&str> = Vec::new();
        if self.boost {
            argv.extend(["nice", "-n", "-20"]);
        }
        if self.enabled {
            argv.extend(["taskset", "-c", "0"]);
        }
        argv.push(program);
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    }
}

/// Puts the session's autogroup nice value back.
struct AutogroupGuard {
    nice: i32,
}

impl Drop for AutogroupGuard {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/self/autogroup", self.nice.to_string());
    }
}

/// A tracker process, killed and reaped on drop.
struct Tracker {
    child: Child,
    /// Its working files (config, whitelist, logs), removed after it.
    _dir: tempfile::TempDir,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tracker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User and system CPU seconds of the process (all its threads) so far.
    fn cpu_split(&self) -> (f64, f64) {
        proc_cpu_split(&format!("/proc/{}/stat", self.pid())).unwrap_or((f64::NAN, f64::NAN))
    }

    /// Peak resident memory (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Resident memory now (VmRSS) in KiB.
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Open descriptors now.
    fn fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
                .ok()?
                .count(),
        )
    }

    /// Its soft limit on open files.
    fn fd_limit(&self) -> Option<u64> {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }

    /// The program's name as the kernel sees it (taskset execs it in place).
    fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// Fails with the tail of its log if the process has exited.
    fn check_alive(&mut self, log: &Path) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("exited ({status}): {}", tail(log))),
            Err(e) => Err(format!("cannot watch it: {e}")),
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime from a `/proc/.../stat` file, in seconds.
fn proc_cpu_secs(path: &str) -> Option<f64> {
    proc_cpu_split(path).map(|(user, system)| user + system)
}

/// utime and stime from a `/proc/.../stat` file, in seconds.
fn proc_cpu_split(path: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces: count fields after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks();
    Some((utime / ticks, stime / ticks))
}

fn self_cpu_secs() -> f64 {
    proc_cpu_secs("/proc/self/stat").unwrap_or(f64::NAN)
}

/// Starts `hayedik tracker` on 127.0.0.1, port 0, caps raised; returns it and
/// the central tracker's address read from its `listening` event.
fn start_hayedik(pin: &Pinning, bin: &str) -> Result<(Tracker, SocketAddr), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let log = dir.path().join("stderr.log");
    let stderr = File::create(&log).map_err(|e| format!("log file: {e}"))?;
    let events_path = dir.path().join("events.jsonl");
    let events = File::create(&events_path).map_err(|e| format!("events file: {e}"))?;
    let mut cmd = pin.command(bin);
    cmd.args(["tracker", "--listen", "127.0.0.1:0", "--json"])
        .args(["--max-swarms-per-ip", "100000"])
        .args(["--max-pending-per-ip", "100000"])
        .args(["--max-pending", "100000"])
        .args(["--max-joins-per-ip-per-sec", "1000000"])
        .args(["--join-burst", "1000000"])
        .args(["--max-swarms", "200000"])
        .args(["--max-swarms-per-24", "1000000"])
        // Every peer of the load generator is on 127.0.0.1.
        .args(["--max-peers-per-ip", "1000000"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        // A file, not a pipe: a pipe nobody drains fast enough would block
        // the tracker on its swarm events.
        .stdout(events)
        .stderr(stderr);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let mut tracker = Tracker { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let text = std::fs::read_to_string(&events_path).unwrap_or_default();
        let listening = text.lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["event"] == "listening").then(|| v["addr"].as_str().map(str::to_string))?
        });
        if let Some(addr) = listening {
            break addr;
        }
        tracker.check_alive(&log)?;
        if Instant::now() > deadline {
            return Err("no `listening` event within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad listening address {addr}: {e}"))?;
    // The kernel keeps the first 15 bytes of the program's file name.
    let name: String = Path::new(bin)
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    if tracker.comm() != name {
        println!(
            "  warning: pid {} is '{}', not hayedik: CPU figures may be wrong",
            tracker.pid(),
            tracker.comm()
        );
    }
    Ok((tracker, addr))
}

/// Starts Debian's opentracker on a free UDP port of 127.0.0.1 with a
/// whitelist of `hashes`, and waits until it answers for the first one.
fn start_opentracker(pin: &Pinning, hashes: &[[u8; 20]]) -> Result<(Tracker, SocketAddr), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let path = dir.path().to_path_buf();
    // Started as root, it chroots into its rootdir and becomes `nobody`, who
    // must be able to read the whitelist (reloaded after the chroot).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod: {e}"))?;
    let whitelist: String = hashes
        .iter()
        .map(|h| format!("{}\n", hayedik_proto::hex::encode(h)))
        .collect();
    std::fs::write(path.join("whitelist.txt"), whitelist).map_err(|e| format!("whitelist: {e}"))?;
    let root = is_root();
    let port = free_udp_port()?;
    let whitelist_path = if root {
        "/whitelist.txt".to_string()
    } else {
        path.join("whitelist.txt").display().to_string()
    };
    let conf = format!(
        "listen.udp 127.0.0.1:{port}\ntracker.rootdir {}\naccess.whitelist {whitelist_path}\n",
        path.display()
    );
    let conf_path = path.join("opentracker.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("config: {e}"))?;
    let log = path.join("opentracker.log");
    let out = File::create(&log).map_err(|e| format!("log file: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
    let mut cmd = pin.command("opentracker");
    cmd.arg("-f")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd.spawn().map_err(|e| {
        format!("cannot start opentracker: {e} (bash bench/tracker.sh installs it with apt-get)")
    })?;
    let mut tracker = Tracker { child, _dir: dir };
    let addr = SocketAddr::new(LOCALHOST, port);
    // Ready once it answers an announce that leaves at once (event 3).
    wait_bep15(&mut tracker, &log, addr, "opentracker", |probe, cid| {
        let mut req = Vec::new();
        bep15_announce(&mut req, cid, 2, &hashes[0], &[0xee; 20], true, 3, 1);
        let _ = probe.send_to(&req, addr);
        let mut buf = [0u8; 2048];
        matches!(probe.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[0..4] == 1u32.to_be_bytes())
    })
    .map_err(|e| format!("cannot start opentracker: {e}"))?;
    if tracker.comm() != "opentracker" {
        println!(
            "  warning: pid {} is '{}', not opentracker: CPU figures may be wrong",
            tracker.pid(),
            tracker.comm()
        );
    }
    Ok((tracker, addr))
}

/// The hard limit on open files, which the tracker raises its own to.
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(4)?.parse().ok()
        })
        .unwrap_or(1024)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn free_udp_port() -> Result<u16, String> {
    let s = UdpSocket::bind((LOCALHOST, 0)).map_err(|e| format!("free port: {e}"))?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.port())
}

// ---------------------------------------------------------------------------
// The load generator.

/// `n` non-blocking UDP sockets on 127.0.0.1, each on its own port.
fn sockets(n: usize) -> Result<Vec<UdpSocket>, String> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind((LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(s)
        })
        .collect()
}

fn local_port(s: &UdpSocket) -> u16 {
    s.local_addr().map_or(0, |a| a.port())
}

/// What a reply meant to the workload.
enum Outcome {
    /// One unit of work completed (an announce answered, a swarm created).
    Done,
    /// One unit of work ended in an error reply.
    Failed,
    /// Send the follow-up request written to `out` to this address (the
    /// unit continues: a handshake's next step).
    Follow(SocketAddr),
    /// Not for us (a duplicate, a late reply).
    Ignore,
}

/// A kind of traffic: what to send next on a socket, what a reply means.
trait Workload {
    /// Writes the next request for socket `s` into `out`; `None`: nothing now.
    fn next(&mut self, s: usize, out: &mut Vec<u8>) -> Option<SocketAddr>;
    /// Interprets a reply on socket `s`; a follow-up request goes to `out`.
    fn reply(&mut self, s: usize, from: SocketAddr, data: &[u8], out: &mut Vec<u8>) -> Outcome;
    /// The requests in flight on socket `s` were lost.
    fn timed_out(&mut self, _s: usize) {}
    /// Whether the work is complete.
    fn finished(&self) -> bool {
        false
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Run {
    done: u64,
    failed: u64,
    /// Requests that got no reply within [`LOST_AFTER`].
    lost: u64,
    secs: f64,
}

/// Keeps `window` units in flight on every socket until `deadline` or until
/// the workload is finished, on this thread only.
fn drive(socks: &[UdpSocket], w: &mut impl Workload, window: usize, deadline: Instant) -> Run {
    let n = socks.len();
    let mut outstanding = vec![0usize; n];
    let mut last = vec![Instant::now(); n];
    let mut rbuf = [0u8; 2048];
    let mut out = Vec::with_capacity(128);
    let mut run = Run::default();
    let start = Instant::now();
    let mut now = start;
    loop {
        for (s, sock) in socks.iter().enumerate() {
            loop {
                let (len, from) = match sock.recv_from(&mut rbuf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                };
                last[s] = now;
                out.clear();
                match w.reply(s, from, &rbuf[..len], &mut out) {
                    Outcome::Done => {
                        run.done += 1;
                        outstanding[s] = outstanding[s].saturating_sub(1);
                    }
                    Outcome::Failed => {
                        run.failed += 1;
                        outstanding[s] = outstanding[s].saturating_sub(1);
                    }
                    Outcome::Follow(to) => {
                        let _ = sock.send_to(&out, to);
                    }
                    Outcome::Ignore => {}
                }
            }
            while outstanding[s] < window {
                out.clear();
                let Some(to) = w.next(s, &mut out) else {
                    break;
                };
                // A failed send is counted as in flight: it times out and
                // the workload takes the request back.
                let _ = sock.send_to(&out, to);
                if outstanding[s] == 0 {
                    last[s] = now;
                }
                outstanding[s] += 1;
            }
        }
        now = Instant::now();
        if now >= deadline || w.finished() {
            break;
        }
        for s in 0..n {
            if outstanding[s] > 0 && now.duration_since(last[s]) > LOST_AFTER {
                run.lost += outstanding[s] as u64;
                outstanding[s] = 0;
                w.timed_out(s);
            }
        }
    }
    run.secs = now.duration_since(start).as_secs_f64();
    run
}

// ---------------------------------------------------------------------------
// hayedik workloads.

/// The swarm-creating handshake, optionally followed by CONNECT and a first
/// ANNOUNCE (state "asking": no peer listed) that binds a swarm key.
struct Handshakes {
    central: SocketAddr,
    /// Keys to bind, one per swarm to create; `None`: stop at CONFIRMED.
    keys: Option<Vec<[u8; 32]>>,
    free_keys: Vec<usize>,
    limit: usize,
    next_tid: u32,
    pending: Vec<HashMap<u32, Stage>>,
    /// Created swarms: address and the index of the key bound to it.
    created: Vec<(SocketAddr, usize)>,
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Join,
    JoinWithCookie,
    Confirm(SocketAddr),
    Connect(SocketAddr, usize),
    Bind(SocketAddr, usize),
}

impl Handshakes {
    fn new(central: SocketAddr, sockets: usize, limit: usize, keys: Option<Vec<[u8; 32]>>) -> Self {
        Self {
            central,
            free_keys: (0..keys.as_ref().map_or(0, Vec::len)).rev().collect(),
            keys,
            limit,
            next_tid: 1,
            pending: vec![HashMap::new(); sockets],
            created: Vec::new(),
        }
    }

    fn in_flight(&self) -> usize {
        self.pending.iter().map(HashMap::len).sum()
    }

    /// Swarm addresses in key order (index `i` bound to key `i`).
    fn swarms_by_key(&self) -> Vec<SocketAddr> {
        let mut v = self.created.clone();
        v.sort_by_key(|&(_, k)| k);
        v.into_iter().map(|(a, _)| a).collect()
    }
}

impl Workload for Handshakes {
    fn next(&mut self, s: usize, out: &mut Vec<u8>) -> Option<SocketAddr> {
        if self.created.len() + self.in_flight() >= self.limit {
            return None;
        }
        let tid = self.next_tid;
        self.next_tid = self.next_tid.wrapping_add(1);
        self.pending[s].insert(tid, Stage::Join);
        Datagram::new(tid, Message::Join { cookie: 0 }).encode(out);
        Some(self.central)
    }

    fn reply(&mut self, s: usize, from: SocketAddr, data: &[u8], out: &mut Vec<u8>) -> Outcome {
        let Ok(d) = Datagram::decode(data) else {
            return Outcome::Ignore;
        };
        let Some(stage) = self.pending[s].get(&d.tid).copied() else {
            return Outcome::Ignore;
        };
        let tid = d.tid;
        let (next, msg, to) = match (stage, d.message) {
            (Stage::Join, Message::Challenge { cookie }) => (
                Stage::JoinWithCookie,
                Message::Join { cookie },
                self.central,
            ),
            (Stage::JoinWithCookie, Message::Offer { token, port }) => {
                let swarm = port.map_or(from, |p| SocketAddr::new(self.central.ip(), p));
                (Stage::Confirm(swarm), Message::Confirm { token }, swarm)
            }
            (Stage::Confirm(swarm), Message::Confirmed) => {
                let Some(key) = self.free_keys.pop() else {
                    self.pending[s].remove(&tid);
                    self.created.push((swarm, self.created.len()));
                    return Outcome::Done;
                };
                (Stage::Connect(swarm, key), Message::Connect, swarm)
            }
            (Stage::Connect(swarm, key), Message::Connected { connection_id }) => {
                let keys = self.keys.as_ref().expect("keys when binding");
                let announce = Announce {
                    swarm_key: keys[key],
                    port: 0,
                    state: PeerState::Asking,
                    wanted: 1,
                };
                (
                    Stage::Bind(swarm, key),
                    Message::Announce {
                        connection_id,
                        announce,
                    },
                    swarm,
                )
            }
            (Stage::Bind(swarm, key), Message::Peers(_)) => {
                self.pending[s].remove(&tid);
                self.created.push((swarm, key));
                return Outcome::Done;
            }
            (stage, Message::Error { .. }) => {
                self.pending[s].remove(&tid);
                if let Stage::Connect(_, key) | Stage::Bind(_, key) = stage {
                    self.free_keys.push(key);
                }
                return Outcome::Failed;
            }
            // The second OFFER of a pair, or anything unexpected.
            _ => return Outcome::Ignore,
        };
        self.pending[s].insert(tid, next);
        Datagram::new(tid, msg).encode(out);
        Outcome::Follow(to)
    }

    fn timed_out(&mut self, s: usize) {
        for (_, stage) in self.pending[s].drain() {
            if let Stage::Connect(_, key) | Stage::Bind(_, key) = stage {
                self.free_keys.push(key);
            }
        }
    }

    fn finished(&self) -> bool {
        self.created.len() >= self.limit
    }
}

/// Which protocol a workload speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Hayedik,
    Bep15,
}

/// Every socket CONNECTs to every target and keeps the connection ids.
struct Connects {
    proto: Proto,
    targets: Vec<SocketAddr>,
    queue: Vec<Vec<u32>>,
    in_flight: Vec<HashSet<u32>>,
    /// `ids[s * targets + j]`: socket `s`'s connection id at target `j`.
    ids: Vec<u64>,
    got: usize,
}

impl Connects {
    fn new(proto: Proto, targets: Vec<SocketAddr>, sockets: usize) -> Self {
        let n = u32::try_from(targets.len()).expect("fewer than 2^32 targets");
        Self {
            proto,
            queue: (0..sockets).map(|_| (0..n).rev().collect()).collect(),
            in_flight: vec![HashSet::new(); sockets],
            ids: vec![0; sockets * targets.len()],
            targets,
            got: 0,
        }
    }
}

impl Workload for Connects {
    fn next(&mut self, s: usize, out: &mut Vec<u8>) -> Option<SocketAddr> {
        let j = self.queue[s].pop()?;
        self.in_flight[s].insert(j);
        match self.proto {
            Proto::Hayedik => Datagram::new(j, Message::Connect).encode(out),
            Proto::Bep15 => bep15_connect(out, j),
        }
        Some(self.targets[j as usize])
    }

    fn reply(&mut self, s: usize, _from: SocketAddr, data: &[u8], _out: &mut Vec<u8>) -> Outcome {
        let (tid, id) = match self.proto {
            Proto::Hayedik => match Datagram::decode(data) {
                Ok(Datagram {
                    tid,
                    message: Message::Connected { connection_id },
                }) => (tid, connection_id),
                _ => return Outcome::Ignore,
            },
            Proto::Bep15 => {
                if data.len() < 16 {
                    return Outcome::Ignore;
                }
                let tid = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes"));
                match bep15_connected(data, tid) {
                    Some(id) => (tid, id),
                    None => return Outcome::Ignore,
                }
            }
        };
        if !self.in_flight[s].remove(&tid) {
            return Outcome::Ignore;
        }
        self.ids[s * self.targets.len() + tid as usize] = id;
        self.got += 1;
        Outcome::Done
    }

    fn timed_out(&mut self, s: usize) {
        let lost: Vec<u32> = self.in_flight[s].drain().collect();
        self.queue[s].extend(lost);
    }

    fn finished(&self) -> bool {
        self.got == self.ids.len()
    }
}

/// ANNOUNCEs from every socket, each socket cycling over every swarm.
///
/// Socket `s` is a peer listed under its own UDP port as its TCP port; even
/// sockets are seeders, odd ones downloaders.
struct Announces {
    proto: Proto,
    /// One per swarm (hayedik: the swarm port; opentracker: its one port).
    targets: Vec<SocketAddr>,
    /// hayedik: swarm keys; opentracker: info hashes (20 bytes used).
    keys: Vec<[u8; 32]>,
    /// Connection ids, `ids[s * stride + j]` (stride 1 for opentracker,
    /// whose connection ids are per source IP).
    ids: Vec<u64>,
    stride: usize,
    ports: Vec<u16>,
    cursor: Vec<usize>,
    tid: u32,
    /// Stop after this many answered announces (the warm-up).
    limit: Option<u64>,
    done: u64,
}

impl Announces {
    fn new(
        proto: Proto,
        targets: Vec<SocketAddr>,
        keys: Vec<[u8; 32]>,
        connects: &Connects,
        socks: &[UdpSocket],
    ) -> Self {
        let swarms = keys.len();
        let stride = connects.targets.len();
        Self {
            proto,
            targets,
            keys,
            ids: connects.ids.clone(),
            stride,
            ports: socks.iter().map(local_port).collect(),
            // Spread the sockets over the swarms.
            cursor: (0..socks.len()).map(|s| s * 7919 % swarms).collect(),
            tid: 0,
            limit: None,
            done: 0,
        }
    }
}

impl Workload for Announces {
    fn next(&mut self, s: usize, out: &mut Vec<u8>) -> Option<SocketAddr> {
        let j = self.cursor[s];
        self.cursor[s] = (j + 1) % self.keys.len();
        self.tid = self.tid.wrapping_add(1);
        let seeder = s.is_multiple_of(2);
        match self.proto {
            Proto::Hayedik => {
                let announce = Announce {
                    swarm_key: self.keys[j],
                    port: self.ports[s],
                    state: if seeder {
                        PeerState::Complete
                    } else {
                        PeerState::Downloading
                    },
                    wanted: WANTED,
                };
                let connection_id = self.ids[s * self.stride + j];
                Datagram::new(
                    self.tid,
                    Message::Announce {
                        connection_id,
                        announce,
                    },
                )
                .encode(out);
                Some(self.targets[j])
            }
            Proto::Bep15 => {
                let mut peer_id = [0u8; 20];
                peer_id[..8].copy_from_slice(b"-HB0001-");
                peer_id[8..16].copy_from_slice(&(s as u64).to_be_bytes());
                let mut hash = [0u8; 20];
                hash.copy_from_slice(&self.keys[j][..20]);
                let cid = self.ids[s * self.stride];
                bep15_announce(
                    out,
                    cid,
                    self.tid,
                    &hash,
                    &peer_id,
                    seeder,
                    0,
                    self.ports[s],
                );
                Some(self.targets[j])
            }
        }
    }

    fn reply(&mut self, _s: usize, _from: SocketAddr, data: &[u8], _out: &mut Vec<u8>) -> Outcome {
        let ok = match self.proto {
            // PEERS (type 7) or ERROR (15); the body is not decoded.
            Proto::Hayedik if data.len() >= 20 && data[..4] == *b"HYDK" => match data[5] {
                7 => true,
                15 => false,
                _ => return Outcome::Ignore,
            },
            // action 1 with interval and counts, or action 3 (error), or an
            // 8-byte refusal (a hash not on the whitelist).
            Proto::Bep15 if data.len() >= 8 => {
                match u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) {
                    1 => data.len() >= 20,
                    3 => false,
                    _ => return Outcome::Ignore,
                }
            }
            _ => return Outcome::Ignore,
        };
        if ok {
            self.done += 1;
            Outcome::Done
        } else {
            Outcome::Failed
        }
    }

    fn finished(&self) -> bool {
        self.limit.is_some_and(|l| self.done >= l)
    }
}

// ---------------------------------------------------------------------------
// BEP 15 encoding (only what the generator needs).

fn bep15_connect(out: &mut Vec<u8>, tid: u32) {
    out.extend_from_slice(&BEP15_MAGIC.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&tid.to_be_bytes());
}

fn bep15_connected(data: &[u8], tid: u32) -> Option<u64> {
    if data.len() < 16 || data[0..4] != 0u32.to_be_bytes() || data[4..8] != tid.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(data[8..16].try_into().ok()?))
}

/// A 98-byte announce; `event` 0 = none, 3 = stopped.
#[allow(clippy::too_many_arguments)]
fn bep15_announce(
    out: &mut Vec<u8>,
    connection_id: u64,
    tid: u32,
    info_hash: &[u8; 20],
    peer_id: &[u8; 20],
    seeder: bool,
    event: u32,
    port: u16,
) {
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&tid.to_be_bytes());
    out.extend_from_slice(info_hash);
    out.extend_from_slice(peer_id);
    out.extend_from_slice(&0u64.to_be_bytes()); // downloaded
    out.extend_from_slice(&u64::from(!seeder).to_be_bytes()); // left
    out.extend_from_slice(&0u64.to_be_bytes()); // uploaded
    out.extend_from_slice(&event.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // ip: the source's
    out.extend_from_slice(&tid.to_be_bytes()); // key
    out.extend_from_slice(&i32::from(WANTED).to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
}

// ---------------------------------------------------------------------------
// Phases.

/// One measured phase of one tracker.
struct Figure {
    phase: &'static str,
    tracker: &'static str,
    unit: &'static str,
    run: Run,
    /// User + system CPU seconds of the tracker over the measured interval.
    tracker_cpu: f64,
    /// The system (kernel) part of it.
    tracker_sys: f64,
    generator_cpu: f64,
    peak_rss_kib: Option<u64>,
    /// What one reply held, to show both trackers answer alike.
    reply: String,
    mem: Option<Memory>,
}

/// Memory and descriptors of an announce phase, from VmRSS and /proc/PID/fd
/// read before the swarms were created, after, and once every peer was
/// listed.
#[derive(Debug, Clone, Copy)]
struct Memory {
    swarms: usize,
    peers: usize,
    /// Bytes per idle swarm: created and bound, nobody listed (hayedik only:
    /// opentracker creates a torrent at its first announce).
    per_swarm: Option<f64>,
    /// Bytes per listed peer (opentracker: torrents included).
    per_peer: f64,
    /// Descriptors per swarm (hayedik: one socket each).
    fds_per_swarm: Option<f64>,
    /// The tracker's soft limit on open files.
    fd_limit: Option<u64>,
}

impl Figure {
    fn rate(&self) -> f64 {
        self.run.done as f64 / self.run.secs
    }

    /// Tracker CPU seconds per million units (= CPU microseconds per unit).
    fn cpu_per_million(&self) -> f64 {
        self.tracker_cpu / self.run.done as f64 * 1e6
    }

    /// The kernel's part of [`Self::cpu_per_million`].
    fn sys_per_million(&self) -> f64 {
        self.tracker_sys / self.run.done as f64 * 1e6
    }
}

/// Measures `w` on `socks` for `secs`, reading the tracker's CPU time and
/// ours around it.
#[allow(clippy::too_many_arguments)]
fn measure(
    phase: &'static str,
    name: &'static str,
    unit: &'static str,
    tracker: &Tracker,
    socks: &[UdpSocket],
    w: &mut impl Workload,
    window: usize,
    secs: Duration,
) -> Figure {
    let ((user0, sys0), gen0) = (tracker.cpu_split(), self_cpu_secs());
    let run = drive(socks, w, window, Instant::now() + secs);
    let ((user1, sys1), gen1) = (tracker.cpu_split(), self_cpu_secs());
    Figure {
        phase,
        tracker: name,
        unit,
        run,
        tracker_cpu: (user1 - user0) + (sys1 - sys0),
        tracker_sys: sys1 - sys0,
        generator_cpu: gen1 - gen0,
        peak_rss_kib: tracker.peak_rss_kib(),
        reply: String::new(),
        mem: None,
    }
}

/// Phase (a): full handshakes for `secs` (or until the cap on swarms).
fn hayedik_creations(
    s: &Settings,
    pin: &Pinning,
    name: &'static str,
    bin: &str,
) -> Result<Figure, String> {
    let (tracker, central) = start_hayedik(pin, bin)?;
    let socks = sockets(16)?;
    let mut w = Handshakes::new(central, socks.len(), s.max_creations, None);
    let f = measure(
        "(a) swarm creations",
        name,
        "swarms",
        &tracker,
        &socks,
        &mut w,
        s.handshakes,
        s.secs,
    );
    if f.run.done == 0 {
        return Err(format!("no swarm created ({:?})", f.run));
    }
    Ok(f)
}

fn phase_name(swarms: usize) -> &'static str {
    if swarms == 1 {
        "(b) 1 swarm x 100 peers"
    } else {
        // A handful of names per run: leaking them is fine.
        Box::leak(format!("(c) {} swarms x 100 peers", thousands(swarms as f64)).into_boxed_str())
    }
}

fn swarm_keys(swarms: usize) -> Vec<[u8; 32]> {
    (0..swarms as u64)
        .map(|i| swarm_key(blake3::hash(&i.to_be_bytes()).as_bytes()))
        .collect()
}

/// Phases (b) and (c) on hayedik: create and bind `swarms` swarms, CONNECT
/// every peer to every swarm, announce each peer once everywhere, then
/// measure.
fn hayedik_announces(
    s: &Settings,
    pin: &Pinning,
    swarms: usize,
    name: &'static str,
    bin: &str,
) -> Result<Figure, String> {
    let (tracker, central) = start_hayedik(pin, bin)?;
    let keys = swarm_keys(swarms);
    settle();
    let (rss0, fds0) = (tracker.rss_kib(), tracker.fds());
    let setup = sockets(8)?;
    let mut hs = Handshakes::new(central, setup.len(), swarms, Some(keys.clone()));
    drive(&setup, &mut hs, 4, Instant::now() + setup_limit(swarms));
    if hs.created.len() < swarms {
        return Err(format!(
            "setup: only {} of {swarms} swarms created",
            hs.created.len()
        ));
    }
    let targets = hs.swarms_by_key();
    settle();
    let (rss1, fds1) = (tracker.rss_kib(), tracker.fds());
    let peers = sockets(s.peers)?;
    let mut connects = Connects::new(Proto::Hayedik, targets.clone(), peers.len());
    drive(
        &peers,
        &mut connects,
        8,
        Instant::now() + setup_limit(swarms),
    );
    if !connects.finished() {
        return Err(format!(
            "setup: only {} of {} CONNECTs answered",
            connects.got,
            connects.ids.len()
        ));
    }
    let mut w = Announces::new(Proto::Hayedik, targets, keys, &connects, &peers);
    warm_up(&peers, &mut w, s.window, (s.peers * swarms) as u64);
    settle();
    let rss2 = tracker.rss_kib();
    let listed = s.peers * swarms;
    let mem = match (rss0, rss1, rss2) {
        (Some(r0), Some(r1), Some(r2)) => Some(Memory {
            swarms,
            peers: listed,
            per_swarm: Some((r1 as f64 - r0 as f64) * 1024.0 / swarms as f64),
            per_peer: (r2 as f64 - r1 as f64) * 1024.0 / listed as f64,
            fds_per_swarm: fds0
                .zip(fds1)
                .map(|(a, b)| (b as f64 - a as f64) / swarms as f64),
            fd_limit: tracker.fd_limit(),
        }),
        _ => None,
    };
    let reply = one_reply(&peers[1], &mut w);
    let mut f = measure(
        phase_name(swarms),
        name,
        "announces",
        &tracker,
        &peers,
        &mut w,
        s.window,
        s.secs,
    );
    f.reply = reply;
    f.mem = mem;
    Ok(f)
}

/// Lets the tracker finish what it was doing before its memory is read.
fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

/// Every peer announces once in every swarm (so each swarm has its 100
/// peers), then half a second more of load; late replies are drained so
/// that the measured phase does not count them.
fn warm_up(peers: &[UdpSocket], w: &mut Announces, window: usize, pairs: u64) {
    w.limit = Some(pairs);
    let swarms = usize::try_from(pairs / 100).unwrap_or(usize::MAX);
    drive(peers, w, window, Instant::now() + setup_limit(swarms));
    w.limit = None;
    drive(
        peers,
        w,
        window,
        Instant::now() + Duration::from_millis(500),
    );
    drain(peers);
}

fn drain(socks: &[UdpSocket]) {
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = [0u8; 2048];
    for s in socks {
        while s.recv_from(&mut buf).is_ok() {}
    }
}

/// Sends one announce from `sock` (socket 1 of the workload: a downloader)
/// and describes the reply: peers listed and the counts.
fn one_reply(sock: &UdpSocket, w: &mut Announces) -> String {
    let mut req = Vec::new();
    let Some(to) = w.next(1, &mut req) else {
        return "no request".into();
    };
    let tid = w.tid;
    if sock.send_to(&req, to).is_err() {
        return "send failed".into();
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let data = &buf[..n];
        match w.proto {
            Proto::Hayedik => {
                let Ok(d) = Datagram::decode(data) else {
                    continue;
                };
                if d.tid != tid {
                    continue;
                }
                return match d.message {
                    Message::Peers(p) => format!(
                        "{n} bytes, {} peers listed, {} seeders + {} downloaders besides the requester",
                        p.peers.len(),
                        p.seeders,
                        p.partials
                    ),
                    m => format!("{m:?}"),
                };
            }
            Proto::Bep15 => {
                if n < 20 || data[4..8] != tid.to_be_bytes() {
                    continue;
                }
                let field =
                    |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().expect("4 bytes"));
                return format!(
                    "{n} bytes, {} peers listed, {} seeders + {} leechers",
                    (n - 20) / 6,
                    field(16),
                    field(12)
                );
            }
        }
    }
    "no reply within 1 s".into()
}

/// Phases (b) and (c) on opentracker: the same peers and load, one info
/// hash per swarm.
fn opentracker_announces(s: &Settings, pin: &Pinning, swarms: usize) -> Result<Figure, String> {
    let hashes: Vec<[u8; 20]> = swarm_keys(swarms)
        .iter()
        .map(|k| {
            let mut h = [0u8; 20];
            h.copy_from_slice(&k[..20]);
            h
        })
        .collect();
    let (tracker, addr) = start_opentracker(pin, &hashes)?;
    bep15_announces(s, "opentracker", &tracker, vec![addr; swarms])
}

/// The name of the floor in the tables.
const FLOOR: &str = "udp floor";

/// The name of the port floor ([`serve_port_floor`]) in the tables.
const PORT_FLOOR: &str = "port floor";

/// The fixed replies of both floors: a BEP 15 CONNECT gets its 16-byte
/// answer, an ANNOUNCE a reply of opentracker's size (50 peers, 320 bytes),
/// each with the request's transaction id. Nothing is parsed beyond the
/// action, looked up, checked or stored.
struct FloorReplies {
    connected: [u8; 16],
    peers: Vec<u8>,
}

impl FloorReplies {
    fn new() -> Self {
        let mut connected = [0u8; 16];
        connected[8..].copy_from_slice(&0x00c0_ffee_u64.to_be_bytes());
        let mut peers = vec![0u8; 20 + 6 * usize::from(WANTED)];
        peers[..4].copy_from_slice(&1u32.to_be_bytes());
        peers[8..12].copy_from_slice(&1800u32.to_be_bytes());
        peers[12..16].copy_from_slice(&50u32.to_be_bytes());
        peers[16..20].copy_from_slice(&50u32.to_be_bytes());
        for (i, entry) in peers[20..].chunks_exact_mut(6).enumerate() {
            entry[..4].copy_from_slice(&[127, 0, 0, 1]);
            entry[4..].copy_from_slice(&(10_000 + i as u16).to_be_bytes());
        }
        Self { connected, peers }
    }

    /// The reply to `req`, if it calls for one.
    fn reply(&mut self, req: &[u8]) -> Option<&[u8]> {
        if req.len() < 16 {
            return None;
        }
        let (action, tid) = (&req[8..12], &req[12..16]);
        let reply: &mut [u8] = if action == 0u32.to_be_bytes() {
            &mut self.connected
        } else if action == 1u32.to_be_bytes() && req.len() >= 98 {
            &mut self.peers
        } else {
            return None;
        };
        reply[4..8].copy_from_slice(tid);
        Some(reply)
    }
}

/// The floor: the least that any UDP tracker does per announce, measured
/// like the trackers (this program run again, pinned to the tracker's CPU).
/// One socket, as opentracker has, and a blocking loop answering with
/// [`FloorReplies`]: what it costs is the kernel receiving one datagram and
/// sending one.
fn serve_floor(port: &str) {
    let sock = match port.parse::<u16>().map(|p| UdpSocket::bind((LOCALHOST, p))) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("udp floor: cannot bind 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("udp floor: bad port {port:?}: {e}");
            std::process::exit(2);
        }
    };
    let mut replies = FloorReplies::new();
    // Ends with the bench: a bench killed outright cannot kill it, so it
    // looks for its parent whenever it has waited a second for a request.
    let parent = std::os::unix::process::parent_id();
    let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            if std::os::unix::process::parent_id() != parent {
                return;
            }
            continue;
        };
        if let Some(reply) = replies.reply(&buf[..n]) {
            let _ = sock.send_to(reply, from);
        }
    }
}

/// Datagrams the port floor reads from one socket at once.
const PORT_FLOOR_BATCH: usize = 32;

/// The port floor: the least that a tracker with a port (a socket) per
/// swarm does per announce, as hayedik's design has. One socket per swarm,
/// all in one epoll set (edge-triggered, as hayedik's); a loop that takes
/// up to 256 ready sockets per `epoll_wait`, reads what waits on each with
/// one `recvmmsg` (up to [`PORT_FLOOR_BATCH`]; a full batch is followed by
/// another, until one comes back short) and answers it with one `sendto`,
/// or one `sendmmsg` for several ([`FloorReplies`]). Against [`serve_floor`] it adds what
/// spreading the load over many sockets costs the kernel (an epoll event
/// per socket and wake-up, a socket's state per datagram, fewer of them in
/// the caches), and saves what batching saves (fewer system calls when a
/// socket holds several datagrams); user space does next to nothing.
fn serve_port_floor(spec: &str) {
    use rustix::event::epoll;
    use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::{IoSlice, IoSliceMut};
    let fail = |what: String| -> ! {
        eprintln!("port floor: {what}");
        std::process::exit(1);
    };
    let Some((count, path)) = spec.split_once(':') else {
        fail(format!("bad spec {spec:?} (SOCKETS:PATH)"));
    };
    let count: usize = count
        .parse()
        .unwrap_or_else(|e| fail(format!("bad socket count {count:?}: {e}")));
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
        .unwrap_or_else(|e| fail(format!("epoll_create: {e}")));
    let mut socks = Vec::with_capacity(count);
    let mut ports = String::new();
    for i in 0..count {
        let sock = UdpSocket::bind((LOCALHOST, 0))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .unwrap_or_else(|e| fail(format!("socket {i} of {count}: {e}")));
        epoll::add(
            &epoll,
            &sock,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )
        .unwrap_or_else(|e| fail(format!("epoll_ctl: {e}")));
        let port = sock
            .local_addr()
            .unwrap_or_else(|e| fail(format!("local address: {e}")))
            .port();
        ports.push_str(&format!("{port}\n"));
        socks.push(sock);
    }
    // Written whole, then renamed: the bench never reads half a list.
    let tmp = format!("{path}.tmp");
    if let Err(e) = std::fs::write(&tmp, ports).and_then(|()| std::fs::rename(&tmp, path)) {
        fail(format!("writing {path}: {e}"));
    }
    // `recvmmsg` through quinn-udp, as hayedik's tracker does; its state is
    // made on a socket of its own (made on a served socket it would turn on
    // options that add control messages).
    let state = UdpSocket::bind((LOCALHOST, 0))
        .and_then(|probe| quinn_udp::UdpSocketState::new((&probe).into()))
        .unwrap_or_else(|e| fail(format!("recvmmsg state: {e}")));
    let mut bufs = Box::new([[0u8; 512]; PORT_FLOOR_BATCH]);
    let mut meta = [quinn_udp::RecvMeta::default(); PORT_FLOOR_BATCH];
    let mut out: Vec<Vec<u8>> = (0..PORT_FLOOR_BATCH)
        .map(|_| Vec::with_capacity(512))
        .collect();
    let mut to: Vec<SocketAddr> = Vec::with_capacity(PORT_FLOOR_BATCH);
    let mut replies = FloorReplies::new();
    let parent = std::os::unix::process::parent_id();
    let second = rustix::event::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    let mut events = Vec::with_capacity(256);
    loop {
        events.clear();
        match epoll::wait(
            &epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&second),
        ) {
            Ok(0) | Err(_) => {
                // Ends with the bench, as the floor does.
                if std::os::unix::process::parent_id() != parent {
                    return;
                }
                continue;
            }
            Ok(_) => {}
        }
        for event in &events {
            let Some(sock) = usize::try_from(event.data.u64())
                .ok()
                .and_then(|i| socks.get(i))
            else {
                continue;
            };
            // Edge-triggered: read until a batch comes back short. It ends:
            // the load keeps a bounded number of requests in flight.
            loop {
                let mut slices = bufs.each_mut().map(|b| IoSliceMut::new(b));
                let Ok(got) = state.recv(sock.into(), &mut slices, &mut meta) else {
                    break;
                };
                to.clear();
                for (buf, m) in bufs.iter().zip(&meta).take(got) {
                    if let Some(reply) = replies.reply(&buf[..m.len.min(buf.len())]) {
                        let o = &mut out[to.len()];
                        o.clear();
                        o.extend_from_slice(reply);
                        to.push(m.addr);
                    }
                }
                if let [addr] = to[..] {
                    let _ = sock.send_to(&out[0], addr);
                } else if !to.is_empty() {
                    let addrs: Vec<SocketAddrAny> = to.iter().map(|&a| a.into()).collect();
                    let iovs: Vec<[IoSlice<'_>; 1]> =
                        out[..to.len()].iter().map(|o| [IoSlice::new(o)]).collect();
                    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
                        to.iter().map(|_| SendAncillaryBuffer::default()).collect();
                    let mut msgs: Vec<MMsgHdr<'_>> = addrs
                        .iter()
                        .zip(&iovs)
                        .zip(controls.iter_mut())
                        .map(|((a, v), c)| MMsgHdr::new_with_addr(a, v, c))
                        .collect();
                    let mut sent = 0;
                    // Bounded: each call sends at least one, or gives up.
                    while sent < msgs.len() {
                        match sendmmsg(sock, &mut msgs[sent..], SendFlags::empty()) {
                            Ok(n) if n > 0 => sent += n,
                            _ => break,
                        }
                    }
                }
                if got < PORT_FLOOR_BATCH {
                    break;
                }
            }
        }
    }
}

/// Runs this program again, pinned like a tracker, with `var` set to
/// `value` (which makes it serve as `what`, a floor), its standard error
/// in `log` inside `dir`, which lives as long as the process.
fn start_self(
    pin: &Pinning,
    what: &str,
    dir: tempfile::TempDir,
    log: &Path,
    (var, value): (&str, String),
) -> Result<Tracker, String> {
    let err = File::create(log).map_err(|e| format!("log file: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut cmd = pin.command(&exe.display().to_string());
    cmd.env(var, value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    Ok(Tracker { child, _dir: dir })
}

/// Starts the floor ([`serve_floor`]) on a free port of 127.0.0.1.
fn start_floor(pin: &Pinning) -> Result<(Tracker, SocketAddr), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let log = dir.path().join("floor.log");
    let port = free_udp_port()?;
    let env = (FLOOR_PORT_ENV, port.to_string());
    let mut tracker = start_self(pin, "the floor", dir, &log, env)?;
    let addr = SocketAddr::new(LOCALHOST, port);
    wait_bep15(&mut tracker, &log, addr, "the floor", |_, _| true)
        .map_err(|e| format!("cannot start the floor: {e}"))?;
    Ok((tracker, addr))
}

/// Waits up to 10 s until the BEP 15 server at `addr` answers a CONNECT and
/// `ready` says yes to the connection id (it may ask more of it).
fn wait_bep15(
    tracker: &mut Tracker,
    log: &Path,
    addr: SocketAddr,
    name: &str,
    mut ready: impl FnMut(&UdpSocket, u64) -> bool,
) -> Result<(), String> {
    let probe = UdpSocket::bind((LOCALHOST, 0)).map_err(|e| format!("probe socket: {e}"))?;
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 64];
    loop {
        tracker.check_alive(log)?;
        if Instant::now() > deadline {
            return Err(format!("{name} did not answer within 10 s ({})", tail(log)));
        }
        let mut req = Vec::new();
        bep15_connect(&mut req, 1);
        let _ = probe.send_to(&req, addr);
        if let Ok((n, _)) = probe.recv_from(&mut buf) {
            if let Some(cid) = bep15_connected(&buf[..n], 1) {
                if ready(&probe, cid) {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Phases (b) and (c) on the floor: opentracker's load (BEP 15, one port).
fn floor_announces(s: &Settings, pin: &Pinning, swarms: usize) -> Result<Figure, String> {
    let (tracker, addr) = start_floor(pin)?;
    let mut f = bep15_announces(s, FLOOR, &tracker, vec![addr; swarms])?;
    // It stores nothing: its memory says nothing.
    f.mem = None;
    Ok(f)
}

/// Phases (b) and (c) on the port floor ([`serve_port_floor`]): one
/// socket per swarm, as hayedik has, with opentracker's requests.
fn port_floor_announces(s: &Settings, pin: &Pinning, swarms: usize) -> Result<Figure, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let log = dir.path().join("port-floor.log");
    let list = dir.path().join("ports");
    let env = (PORT_FLOOR_ENV, format!("{swarms}:{}", list.display()));
    let mut tracker = start_self(pin, "the port floor", dir, &log, env)?;
    let deadline = Instant::now() + setup_limit(swarms);
    let ports = loop {
        tracker.check_alive(&log)?;
        if let Ok(text) = std::fs::read_to_string(&list) {
            break text;
        }
        if Instant::now() > deadline {
            return Err(format!("the port floor listed no ports ({})", tail(&log)));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let targets = ports
        .lines()
        .map(|p| p.parse().map(|p| SocketAddr::new(LOCALHOST, p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the port floor's list: {e}"))?;
    if targets.len() != swarms {
        return Err(format!(
            "the port floor listed {} ports, not {swarms}",
            targets.len()
        ));
    }
    wait_bep15(&mut tracker, &log, targets[0], "the port floor", |_, _| {
        true
    })?;
    let mut f = bep15_announces(s, PORT_FLOOR, &tracker, targets)?;
    // It stores nothing: its memory says nothing.
    f.mem = None;
    Ok(f)
}

/// Phases (b) and (c) in BEP 15 on `tracker`, swarm `i` at `targets[i]`
/// (opentracker's one port stands for every swarm), an info hash for each.
fn bep15_announces(
    s: &Settings,
    name: &'static str,
    tracker: &Tracker,
    targets: Vec<SocketAddr>,
) -> Result<Figure, String> {
    let swarms = targets.len();
    let addr = *targets.first().ok_or("no swarm to announce to")?;
    let keys = swarm_keys(swarms);
    settle();
    let rss0 = tracker.rss_kib();
    let peers = sockets(s.peers)?;
    let mut connects = Connects::new(Proto::Bep15, vec![addr], peers.len());
    drive(
        &peers,
        &mut connects,
        1,
        Instant::now() + setup_limit(swarms),
    );
    if !connects.finished() {
        return Err(format!(
            "setup: only {} of {} CONNECTs answered",
            connects.got,
            connects.ids.len()
        ));
    }
    let mut w = Announces::new(Proto::Bep15, targets, keys, &connects, &peers);
    warm_up(&peers, &mut w, s.window, (s.peers * swarms) as u64);
    settle();
    let listed = s.peers * swarms;
    let mem = rss0.zip(tracker.rss_kib()).map(|(r0, r2)| Memory {
        swarms,
        peers: listed,
        per_swarm: None,
        per_peer: (r2 as f64 - r0 as f64) * 1024.0 / listed as f64,
        fds_per_swarm: None,
        fd_limit: tracker.fd_limit(),
    });
    let reply = one_reply(&peers[1], &mut w);
    let mut f = measure(
        phase_name(swarms),
        name,
        "announces",
        tracker,
        &peers,
        &mut w,
        s.window,
        s.secs,
    );
    f.reply = reply;
    f.mem = mem;
    Ok(f)
}

// ---------------------------------------------------------------------------
// Output.

fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The round with the median CPU per unit of one phase and tracker, and
/// the range over all its rounds.
struct Median<'a> {
    figure: &'a Figure,
    rounds: usize,
    cpu: (f64, f64),
    rate: (f64, f64),
}

fn medians(figures: &[Figure]) -> Vec<Median<'_>> {
    let mut out: Vec<Median<'_>> = Vec::new();
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for f in figures {
        if !keys.contains(&(f.phase, f.tracker)) {
            keys.push((f.phase, f.tracker));
        }
    }
    for (phase, tracker) in keys {
        let mut group: Vec<&Figure> = figures
            .iter()
            .filter(|f| f.phase == phase && f.tracker == tracker)
            .collect();
        group.sort_by(|a, b| a.cpu_per_million().total_cmp(&b.cpu_per_million()));
        let span = |v: Vec<f64>| {
            v.iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                })
        };
        out.push(Median {
            figure: group[group.len() / 2],
            rounds: group.len(),
            cpu: span(group.iter().map(|f| f.cpu_per_million()).collect()),
            rate: span(group.iter().map(|f| f.rate()).collect()),
        });
    }
    out
}

fn print_table(medians: &[Median<'_>]) {
    println!();
    println!("median round of each phase (by CPU per unit); ranges over all rounds");
    println!(
        "{:<29} {:<12} {:>16} {:>19} {:>12} {:>8} {:>14} {:>9} {:>9} {:>10} {:>8}",
        "phase",
        "tracker",
        "rate",
        "rate range",
        "CPU s per M",
        "of it sys",
        "CPU range",
        "trk busy",
        "gen busy",
        "peak RSS",
        "err/lost"
    );
    for m in medians {
        let f = m.figure;
        let rss = f
            .peak_rss_kib
            .map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "{:<29} {:<12} {:>16} {:>19} {:>12.2} {:>8.2} {:>14} {:>8.0}% {:>8.0}% {:>10} {:>8}",
            f.phase,
            f.tracker,
            format!("{} {}/s", thousands(f.rate()), short_unit(f.unit)),
            format!("{}-{}", thousands(m.rate.0), thousands(m.rate.1)),
            f.cpu_per_million(),
            f.sys_per_million(),
            format!("{:.2}-{:.2}", m.cpu.0, m.cpu.1),
            100.0 * f.tracker_cpu / f.run.secs,
            100.0 * f.generator_cpu / f.run.secs,
            rss,
            format!("{}/{}", f.run.failed, f.run.lost),
        );
    }
    let rounds = medians.iter().map(|m| m.rounds).max().unwrap_or(0);
    println!();
    println!(
        "rate: answered units per second (announces: ANNOUNCE -> PEERS; swarms: JOIN .. CONFIRMED)"
    );
    println!("CPU s per M: tracker CPU seconds (user+system, /proc/PID/stat) per million units,");
    println!("             i.e. CPU microseconds per unit; lower is better ({rounds} rounds each)");
    println!("of it sys: the part of it spent in the kernel (stime): receiving and sending the datagrams");
    println!("trk busy / gen busy: CPU time / wall time of the tracker and of the load generator");
    println!("peak RSS: VmHWM of the tracker process over its whole life (setup included)");
    println!("err/lost: error replies / requests never answered (counted as lost after 100 ms)");
}

fn short_unit(unit: &str) -> &str {
    match unit {
        "announces" => "ann",
        "swarms" => "swarms",
        u => u,
    }
}

/// Memory per idle swarm and per listed peer, descriptors per swarm, and
/// the number of swarms the tracker's open-file limit allows.
fn print_memory(medians: &[Median<'_>]) {
    let rows: Vec<(&Median<'_>, Memory)> = medians
        .iter()
        .filter_map(|m| m.figure.mem.map(|mem| (m, mem)))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!();
    println!("memory (VmRSS deltas of the median round; KiB pages, so small phases are coarse)");
    println!(
        "{:<29} {:<12} {:>14} {:>14} {:>10} {:>12} {:>20}",
        "phase",
        "tracker",
        "B/idle swarm",
        "B/listed peer",
        "fd/swarm",
        "fd limit",
        "swarms at fd limit"
    );
    for (m, mem) in rows {
        let f = m.figure;
        let per_swarm = mem.per_swarm.map_or("n/a".into(), |b| format!("{b:.0}"));
        let fds = mem
            .fds_per_swarm
            .map_or("n/a".into(), |b| format!("{b:.2}"));
        let limit = mem.fd_limit.map_or("n/a".into(), |l| l.to_string());
        let ceiling = match (mem.fds_per_swarm, mem.fd_limit, mem.per_swarm) {
            (Some(per), Some(limit), Some(bytes)) if per > 0.0 => {
                let n = (limit as f64 - 64.0).max(0.0) / per;
                format!(
                    "~{} ({:.0} MiB idle)",
                    thousands(n),
                    n * bytes / 1024.0 / 1024.0
                )
            }
            _ => "n/a".into(),
        };
        println!(
            "{:<29} {:<12} {:>14} {:>14.1} {:>10} {:>12} {:>20}",
            f.phase, f.tracker, per_swarm, mem.per_peer, fds, limit, ceiling
        );
        let _ = (mem.swarms, mem.peers);
    }
    println!("B/idle swarm: (RSS once the swarms are created and bound - RSS before) / swarms");
    println!(
        "B/listed peer: (RSS once every peer is listed - RSS before the first listing) / peers"
    );
    println!(
        "               (opentracker: its torrents included; it makes one at the first announce)"
    );
    println!(
        "swarms at fd limit: one socket per swarm (hayedik's port-per-swarm design), 64 kept spare"
    );
}

fn print_ratios(medians: &[Median<'_>], phases: &[usize]) {
    let find = |phase: &str, tracker: &str| {
        medians
            .iter()
            .find(|m| m.figure.phase == phase && m.figure.tracker == tracker)
    };
    for tracker in ["hayedik", "baseline", FLOOR, PORT_FLOOR] {
        let mut printed = false;
        for &swarms in phases {
            let phase = phase_name(swarms);
            let (Some(h), Some(o)) = (find(phase, tracker), find(phase, "opentracker")) else {
                continue;
            };
            if !printed {
                println!();
                println!("{tracker} / opentracker (medians):");
                printed = true;
            }
            println!(
                "  {phase:<29} rate x{:.2}   CPU per announce x{:.2} (below 1: {tracker} spends less)",
                h.figure.rate() / o.figure.rate(),
                h.figure.cpu_per_million() / o.figure.cpu_per_million()
            );
        }
    }
}
