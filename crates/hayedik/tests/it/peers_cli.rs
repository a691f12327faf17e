//! `share` and `get` through the real binary: usage errors exit 2, run-time
//! errors exit 1 with one clear `error:` line (and an `error` event with
//! `--json`), never a panic.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::harness::{run_to_exit, run_to_exit_within};
use crate::swarm_harness::{scenario, tempdir, Node};

const LIMIT: Duration = Duration::from_secs(30);
const ROOT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );
}

#[test]
fn peers_cli_version() {
    scenario(LIMIT, || {
        let out = run_to_exit(&["--version"]);
        assert!(out.status.success(), "{out:?}");
        let line = out.stdout.trim();
        assert!(line.starts_with("hayedik "), "{out:?}");
        assert!(
            line.split(' ').nth(1).is_some_and(|v| v.contains('.')),
            "{out:?}"
        );
    });
}

/// `demo` runs a tracker, a sharer and four getters in one process: they
/// must talk to each other (each peer node keeps its own handshake nonces)
/// and it exits 0 with identical copies.
#[test]
fn peers_cli_demo_runs_to_the_end() {
    scenario(Duration::from_secs(150), || {
        let out = run_to_exit_within(&["demo"], Duration::from_secs(120));
        assert_no_panic(&out.stderr);
        assert!(out.status.success(), "{out:?}");
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            all.contains("all 4 copies are identical to the original"),
            "{all}"
        );
    });
}

#[test]
fn peers_cli_get_with_a_malformed_ticket_is_a_usage_error() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let out_dir = dir.path().to_str().unwrap();
        for bad in [
            "nonsense",
            "http://127.0.0.1:7410/0123",
            &format!("hayedik://127.0.0.1/{ROOT}"),
            &format!("hayedik://127.0.0.1:70000/{ROOT}"),
            "hayedik://127.0.0.1:7410/0123456789abcdef",
            &format!("hayedik://127.0.0.1:7410/{}", ROOT.replace('a', "g")),
        ] {
            for json in [false, true] {
                let mut args = vec!["get", bad, "-o", out_dir];
                if json {
                    args.push("--json");
                }
                let out = run_to_exit(&args);
                assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
                let first = out.stderr.lines().next().unwrap_or("");
                assert!(
                    first.starts_with("error: ") && first.contains("hayedik://HOST:PORT/ROOT"),
                    "{bad}: the error does not say what a ticket looks like: {out:?}"
                );
                assert!(
                    out.stderr.contains("--help"),
                    "{bad}: no pointer to the usage: {out:?}"
                );
                if json {
                    // With --json a usage error is also an `error` event.
                    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
                        .unwrap_or_else(|e| {
                            panic!("{bad}: stdout is not one JSON line ({e}): {out:?}")
                        });
                    assert_eq!(v["event"], "error", "{bad}: {out:?}");
                    assert!(
                        v["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains("hayedik://HOST:PORT/ROOT"),
                        "{bad}: {out:?}"
                    );
                } else {
                    assert!(out.stdout.is_empty(), "{bad}: {out:?}");
                }
                assert_no_panic(&out.stderr);
            }
        }
        // No ticket at all: the usage itself.
        let out = run_to_exit(&["get", "-o", out_dir]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stderr.contains("Usage: hayedik get"), "{out:?}");
        assert!(out.stderr.contains("<TICKET>"), "{out:?}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    });
}

/// A ticket whose tracker never answers: exit 1 within a few seconds with
/// a clear error, as a line on stderr and as an `error` event.
#[test]
fn peers_cli_get_with_a_silent_tracker_times_out() {
    scenario(LIMIT, || {
        // Bound and never read: datagrams to it get no answer.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let dir = tempdir();
        let ticket = format!("hayedik://127.0.0.1:{port}/{ROOT}");
        let started = Instant::now();
        let mut g = Node::spawn(
            "getter",
            &[
                "get",
                &ticket,
                "-o",
                dir.path().join("out").to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--timeout",
                "2",
                "--json",
            ],
        );
        let stderr = g.expect_failure(1, Duration::from_secs(10));
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(6),
            "took {took:?} with --timeout 2"
        );
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
        let line = lines[0];
        assert!(
            line.contains(&format!("127.0.0.1:{port}")) && line.contains("tracker"),
            "unclear error: {line}"
        );
        let event = g
            .history()
            .iter()
            .find(|v| v["event"] == "error")
            .cloned()
            .expect("an error event");
        assert_eq!(
            format!("error: {}", event["message"].as_str().unwrap()),
            line
        );
        assert!(g.history().iter().all(|v| v["event"] != "manifest"));
        drop(silent);
    });
}

#[test]
fn peers_cli_share_of_a_missing_path_fails() {
    scenario(LIMIT, || {
        let dir = tempdir();
        let missing = dir.path().join("no-such-file.bin");
        let missing = missing.to_str().unwrap();
        for json in [false, true] {
            let mut args = vec!["share", missing, "--listen", "127.0.0.1:0"];
            if json {
                args.push("--json");
            }
            let out = run_to_exit(&args);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let line = out
                .stderr
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or_else(|| panic!("no error line: {out:?}"));
            assert!(line.contains("no-such-file.bin"), "{line}");
            assert_no_panic(&out.stderr);
            if json {
                let event: serde_json::Value = out
                    .stdout
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .find(|v: &serde_json::Value| v["event"] == "error")
                    .unwrap_or_else(|| panic!("no error event: {out:?}"));
                assert_eq!(
                    format!("error: {}", event["message"].as_str().unwrap()),
                    line
                );
            } else {
                assert!(out.stdout.trim().is_empty(), "{out:?}");
            }
        }
    });
}
