//! A `--json` reader that stops reading never stalls the tracker, and loses
//! nothing once it reads again (issue 12, point 4). The test holds the
//! tracker's stdout pipe and reads nothing for 10 s while 1,000 swarms are
//! created: well over a pipe's 64 KiB of events, so the tracker's events
//! wait in its bounded queue (see `events.rs`) while every JOIN and CONFIRM
//! is answered. Then every event arrives, in order and well formed.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{scenario, signal, Client, BIN, REPLY_TIMEOUT};

const LIMIT: Duration = Duration::from_secs(180);
const SWARMS: usize = 1000;
/// How long the reader reads nothing (at least; longer if creating the
/// swarms takes longer).
const PAUSE: Duration = Duration::from_secs(10);
/// A pipe's buffer on Linux: the events must not fit in it.
const PIPE_BYTES: usize = 64 << 10;
/// Generous: once read again, the events come at once.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn events_stall_json_reader_paused_does_not_stall_the_tracker_nor_lose_events() {
    scenario(LIMIT, || {
        let mut child = Command::new(BIN)
            .env("HAYEDIK_HOME", crate::harness::isolated_home())
            .args(["tracker", "--listen", "127.0.0.1:0", "--json"])
            .args(["--max-joins-per-ip-per-sec", "100000"])
            .args(["--join-burst", "100000"])
            .args(["--max-pending-per-ip", "100000"])
            .args(["--max-swarms-per-ip", "100000"])
            .args(["--max-swarms-per-24", "100000"])
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hayedik tracker");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("reading stdout");
        let listening: Value = serde_json::from_str(&first).expect("a JSON line");
        assert_eq!(listening["event"], "listening", "{first}");
        let central = listening["addr"].as_str().unwrap().parse().unwrap();

        // The pause: nothing reads stdout while the swarms are created.
        let paused = Instant::now();
        let mut client = Client::new();
        let mut ports = Vec::new();
        let mut slowest = Duration::ZERO;
        for _ in 0..SWARMS {
            let started = Instant::now();
            // Panics when a reply does not come within REPLY_TIMEOUT.
            ports.push(client.create_swarm(central).port);
            slowest = slowest.max(started.elapsed());
        }
        let created_in = paused.elapsed();
        assert!(slowest < REPLY_TIMEOUT, "a swarm took {slowest:?}");
        thread::sleep(PAUSE.saturating_sub(paused.elapsed()));
        eprintln!("{SWARMS} swarms created in {created_in:?} (slowest {slowest:?}) while stdout was not read");

        // Reading again: every event comes, well formed and in order.
        let (tx, rx) = mpsc::channel::<String>();
        let reader = thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut created = Vec::new();
        let mut confirmed = HashSet::new();
        let mut bytes = 0;
        let deadline = Instant::now() + DRAIN_WITHIN;
        while created.len() < SWARMS || confirmed.len() < SWARMS {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "{e:?}: {} created and {} confirmed events of {SWARMS} after {DRAIN_WITHIN:?}",
                    created.len(),
                    confirmed.len()
                )
            });
            bytes += line.len() + 1;
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
            let port = v["port"].as_u64().map(|p| p as u16);
            match v["event"].as_str() {
                Some("swarm_created") => created.push(port.expect("a port")),
                Some("swarm_confirmed") => {
                    let port = port.expect("a port");
                    assert!(created.contains(&port), "confirmed before created: {line}");
                    assert!(confirmed.insert(port), "confirmed twice: {line}");
                }
                _ => panic!("unexpected event while swarms were created: {line}"),
            }
        }
        assert_eq!(created, ports, "swarm_created events, in order");
        assert!(
            bytes > PIPE_BYTES,
            "{bytes} bytes of events fit in a pipe: the test proves nothing"
        );

        signal(child.id(), "TERM").expect("running kill");
        let last = rx
            .recv_timeout(DRAIN_WITHIN)
            .expect("an event after SIGTERM");
        assert_eq!(
            serde_json::from_str::<Value>(&last).unwrap()["event"],
            "stopped",
            "{last}"
        );
        let status = child.wait().expect("waiting for the tracker");
        reader.join().unwrap();
        assert!(rx.try_recv().is_err(), "events after stopped");
        let stderr = stderr.join().unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "tracker: {status}; stderr:\n{stderr}"
        );
        assert!(!stderr.contains("dropped"), "stderr:\n{stderr}");
    });
}
