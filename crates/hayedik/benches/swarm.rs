//! The swarm benchmark: `cargo bench --bench swarm`. It prints tables and
//! asserts nothing (docs/performance.md says how to read them).
//!
//! The real release `hayedik` binary runs as separate processes on loopback,
//! with `--json`; this process only starts them, reads their events (each line
//! timestamped as it arrives) and measures. Scenarios, one run of each per
//! round so that every scenario sees the same moments of whatever else the
//! machine is doing:
//!
//! - **1 -> 1**: one `share`, one `get --no-seed`;
//! - **1 -> 1 relayed**: the same through `tracker --relay`: the sharer
//!   listens on 127.0.0.2 but is listed at 127.0.0.1, so nobody can dial it
//!   and it registers at the relay; also the relay's CPU seconds per GiB;
//! - **3 -> 1**: one `share` and two seeders, then a fresh `get --no-seed`.
//!   The seeders are `get`s into directories that already hold a complete
//!   copy (made once, before the first round, and kept): they verify it and
//!   seed. (Seeders that had just downloaded their copies put 2 GiB of new
//!   page cache before every measured get, and on this kind of VM new page
//!   cache is what costs most: docs/performance.md. `bench/compare.sh`
//!   makes its seeders the same way.)
//! - **1 -> 4**: one `share`, four `get --no-seed` started together: the time
//!   until all four are done;
//! - **share**: `share` of the file, from its start to its `ticket` event
//!   (hashing the manifest on every core, then creating the swarm).
//!
//! Every run gets a fresh sharer and fresh output directories, deleted after
//! the run (then `sync`, so one run's write-back does not slow the next).
//! Wall time runs from the spawn of the measured `get` to its `done` event.
//! CPU seconds and peak RSS come from `wait4`'s rusage once a process has
//! exited (a sharer or seeder is stopped with SIGTERM, which also gives its
//! `stopped` event and upload count); for the processes that were running
//! before the measured part (sharer, seeders), the CPU time they had used
//! then (from `/proc/PID/stat`) is subtracted. In 1 -> 1 and 1 -> 4 the
//! sharer's `RssAnon` and `RssFile` are read once the gets are done, before
//! it is stopped: what it allocated, apart from the pages of the binary.
//!
//! Environment: `HAYEDIK_BENCH_BYTES` (file size, e.g. `268435456` or `256M`,
//! default 1 GiB), `HAYEDIK_BENCH_RUNS` (rounds, default 5),
//! `HAYEDIK_BENCH_BIG=1` (also 1 -> 1 with an 8 GiB sparse-backed file, for
//! peak RSS; `HAYEDIK_BENCH_BIG_BYTES` changes its size),
//! `HAYEDIK_BENCH_DIR` (where the temporary files go, default the system's
//! temporary directory), `HAYEDIK_BENCH_ONLY` (comma-separated subset of
//! `1-1,1-1r,3-1,1-4,share`), `HAYEDIK_BENCH_BINS` (`LABEL=PATH,LABEL=PATH`: run
//! every scenario with each of these `hayedik` binaries in turn, the order
//! rotating from round to round, and print each one's wall time relative to
//! the first's: an A/B comparison in the same run; default: this build's).

#![allow(clippy::unwrap_used)]
// wait4, kill and sysconf: the children's rusage after they exit.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const MIB: f64 = 1_048_576.0;
/// Time allowed to stop a process after SIGTERM (it tells the tracker it
/// leaves first).
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Every run is bounded: this much, plus the file's size at [`SLOWEST_RATE`]
/// for every copy the run moves.
const BASE_LIMIT: Duration = Duration::from_secs(30);
const SLOWEST_RATE: f64 = 10.0 * MIB;
/// `get --timeout`: give up after this long without progress.
const GET_TIMEOUT: &str = "60";

fn main() {
    let settings = Settings::from_env();
    println!("hayedik swarm benchmark");
    for (label, bin) in &settings.bins {
        println!("  binary {label}: {bin} ({})", version(bin));
    }
    println!(
        "  file: {} MiB of pseudo-random bytes (in page cache), {} rounds",
        settings.bytes as f64 / MIB,
        settings.runs
    );
    println!(
        "  {} CPUs; load average before the run: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );
    let lab = match Lab::new(&settings) {
        Ok(l) => l,
        Err(e) => {
            println!("FAILED: cannot prepare the test file: {e}");
            return;
        }
    };
    println!(
        "  test file written in {:.2} s: {}",
        lab.prepared.as_secs_f64(),
        lab.file.display()
    );

    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| settings.only.as_ref().is_none_or(|o| o.contains(&s.key())))
        .collect();
    if scenarios.contains(&Scenario::ThreeToOne) {
        let start = Instant::now();
        if let Err(e) = lab.seed_copies() {
            println!("FAILED: cannot copy the test file for the 3 -> 1 seeders: {e}");
            return;
        }
        sync();
        println!(
            "  two copies for the 3 -> 1 seeders made in {:.2} s",
            start.elapsed().as_secs_f64()
        );
    }
    let bins = &settings.bins;
    // Results by binary, then by scenario.
    let mut results: Vec<BTreeMap<usize, Vec<Sample>>> = vec![BTreeMap::new(); bins.len()];
    let mut failures = Vec::new();
    for round in 1..=settings.runs {
        for (i, s) in scenarios.iter().enumerate() {
            for k in 0..bins.len() {
                // Rotate the order of the binaries from round to round.
                let b = (k + round - 1) % bins.len();
                let (label, bin) = &bins[b];
                let tag = if bins.len() > 1 {
                    format!("{} [{label}]", s.title())
                } else {
                    s.title().to_string()
                };
                lab.set_bin(bin);
                match lab.run(|run| s.run(&lab, run, &lab.file, settings.bytes)) {
                    Ok(sample) => {
                        println!(
                            "  round {round}/{}: {tag:<8} {}",
                            settings.runs,
                            sample.brief()
                        );
                        results[b].entry(i).or_default().push(sample);
                    }
                    Err(e) => {
                        println!("  round {round}/{}: {tag:<8} FAILED: {e}", settings.runs);
                        failures.push(format!("{tag} round {round}: {e}"));
                    }
                }
            }
        }
    }
    println!();
    for (b, (label, _)) in bins.iter().enumerate() {
        for (i, s) in scenarios.iter().enumerate() {
            if let Some(samples) = results[b].get(&i) {
                let which = if bins.len() > 1 {
                    format!(" [{label}]")
                } else {
                    String::new()
                };
                print_block(
                    &format!(
                        "{}{which} ({} MiB, {} runs)",
                        s.description(),
                        settings.bytes as f64 / MIB,
                        samples.len()
                    ),
                    samples,
                );
            }
        }
    }
    for (b, (label, _)) in bins.iter().enumerate() {
        if bins.len() > 1 {
            println!("[{label}]");
        }
        print_summary(&scenarios, &results[b], settings.bytes);
    }
    if bins.len() > 1 {
        print_ab(&scenarios, &results, bins);
    }

    if settings.big {
        println!();
        lab.set_bin(&bins[0].1);
        match lab.big(settings.big_bytes) {
            Ok(sample) => print_block(
                &format!(
                    "1 -> 1 with a {} GiB sparse-backed file (all zeros), 1 run: memory whatever the size",
                    settings.big_bytes as f64 / (1024.0 * MIB)
                ),
                &[sample],
            ),
            Err(e) => {
                println!("FAILED: big file: {e}");
                failures.push(format!("big file: {e}"));
            }
        }
    }
    for f in failures {
        println!("note: failed run: {f}");
    }
}

// ---------------------------------------------------------------------------
// Settings

struct Settings {
    /// Labels and paths of the `hayedik` binaries to measure.
    bins: Vec<(String, String)>,
    bytes: u64,
    runs: usize,
    big: bool,
    big_bytes: u64,
    dir: Option<PathBuf>,
    only: Option<Vec<&'static str>>,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let only = var("HAYEDIK_BENCH_ONLY").map(|v| {
            Scenario::ALL
                .iter()
                .map(|s| s.key())
                .filter(|k| v.split(',').any(|w| w.trim() == *k))
                .collect()
        });
        let mut bins: Vec<(String, String)> = var("HAYEDIK_BENCH_BINS")
            .map(|v| {
                v.split(',')
                    .filter(|w| !w.trim().is_empty())
                    .enumerate()
                    .map(|(i, w)| match w.split_once('=') {
                        Some((l, p)) => (l.trim().to_string(), p.trim().to_string()),
                        None => (format!("bin{}", i + 1), w.trim().to_string()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if bins.is_empty() {
            bins.push((
                "hayedik".to_string(),
                env!("CARGO_BIN_EXE_hayedik").to_string(),
            ));
        }
        Self {
            bins,
            bytes: var("HAYEDIK_BENCH_BYTES")
                .and_then(|v| parse_size(&v))
                .unwrap_or(1 << 30)
                .max(1),
            runs: var("HAYEDIK_BENCH_RUNS")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(5usize)
                .clamp(1, 100),
            big: var("HAYEDIK_BENCH_BIG").is_some_and(|v| v.trim() == "1"),
            big_bytes: var("HAYEDIK_BENCH_BIG_BYTES")
                .and_then(|v| parse_size(&v))
                .unwrap_or(8 << 30)
                .max(1),
            dir: var("HAYEDIK_BENCH_DIR").map(PathBuf::from),
            only,
        }
    }
}

/// `1073741824`, `1024M`, `1G`, `512k` (binary units).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        _ => (s, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn version(bin: &str) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "version unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    OneToOne,
    Relayed,
    ThreeToOne,
    OneToFour,
    Share,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::OneToOne,
        Scenario::Relayed,
        Scenario::ThreeToOne,
        Scenario::OneToFour,
        Scenario::Share,
    ];

    fn key(self) -> &'static str {
        match self {
            Scenario::OneToOne => "1-1",
            Scenario::Relayed => "1-1r",
            Scenario::ThreeToOne => "3-1",
            Scenario::OneToFour => "1-4",
            Scenario::Share => "share",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::OneToOne => "1 -> 1",
            Scenario::Relayed => "1 -> 1 relayed",
            Scenario::ThreeToOne => "3 -> 1",
            Scenario::OneToFour => "1 -> 4",
            Scenario::Share => "share",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Scenario::OneToOne => "1 -> 1: one sharer, one getter",
            Scenario::Relayed => {
                "1 -> 1 relayed: a sharer nobody can dial, reached through `tracker --relay`"
            }
            Scenario::ThreeToOne => "3 -> 1: sharer + 2 seeders, one fresh getter",
            Scenario::OneToFour => "1 -> 4: one sharer, four getters started together",
            Scenario::Share => "share: hashing the manifest (start -> ticket)",
        }
    }

    fn run(self, lab: &Lab, run: &Path, file: &Path, bytes: u64) -> Result<Sample, String> {
        match self {
            Scenario::OneToOne => one_to_one(lab, run, file, bytes),
            Scenario::Relayed => relayed(lab, run, file, bytes),
            Scenario::ThreeToOne => three_to_one(lab, run, file, bytes),
            Scenario::OneToFour => one_to_four(lab, run, file, bytes),
            Scenario::Share => share_only(lab, run, file, bytes),
        }
    }
}

fn one_to_one(lab: &Lab, run: &Path, file: &Path, bytes: u64) -> Result<Sample, String> {
    let deadline = Instant::now() + lab.limit(bytes, 1.0);
    let mut sharer = lab.share(run, file, deadline)?;
    let sharer_cpu0 = sharer.proc.cpu_now();
    let started = Instant::now();
    let mut getter = lab.get(run, "getter", &sharer.ticket, false)?;
    let (done_at, done) = getter.wait_event("done", deadline)?;
    let g = getter.finish(deadline)?;
    let (anon, file_pages) = sharer.proc.rss_parts_mib();
    let s = sharer.proc.terminate()?;
    let uploaded = sharer.proc.uploaded();
    let wall = done_at.duration_since(started).as_secs_f64();
    let mut out = Sample::default();
    out.push("wall s (get start -> done)", Unit::Secs, wall);
    out.push("MiB/s", Unit::Rate, bytes as f64 / MIB / wall);
    out.push(
        "getter's own seconds (done.seconds)",
        Unit::Secs,
        done["seconds"].as_f64().unwrap_or(f64::NAN),
    );
    out.push("getter CPU s", Unit::Secs, g.cpu);
    out.push("getter peak RSS MiB", Unit::Mib, g.maxrss_mib());
    out.push(
        "sharer CPU s (during the get)",
        Unit::Secs,
        s.cpu - sharer_cpu0,
    );
    out.push("sharer peak RSS MiB", Unit::Mib, s.maxrss_mib());
    push_rss_parts(&mut out, anon, file_pages);
    out.push(
        "sharer upload (copies)",
        Unit::Copies,
        uploaded / bytes as f64,
    );
    Ok(out)
}

/// The sharer's resident memory after the get, before it is stopped, in
/// its two parts (see [`Proc::rss_parts_mib`]).
fn push_rss_parts(out: &mut Sample, anon: f64, file_pages: f64) {
    out.push("sharer RssAnon MiB after the get", Unit::Mib, anon);
    out.push("sharer RssFile MiB after the get", Unit::Mib, file_pages);
}

/// 1 -> 1 through the relay: a tracker with `--relay`, a sharer that
/// listens on 127.0.0.2 but announces from 127.0.0.1 (so the tracker's probe
/// fails and it registers at the relay), a getter that reaches it only
/// through the relay. The tracker process's CPU during the get is the
/// relay's (its UDP work is a few datagrams).
fn relayed(lab: &Lab, run: &Path, file: &Path, bytes: u64) -> Result<Sample, String> {
    let deadline = Instant::now() + lab.limit(bytes, 1.0);
    let bin = lab.bin.borrow().clone();
    let mut tracker = Proc::spawn(
        &bin,
        "tracker",
        &["tracker", "--listen", "127.0.0.1:0", "--relay", "--json"],
        run,
    )?;
    let (_, l) = tracker.wait_event("listening", deadline)?;
    let central = l["addr"]
        .as_str()
        .ok_or("tracker: listening without addr")?
        .to_string();
    let file = file.to_string_lossy().into_owned();
    let mut sharer = Proc::spawn(
        &bin,
        "sharer",
        &[
            "share",
            &file,
            "--tracker",
            &central,
            "--listen",
            "127.0.0.2:0",
            "--json",
        ],
        run,
    )?;
    let (_, t) = sharer.wait_event("ticket", deadline)?;
    let ticket = t["ticket"]
        .as_str()
        .ok_or("sharer: ticket event without a ticket")?
        .to_string();
    let (_, r) = sharer.wait_event("reachability", deadline)?;
    if r["how"] != "relay" {
        return Err(format!("the sharer is not relayed: {r}"));
    }
    let listed = r["addr"].as_str().unwrap_or("").to_string();
    let (tracker_cpu0, sharer_cpu0) = (tracker.cpu_now(), sharer.cpu_now());
    let started = Instant::now();
    let mut getter = lab.get(run, "getter", &ticket, false)?;
    let (done_at, done) = getter.wait_event("done", deadline)?;
    let g = getter.finish(deadline)?;
    let s = sharer.terminate()?;
    let tr = tracker.terminate()?;
    if done["via"][&listed] != "relay" {
        return Err(format!("not received through the relay: {done}"));
    }
    let wall = done_at.duration_since(started).as_secs_f64();
    let relay_cpu = tr.cpu - tracker_cpu0;
    let mut out = Sample::default();
    out.push("wall s (get start -> done)", Unit::Secs, wall);
    out.push("MiB/s", Unit::Rate, bytes as f64 / MIB / wall);
    out.push("getter CPU s", Unit::Secs, g.cpu);
    out.push(
        "sharer CPU s (during the get)",
        Unit::Secs,
        s.cpu - sharer_cpu0,
    );
    out.push(
        "relay (tracker) CPU s (during the get)",
        Unit::Secs,
        relay_cpu,
    );
    out.push(
        "relay CPU s per GiB",
        Unit::Secs,
        relay_cpu / (bytes as f64 / (1024.0 * MIB)),
    );
    out.push("relay peak RSS MiB", Unit::Mib, tr.maxrss_mib());
    Ok(out)
}

fn three_to_one(lab: &Lab, run: &Path, file: &Path, bytes: u64) -> Result<Sample, String> {
    let deadline = Instant::now() + lab.limit(bytes, 3.0);
    let copies = lab.seed_copies()?;
    let mut sharer = lab.share(run, file, deadline)?;
    let mut seeders = Vec::new();
    for (i, dir) in copies.iter().enumerate() {
        let name = format!("seeder{}", i + 1);
        seeders.push(lab.get_into(run, &name, &sharer.ticket, dir, true)?);
    }
    let mut seeder_addrs = Vec::new();
    for s in &mut seeders {
        let (_, done) = s.wait_event("done", deadline)?;
        if done["reused"].as_u64() != Some(bytes) {
            return Err(format!("a seeder did not reuse its complete copy: {done}"));
        }
        s.wait_event("seeding", deadline)?;
        seeder_addrs.push(s.listening()?);
    }
    let sharer_cpu0 = sharer.proc.cpu_now();
    let seeders_cpu0: Vec<f64> = seeders.iter().map(Proc::cpu_now).collect();
    let started = Instant::now();
    let mut getter = lab.get(run, "getter", &sharer.ticket, false)?;
    let (done_at, done) = getter.wait_event("done", deadline)?;
    let g = getter.finish(deadline)?;
    let s = sharer.proc.terminate()?;
    let mut seeders_cpu = 0.0f64;
    let mut seeders_rss = 0.0f64;
    for (p, cpu0) in seeders.iter_mut().zip(&seeders_cpu0) {
        let e = p.terminate()?;
        seeders_cpu = seeders_cpu.max(e.cpu - cpu0);
        seeders_rss = seeders_rss.max(e.maxrss_mib());
    }
    let from = |addr: &str| done["from"][addr].as_u64().unwrap_or(0) as f64 / bytes as f64;
    let senders = done["from"]
        .as_object()
        .map_or(0, |m| m.values().filter(|v| v.as_u64() > Some(0)).count());
    let wall = done_at.duration_since(started).as_secs_f64();
    let mut out = Sample::default();
    out.push("wall s (get start -> done)", Unit::Secs, wall);
    out.push("MiB/s", Unit::Rate, bytes as f64 / MIB / wall);
    out.push(
        "getter's own seconds (done.seconds)",
        Unit::Secs,
        done["seconds"].as_f64().unwrap_or(f64::NAN),
    );
    out.push("getter CPU s", Unit::Secs, g.cpu);
    out.push("getter peak RSS MiB", Unit::Mib, g.maxrss_mib());
    out.push(
        "sharer CPU s (during the get)",
        Unit::Secs,
        s.cpu - sharer_cpu0,
    );
    out.push("sharer peak RSS MiB", Unit::Mib, s.maxrss_mib());
    out.push(
        "seeder CPU s (during the get, max)",
        Unit::Secs,
        seeders_cpu,
    );
    out.push("seeder peak RSS MiB (max)", Unit::Mib, seeders_rss);
    out.push("peers that sent data", Unit::Count, senders as f64);
    out.push(
        "from the sharer (copies)",
        Unit::Copies,
        from(&sharer.listening),
    );
    out.push(
        "from the seeders (copies)",
        Unit::Copies,
        seeder_addrs.iter().map(|a| from(a)).sum(),
    );
    Ok(out)
}

fn one_to_four(lab: &Lab, run: &Path, file: &Path, bytes: u64) -> Result<Sample, String> {
    let deadline = Instant::now() + lab.limit(bytes, 4.0);
    let mut sharer = lab.share(run, file, deadline)?;
    let sharer_cpu0 = sharer.proc.cpu_now();
    let started = Instant::now();
    let mut getters = Vec::new();
    for i in 1..=4 {
        getters.push(lab.get(run, &format!("getter{i}"), &sharer.ticket, false)?);
    }
    let mut first = f64::INFINITY;
    let mut last = 0.0f64;
    for g in &mut getters {
        let (at, _) = g.wait_event("done", deadline)?;
        let t = at.duration_since(started).as_secs_f64();
        first = first.min(t);
        last = last.max(t);
    }
    let mut cpu = Vec::new();
    let mut rss = 0.0f64;
    for g in &mut getters {
        let e = g.finish(deadline)?;
        cpu.push(e.cpu);
        rss = rss.max(e.maxrss_mib());
    }
    let (anon, file_pages) = sharer.proc.rss_parts_mib();
    let s = sharer.proc.terminate()?;
    let uploaded = sharer.proc.uploaded();
    let mut out = Sample::default();
    out.push("wall s (start -> all four done)", Unit::Secs, last);
    out.push(
        "MiB/s (per getter: size / wall)",
        Unit::Rate,
        bytes as f64 / MIB / last,
    );
    out.push("first done s", Unit::Secs, first);
    out.push(
        "getter CPU s (mean of 4)",
        Unit::Secs,
        cpu.iter().sum::<f64>() / cpu.len() as f64,
    );
    out.push("getter peak RSS MiB (max of 4)", Unit::Mib, rss);
    out.push(
        "sharer CPU s (during the gets)",
        Unit::Secs,
        s.cpu - sharer_cpu0,
    );
    out.push("sharer peak RSS MiB", Unit::Mib, s.maxrss_mib());
    push_rss_parts(&mut out, anon, file_pages);
    out.push(
        "sharer upload (copies)",
        Unit::Copies,
        uploaded / bytes as f64,
    );
    Ok(out)
}

fn share_only(lab: &Lab, run: &Path, file: &Path, bytes: u64) -> Result<Sample, String> {
    let deadline = Instant::now() + lab.limit(bytes, 1.0);
    let mut sharer = lab.share(run, file, deadline)?;
    let cpu = sharer.proc.cpu_now();
    let rss_at_ticket = sharer.proc.vm_hwm_mib();
    let secs = sharer
        .ticket_at
        .duration_since(sharer.started)
        .as_secs_f64();
    let listening = sharer
        .listening_at
        .duration_since(sharer.started)
        .as_secs_f64();
    sharer.proc.terminate()?;
    let mut out = Sample::default();
    out.push("start -> ticket s", Unit::Secs, secs);
    out.push("MiB/s (size / that)", Unit::Rate, bytes as f64 / MIB / secs);
    out.push("of which start -> listening s", Unit::Secs, listening);
    out.push("CPU s until the ticket", Unit::Secs, cpu);
    out.push("peak RSS MiB at the ticket", Unit::Mib, rss_at_ticket);
    Ok(out)
}

// ---------------------------------------------------------------------------
// The lab: the test file, the binary, one directory per run.

struct Lab {
    /// The binary the next runs use.
    bin: std::cell::RefCell<String>,
    root: tempfile::TempDir,
    file: PathBuf,
    prepared: Duration,
    runs: std::cell::Cell<usize>,
}

/// A running `share` that printed its ticket.
struct Sharer {
    proc: Proc,
    ticket: String,
    /// The address it serves on, as listed (`127.0.0.1:PORT`).
    listening: String,
    started: Instant,
    listening_at: Instant,
    ticket_at: Instant,
}

impl Lab {
    fn new(settings: &Settings) -> Result<Self, String> {
        let root = match &settings.dir {
            Some(d) => tempfile::Builder::new()
                .prefix("hayedik-swarm-bench-")
                .tempdir_in(d),
            None => tempfile::Builder::new()
                .prefix("hayedik-swarm-bench-")
                .tempdir(),
        }
        .map_err(|e| format!("temporary directory: {e}"))?;
        let start = Instant::now();
        let file = root.path().join("content.bin");
        write_random(&file, settings.bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(Self {
            bin: std::cell::RefCell::new(settings.bins[0].1.clone()),
            root,
            file,
            prepared: start.elapsed(),
            runs: std::cell::Cell::new(0),
        })
    }

    /// Directories `seed1` and `seed2` beside the test file, each holding a
    /// copy of it under its name: complete copies for the 3 -> 1 seeders.
    fn seed_copies(&self) -> Result<Vec<PathBuf>, String> {
        let name = self.file.file_name().ok_or("the test file has no name")?;
        let mut dirs = Vec::new();
        for d in ["seed1", "seed2"] {
            let dir = self.root.path().join(d);
            let copy = dir.join(name);
            let complete = std::fs::metadata(&copy)
                .ok()
                .zip(std::fs::metadata(&self.file).ok())
                .is_some_and(|(c, f)| c.len() == f.len());
            if !complete {
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                std::fs::copy(&self.file, &copy).map_err(|e| format!("{}: {e}", copy.display()))?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    fn set_bin(&self, bin: &str) {
        *self.bin.borrow_mut() = bin.to_string();
    }

    /// The time allowed for a run that moves `copies` copies of `bytes`.
    fn limit(&self, bytes: u64, copies: f64) -> Duration {
        BASE_LIMIT + Duration::from_secs_f64(copies * bytes as f64 / SLOWEST_RATE)
    }

    /// Runs `f` in a fresh directory, removed afterwards (processes that `f`
    /// started are stopped by then: they are dropped when it returns).
    fn run<T>(&self, f: impl FnOnce(&Path) -> Result<T, String>) -> Result<T, String> {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let dir = self.root.path().join(format!("run-{n}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let r = f(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        sync();
        r
    }

    fn share(&self, run: &Path, file: &Path, deadline: Instant) -> Result<Sharer, String> {
        let started = Instant::now();
        let file = file.to_string_lossy().into_owned();
        let mut proc = Proc::spawn(
            &self.bin.borrow(),
            "sharer",
            &[
                "share",
                &file,
                "--public-host",
                "127.0.0.1",
                "--listen",
                "127.0.0.1:0",
                "--json",
            ],
            run,
        )?;
        let (listening_at, _) = proc.wait_event("listening", deadline)?;
        let (ticket_at, t) = proc.wait_event("ticket", deadline)?;
        let ticket = t["ticket"]
            .as_str()
            .ok_or("sharer: ticket event without a ticket")?
            .to_string();
        let listening = proc.listening()?;
        Ok(Sharer {
            proc,
            ticket,
            listening,
            started,
            listening_at,
            ticket_at,
        })
    }

    fn get(&self, run: &Path, name: &str, ticket: &str, seed: bool) -> Result<Proc, String> {
        self.get_into(run, name, ticket, &run.join(format!("{name}.out")), seed)
    }

    /// `get` of `ticket` into `dir` (`--no-seed` unless `seed`).
    fn get_into(
        &self,
        run: &Path,
        name: &str,
        ticket: &str,
        dir: &Path,
        seed: bool,
    ) -> Result<Proc, String> {
        let out = dir.to_string_lossy().into_owned();
        let mut args = vec![
            "get",
            ticket,
            "-o",
            &out,
            "--listen",
            "127.0.0.1:0",
            "--timeout",
            GET_TIMEOUT,
            "--json",
        ];
        if !seed {
            args.push("--no-seed");
        }
        Proc::spawn(&self.bin.borrow(), name, &args, run)
    }

    /// 1 -> 1 with a sparse file of `bytes` (zeros): peak memory.
    fn big(&self, bytes: u64) -> Result<Sample, String> {
        let file = self.root.path().join("sparse.bin");
        File::create(&file)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let r = self.run(|run| {
            let deadline = Instant::now() + self.limit(bytes, 2.0);
            let mut sample = one_to_one(self, run, &file, bytes)?;
            // The hashing time of the same file, for the record.
            let sharer = self.share(run, &file, deadline)?;
            sample.push(
                "share: start -> ticket s",
                Unit::Secs,
                sharer
                    .ticket_at
                    .duration_since(sharer.started)
                    .as_secs_f64(),
            );
            Ok(sample)
        });
        let _ = std::fs::remove_file(&file);
        r
    }
}

/// Writes `len` pseudo-random bytes (xorshift64*: fast, not compressible,
/// no two blocks alike) to `path`.
fn write_random(path: &Path, len: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

// ---------------------------------------------------------------------------
// Processes

/// How a child ended, from `wait4`.
#[derive(Debug, Clone, Copy)]
struct Exit {
    /// Exit code, or `128 + signal`.
    code: i32,
    /// User + system CPU seconds over its whole life.
    cpu: f64,
    maxrss_kib: i64,
}

impl Exit {
    fn maxrss_mib(&self) -> f64 {
        self.maxrss_kib as f64 / 1024.0
    }
}

/// A `hayedik` child: its JSON events arrive through a reader thread that
/// timestamps each line. Killed and reaped on drop.
struct Proc {
    name: String,
    pid: libc::pid_t,
    events: mpsc::Receiver<(Instant, Value)>,
    seen: Vec<(Instant, Value)>,
    stderr: PathBuf,
    exit: Option<Exit>,
}

impl Proc {
    fn spawn(bin: &str, name: &str, args: &[&str], dir: &Path) -> Result<Self, String> {
        let stderr = dir.join(format!("{name}.stderr"));
        let err = File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let pid = child.id() as libc::pid_t;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if tx.send((at, v)).is_err() {
                            break;
                        }
                    }
                }
            });
        }
        // From here on the child is reaped with wait4, not through `child`
        // (dropping a std Child neither waits nor kills).
        drop(child);
        Ok(Self {
            name: name.to_string(),
            pid,
            events: rx,
            seen: Vec::new(),
            stderr,
            exit: None,
        })
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            "(nothing on stderr)".into()
        } else {
            tail
        }
    }

    fn seen_event(&self, name: &str) -> Option<(Instant, Value)> {
        self.seen.iter().find(|(_, v)| v["event"] == name).cloned()
    }

    /// The first event called `name`, waiting for it until `deadline`. An
    /// `error` event, the end of the output or the deadline is an error.
    fn wait_event(&mut self, name: &str, deadline: Instant) -> Result<(Instant, Value), String> {
        if let Some(e) = self.seen_event(name) {
            return Ok(e);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{}: no `{name}` event in time", self.name));
            }
            match self.events.recv_timeout(left) {
                Ok((at, v)) => {
                    self.seen.push((at, v.clone()));
                    if v["event"] == "error" {
                        return Err(format!("{}: {}", self.name, v["message"]));
                    }
                    if v["event"] == name {
                        return Ok((at, v));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{} ended before `{name}`: {}",
                        self.name,
                        self.stderr_tail()
                    ))
                }
            }
        }
    }

    /// The address from its `listening` event.
    fn listening(&self) -> Result<String, String> {
        self.seen_event("listening")
            .and_then(|(_, v)| v["addr"].as_str().map(str::to_string))
            .ok_or_else(|| format!("{}: no `listening` event", self.name))
    }

    /// `uploaded` from its `stopped` event (after it exited), NaN without one.
    fn uploaded(&self) -> f64 {
        match self
            .seen_event("stopped")
            .and_then(|(_, v)| v["uploaded"].as_u64())
        {
            Some(n) => n as f64,
            None => {
                println!("  note: {}: no `stopped` event with `uploaded`", self.name);
                f64::NAN
            }
        }
    }

    /// User + system CPU seconds so far (all threads), while it runs.
    fn cpu_now(&self) -> f64 {
        proc_cpu_secs(self.pid).unwrap_or(f64::NAN)
    }

    /// Peak resident memory so far (VmHWM), while it runs.
    fn vm_hwm_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// A size in `/proc/PID/status` (`field` with its colon, e.g.
    /// `RssAnon:`), in MiB, while it runs; NaN if it cannot be read.
    fn status_mib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with(field))?.to_string();
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }

    /// Its resident memory now, in two parts: heap and stacks (`RssAnon`),
    /// and pages of the binary and the libraries (`RssFile`). Peak RSS
    /// adds them; the anonymous part is what the program allocates, the
    /// file part grows with the binary's size and layout.
    fn rss_parts_mib(&self) -> (f64, f64) {
        (self.status_mib("RssAnon:"), self.status_mib("RssFile:"))
    }

    /// Waits until it exits by itself (bounded by `deadline`), then reads
    /// the rest of its events.
    fn finish(&mut self, deadline: Instant) -> Result<Exit, String> {
        loop {
            if let Some(e) = self.exit.or_else(|| try_reap(self.pid)) {
                self.exit = Some(e);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{}: did not exit in time", self.name));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // The pipe closes when it exits: the reader thread ends soon.
        let until = Instant::now() + Duration::from_secs(5);
        while let Ok(ev) = self
            .events
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.seen.push(ev);
        }
        let exit = self.exit.ok_or("unreachable")?;
        if exit.code != 0 {
            return Err(format!(
                "{} exited with {}: {}",
                self.name,
                exit.code,
                self.stderr_tail()
            ));
        }
        Ok(exit)
    }

    /// One SIGTERM, then [`Proc::finish`] within [`STOP_LIMIT`]. A non-zero
    /// exit after it is reported but keeps the run: the rusage is still
    /// right, and only what its `stopped` event says may be missing.
    fn terminate(&mut self) -> Result<Exit, String> {
        if self.exit.is_none() {
            signal(self.pid, libc::SIGTERM);
        }
        match self.finish(Instant::now() + STOP_LIMIT) {
            Err(e) if self.exit.is_some() => {
                println!("  note: after one SIGTERM, {e}");
                self.exit.ok_or(e)
            }
            r => r,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        signal(self.pid, libc::SIGKILL);
        let until = Instant::now() + Duration::from_secs(5);
        while try_reap(self.pid).is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Writes dirty pages out, so that one step's write-back does not land in the
/// next step's figures.
fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; `pid` is our unreaped child.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The child's exit and rusage if it has exited (it is reaped then).
fn try_reap(pid: libc::pid_t) -> Option<Exit> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, for which all zeros is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only through the two pointers, both valid and
    // exclusively borrowed for the call.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    if r == 0 {
        return None;
    }
    if r != pid {
        // Not our child any more (already reaped): nothing to measure.
        return Some(Exit {
            code: -1,
            cpu: f64::NAN,
            maxrss_kib: 0,
        });
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Some(Exit {
        code,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        maxrss_kib: usage.ru_maxrss,
    })
}

/// utime + stime from `/proc/PID/stat`, in seconds.
fn proc_cpu_secs(pid: libc::pid_t) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: count fields after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) / if ticks > 0 { ticks as f64 } else { 100.0 })
}

// ---------------------------------------------------------------------------
// Figures

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    Secs,
    Rate,
    Mib,
    Copies,
    Count,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Secs => "s",
            Unit::Rate => "MiB/s",
            Unit::Mib => "MiB",
            Unit::Copies => "copies",
            Unit::Count => "",
        }
    }

    fn show(self, v: f64) -> String {
        if v.is_nan() {
            return "-".into();
        }
        match self {
            Unit::Secs => format!("{v:.2}"),
            Unit::Rate => format!("{v:.0}"),
            Unit::Mib => format!("{v:.1}"),
            Unit::Copies => format!("{v:.2}"),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// One run's figures, in the order they are printed.
#[derive(Default, Clone)]
struct Sample {
    figures: Vec<(&'static str, Unit, f64)>,
}

impl Sample {
    fn push(&mut self, name: &'static str, unit: Unit, value: f64) {
        self.figures.push((name, unit, value));
    }

    /// The first two figures (wall time and rate), for the progress lines.
    fn brief(&self) -> String {
        self.figures
            .iter()
            .take(2)
            .map(|(_, u, v)| format!("{} {}", u.show(*v), u.suffix()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, v)| *v)
    }
}

/// Median, min and max of the values that are numbers.
fn stats(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some((median, values[0], values[n - 1]))
}

fn print_block(title: &str, samples: &[Sample]) {
    println!("{title}");
    println!("  {:<40} {:>9}  {:>17}", "", "median", "min..max");
    let Some(first) = samples.first() else { return };
    for (name, unit, _) in &first.figures {
        let values = samples.iter().filter_map(|s| s.get(name)).collect();
        let Some((median, min, max)) = stats(values) else {
            continue;
        };
        println!(
            "  {:<40} {:>9}  {:>17}",
            name,
            unit.show(median),
            format!("{}..{}", unit.show(min), unit.show(max))
        );
    }
    println!();
}

/// One line per scenario, and the ratios the targets are stated in.
fn print_summary(scenarios: &[Scenario], results: &BTreeMap<usize, Vec<Sample>>, bytes: u64) {
    let median = |i: usize, name: &str| {
        results
            .get(&i)
            .and_then(|s| stats(s.iter().filter_map(|x| x.get(name)).collect()))
            .map(|(m, _, _)| m)
    };
    let find = |s: Scenario| scenarios.iter().position(|x| x.key() == s.key());
    println!("summary (medians)");
    let wall_1_1 = find(Scenario::OneToOne).and_then(|i| median(i, "wall s (get start -> done)"));
    if let Some(w) = wall_1_1 {
        println!("  1 -> 1: {:.2} s, {:.0} MiB/s", w, bytes as f64 / MIB / w);
    }
    if let Some(w) =
        find(Scenario::ThreeToOne).and_then(|i| median(i, "wall s (get start -> done)"))
    {
        let vs = wall_1_1.map_or(String::new(), |w1| {
            format!(" (time {:.2}x that of 1 -> 1)", w / w1)
        });
        println!(
            "  3 -> 1: {:.2} s, {:.0} MiB/s{vs}",
            w,
            bytes as f64 / MIB / w
        );
    }
    if let Some(i) = find(Scenario::OneToFour) {
        if let Some(w) = median(i, "wall s (start -> all four done)") {
            println!(
                "  1 -> 4: all four done in {:.2} s; sharer uploaded {} copies",
                w,
                median(i, "sharer upload (copies)").map_or("-".into(), |c| format!("{c:.2}"))
            );
        }
    }
    if let Some(i) = find(Scenario::Share) {
        if let Some(s) = median(i, "start -> ticket s") {
            println!(
                "  share: ticket after {:.2} s, {:.0} MiB/s hashed",
                s,
                bytes as f64 / MIB / s
            );
        }
    }
    let mut peak: f64 = 0.0;
    for (i, _) in scenarios.iter().enumerate() {
        for s in results.get(&i).into_iter().flatten() {
            for (name, unit, v) in &s.figures {
                if *unit == Unit::Mib && name.contains("RSS") && !v.is_nan() {
                    peak = peak.max(*v);
                }
            }
        }
    }
    println!("  largest peak RSS of any process in any run: {peak:.1} MiB");
}

/// Each binary's median wall time per scenario, relative to the first's.
fn print_ab(
    scenarios: &[Scenario],
    results: &[BTreeMap<usize, Vec<Sample>>],
    bins: &[(String, String)],
) {
    println!();
    println!(
        "A/B: median wall time relative to [{}] (below 1 is faster)",
        bins[0].0
    );
    for (i, s) in scenarios.iter().enumerate() {
        let wall = |b: usize| {
            let samples = results[b].get(&i)?;
            let name = samples.first()?.figures.first()?.0;
            stats(samples.iter().filter_map(|x| x.get(name)).collect()).map(|(m, _, _)| m)
        };
        let Some(base) = wall(0) else { continue };
        let others: Vec<String> = (1..bins.len())
            .map(|b| match wall(b) {
                Some(w) => format!("[{}] {:.2}", bins[b].0, w / base),
                None => format!("[{}] -", bins[b].0),
            })
            .collect();
        println!("  {:<8} {}", s.title(), others.join("  "));
    }
}
