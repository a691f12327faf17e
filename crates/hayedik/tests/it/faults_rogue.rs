//! Rogue peers (see `rogue.rs`) against the real binary, on loopback: lying,
//! flooding and malformed peers cost time, never correctness, and never
//! crash, hang or bloat an honest peer.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hayedik_proto::manifest::{swarm_key, FileEntry};
use hayedik_proto::peer::{Message, MessageType, Role, MAX_BLOCK};

use crate::harness::{scenario, signal, Tracker};
use crate::lab::{assert_file_is, random_bytes, ticket_of, ticket_root, Proc};
use crate::rogue::{
    announce_seeder, create_swarm, plain_exchange, Act, Got, Rogue, Served, Slowloris, Wire,
};

const MIB: usize = 1 << 20;
const NAME: &str = "content.bin";
/// Nine pieces, the last one short.
const LEN: usize = 8 * MIB + 1000;

/// A tracker and an honest sharer on loopback, and the content they share.
pub struct Swarm {
    pub tracker: Tracker,
    pub sharer: Proc,
    pub sharer_addr: SocketAddr,
    pub ticket: String,
    pub served: Served,
    pub dir: tempfile::TempDir,
}

impl Swarm {
    pub fn start(seed: u64, sharer_extra: &[&str]) -> Swarm {
        Swarm::start_limited(seed, sharer_extra, None)
    }

    /// [`Swarm::start`] with a tracker started with `tracker_extra`.
    pub fn start_with_tracker(seed: u64, sharer_extra: &[&str], tracker_extra: &[&str]) -> Swarm {
        Swarm::start_full(seed, sharer_extra, None, tracker_extra)
    }

    /// [`Swarm::start`] with the sharer's descriptors capped at `nofile`
    /// (soft and hard limits, with prlimit).
    fn start_limited(seed: u64, sharer_extra: &[&str], nofile: Option<u32>) -> Swarm {
        Swarm::start_full(seed, sharer_extra, nofile, &[])
    }

    fn start_full(
        seed: u64,
        sharer_extra: &[&str],
        nofile: Option<u32>,
        tracker_extra: &[&str],
    ) -> Swarm {
        let tracker = Tracker::start(tracker_extra);
        let dir = tempfile::tempdir().expect("a scratch directory");
        let data = random_bytes(LEN, seed);
        let file = dir.path().join(NAME);
        std::fs::write(&file, &data).expect("writing the content");
        let central = tracker.addr.to_string();
        let mut args = vec![
            "share",
            file.to_str().expect("UTF-8"),
            "--tracker",
            &central,
            "--listen",
            "127.0.0.1:0",
            "--json",
        ];
        args.extend_from_slice(sharer_extra);
        let mut sharer = match nofile {
            None => Proc::local("sharer", &args),
            Some(n) => {
                let mut cmd = std::process::Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}"))
                    .arg(crate::harness::BIN)
                    .args(&args);
                Proc::spawn("sharer (few descriptors)", cmd)
            }
        };
        let sharer_addr = sharer.listening();
        let ticket = ticket_of(&mut sharer);
        let served = Served::file(NAME, &data);
        assert_eq!(
            served.root,
            ticket_root(&ticket),
            "the rogue's manifest must be the sharer's"
        );
        Swarm {
            tracker,
            sharer,
            sharer_addr,
            ticket,
            served,
            dir,
        }
    }

    pub fn swarm_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.tracker.addr.ip(),
            crate::lab::ticket_port(&self.ticket),
        )
    }

    /// A rogue listed in this swarm as a seeder.
    pub fn rogue(&self, act: Act) -> Rogue {
        self.rogue_serving(self.served.clone(), act)
    }

    fn rogue_serving(&self, served: Served, act: Act) -> Rogue {
        let r = Rogue::start(served, act);
        announce_seeder(self.swarm_addr(), &self.served.root, r.addr.port());
        r
    }

    pub fn out(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `get --no-seed` into `out`, on loopback.
    pub fn get(&self, out: &str, extra: &[&str]) -> Proc {
        get(&self.ticket, &self.out(out), extra)
    }

    pub fn data(&self) -> &[u8] {
        &self.served.data
    }

    /// A connection to the sharer after a right handshake (and its Bitfield).
    pub fn dial_sharer(&self) -> Wire {
        let mut w = Wire::connect(self.sharer_addr);
        let ok = w
            .handshake(&self.served.root, Role::Initiator, 0, true)
            .expect("handshake with the sharer");
        assert!(ok, "the sharer's proof does not verify");
        match w.recv_matching(Duration::from_secs(5), |m| {
            matches!(m, Message::Bitfield { .. })
        }) {
            Got::Msg(_) => w,
            other => panic!("expected the sharer's Bitfield, got {other:?}"),
        }
    }
}

pub fn get(ticket: &str, out: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "get",
        ticket,
        "-o",
        out.to_str().expect("UTF-8"),
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--no-seed",
    ];
    args.extend_from_slice(extra);
    let mut g = Proc::local("getter", &args);
    g.listening();
    g
}

/// Lines of `text` that say a peer was banned.
pub fn ban_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains("banned")).collect()
}

/// Waits for the getter's `done` and exit 0; returns the `done` event.
pub fn finish(g: &mut Proc) -> serde_json::Value {
    let done = g.wait_event("done", Duration::from_secs(60));
    g.expect_success(Duration::from_secs(15));
    done
}

/// A seeder that sends corrupt blocks is banned by the getter, the honest
/// sharer never is, the file ends correct, and once banned the rogue is not
/// dialed again (the getter seeds on for a while to give it the chance; a
/// second connection made before the ban, while pieces from the first were
/// still being verified, is allowed, and is closed by the ban).
#[test]
fn corrupt_blocks_get_the_sender_banned() {
    scenario(Duration::from_secs(90), || {
        let s = Swarm::start(21, &["--max-upload", "2M"]);
        let rogue = s.rogue(Act::Corrupt);
        let out = s.out("out");
        let mut g = Proc::local(
            "getter",
            &[
                "get",
                &s.ticket,
                "-o",
                out.to_str().expect("UTF-8"),
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--timeout",
                "30",
            ],
        );
        g.listening();
        let done = g.wait_event("done", Duration::from_secs(60));
        assert_file_is(&out.join(NAME), s.data());

        let rogue_addr = rogue.addr.to_string();
        let sharer_addr = s.sharer_addr.to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ban_lines(&g.stderr())
            .iter()
            .any(|l| l.contains(&rogue_addr))
        {
            assert!(
                Instant::now() < deadline,
                "the corrupting rogue {rogue_addr} was not banned:\n{}",
                g.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let accepted_at_ban = rogue.log().accepted;
        // The connector retries known peers every 2 s, and the tracker
        // lists the rogue again at every announce.
        std::thread::sleep(Duration::from_secs(5));
        let log = rogue.log();
        assert_eq!(
            log.accepted, accepted_at_ban,
            "a banned peer was dialed again: {log:?}"
        );
        let err = g.stderr();
        assert!(
            !ban_lines(&err).iter().any(|l| l.contains(&sharer_addr)),
            "the honest sharer was banned:\n{err}"
        );
        let from = &done["from"];
        assert_eq!(from[&sharer_addr].as_u64(), Some(LEN as u64), "{done}");
        assert!(from[&rogue_addr].as_u64().unwrap_or(0) == 0, "{done}");
        assert!(log.requests >= 2, "the rogue was never asked: {log:?}");
        crate::lab::note(&format!(
            "corrupt_blocks_get_the_sender_banned: the rogue accepted {} connection(s)",
            log.accepted
        ));
        g.assert_no_panic();
        s.sharer.assert_no_panic();
    });
}

/// A seeder that sends blocks nobody asked for is dropped after a few,
/// long before the download ends; one that sends every block twice costs
/// nothing (the copies are not counted twice). The files end correct.
#[test]
fn duplicate_and_unrequested_blocks() {
    scenario(Duration::from_secs(90), || {
        let s = Swarm::start(22, &["--max-upload", "1M"]);
        let flood = s.rogue(Act::Unrequested);
        let mut g = s.get("out", &["--timeout", "30"]);
        assert!(
            flood.wait_log(Duration::from_secs(20), |l| !l.closed.is_empty()),
            "a peer sending unrequested blocks was not disconnected: {:?}",
            flood.log()
        );
        let cut = flood.log().closed[0];
        g.wait_event("done", Duration::from_secs(60));
        let done_at = Instant::now();
        g.expect_success(Duration::from_secs(15));
        assert!(
            cut + Duration::from_secs(2) < done_at,
            "the flood was cut off only at the end of the download"
        );
        assert_file_is(&s.out("out").join(NAME), s.data());
        let log = flood.log();
        // Its opening flood (64 blocks a connection) and an answer to each
        // Request the getter sent it before cutting it off: never more.
        assert!(
            log.blocks_sent <= 64 * log.accepted + log.requests,
            "{log:?}"
        );
        // Not banned (no data failed verification): it is dialed again.
        crate::lab::note(&format!(
            "duplicate_and_unrequested_blocks: the flooding rogue was connected {} times in {:?}",
            log.accepted,
            done_at.duration_since(log.closed[0])
        ));

        let dup = s.rogue(Act::Duplicate);
        let mut g = s.get("out2", &["--timeout", "30"]);
        let done = finish(&mut g);
        assert_file_is(&s.out("out2").join(NAME), s.data());
        let counted: u64 = done["from"]
            .as_object()
            .expect("from")
            .values()
            .filter_map(|v| v.as_u64())
            .sum();
        assert_eq!(counted, LEN as u64, "{done}");
        let log = dup.log();
        assert!(
            log.requests > 0,
            "the duplicating rogue was never asked: {log:?}"
        );
        g.assert_no_panic();
        s.sharer.assert_no_panic();
    });
}

/// A length prefix of 0xFFFFFFFF, before or after the handshake, closes the
/// connection at once (nothing is allocated for it), on the sharer's side
/// and on the getter's, and both go on serving and downloading.
#[test]
fn length_prefix_ffffffff() {
    scenario(Duration::from_secs(90), || {
        let s = Swarm::start(23, &["--max-upload", "4M"]);
        let huge = [0xFF, 0xFF, 0xFF, 0xFF, MessageType::Block as u8, 0, 0, 0, 0];

        // To the sharer, in plaintext before TLS (not TLS, not a Hello).
        let (got, closed) = plain_exchange(s.sharer_addr, &huge, Duration::from_secs(5));
        assert!(closed, "the sharer kept a connection that sent 0xFFFFFFFF");
        assert!(got.is_empty(), "the sharer answered garbage with {got:?}");

        // To the sharer, inside TLS, before the handshake.
        let mut w = Wire::connect(s.sharer_addr);
        w.send_raw(&huge).expect("sending");
        let (_, closed) = w.until_closed(Duration::from_secs(5));
        assert!(closed, "the sharer kept a connection that sent 0xFFFFFFFF");

        // To the sharer, after the handshake.
        let mut w = s.dial_sharer();
        w.send_raw(&huge).expect("sending");
        let (_, closed) = w.until_closed(Duration::from_secs(5));
        assert!(closed, "the sharer kept a connection that sent 0xFFFFFFFF");

        // From a seeder to the getter.
        let rogue = s.rogue(Act::MaxLengthPrefix);
        let mut g = s.get("out", &["--timeout", "30"]);
        finish(&mut g);
        assert_file_is(&s.out("out").join(NAME), s.data());
        assert!(rogue.log().handshakes >= 1, "{:?}", rogue.log());
        g.assert_no_panic();
        s.sharer.assert_no_panic();
    });
}

/// Requests outside the content are rejected one by one (the connection
/// still serves), a Have or a Bitfield that does not fit the manifest
/// ends the connection, and a getter ignores such a seeder.
#[test]
fn out_of_range_indexes_and_offsets() {
    scenario(Duration::from_secs(90), || {
        let s = Swarm::start(24, &["--max-upload", "4M"]);
        let pieces = s.served.piece_count();
        let last_len = (LEN % MIB) as u32;
        let mut w = s.dial_sharer();
        let bad = [
            (pieces, 0, 1024),
            (1_000_000, 0, 1024),
            (u32::MAX, 0, 1),
            (0, MIB as u32, 1),
            (0, MIB as u32 - 10, 20),
            (0, u32::MAX - 10, 100),
            (pieces - 1, 0, last_len + 1),
            (pieces - 1, last_len, 1),
        ];
        for (piece, offset, len) in bad {
            w.send(&Message::Request { piece, offset, len })
                .expect("sending a request");
            match w.recv_matching(Duration::from_secs(5), |m| {
                !matches!(m, Message::KeepAlive | Message::Have { .. })
            }) {
                Got::Msg(Message::Reject {
                    piece: p,
                    offset: o,
                    len: l,
                }) => assert_eq!((p, o, l), (piece, offset, len)),
                other => panic!("Request {piece}/{offset}/{len}: expected Reject, got {other:?}"),
            }
        }
        w.send(&Message::Cancel {
            piece: 1_000_000,
            offset: u32::MAX,
            len: 1,
        })
        .expect("sending");
        // Still serving on the same connection.
        w.send(&Message::Request {
            piece: pieces - 1,
            offset: 0,
            len: last_len,
        })
        .expect("sending");
        match w.recv_matching(Duration::from_secs(5), |m| {
            matches!(m, Message::Block { .. } | Message::Reject { .. })
        }) {
            Got::Msg(Message::Block { data, .. }) => {
                assert_eq!(data, &s.data()[(pieces as usize - 1) * MIB..]);
            }
            other => panic!("expected the last piece, got {other:?}"),
        }
        // A Have past the end is a protocol violation.
        w.send(&Message::Have { piece: pieces }).expect("sending");
        let (_, closed) = w.until_closed(Duration::from_secs(5));
        assert!(closed, "a Have past the end did not end the connection");

        // A Bitfield of the wrong length, and one with spare bits set.
        for bits in [vec![0xFF; 40], vec![0xFF, 0xFF]] {
            let mut w = s.dial_sharer();
            w.send(&Message::Bitfield { bits }).expect("sending");
            let (_, closed) = w.until_closed(Duration::from_secs(5));
            assert!(closed, "a bad Bitfield did not end the connection");
        }
        // A request longer than a block is not even a valid frame.
        let mut w = s.dial_sharer();
        w.send(&Message::Request {
            piece: 0,
            offset: 0,
            len: MAX_BLOCK + 1,
        })
        .expect("sending");
        let (_, closed) = w.until_closed(Duration::from_secs(5));
        assert!(closed, "an oversized Request did not end the connection");

        // The getter's side: a seeder that claims a piece past the end.
        let rogue = s.rogue(Act::HaveOutOfRange);
        let mut g = s.get("out", &["--timeout", "30"]);
        g.wait_event("done", Duration::from_secs(60));
        let done_at = Instant::now();
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&s.out("out").join(NAME), s.data());
        let log = rogue.log();
        assert!(
            log.closed
                .first()
                .is_some_and(|c| *c + Duration::from_millis(500) < done_at),
            "the getter kept a peer that claimed a piece past the end: {log:?}"
        );
        g.assert_no_panic();
        s.sharer.assert_no_panic();
    });
}

/// A seeder answers with a manifest that does not hash to the ticket's root:
/// the getter refuses it, strikes (then bans) the seeder, and gets the right
/// one from the sharer. The sharer is stopped (SIGSTOP) at first so that
/// the rogue answers first.
#[test]
fn manifest_not_matching_the_root() {
    scenario(Duration::from_secs(90), || {
        let s = Swarm::start(25, &[]);
        let mut other = Served::file(NAME, &random_bytes(LEN, 99));
        other.root = s.served.root;
        let rogue = s.rogue_serving(other, Act::Manifest);
        signal(s.sharer.pid(), "STOP").expect("stopping the sharer");
        let mut g = s.get("out", &["--timeout", "40"]);
        let refused_twice = rogue.wait_log(Duration::from_secs(15), |l| {
            l.manifests_sent >= 2 && l.closed.len() >= 2
        });
        signal(s.sharer.pid(), "CONT").expect("resuming the sharer");
        assert!(refused_twice, "{:?}", rogue.log());
        finish(&mut g);
        assert_file_is(&s.out("out").join(NAME), s.data());
        let err = g.stderr();
        assert!(
            ban_lines(&err)
                .iter()
                .any(|l| l.contains(&rogue.addr.to_string())),
            "two lying manifests should ban the seeder:\n{err}"
        );
        assert!(!ban_lines(&err)
            .iter()
            .any(|l| l.contains(&s.sharer_addr.to_string())));
        g.assert_no_panic();
    });
}

/// Manifests whose names would escape the download directory, or that
/// describe what this version does not write, are refused with a clear
/// error; nothing is written outside the output directory.
#[test]
fn hostile_manifest_names() {
    scenario(Duration::from_secs(90), || {
        let tracker = Tracker::start(&["--join-burst", "50", "--max-joins-per-ip-per-sec", "50"]);
        let dir = tempfile::tempdir().expect("a scratch directory");
        let data = random_bytes(3000, 26);
        let abs = dir.path().join("absolute.bin");
        let file = |path: &str| FileEntry {
            path: path.to_string(),
            size: data.len() as u64,
            executable: false,
            directory: false,
        };
        // `..`, a device name, an absolute path, a folder and two files are
        // in peers_hostile.rs; these are the other ways out.
        let cases: Vec<(&str, Vec<FileEntry>)> = vec![
            ("deep-dotdot", vec![file("a/../../escape.bin")]),
            ("absolute-here", vec![file(abs.to_str().expect("UTF-8"))]),
            ("backslash", vec![file("..\\escape.bin")]),
            ("control", vec![file("bell\u{7}.bin")]),
            ("trailing-dot", vec![file("escape.bin.")]),
            ("folder-dotdot", vec![file("sub/../../escape.bin")]),
        ];
        let mut running = Vec::new();
        for (name, files) in cases {
            let served = Served::hostile(files, &data);
            let root = served.root;
            let rogue = Rogue::start(served, Act::Manifest);
            let port = create_swarm(tracker.addr, &root, rogue.addr.port());
            let ticket = hayedik_proto::ticket::Ticket::new("127.0.0.1", port, root).to_string();
            let case = dir.path().join(name);
            std::fs::create_dir(&case).expect("a case directory");
            let g = get(&ticket, &case.join("out"), &["--timeout", "4"]);
            running.push((name, case, rogue, g));
        }
        for (name, case, rogue, mut g) in running {
            let status = g.wait_exit(Duration::from_secs(30));
            let err = g.stderr();
            assert_eq!(status.code(), Some(1), "{name}: {err}");
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
            assert_eq!(errors.len(), 1, "{name}: one error line expected:\n{err}");
            crate::lab::note(&format!("hostile_manifest_names {name}: {}", errors[0]));
            assert!(rogue.log().manifests_sent >= 1, "{name}: {:?}", rogue.log());
            // Nothing but the output directory (maybe) in the case directory,
            // and nothing in it.
            for entry in std::fs::read_dir(&case).expect("listing") {
                let entry = entry.expect("an entry");
                assert_eq!(entry.file_name(), "out", "{name}: wrote {entry:?}");
                let inside: Vec<_> = std::fs::read_dir(entry.path())
                    .expect("listing out")
                    .collect();
                assert!(inside.is_empty(), "{name}: wrote {inside:?}");
            }
            g.assert_no_panic();
        }
        for stray in ["escape.bin", "absolute.bin"] {
            assert!(!dir.path().join(stray).exists(), "{stray} written");
        }
        assert!(!abs.exists());
    });
}

/// A peer that cannot prove it holds the ticket is served nothing: with a
/// wrong proof, with no proof, or with another swarm's key, asking for the
/// manifest and a block gets nothing but a Goodbye and a close. And a getter
/// that meets a seeder with a wrong proof asks it for nothing.
#[test]
fn wrong_proof_gets_nothing() {
    scenario(Duration::from_secs(90), || {
        // The sharer is capped so that the getter (below) cannot finish
        // before it has met the rogue, however fast the machine.
        let s = Swarm::start(27, &["--max-upload", "4M"]);
        let root = s.served.root;
        let asks = [
            Message::ManifestRequest,
            Message::Request {
                piece: 0,
                offset: 0,
                len: 16 << 10,
            },
        ];
        let only_goodbye = |what: &str, w: &mut Wire| {
            for m in &asks {
                let _ = w.send(m);
            }
            let (got, closed) = w.until_closed(Duration::from_secs(5));
            assert!(
                got.iter().all(|m| matches!(m, Message::Goodbye { .. })),
                "{what}: the sharer sent {got:?}"
            );
            assert!(closed, "{what}: the connection stayed open");
            got
        };

        // A wrong proof.
        let mut w = Wire::connect(s.sharer_addr);
        let verified = w
            .handshake(&root, Role::Initiator, 0, false)
            .expect("the handshake's messages");
        assert!(verified, "the sharer's own proof is right");
        only_goodbye("wrong proof", &mut w);

        // No proof: straight from Hello to requests.
        let mut w = Wire::connect(s.sharer_addr);
        w.send(&Message::hello(swarm_key(&root), rand::random(), 0))
            .expect("sending Hello");
        match w.recv(Duration::from_secs(5)) {
            Got::Msg(Message::Hello { .. }) => {}
            other => panic!("expected Hello, got {other:?}"),
        }
        let got = {
            for m in &asks {
                let _ = w.send(m);
            }
            w.until_closed(Duration::from_secs(5))
        };
        assert!(
            got.0
                .iter()
                .all(|m| matches!(m, Message::Proof { .. } | Message::Goodbye { .. })),
            "no proof: the sharer sent {:?}",
            got.0
        );
        assert!(got.1, "no proof: the connection stayed open");

        // Another swarm.
        let mut w = Wire::connect(s.sharer_addr);
        w.send(&Message::hello(swarm_key(&[7; 32]), rand::random(), 0))
            .expect("sending Hello");
        let (got, closed) = w.until_closed(Duration::from_secs(5));
        assert!(closed, "other swarm: the connection stayed open");
        assert!(
            got.iter()
                .all(|m| matches!(m, Message::Hello { .. } | Message::Goodbye { .. })),
            "other swarm: {got:?}"
        );

        // A seeder with a wrong proof, met by a getter.
        let rogue = s.rogue(Act::BadProof);
        let mut g = s.get("out", &["--timeout", "30"]);
        finish(&mut g);
        assert_file_is(&s.out("out").join(NAME), s.data());
        let log = rogue.log();
        assert!(log.handshakes >= 1, "{log:?}");
        assert!(
            log.received
                .iter()
                .all(|k| matches!(k, MessageType::Goodbye)),
            "the getter sent {:?} to a peer with a wrong proof",
            log.received
        );
        g.assert_no_panic();
        s.sharer.assert_no_panic();
    });
}

/// Hundreds of idle connections, reopened as soon as the sharer closes
/// them: the sharer's descriptors stay bounded and an honest getter still
/// downloads.
#[test]
fn slowloris_idle_connections() {
    scenario(Duration::from_secs(120), || {
        let s = Swarm::start(28, &[]);
        let flood = Slowloris::start(s.sharer_addr, 400, Duration::from_millis(500));
        let deadline = Instant::now() + Duration::from_secs(10);
        while flood.opened.load(std::sync::atomic::Ordering::Relaxed) < 400
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(1));
        let mut g = s.get("out", &["--timeout", "60"]);
        let started = Instant::now();
        let (mut most_fds, mut most_open) = (0, 0);
        while g
            .try_wait_for(Duration::from_millis(250), |v| {
                v["event"] == "done" || v["event"] == "error"
            })
            .is_none()
            && started.elapsed() < Duration::from_secs(70)
        {
            most_fds = most_fds.max(s.sharer.fd_count());
            most_open = most_open.max(flood.open.load(std::sync::atomic::Ordering::Relaxed));
        }
        let took = started.elapsed();
        crate::lab::note(&format!(
            "slowloris_idle_connections: getter ended after {took:?}; sharer held at most {most_fds} descriptors; up to {most_open} idle connections open at once, {} opened in all",
            flood.opened.load(std::sync::atomic::Ordering::Relaxed)
        ));
        assert!(
            most_fds <= 128 + 64,
            "the sharer held {most_fds} descriptors"
        );
        assert!(
            g.events().iter().any(|v| v["event"] == "done"),
            "the getter did not finish under the flood:\n{}",
            g.stderr()
        );
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&s.out("out").join(NAME), s.data());
        drop(flood);
        s.sharer.assert_no_panic();
    });
}

/// CPU time (user and system) `pid` has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after ')'.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A sharer that may hold only 64 descriptors, flooded with idle
/// connections: running out of descriptors is waited out, not spun on (its
/// CPU use stays low), and once the flood stops an honest getter downloads.
#[test]
fn slowloris_on_a_sharer_out_of_descriptors() {
    // prlimit is an ordinary tool (no root needed), so this test is not
    // ignored: without it the test fails rather than passing unrun.
    if let Err(e) = crate::lab::run("prlimit", &["--version"]) {
        panic!("prlimit (util-linux) is needed: {e}");
    }
    scenario(Duration::from_secs(120), || {
        let s = Swarm::start_limited(29, &[], Some(64));
        let flood = Slowloris::start(s.sharer_addr, 300, Duration::from_millis(500));
        std::thread::sleep(Duration::from_secs(2));
        let mut g = s.get("out", &["--timeout", "60"]);
        assert!(
            cpu_time(std::process::id()) > Duration::ZERO,
            "reading CPU times"
        );
        let before = cpu_time(s.sharer.pid());
        std::thread::sleep(Duration::from_secs(10));
        let used = cpu_time(s.sharer.pid()).saturating_sub(before);
        let fds = s.sharer.fd_count();
        let during = g.events().iter().any(|v| v["event"] == "done");
        drop(flood);
        crate::lab::note(&format!(
            "slowloris_on_a_sharer_out_of_descriptors: the sharer used {used:?} of CPU in 10 s of flood, held {fds} descriptors; getter done during the flood: {during}"
        ));
        assert!(
            used < Duration::from_secs(3),
            "the sharer spun while out of descriptors: {used:?} of CPU in 10 s"
        );
        finish(&mut g);
        assert_file_is(&s.out("out").join(NAME), s.data());
        s.sharer.assert_no_panic();
    });
}
