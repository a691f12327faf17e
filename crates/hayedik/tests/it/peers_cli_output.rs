//! Output nobody reads must not keep a process from stopping. `tracker`,
//! `share` and a seeding `get` whose stdout and stderr were pipes with
//! their read ends closed (`hayedik share f 2>&1 | head`, a log collector
//! that died) stop on SIGTERM, exit 0, and `share` and `get` tell the
//! tracker they leave (issue 11, defect 7: they used to ignore SIGTERM).
//! A tracker whose pipes stay open but are never read (a hung collector)
//! goes on answering and stops too.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hayedik_proto::ticket::Ticket;
use hayedik_proto::tracker::{PeerState, Peers};

use crate::harness::{ann, peers, signal, Client, BIN};
use crate::swarm_harness::{adopt, disown, scenario, tempdir, write_random, MIB};

const LIMIT: Duration = Duration::from_secs(90);
/// Generous: a stop takes well under a second.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// Longest wait for the tracker's list to show a change.
const LISTED_WITHIN: Duration = Duration::from_secs(10);

/// What happens to a process's pipes once the test read what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipes {
    /// Both read ends closed: writes fail with EPIPE.
    Closed,
    /// Both kept open and never read again: writes block once they are full.
    Unread,
}

/// A `hayedik` process whose stdout and stderr are pipes: the test reads
/// stdout up to a line it waits for, then stops reading.
struct Deaf {
    name: &'static str,
    child: Child,
    /// What the test read.
    lines: Vec<String>,
    /// The pipes of [`Pipes::Unread`], kept open.
    _kept: Option<(BufReader<ChildStdout>, ChildStderr)>,
}

impl Deaf {
    fn start(name: &'static str, args: &[&str], until: impl Fn(&str) -> bool) -> Deaf {
        Deaf::start_with(name, args, until, Pipes::Closed)
    }

    fn start_with(
        name: &'static str,
        args: &[&str],
        until: impl Fn(&str) -> bool,
        pipes: Pipes,
    ) -> Deaf {
        let mut child = Command::new(BIN)
            .args(args)
            .env("HAYEDIK_HOME", crate::harness::isolated_home())
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        adopt(child.id());
        let stderr = child.stderr.take().expect("piped stderr");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match stdout.read_line(&mut line) {
                Ok(n) if n > 0 => {}
                _ => panic!("{name}: output ended before the line awaited; read {lines:?}"),
            }
            let line = line.trim_end().to_string();
            let found = until(&line);
            lines.push(line);
            if found {
                break;
            }
        }
        let kept = match pipes {
            // The readers are gone: every later write meets a closed pipe.
            Pipes::Closed => None,
            Pipes::Unread => Some((stdout, stderr)),
        };
        Deaf {
            name,
            child,
            lines,
            _kept: kept,
        }
    }

    /// The first line read that `f` accepts.
    fn find<T>(&self, f: impl Fn(&str) -> Option<T>) -> T {
        self.lines
            .iter()
            .find_map(|l| f(l))
            .unwrap_or_else(|| panic!("{}: not in {:?}", self.name, self.lines))
    }

    /// SIGTERM, then the exit status, which must come within [`STOP_WITHIN`].
    fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM").expect("running kill");
        let deadline = Instant::now() + STOP_WITHIN;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => panic!(
                    "{} still runs {STOP_WITHIN:?} after SIGTERM with its output closed",
                    self.name
                ),
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }
}

impl Drop for Deaf {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        disown(self.child.id());
    }
}

/// The address of a `listening` line, human or JSON.
fn listening(line: &str) -> Option<SocketAddr> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) if v["event"] == "listening" => v["addr"].as_str()?.parse().ok(),
        Ok(_) => None,
        Err(_) => line.strip_prefix("listening on ")?.parse().ok(),
    }
}

/// A loopback TCP address free a moment ago.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("its address")
}

/// The ticket of a `ticket` line, human or JSON.
fn ticket(line: &str) -> Option<Ticket> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) if v["event"] == "ticket" => v["ticket"].as_str()?.parse().ok(),
        Ok(_) => None,
        Err(_) => line.strip_prefix("ticket: ")?.parse().ok(),
    }
}

/// The swarm tracker's list, seen by a client that only asks.
fn listed(ticket: &Ticket) -> Peers {
    let swarm = SocketAddr::from(([127, 0, 0, 1], ticket.port));
    let mut client = Client::new();
    let cid = client.connect(swarm);
    let a = ann(ticket.swarm_key(), 1, PeerState::Asking, 50);
    peers(client.announce(swarm, cid, a).0)
}

/// Waits until the tracker's list satisfies `ok`.
fn wait_listed(ticket: &Ticket, what: &str, ok: impl Fn(&Peers) -> bool) {
    let deadline = Instant::now() + LISTED_WITHIN;
    loop {
        let p = listed(ticket);
        if ok(&p) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not so within {LISTED_WITHIN:?}: {p:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn lists(p: &Peers, addr: SocketAddr, state: PeerState) -> bool {
    p.peers.iter().any(|e| e.addr == addr && e.state == state)
}

fn lists_addr(p: &Peers, addr: SocketAddr) -> bool {
    p.peers.iter().any(|e| e.addr == addr)
}

/// A tracker, a sharer and a getter that finished and seeds, each with
/// its output closed once it has printed what the test needs; then
/// SIGTERM to each, the getter first.
fn stop_with_output_closed(json: bool) {
    let work = tempdir();
    let (path, _) = write_random(work.path(), "closed.bin", 3 * MIB + 5, 11);
    let mode: &[&str] = if json { &["--json"] } else { &[] };

    let mut tracker = Deaf::start(
        "tracker",
        &[&["tracker", "--listen", "127.0.0.1:0"], mode].concat(),
        |l| listening(l).is_some(),
    );
    let central = tracker.find(listening).to_string();

    let path = path.to_str().unwrap();
    // A peer's `listening` is not shown to people: the test chooses the
    // addresses.
    let sharer_addr = free_addr();
    let sharer_listen = sharer_addr.to_string();
    let mut sharer = Deaf::start(
        "sharer",
        &[
            &[
                "share",
                path,
                "--tracker",
                &central,
                "--listen",
                &sharer_listen,
            ],
            mode,
        ]
        .concat(),
        |l| ticket(l).is_some(),
    );
    let t = sharer.find(ticket);
    let getter_addr = free_addr();
    let getter_listen = getter_addr.to_string();

    let out = work.path().join("out");
    let (ticket_text, out) = (t.to_string(), out.to_str().unwrap().to_string());
    let mut getter = Deaf::start(
        "getter",
        &[
            &[
                "get",
                &ticket_text,
                "-o",
                &out,
                "--listen",
                &getter_listen,
                "--timeout",
                "20",
            ],
            mode,
        ]
        .concat(),
        // The getter's last line on stdout.
        |l| l.starts_with("seeding: ") || l.contains(r#""event":"seeding""#),
    );

    wait_listed(&t, "the sharer and the seeding getter listed", |p| {
        lists(p, sharer_addr, PeerState::Complete) && lists(p, getter_addr, PeerState::Complete)
    });

    let status = getter.terminate();
    assert_eq!(status.code(), Some(0), "seeding getter: {status}");
    wait_listed(
        &t,
        "the getter unlisted (it tells the tracker it leaves)",
        |p| !lists_addr(p, getter_addr),
    );

    let status = sharer.terminate();
    assert_eq!(status.code(), Some(0), "sharer: {status}");
    wait_listed(
        &t,
        "the sharer unlisted (it tells the tracker it leaves)",
        |p| !lists_addr(p, sharer_addr),
    );

    let status = tracker.terminate();
    assert_eq!(status.code(), Some(0), "tracker: {status}");
}

/// Swarms each tracker below creates: their lines (`swarm_created` and
/// `swarm_confirmed` events, or log lines) are well over a pipe's 64 KiB.
const SWARMS: usize = 1500;
/// Swarms created from each source address (the default burst).
const SWARMS_PER_IP: usize = 20;

/// A tracker whose stdout and stderr are never read once it listens: its
/// output fills the pipes, and it must still answer every JOIN and CONFIRM
/// and stop on SIGTERM.
fn tracker_with_unread_pipes(json: bool) {
    let mode: &[&str] = if json { &["--json"] } else { &[] };
    let mut tracker = Deaf::start_with(
        "tracker",
        &[
            &[
                "tracker",
                "--listen",
                "127.0.0.1:0",
                "--max-joins-per-ip-per-sec",
                "100000",
                "--join-burst",
                "100000",
                "--max-pending-per-ip",
                "100000",
                "--max-swarms-per-ip",
                "100000",
                "--max-swarms-per-24",
                "100000",
            ],
            mode,
        ]
        .concat(),
        |l| listening(l).is_some(),
        Pipes::Unread,
    );
    let central = tracker.find(listening);
    for ip in 0..SWARMS / SWARMS_PER_IP {
        let mut client = Client::on(Ipv4Addr::new(127, 0, 7, 1 + ip as u8));
        for _ in 0..SWARMS_PER_IP {
            // Panics when no reply comes (a tracker stuck writing).
            client.create_swarm(central);
        }
    }
    let status = tracker.terminate();
    assert_eq!(status.code(), Some(0), "tracker: {status}");
}

#[test]
fn peers_cli_output_unread_pipes_do_not_stall_the_tracker() {
    scenario(LIMIT, || {
        tracker_with_unread_pipes(false);
        tracker_with_unread_pipes(true);
    });
}

#[test]
fn peers_cli_output_closed_human_lines_do_not_keep_processes_from_stopping() {
    scenario(LIMIT, || stop_with_output_closed(false));
}

#[test]
fn peers_cli_output_closed_json_lines_do_not_keep_processes_from_stopping() {
    scenario(LIMIT, || stop_with_output_closed(true));
}
