//! The many-small-files benchmark: `cargo bench --bench tree`. It prints a
//! table and asserts nothing.
//!
//! It writes a tree of `HAYEDIK_BENCH_FILES` files (default 10,000) of
//! `HAYEDIK_BENCH_FILE_BYTES` bytes each (default 4096) in folders of 100,
//! and, as baselines in the same run, one file of the same total size and a
//! local `cp -r` of the tree (what creating that many files costs on this
//! file system at all). Then, for `HAYEDIK_BENCH_RUNS` rounds (default 5),
//! with the real release `hayedik` binary on loopback:
//!
//! - **share tree**: `share` of the tree, from spawn to its `ticket` event
//!   (walking the tree and hashing every file);
//! - **get tree**: one `get --no-seed` of it, from spawn to `done`, with the
//!   getter's CPU seconds and peak RSS;
//! - **get one file**: the same for the single file of the same size;
//! - **cp -r**: the local copy.
//!
//! Every output is compared with its source and kept until the end of the
//! run (then `sync`): deleting thousands of files makes creating the next
//! ones several times dearer for a while on ext4 without a journal (its
//! inode allocator skips recently freed inodes), which would penalise every
//! round after the first. `HAYEDIK_BENCH_DIR` chooses where the files go (default: the
//! system's temporary directory).

#![allow(clippy::unwrap_used)]
// getrusage: the CPU time and peak RSS of the getter once it is reaped.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(300);

fn main() {
    let files = env_usize("HAYEDIK_BENCH_FILES", 10_000);
    let file_bytes = env_usize("HAYEDIK_BENCH_FILE_BYTES", 4096);
    let runs = env_usize("HAYEDIK_BENCH_RUNS", 5).max(1);
    let bin =
        std::env::var("HAYEDIK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hayedik").to_string());
    let base = std::env::var_os("HAYEDIK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("hayedik-tree-bench-")
        .tempdir_in(&base)
        .unwrap();
    println!("hayedik tree benchmark");
    println!("  binary: {bin}");
    println!(
        "  {files} files of {file_bytes} bytes in folders of 100 ({:.1} MiB), {runs} rounds",
        (files * file_bytes) as f64 / 1_048_576.0
    );
    println!(
        "  {} CPUs; load average before the run: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let tree = work.path().join("tree");
    let single = work.path().join("single.bin");
    write_inputs(&tree, &single, files, file_bytes);
    run("sync", &[]);

    let mut table: Vec<(&str, Vec<f64>)> = vec![
        ("share tree: start -> ticket s", vec![]),
        ("get tree: start -> done s", vec![]),
        ("get tree: getter CPU s", vec![]),
        ("get tree: files per second", vec![]),
        ("get one file of the same size: start -> done s", vec![]),
        ("cp -r of the tree s", vec![]),
    ];
    let mut peak_rss_kib = 0;
    for round in 1..=runs {
        let out = work.path().join(format!("out-{round}"));
        let (share_s, get_s, cpu, rss) = transfer(&bin, &tree, &out, "tree");
        table[0].1.push(share_s);
        table[1].1.push(get_s);
        table[2].1.push(cpu);
        table[3].1.push(files as f64 / get_s);
        peak_rss_kib = peak_rss_kib.max(rss);
        let (_, one_s, _, rss) = transfer(&bin, &single, &out, "single.bin");
        table[4].1.push(one_s);
        peak_rss_kib = peak_rss_kib.max(rss);
        let copy = work.path().join(format!("copy-{round}"));
        let started = Instant::now();
        run(
            "cp",
            &["-r", tree.to_str().unwrap(), copy.to_str().unwrap()],
        );
        table[5].1.push(started.elapsed().as_secs_f64());
        run("sync", &[]);
        println!("  round {round}/{runs} done (get tree {get_s:.2} s)");
    }
    println!();
    println!("{:<50} {:>8} {:>16}", "", "median", "min..max");
    for (label, values) in &table {
        let (median, min, max) = stats(values);
        println!(
            "  {label:<48} {median:>8.2} {:>16}",
            format!("{min:.2}..{max:.2}")
        );
    }
    println!(
        "  largest getter peak RSS: {:.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );
    let (tree_s, _, _) = stats(&table[1].1);
    let (one_s, _, _) = stats(&table[4].1);
    let (cp_s, _, _) = stats(&table[5].1);
    println!(
        "  the tree takes {:.1}x the time of one file of its size, {:.1}x a local cp -r",
        tree_s / one_s,
        tree_s / cp_s
    );
}

/// Shares `path`, gets it into a fresh folder, checks the copy, cleans up:
/// (share seconds, get seconds, getter CPU seconds, getter peak RSS KiB).
fn transfer(bin: &str, path: &Path, out: &Path, name: &str) -> (f64, f64, f64, u64) {
    let started = Instant::now();
    let mut sharer = spawn(
        bin,
        &[
            "share",
            path.to_str().unwrap(),
            "--public-host",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
            "--json",
        ],
    );
    let ticket = sharer.wait("ticket");
    let share_s = started.elapsed().as_secs_f64();
    let ticket = ticket["ticket"].as_str().unwrap().to_string();
    let started = Instant::now();
    let mut getter = spawn(
        bin,
        &[
            "get",
            &ticket,
            "-o",
            out.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-seed",
            "--json",
        ],
    );
    getter.wait("done");
    let get_s = started.elapsed().as_secs_f64();
    let (cpu, rss) = getter.reap();
    sharer.stop();
    run(
        "diff",
        &[
            "-r",
            "-q",
            path.to_str().unwrap(),
            out.join(name).to_str().unwrap(),
        ],
    );
    run("sync", &[]);
    (share_s, get_s, cpu, rss)
}

struct Proc {
    child: Child,
    events: mpsc::Receiver<Value>,
    /// Waited for by `reap`: its pid must not be signalled any more.
    reaped: bool,
}

fn spawn(bin: &str, args: &[&str]) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    Proc {
        child,
        events,
        reaped: false,
    }
}

impl Proc {
    fn wait(&mut self, event: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(v) if v["event"] == "error" => panic!("{event}: {v}"),
                Ok(_) => {}
                Err(_) => panic!("no {event} event within {LIMIT:?}"),
            }
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// Waits for the process to exit (it must succeed): its CPU seconds and
    /// peak RSS in KiB, from `wait4`.
    fn reap(&mut self) -> (f64, u64) {
        let pid = self.child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: wait4 fills the status and the rusage it is given; the
        // child is ours and not waited for elsewhere (`reaped` is set).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
        self.reaped = true;
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "get failed: status {status}"
        );
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (
            secs(usage.ru_utime) + secs(usage.ru_stime),
            usage.ru_maxrss.max(0) as u64,
        )
    }
}

/// The tree (`files` files in folders of 100) and one file of the same size,
/// written as they are generated: this process stays small, since a child's
/// peak RSS as `wait4` reports it starts from its parent's (it is spawned
/// with the parent's memory until it execs).
fn write_inputs(tree: &Path, single: &Path, files: usize, file_bytes: usize) {
    use std::io::Write;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut all = std::io::BufWriter::new(std::fs::File::create(single).unwrap());
    for i in 0..files {
        let bytes: Vec<u8> = (0..file_bytes).map(|_| next() as u8).collect();
        let dir = tree.join(format!("d{:03}", i / 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{:03}.bin", i % 100)), &bytes).unwrap();
        all.write_all(&bytes).unwrap();
    }
    all.flush().unwrap();
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd).args(args).status().unwrap();
    assert!(status.success(), "{cmd} {args:?}: {status}");
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median, min and max.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
}
