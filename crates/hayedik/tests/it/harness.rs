//! Shared helpers of the integration tests.
//!
//! - [`scenario`]: runs a test body under a global timeout and kills what it
//!   started if the timeout fires.
//! - [`Tracker`]: the real `hayedik tracker --json` as a child process; its
//!   JSON events are read on a thread into a channel, so tests await events
//!   instead of sleeping. Dropping it kills the child.
//! - [`Client`] (in `harness/client.rs`): a tiny tracker client on a UDP
//!   socket, built on `hayedik_proto::tracker`, with receive timeouts.
//! - [`udp_sockets`] and [`rss_kib`]: what a process holds, from `/proc`.
//! - [`run_to_exit`]: runs the binary to completion (usage and start-up errors).

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use serde_json::Value;

mod client;
pub mod http;
pub use client::{ann, error_code, peers, swarm_key, Client, Joined};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hayedik");
/// Longest wait for an event the test expects.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a reply the test expects.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long "no reply" is listened for.
pub const SILENCE: Duration = Duration::from_millis(300);

/// A fresh, empty directory for one child's `HAYEDIK_HOME` (its config and
/// data directories), so no test reads the user's config or another test's
/// data. Under Cargo's scratch directory for tests; folders left by test
/// processes that have exited are removed on first use.
pub fn isolated_home() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static CLEANED: std::sync::Once = std::sync::Once::new();
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("homes");
    CLEANED.call_once(|| {
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or_default();
            if !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating an isolated HAYEDIK_HOME");
    dir
}

/// Children started by each scenario thread, killed if its timeout fires.
static CHILDREN: Mutex<Vec<(ThreadId, u32)>> = Mutex::new(Vec::new());

/// Runs `body` on its own thread and fails the test if it takes longer than
/// `limit`, killing every child process it started.
pub fn scenario(limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let name = thread::current().name().unwrap_or("scenario").to_string();
    let handle = thread::Builder::new()
        .name(name)
        .spawn(move || {
            body();
            let _ = done_tx.send(());
        })
        .expect("spawning the scenario thread");
    let id = handle.thread().id();
    match done_rx.recv_timeout(limit) {
        // Disconnected: the body panicked; join returns its panic.
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => {
            let pids: Vec<u32> = lock_children()
                .iter()
                .filter(|(t, _)| *t == id)
                .map(|(_, p)| *p)
                .collect();
            for pid in pids {
                let _ = signal(pid, "KILL");
            }
            panic!("scenario did not finish within {limit:?}");
        }
    }
}

fn lock_children() -> std::sync::MutexGuard<'static, Vec<(ThreadId, u32)>> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `SIG<name>` to `pid` with kill(1) (unsafe code is denied here).
pub fn signal(pid: u32, name: &str) -> std::io::Result<ExitStatus> {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

/// `read()` once `pred` holds of it, or as it is after `limit`: for text a
/// thread collects from a running process, which may trail its events.
pub fn text_when(
    read: impl Fn() -> String,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = read();
        if pred(&text) || Instant::now() >= deadline {
            return text;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Collects a child's stderr on a thread, for failure messages.
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
            // Keep the tail only: a flood may log a lot.
            if s.len() > 64 * 1024 {
                let cut = s.len() - 32 * 1024;
                let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                s.drain(..cut);
            }
        }
    });
    text
}

/// A running `hayedik tracker --json`.
pub struct Tracker {
    child: Child,
    /// The central tracker's address, from the `listening` event.
    pub addr: SocketAddr,
    events: Receiver<Value>,
    /// Received events that no wait has taken yet.
    pending: VecDeque<Value>,
    /// Every event received, in order.
    history: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Tracker {
    /// `hayedik tracker --listen 127.0.0.1:0 --json EXTRA...`, once listening.
    pub fn start(extra: &[&str]) -> Tracker {
        Tracker::start_on("127.0.0.1:0", extra)
    }

    /// `hayedik tracker --listen LISTEN --json EXTRA...`, once listening.
    pub fn start_on(listen: &str, extra: &[&str]) -> Tracker {
        let mut cmd = Command::new(BIN);
        cmd.args(["tracker", "--listen", listen, "--json"])
            .args(extra)
            .env("HAYEDIK_HOME", isolated_home())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting hayedik tracker");
        lock_children().push((thread::current().id(), child.id()));
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
        let mut t = Tracker {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            events,
            pending: VecDeque::new(),
            history: Vec::new(),
            stderr,
        };
        let listening = t.wait_event("listening");
        t.addr = listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad listening event: {listening}"));
        t
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the tracker printed on stderr so far (the last 32 to 64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let start = s.len().saturating_sub(4000);
        let start = (start..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s[start..].to_string()
    }

    fn received(&mut self, v: Value) -> Value {
        if v["event"] == "__not_an_event" {
            panic!("the tracker printed a line that is not a JSON event: {v}");
        }
        self.history.push(v.clone());
        v
    }

    /// Waits for the first event (not yet taken) that `pred` accepts.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index just found");
        }
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    let v = self.received(v);
                    if pred(&v) {
                        return v;
                    }
                    self.pending.push_back(v);
                }
                Err(e) => panic!(
                    "waiting for {what}: {e:?}; events so far: {:?}\nstderr tail:\n{}",
                    self.history,
                    self.stderr_tail()
                ),
            }
        }
    }

    /// Waits for an event named `name`.
    pub fn wait_event(&mut self, name: &str) -> Value {
        self.wait_for(name, |v| v["event"] == name)
    }

    /// Waits for the event `name` about swarm port `port`.
    pub fn wait_port_event(&mut self, name: &str, port: u16) {
        self.wait_for(&format!("{name} on port {port}"), |v| {
            v["event"] == name && v["port"] == port
        });
    }

    /// Moves every event that arrived within `quiet` into the history and
    /// returns them (they stay available to waits).
    pub fn events_within(&mut self, quiet: Duration) -> Vec<Value> {
        let deadline = Instant::now() + quiet;
        let mut got = Vec::new();
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let v = self.received(v);
            got.push(v.clone());
            self.pending.push_back(v);
        }
        got
    }

    /// Every event received so far (without waiting).
    pub fn history(&mut self) -> &[Value] {
        while let Ok(v) = self.events.try_recv() {
            let v = self.received(v);
            self.pending.push_back(v);
        }
        &self.history
    }

    /// Ports of the events named `name` received so far.
    pub fn ports_of(&mut self, name: &str) -> Vec<u16> {
        self.history()
            .iter()
            .filter(|v| v["event"] == name)
            .filter_map(|v| v["port"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    }

    /// Resident memory of the tracker now.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// UDP sockets the tracker holds now.
    pub fn udp_sockets(&self) -> usize {
        udp_sockets(self.pid())
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => panic!(
                    "the tracker did not exit within {limit:?}\nstderr tail:\n{}",
                    self.stderr_tail()
                ),
                Err(e) => panic!("waiting for the tracker: {e}"),
            }
        }
    }

    /// SIGTERM: expects the `stopped` event and exit status 0; returns every
    /// event of the run.
    pub fn stop(mut self) -> Vec<Value> {
        signal(self.pid(), "TERM").expect("running kill");
        self.wait_event("stopped");
        let status = self.wait_exit(Duration::from_secs(10));
        assert!(
            status.success(),
            "the tracker exited with {status} after SIGTERM\nstderr tail:\n{}",
            self.stderr_tail()
        );
        // Everything printed before the exit.
        while let Ok(v) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.received(v);
        }
        std::mem::take(&mut self.history)
    }

    /// SIGKILL, as a crash: nothing gets to run.
    pub fn kill_hard(mut self) {
        self.child.kill().expect("killing the tracker");
        self.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("tracker stderr tail:\n{}", self.stderr_tail());
        }
        let pid = self.child.id();
        lock_children().retain(|(_, p)| *p != pid);
    }
}

/// What a finished run of the binary printed.
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `hayedik ARGS...` until it exits (it must within 20 s).
pub fn run_to_exit(args: &[&str]) -> Exit {
    run_to_exit_within(args, Duration::from_secs(20))
}

/// [`run_to_exit`] with a deadline of `limit`.
pub fn run_to_exit_within(args: &[&str], limit: Duration) -> Exit {
    let mut child = Command::new(BIN)
        .args(args)
        .env("HAYEDIK_HOME", isolated_home())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting hayedik");
    lock_children().push((thread::current().id(), child.id()));
    let stdout = collect(child.stdout.take().expect("piped stdout"));
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for hayedik") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hayedik {args:?} did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let pid = child.id();
    lock_children().retain(|(_, p)| *p != pid);
    // The pipes close with the process; give the readers a moment to finish.
    let read = |text: &Arc<Mutex<String>>| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(text) > 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    };
    Exit {
        status,
        stdout: read(&stdout),
        stderr: read(&stderr),
    }
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// UDP sockets `pid` holds: its socket descriptors whose inode is in
/// `/proc/net/udp` or `/proc/net/udp6`.
pub fn udp_sockets(pid: u32) -> usize {
    let mut udp = HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                udp.insert(inode.to_string());
            }
        }
    }
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("reading /proc/PID/fd");
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .filter(|inode| udp.contains(inode))
        .count()
}
