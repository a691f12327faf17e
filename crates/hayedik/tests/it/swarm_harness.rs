//! Helpers of the peer tests: real `hayedik` processes (tracker, share,
//! get) on 127.0.0.1 with port 0, their `--json` events read on a thread so
//! that tests await events instead of sleeping, deterministic test files,
//! and byte-for-byte checks.
//!
//! - [`scenario`]: a test body under a global timeout; when it fires, every
//!   process the body started is killed (`SIGKILL`) and the test fails.
//! - [`Node`]: one running `hayedik ... --json`; dropping it kills it.
//!   [`Node::stop`] sends `SIGTERM` and checks `stopped` and exit 0.
//! - [`random_bytes`] / [`write_random`]: splitmix64 bytes, never all zeros.
//! - [`assert_same_file`]: compares a file with the expected bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{signal, BIN};

/// Longest wait for an event that should come soon.
pub const SOON: Duration = Duration::from_secs(15);
/// Longest wait for a process to exit once it should.
pub const EXIT_WITHIN: Duration = Duration::from_secs(15);
/// `--timeout` given to every getter: a stuck transfer ends the run with
/// an error well before the scenario's own limit.
pub const GET_TIMEOUT: &str = "20";
pub const MIB: usize = 1 << 20;

/// Processes started by each scenario thread, killed if its limit passes.
static PROCESSES: Mutex<Vec<(ThreadId, u32)>> = Mutex::new(Vec::new());

fn processes() -> std::sync::MutexGuard<'static, Vec<(ThreadId, u32)>> {
    PROCESSES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts a process the test started by hand under the scenario's limit (it
/// is killed with the others when the limit passes); [`disown`] takes it
/// back once it has exited.
pub fn adopt(pid: u32) {
    processes().push((thread::current().id(), pid));
}

pub fn disown(pid: u32) {
    processes().retain(|(_, p)| *p != pid);
}

/// Runs `body` on its own thread and fails the test if it takes longer than
/// `limit`, killing every process it started.
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
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => {
            let pids: Vec<u32> = processes()
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

/// Collects a pipe's text on a thread (the tail only).
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

/// One running `hayedik ... --json`.
pub struct Node {
    /// For messages: "sharer", "getter A"...
    pub name: String,
    child: Child,
    events: Receiver<Value>,
    /// Received events no wait has taken yet.
    pending: VecDeque<Value>,
    /// Every event received, in order.
    history: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Node {
    /// Starts `hayedik ARGS...` (the caller includes `--json`).
    pub fn spawn(name: &str, args: &[&str]) -> Node {
        Node::spawn_in(name, args, &crate::harness::isolated_home())
    }

    /// [`Node::spawn`] with `HAYEDIK_HOME` at `home` (to share it).
    pub fn spawn_in(name: &str, args: &[&str], home: &Path) -> Node {
        Node::spawn_env(name, args, home, &[])
    }

    /// [`Node::spawn_in`] with `env` added to the environment.
    pub fn spawn_env(name: &str, args: &[&str], home: &Path, env: &[(&str, &str)]) -> Node {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("HAYEDIK_HOME", home)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        processes().push((thread::current().id(), child.id()));
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
        Node {
            name: name.to_string(),
            child,
            events,
            pending: VecDeque::new(),
            history: Vec::new(),
            stderr,
            status: None,
        }
    }

    /// `hayedik tracker --listen 127.0.0.1:0 --json`, once listening; returns
    /// it and its address.
    pub fn tracker() -> (Node, SocketAddr) {
        let mut t = Node::spawn("tracker", &["tracker", "--listen", "127.0.0.1:0", "--json"]);
        let addr = t.listening();
        (t, addr)
    }

    /// `hayedik share PATH --listen 127.0.0.1:0 --json EXTRA...` with an
    /// embedded tracker (`--public-host 127.0.0.1`) unless EXTRA names one.
    pub fn share(name: &str, path: &Path, extra: &[&str]) -> Node {
        let path = path.to_str().expect("UTF-8 test path");
        let mut args = vec!["share", path, "--listen", "127.0.0.1:0", "--json"];
        if !extra.contains(&"--tracker") {
            args.extend(["--public-host", "127.0.0.1"]);
        }
        args.extend(extra);
        Node::spawn(name, &args)
    }

    /// `hayedik get TICKET -o DIR --listen 127.0.0.1:0 --json --timeout 20
    /// EXTRA...`.
    pub fn get(name: &str, ticket: &str, dir: &Path, extra: &[&str]) -> Node {
        let dir = dir.to_str().expect("UTF-8 test path");
        let mut args = vec![
            "get",
            ticket,
            "-o",
            dir,
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--timeout",
            GET_TIMEOUT,
        ];
        args.extend(extra);
        Node::spawn(name, &args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tail of what the process printed on stderr.
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
        let start = err.len().saturating_sub(4000);
        let start = (start..err.len())
            .find(|&i| err.is_char_boundary(i))
            .unwrap_or(0);
        let events: Vec<&Value> = self
            .history
            .iter()
            .filter(|v| v["event"] != "progress")
            .collect();
        let progress = self
            .history
            .iter()
            .filter(|v| v["event"] == "progress")
            .count();
        format!(
            "{}: events {events:?} (+{progress} progress)\nstderr tail:\n{}",
            self.name,
            &err[start..]
        )
    }

    fn received(&mut self, v: Value) -> Value {
        if v["event"] == "__not_an_event" {
            panic!(
                "{} printed a line that is not a JSON event: {v}\n{}",
                self.name,
                self.context()
            );
        }
        self.history.push(v.clone());
        v
    }

    /// The first event (not yet taken) that `pred` accepts within `limit`,
    /// or `None` when the limit passes or the process's output ends.
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

    /// Like [`Node::try_wait_for`], failing the test with context.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        match self.try_wait_for(limit, pred) {
            Some(v) => v,
            None => panic!(
                "waiting {limit:?} for {what} of {}: not seen\n{}",
                self.name,
                self.context()
            ),
        }
    }

    /// The event named `name`, within [`SOON`].
    pub fn wait_event(&mut self, name: &str) -> Value {
        self.wait_event_within(name, SOON)
    }

    pub fn wait_event_within(&mut self, name: &str, limit: Duration) -> Value {
        self.wait_for(&format!("'{name}'"), limit, |v| v["event"] == name)
    }

    /// The address of the `listening` event.
    pub fn listening(&mut self) -> SocketAddr {
        let v = self.wait_event("listening");
        v["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad listening event of {}: {v}", self.name))
    }

    /// The ticket of a sharer's `ticket` event (checked against its fields).
    pub fn ticket(&mut self) -> Value {
        let v = self.wait_event("ticket");
        let ticket = v["ticket"].as_str().expect("ticket string");
        let root = v["root"].as_str().expect("root string");
        assert!(ticket.starts_with("hayedik://"), "{v}");
        assert!(ticket.ends_with(&format!("/{root}")), "{v}");
        assert_eq!(root.len(), 64, "{v}");
        assert!(
            root.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{v}"
        );
        v
    }

    /// The `done` event within `limit`.
    pub fn done(&mut self, limit: Duration) -> Done {
        let v = self.wait_event_within("done", limit);
        Done::from_event(&v)
    }

    /// Every event received so far.
    pub fn history(&mut self) -> &[Value] {
        while let Ok(v) = self.events.try_recv() {
            let v = self.received(v);
            self.pending.push_back(v);
        }
        &self.history
    }

    /// The exit status, waiting at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    // The reader threads end with the pipes: take the rest.
                    while let Ok(v) = self.events.recv_timeout(Duration::from_secs(2)) {
                        let v = self.received(v);
                        self.pending.push_back(v);
                    }
                    let until = Instant::now() + Duration::from_secs(2);
                    while Arc::strong_count(&self.stderr) > 1 && Instant::now() < until {
                        thread::sleep(Duration::from_millis(5));
                    }
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => panic!(
                    "{} did not exit within {limit:?}\n{}",
                    self.name,
                    self.context()
                ),
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }

    /// Waits for the process to exit 0 by itself.
    pub fn expect_success(&mut self) {
        let status = self.wait_exit(EXIT_WITHIN);
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            self.name,
            self.context()
        );
        self.assert_no_panic();
    }

    /// Waits for exit code `code` and returns the stderr text.
    pub fn expect_failure(&mut self, code: i32, limit: Duration) -> String {
        let status = self.wait_exit(limit);
        assert_eq!(
            status.code(),
            Some(code),
            "{} exited with {status}\n{}",
            self.name,
            self.context()
        );
        self.assert_no_panic();
        self.stderr()
    }

    /// SIGTERM: expects `stopped` and exit 0, or 143 when it says a `get`
    /// was not complete (DESIGN.md); returns the `stopped` event.
    pub fn stop(&mut self) -> Value {
        signal(self.pid(), "TERM").expect("running kill");
        let stopped = self.wait_event("stopped");
        if stopped["complete"] == false {
            let status = self.wait_exit(EXIT_WITHIN);
            assert_eq!(
                status.code(),
                Some(143),
                "{}\n{}",
                self.name,
                self.context()
            );
            self.assert_no_panic();
        } else {
            self.expect_success();
        }
        stopped
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        signal(self.pid(), "KILL").expect("running kill");
        let status = self.wait_exit(EXIT_WITHIN);
        assert!(!status.success(), "{} survived SIGKILL", self.name);
    }

    /// No panic nor backtrace on stderr.
    pub fn assert_no_panic(&self) {
        let err = self.stderr();
        assert!(
            !err.contains("panicked") && !err.contains("stack backtrace"),
            "{} panicked:\n{err}",
            self.name
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- {}", self.context());
        }
        let pid = self.child.id();
        processes().retain(|(_, p)| *p != pid);
    }
}

/// A `done` event.
#[derive(Debug, Clone)]
pub struct Done {
    pub path: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
    pub reused: u64,
    /// Listed address -> verified bytes received from it.
    pub from: BTreeMap<SocketAddr, u64>,
}

impl Done {
    pub fn from_event(v: &Value) -> Done {
        let from = v["from"]
            .as_object()
            .unwrap_or_else(|| panic!("done without a 'from' object: {v}"))
            .iter()
            .map(|(k, n)| {
                let addr: SocketAddr = k
                    .parse()
                    .unwrap_or_else(|_| panic!("'from' key {k:?} is not IP:PORT: {v}"));
                (addr, n.as_u64().expect("byte count"))
            })
            .collect();
        Done {
            path: PathBuf::from(v["path"].as_str().expect("done.path")),
            bytes: v["bytes"].as_u64().expect("done.bytes"),
            seconds: v["seconds"].as_f64().expect("done.seconds"),
            reused: v["reused"].as_u64().expect("done.reused"),
            from,
        }
    }

    pub fn sources(&self) -> BTreeSet<SocketAddr> {
        self.from.keys().copied().collect()
    }

    /// Bytes received from peers (all of them).
    pub fn received(&self) -> u64 {
        self.from.values().sum()
    }
}

/// `len` deterministic bytes (splitmix64 of `seed`).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` deterministic bytes to `dir/name`; returns them.
pub fn write_random(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let data = random_bytes(len, seed);
    let path = dir.join(name);
    std::fs::write(&path, &data).expect("writing a test file");
    (path, data)
}

/// The file at `path` holds exactly `expected`.
pub fn assert_same_file(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if got.len() != expected.len() {
        panic!(
            "{}: {} bytes, expected {}",
            path.display(),
            got.len(),
            expected.len()
        );
    }
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{}: differs from byte {i} on", path.display());
    }
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// A new temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hayedik-peers-")
        .tempdir()
        .expect("creating a temporary directory")
}

/// The file's identity and modification time: unchanged means untouched.
pub fn identity(path: &Path) -> (u64, u64, std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.dev(), m.ino(), m.modified().expect("mtime"))
}

/// Prints a line on the real stderr (libtest captures `eprintln!`).
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
