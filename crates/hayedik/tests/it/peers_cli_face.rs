//! What a person sees, through the real binary (issue 17): fast failures
//! on final answers, exit codes and `complete: false`, the download lock,
//! `--until-replicated` and `peer_done`, `ls`, forgiving input, `--only`
//! with gitignore's rules, human output without log lines at the default
//! level, QR code, completions and man page, a small demo.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{run_to_exit, run_to_exit_within, signal, BIN};
use crate::swarm_harness::{
    adopt, assert_same_file, disown, names_in, scenario, tempdir, write_random, Node, MIB,
};

const LIMIT: Duration = Duration::from_secs(90);

/// One `hayedik` run with human output and no `RUST_LOG`: what a person
/// sees at the default level.
struct Human {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    text
}

impl Human {
    fn spawn(args: &[&str]) -> Human {
        let mut child = Command::new(BIN)
            .args(args)
            .env("HAYEDIK_HOME", crate::harness::isolated_home())
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hayedik");
        adopt(child.id());
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Human {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stderr once `pred` holds of it, or as it is after `limit`: the
    /// thread collecting it may trail stdout.
    fn stderr_when(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        crate::harness::text_when(|| self.stderr(), limit, pred)
    }

    /// Waits until stdout holds a line for which `pred` holds; returns it.
    fn wait_line(&self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.stdout().lines().find(|l| pred(l)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                disown(self.child.id());
                // Let the readers take the last lines.
                thread::sleep(Duration::from_millis(200));
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Human {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        disown(self.child.id());
    }
}

/// The ticket printed by a human `share`.
fn human_ticket(share: &Human) -> String {
    let line = share.wait_line("ticket line", Duration::from_secs(30), |l| {
        l.starts_with("ticket: ")
    });
    line.trim_start_matches("ticket: ").to_string()
}

/// The same ticket with another root: a swarm the tracker does not serve.
fn other_root(ticket: &str) -> String {
    let last = ticket.chars().last().unwrap();
    let swapped = if last == '0' { '1' } else { '0' };
    format!("{}{swapped}", &ticket[..ticket.len() - 1])
}

fn events_named<'a>(history: &'a [Value], name: &str) -> Vec<&'a Value> {
    history.iter().filter(|v| v["event"] == name).collect()
}

/// A share and a get, as a person runs them: every line is the face's
/// (no log line, no span name, no timestamp), sizes are human, the get
/// command is printed, and the getter's stdout says what it writes.
#[test]
fn peers_cli_face_share_and_get_print_no_log_line_by_default() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let (src, data) = write_random(dir.path(), "mid.bin", 3 * MIB, 17);
        let mut share = Human::spawn(&[
            "share",
            src.to_str().unwrap(),
            "--public-host",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
        ]);
        let ticket = human_ticket(&share);
        let out = dir.path().join("out");
        let mut get = Human::spawn(&[
            "get",
            &ticket,
            "-o",
            out.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-seed",
        ]);
        assert_eq!(get.wait_exit(Duration::from_secs(30)), Some(0));
        assert_same_file(&out.join("mid.bin"), &data);
        let got = get.stdout();
        let lines: Vec<&str> = got.lines().collect();
        assert!(
            lines[0].starts_with("writing ") && lines[0].contains("3.0 MiB"),
            "{got}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("done: ") && l.contains("from 1 peer")),
            "{got}"
        );
        assert!(!got.contains("listening on"), "{got}");
        assert!(
            get.stderr().is_empty(),
            "log lines at the default level:\n{}",
            get.stderr()
        );
        share.wait_line("peer_done line", Duration::from_secs(10), |l| {
            l.contains("has the whole share (1 peer has a verified copy)")
        });
        signal(share.child.id(), "TERM").unwrap();
        assert_eq!(share.wait_exit(Duration::from_secs(15)), Some(0));
        let said = share.stdout();
        assert!(said.contains("sharing mid.bin (3.0 MiB)"), "{said}");
        assert!(said.contains(&format!("  hayedik get {ticket}")), "{said}");
        assert!(said.contains("stopped (3.0 MiB uploaded)"), "{said}");
        assert!(
            share.stderr().is_empty(),
            "log lines at the default level:\n{}",
            share.stderr()
        );
        for text in [said, got] {
            assert!(
                !text.contains("INFO") && !text.contains("WARN") && !text.contains("task{"),
                "{text}"
            );
        }
    });
}

/// A ticket with a wrong root gets a final answer from the tracker: `get`
/// ends at once (not after --timeout) with one line and `kind`, and does
/// not retry with a WARN line per attempt.
#[test]
fn peers_cli_face_a_final_answer_ends_get_at_once() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let (src, _) = write_random(dir.path(), "f.bin", 100_000, 3);
        let mut sharer = Node::share("sharer", &src, &[]);
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let bad = other_root(&ticket);
        let out = dir.path().join("out");
        let started = Instant::now();
        // Node::get gives --timeout 20: a final answer ends it well before.
        let mut g = Node::get("getter", &bad, &out, &[]);
        let stderr = g.expect_failure(1, Duration::from_secs(30));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "took {took:?}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("another swarm"), "{stderr}");
        let e = events_named(g.history(), "error")[0].clone();
        assert_eq!(e["kind"], "unknown_swarm", "{e}");
        // Human, default level: one line on stderr, nothing else.
        let human = run_to_exit(&[
            "get",
            &bad,
            "-o",
            out.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(human.status.code(), Some(1), "{human:?}");
        assert_eq!(human.stderr.lines().count(), 1, "{human:?}");
        assert!(human.stdout.trim().is_empty(), "{human:?}");
        // Nothing was written (the folder is created when a download
        // starts).
        assert!(!out.exists(), "{:?}", names_in(&out));
        sharer.stop();
    });
}

/// A tracker that never answers, at the default level: no WARN per retry,
/// one error line when --timeout ends, with kind `tracker_unreachable`.
#[test]
fn peers_cli_face_a_silent_tracker_prints_one_line() {
    scenario(LIMIT, || {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let root = "ab".repeat(32);
        let ticket = format!("hayedik://127.0.0.1:{port}/{root}");
        let dir = tempdir();
        let out = dir.path().join("out");
        let o = out.to_str().unwrap();
        let started = Instant::now();
        let human = run_to_exit(&[
            "get",
            &ticket,
            "-o",
            o,
            "--timeout",
            "3",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(started.elapsed() < Duration::from_secs(15));
        assert_eq!(human.status.code(), Some(1), "{human:?}");
        assert_eq!(human.stderr.lines().count(), 1, "{human:?}");
        assert!(
            human.stderr.contains(&format!("127.0.0.1:{port}")),
            "{human:?}"
        );
        let json = run_to_exit(&["get", &ticket, "-o", o, "--timeout", "3", "--json"]);
        let e: Value = json
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "error")
            .unwrap_or_else(|| panic!("{json:?}"));
        assert_eq!(e["kind"], "tracker_unreachable", "{e}");
        drop(silent);
    });
}

/// A second `get` of the same content into the same folder stops at once
/// with exit 1, touching nothing; the first, interrupted, exits 143 with
/// `complete: false` and what it kept; a rerun says what it resumes from.
#[test]
fn peers_cli_face_lock_interrupt_and_resume() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let (src, data) = write_random(dir.path(), "big.bin", 8 * MIB, 5);
        let mut sharer = Node::share("sharer", &src, &["--max-upload", "1M"]);
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let out = dir.path().join("out");
        let mut first = Node::get("first", &ticket, &out, &[]);
        first.wait_for("some progress", Duration::from_secs(20), |v| {
            v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) > 0
        });
        let before: Vec<(String, u64)> = listing(&out);
        let second = run_to_exit(&[
            "get",
            &ticket,
            "-o",
            out.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--json",
        ]);
        assert_eq!(second.status.code(), Some(1), "{second:?}");
        assert!(
            second.stderr.contains(&format!(
                "another hayedik is already downloading this into {}",
                out.display()
            )),
            "{second:?}"
        );
        let e: Value = serde_json::from_str(second.stdout.lines().last().unwrap()).unwrap();
        assert_eq!(e["kind"], "locked", "{e}");
        let names = |l: &[(String, u64)]| l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&listing(&out)), names(&before));
        let stopped = first.stop();
        assert_eq!(stopped["complete"], false, "{stopped}");
        let kept = stopped["kept"].as_u64().unwrap();
        assert!(kept > 0 && kept < data.len() as u64, "{stopped}");
        // Human: the same command resumes, and says from what.
        let mut again = Human::spawn(&[
            "get",
            &ticket,
            "-o",
            out.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-seed",
        ]);
        assert_eq!(again.wait_exit(Duration::from_secs(40)), Some(0));
        assert!(
            again
                .stderr()
                .lines()
                .any(|l| l.starts_with("resuming: ") && l.contains("of 8.0 MiB already here")),
            "{}",
            again.stderr()
        );
        assert_same_file(&out.join("big.bin"), &data);
        assert_eq!(names_in(&out), ["big.bin"], "side files or lock left");
        sharer.stop();
    });
}

/// Names and sizes in `dir`, hidden files included.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), 0)
        })
        .collect();
    v.sort();
    v
}

/// `share --until-replicated 2` exits 0 once two other peers hold a copy,
/// `--no-seed` getters that left included, with a `peer_done` for each.
#[test]
fn peers_cli_face_until_replicated() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let (src, data) = write_random(dir.path(), "r.bin", 2 * MIB, 9);
        let mut sharer = Node::share("sharer", &src, &["--until-replicated", "2"]);
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        for i in 0..2 {
            let out = dir.path().join(format!("out{i}"));
            let mut g = Node::get(&format!("getter {i}"), &ticket, &out, &["--no-seed"]);
            g.expect_success();
            assert_same_file(&out.join("r.bin"), &data);
        }
        sharer.expect_success();
        let done = events_named(sharer.history(), "peer_done");
        let copies: Vec<u64> = done.iter().map(|v| v["copies"].as_u64().unwrap()).collect();
        assert_eq!(copies, [1, 2], "{done:?}");
        assert!(done
            .iter()
            .all(|v| v["addr"].as_str().unwrap().starts_with("127.0.0.1:")));
    });
}

/// `ls` lists a folder share from its verified manifest (paths as
/// `--only` matches them), and accepts a ticket pasted with punctuation.
/// `--only '*.txt'` takes a .txt at any depth; `--listen PORT` works.
#[test]
fn peers_cli_face_ls_only_and_forgiving_input() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let top = dir.path().join("share");
        std::fs::create_dir_all(top.join("docs")).unwrap();
        let (_, readme) = write_random(&top.join("docs"), "readme.txt", 1000, 1);
        write_random(&top, "big.bin", 300_000, 2);
        let mut sharer = Node::share("sharer", &top, &[]);
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let ls = run_to_exit(&["ls", &format!("\"{ticket}\"."), "--json"]);
        assert_eq!(ls.status.code(), Some(0), "{ls:?}");
        let entries: Vec<Value> = ls
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "entry")
            .collect();
        assert_eq!(
            entries,
            [
                serde_json::json!({"event": "entry", "path": "big.bin", "bytes": 300_000, "folder": false}),
                serde_json::json!({"event": "entry", "path": "docs/readme.txt", "bytes": 1000, "folder": false}),
            ]
        );
        let human = run_to_exit(&["ls", &format!("{ticket}/")]);
        assert_eq!(human.status.code(), Some(0), "{human:?}");
        assert!(human.stdout.contains("293.0 KiB  big.bin"), "{human:?}");
        assert!(human.stderr.is_empty(), "{human:?}");
        let out = dir.path().join("out");
        let o = out.to_str().unwrap();
        let got = run_to_exit(&[
            "get",
            &ticket,
            "-o",
            o,
            "--only",
            "*.txt",
            "--no-seed",
            "--listen",
            "0",
        ]);
        assert_eq!(got.status.code(), Some(0), "{got:?}");
        assert_same_file(&out.join("share/docs/readme.txt"), &readme);
        assert!(!out.join("share/big.bin").exists());
        // A pattern that matches nothing: a hint from this share's names.
        let miss = run_to_exit(&[
            "get",
            &ticket,
            "-o",
            o,
            "--only",
            "*.pdf",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(miss.status.code(), Some(1), "{miss:?}");
        assert!(
            miss.stderr.contains("e.g. '*.") && miss.stderr.contains("'docs/**'"),
            "{miss:?}"
        );
        // -o naming a file: refused before any traffic.
        let afile = dir.path().join("afile");
        std::fs::write(&afile, b"x").unwrap();
        let refused = run_to_exit(&["get", &ticket, "-o", afile.to_str().unwrap(), "--json"]);
        assert_eq!(refused.status.code(), Some(1), "{refused:?}");
        assert!(
            refused.stderr.contains("is a file, not a folder"),
            "{refused:?}"
        );
        assert!(!refused.stdout.contains("listening"), "{refused:?}");
        assert_eq!(std::fs::read(&afile).unwrap(), b"x");
        sharer.stop();
    });
}

/// A folder with a name other systems cannot write: refused with a hint,
/// shared without it under --skip-unportable, which says what it left out.
#[cfg(unix)]
#[test]
fn peers_cli_face_skip_unportable() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let top = dir.path().join("f");
        std::fs::create_dir_all(&top).unwrap();
        write_random(&top, "a:b.txt", 10, 1);
        write_random(&top, "ok.txt", 10, 2);
        let refused = run_to_exit(&["share", top.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
        assert_eq!(refused.status.code(), Some(1), "{refused:?}");
        assert!(refused.stderr.contains("--skip-unportable"), "{refused:?}");
        let mut share = Human::spawn(&[
            "share",
            top.to_str().unwrap(),
            "--skip-unportable",
            "--public-host",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
        ]);
        let ticket = human_ticket(&share);
        let err = share.stderr_when(Duration::from_secs(5), |e| {
            e.contains("warning: not sharing") && e.contains("a:b.txt")
        });
        assert!(
            err.contains("warning: not sharing") && err.contains("a:b.txt"),
            "{err}"
        );
        let ls = run_to_exit(&["ls", &ticket]);
        assert!(
            ls.stdout.contains("ok.txt") && !ls.stdout.contains("a:b.txt"),
            "{ls:?}"
        );
        signal(share.child.id(), "INT").unwrap();
        assert_eq!(share.wait_exit(Duration::from_secs(15)), Some(0));
    });
}

/// `share --qr` draws the ticket as a QR code; completions and the manual
/// page come from the clap definitions.
#[test]
fn peers_cli_face_qr_completions_and_man() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let (src, _) = write_random(dir.path(), "q.bin", 1000, 1);
        let mut share = Human::spawn(&[
            "share",
            src.to_str().unwrap(),
            "--qr",
            "--public-host",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
        ]);
        human_ticket(&share);
        share.wait_line("QR code", Duration::from_secs(5), |l| {
            l.contains('▀') || l.contains('▄')
        });
        signal(share.child.id(), "TERM").unwrap();
        assert_eq!(share.wait_exit(Duration::from_secs(15)), Some(0));
        let bash = run_to_exit(&["completions", "bash"]);
        assert_eq!(bash.status.code(), Some(0));
        assert!(
            bash.stdout.contains("_hayedik") && bash.stdout.contains("--until-replicated"),
            "{bash:?}"
        );
        let man = run_to_exit(&["man"]);
        assert_eq!(man.status.code(), Some(0));
        assert!(
            man.stdout.contains(".TH hayedik"),
            "{}",
            &man.stdout[..200.min(man.stdout.len())]
        );
    });
}

/// `demo --size --dir`: small, where asked, removed at the end, with a
/// "now try" hint; a size that does not fit is refused before writing.
#[test]
fn peers_cli_face_demo_size_and_dir() {
    scenario(Duration::from_secs(150), || {
        let dir = tempdir();
        let d = dir.path().to_str().unwrap();
        let out = run_to_exit_within(
            &["demo", "--size", "2M", "--dir", d],
            Duration::from_secs(120),
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(out.stdout.contains("generating a 2.0 MiB file"), "{out:?}");
        assert!(out.stdout.contains("now try"), "{out:?}");
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );
        let huge = run_to_exit(&["demo", "--size", "100000G", "--dir", d]);
        assert_eq!(huge.status.code(), Some(1), "{huge:?}");
        assert!(huge.stderr.contains("--size"), "{huge:?}");
        assert!(names_in(dir.path()).is_empty());
    });
}

/// Text drawn on a terminal, cut into what each `\r` or `\n` starts, with
/// the escape sequences (colours, clearing, cursor moves) taken out.
fn drawn_lines(raw: &str) -> Vec<String> {
    let mut lines = vec![String::new()];
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~.
                    for f in chars.by_ref() {
                        if ('@'..='~').contains(&f) {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => lines.push(String::new()),
            c => lines.last_mut().unwrap().push(c),
        }
    }
    lines.retain(|l| !l.trim().is_empty());
    lines
}

/// On a terminal of 50 columns (a pseudo-terminal from util-linux's
/// `script`), the bar and every line fit: nothing wraps; and while the
/// sharer is stopped (SIGSTOP), the bar says "stalled".
#[cfg(target_os = "linux")]
#[test]
fn peers_cli_face_the_bar_fits_a_50_column_terminal() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let (src, data) = write_random(
            dir.path(),
            "a-rather-long-file-name-for-a-narrow-terminal.bin",
            8 * MIB,
            4,
        );
        let mut sharer = Node::share("sharer", &src, &["--max-upload", "2M"]);
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let out = dir.path().join("out");
        let command = format!(
            "stty cols 50 rows 20; exec '{BIN}' get '{ticket}' -o '{}' --no-seed --listen 127.0.0.1:0",
            out.display()
        );
        let child = Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .env("HAYEDIK_HOME", crate::harness::isolated_home())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running script (util-linux) for a pseudo-terminal");
        adopt(child.id());
        // Mid-download (8 MiB at 2 MiB/s), nothing arrives for a while.
        thread::sleep(Duration::from_millis(1200));
        signal(sharer.pid(), "STOP").unwrap();
        thread::sleep(Duration::from_millis(4500));
        signal(sharer.pid(), "CONT").unwrap();
        let pid = child.id();
        let ran = child.wait_with_output().unwrap();
        disown(pid);
        let raw = String::from_utf8_lossy(&ran.stdout).into_owned();
        assert!(ran.status.success(), "{:?}\n{raw}", ran.status);
        assert_same_file(
            &out.join("a-rather-long-file-name-for-a-narrow-terminal.bin"),
            &data,
        );
        let lines = drawn_lines(&raw);
        let bars: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("a-rather-lo") && (l.contains('%') || l.contains("MiB")))
            .collect();
        assert!(!bars.is_empty(), "no bar drawn:\n{lines:#?}");
        assert!(
            bars.iter().any(|l| l.contains("/s")),
            "no rate:\n{lines:#?}"
        );
        for l in &lines {
            // Printed lines may be longer than the terminal and wrap ("done:
            // PATH (...)": a path is a path; the reachability line); every
            // line drawn in place fits.
            let printed = [
                "done: ",
                "writing ",
                "reachable at ",
                "not reachable",
                "others cannot",
            ];
            if printed.iter().any(|p| l.starts_with(p)) {
                continue;
            }
            assert!(
                l.chars().count() <= 50,
                "{} columns: {l:?}",
                l.chars().count()
            );
        }
        assert!(lines.iter().any(|l| l.starts_with("done: ")), "{lines:#?}");
        assert!(bars.iter().any(|l| l.contains("stalled")), "{lines:#?}");
        sharer.stop();
    });
}

/// A shared file that grows is reported once, plainly, with what to do;
/// what the ticket names is still served.
#[test]
fn peers_cli_face_a_shared_file_that_changes_is_reported_once() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let (src, data) = write_random(dir.path(), "grows.log", 300_000, 8);
        let mut share = Human::spawn(&[
            "share",
            src.to_str().unwrap(),
            "--public-host",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
        ]);
        let ticket = human_ticket(&share);
        // Its size and modification time move.
        thread::sleep(Duration::from_millis(20));
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&src).unwrap();
            f.write_all(b"one more line\n").unwrap();
        }
        // The sharer looks at a file's size and time at most every 100 ms.
        thread::sleep(Duration::from_millis(300));
        for i in 0..2 {
            let out = dir.path().join(format!("out{i}"));
            let got = run_to_exit(&[
                "get",
                &ticket,
                "-o",
                out.to_str().unwrap(),
                "--no-seed",
                "--listen",
                "127.0.0.1:0",
            ]);
            assert_eq!(got.status.code(), Some(0), "{got:?}");
            assert_same_file(&out.join("grows.log"), &data);
            thread::sleep(Duration::from_millis(300));
        }
        let told: Vec<String> = share
            .stderr()
            .lines()
            .filter(|l| l.contains("while shared"))
            .map(str::to_string)
            .collect();
        assert_eq!(told.len(), 1, "{}", share.stderr());
        assert!(
            told[0].starts_with("warning: ")
                && told[0].contains("changed on disk")
                && told[0].contains("share it again"),
            "{told:?}"
        );
        signal(share.child.id(), "TERM").unwrap();
        assert_eq!(share.wait_exit(Duration::from_secs(15)), Some(0));
    });
}
