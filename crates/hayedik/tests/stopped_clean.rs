//! After `get` and `share` return (their `stopped` is the last thing they
//! do), nothing of theirs still runs: no task, no socket, no thread (issue
//! 12, point 5). Its own test binary, so the process holds nothing else:
//! the library runs in-process, the other side of each transfer is the
//! binary, and `/proc/self` is compared with what it held before.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hayedik::events::{self, Event};
use hayedik::peer::get::{get, GetOptions};
use hayedik::peer::share::{share, ShareOptions};
use hayedik_proto::ticket::Ticket;
use tokio_util::sync::CancellationToken;

/// The test runtime's threads are named so, to tell them from others.
const RUNTIME_THREAD: &str = "test-runtime";
const LIMIT: Duration = Duration::from_secs(120);
/// How long a thread still running is watched for, to say whether it ends
/// later (for the failure message only).
const LINGER: Duration = Duration::from_secs(5);

/// Thread names of this process, by thread id.
fn threads() -> BTreeMap<u32, String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let tid = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            Some((tid, comm.trim().to_string()))
        })
        .collect()
}

/// Descriptors of this process that are sockets.
fn sockets() -> Vec<String> {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| l.starts_with("socket:"))
        .collect()
}

/// Threads in `now` that are neither in `before` nor the runtime's.
fn new_threads(before: &BTreeMap<u32, String>, now: &BTreeMap<u32, String>) -> Vec<String> {
    now.iter()
        .filter(|(tid, name)| !before.contains_key(tid) && !name.starts_with(RUNTIME_THREAD))
        .map(|(tid, name)| format!("{name} ({tid})"))
        .collect()
}

fn write_file(path: &Path, len: usize) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(path, data).unwrap();
}

#[test]
fn stopped_clean_get_and_share_leave_no_task_socket_or_thread() {
    let (done_tx, done_rx) = mpsc::channel();
    let body = std::thread::spawn(move || {
        run();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(LIMIT) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = body.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("not done within {LIMIT:?}"),
    }
}

/// The binary, for the other side of each transfer: the process under
/// test holds only the side being checked.
const BIN: &str = env!("CARGO_BIN_EXE_hayedik");
const LEN: usize = 24 << 20;

/// Threads allowed to outlive `get` or `share` (ending within [`LINGER`]):
/// none. (The download's disk writer used to, by a few milliseconds; `get`
/// now joins it before it returns.)
const KNOWN_LATE: &[&str] = &[];

/// After `get` or `share` returned: no task, no socket, no thread of theirs
/// (but [`KNOWN_LATE`] ones that end within [`LINGER`]). Returns what is
/// wrong, if anything.
async fn leftovers(
    what: &str,
    threads_before: &BTreeMap<u32, String>,
    sockets_before: &[String],
) -> Option<String> {
    let tasks = hayedik::spawn::root().names();
    assert!(tasks.is_empty(), "{what}: tasks still running: {tasks:?}");
    let socks = sockets();
    assert_eq!(
        socks.len(),
        sockets_before.len(),
        "{what}: sockets still open: {socks:?} (before: {sockets_before:?})"
    );
    let lingering = new_threads(threads_before, &threads());
    if lingering.is_empty() {
        return None;
    }
    let started = Instant::now();
    let mut names = lingering.clone();
    while !names.is_empty() && started.elapsed() < LINGER {
        tokio::time::sleep(Duration::from_millis(5)).await;
        names = new_threads(threads_before, &threads());
    }
    let known = lingering
        .iter()
        .all(|t| KNOWN_LATE.iter().any(|k| t.starts_with(&format!("{k} ("))));
    if names.is_empty() && known {
        eprintln!(
            "{what}: known late threads {lingering:?} ended {:?} after it returned",
            started.elapsed()
        );
        return None;
    }
    Some(if names.is_empty() {
        format!(
            "{what}: threads still running when it returned: {lingering:?}; they ended {:?} later",
            started.elapsed()
        )
    } else {
        format!("{what}: threads still running when it returned: {lingering:?}; still running {LINGER:?} later: {names:?}")
    })
}

/// A child process that is killed when dropped, so that a failing
/// assertion leaves no `hayedik` running (holding port 7410 for the next
/// test).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `hayedik ARGS --json` with stdout piped.
fn child(args: &[&str]) -> Reaped {
    Reaped(
        Command::new(BIN)
            .args(args)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn run() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    write_file(&source, LEN);
    let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&out_a).unwrap();
    fs::create_dir(&out_b).unwrap();

    let threads_before = threads();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RUNTIME_THREAD)
        .enable_all()
        .build()
        .unwrap();
    // After the runtime is built: its signal driver holds a socket pair.
    let sockets_before = sockets();
    let before = threads_before.clone();
    let found = rt.block_on(async move {
        let mut found = Vec::new();
        // A: `share` here, `get` in a child.
        let (sink, mut stream) = events::channel(events::QUEUE_EVENTS, false);
        let collector = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = stream.recv().await {
                got.push(e);
            }
            got
        });
        let cancel = CancellationToken::new();
        let (ticket_tx, ticket_rx) = tokio::sync::oneshot::channel();
        let sharer = tokio::spawn(share(
            ShareOptions {
                path: source.clone(),
                tracker: None,
                public_host: Some("127.0.0.1".into()),
                listen: "127.0.0.1:0".parse().unwrap(),
                max_upload: None,
                max_peers_per_ip: 8,
                until_replicated: None,
                skip_unportable: false,
                port_mapping: false,
                dht: None,
            },
            sink,
            cancel.clone(),
            move |shared| {
                let _ = ticket_tx.send(shared.ticket.to_string());
            },
        ));
        let ticket = ticket_rx.await.expect("share gave no ticket");
        let out = out_a.display().to_string();
        let status = tokio::task::spawn_blocking(move || {
            let mut get = child(&[
                "get",
                &ticket,
                "-o",
                &out,
                "--no-seed",
                "--listen",
                "127.0.0.1:0",
            ]);
            get.0.wait().unwrap()
        })
        .await
        .unwrap();
        assert!(status.success(), "hayedik get: {status}");
        cancel.cancel();
        sharer.await.unwrap().expect("share failed");
        let got = collector.await.unwrap();
        assert!(
            matches!(got.last(), Some(Event::Stopped { .. })),
            "share's stopped is its last event: {got:?}"
        );
        found.extend(leftovers("share", &before, &sockets_before).await);

        // B: `share` in a child, `get` here.
        let mut sharer = child(&[
            "share",
            &source.display().to_string(),
            "--public-host",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
        ]);
        let mut lines = BufReader::new(sharer.0.stdout.take().unwrap()).lines();
        let ticket: Ticket = loop {
            let line = lines
                .next()
                .expect("share ended before its ticket")
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["event"] == "ticket" {
                break v["ticket"].as_str().unwrap().parse().unwrap();
            }
        };
        let (sink, mut stream) = events::channel(events::QUEUE_EVENTS, false);
        let collector = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = stream.recv().await {
                got.push(e);
            }
            got
        });
        let report = get(
            GetOptions {
                ticket,
                out_dir: out_b.clone(),
                listen: "127.0.0.1:0".parse().unwrap(),
                seed: false,
                timeout: Some(Duration::from_secs(60)),
                max_upload: None,
                max_download: None,
                only: Vec::new(),
                max_peers_per_ip: 8,
                port_mapping: false,
                dht: None,
            },
            sink,
            CancellationToken::new(),
        )
        .await
        .expect("get failed")
        .expect("get was interrupted");
        assert_eq!(report.bytes, LEN as u64);
        let got = collector.await.unwrap();
        assert!(
            matches!(got.last(), Some(Event::Done { .. })),
            "get's done is its last event (no seeding): {got:?}"
        );
        found.extend(leftovers("get", &before, &sockets_before).await);
        drop(sharer);
        found
    });
    rt.shutdown_timeout(Duration::from_secs(10));
    assert!(found.is_empty(), "{}", found.join("\n"));
    // The runtime's own threads end with it.
    let started = Instant::now();
    while threads().len() > threads_before.len() && started.elapsed() < LINGER {
        std::thread::sleep(Duration::from_millis(10));
    }
    let now = threads();
    assert_eq!(
        now.len(),
        threads_before.len(),
        "threads after the runtime stopped: {now:?} (before: {threads_before:?})"
    );
}
