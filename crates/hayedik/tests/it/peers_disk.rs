//! What a getter does with the download directory: reuses a complete copy
//! untouched, never overwrites a file that is not a copy of the content,
//! and survives a full disk (kept partial download, resumed once there is
//! room).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::lab::{cannot_run, is_root};
use crate::swarm_harness::{
    assert_same_file, identity, names_in, random_bytes, scenario, tempdir, write_random, Node, MIB,
    SOON,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A second `get` into a directory that holds a complete copy reuses it
/// without touching it.
#[test]
fn peers_complete_copy_is_reused_untouched() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 5 * MIB + 3;
        let (path, data) = write_random(work.path(), "copy.bin", len, 20);
        let mut sharer = Node::share("sharer", &path, &[]);
        sharer.listening();
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let out = work.path().join("out");
        let mut first = Node::get("first get", &ticket, &out, &["--no-seed"]);
        let done = first.done(SOON);
        first.expect_success();
        let before = identity(&done.path);

        let mut again = Node::get("second get", &ticket, &out, &["--no-seed"]);
        let done2 = again.done(SOON);
        again.expect_success();
        assert_eq!(done2.reused, len as u64, "{done2:?}");
        assert_eq!(done2.received(), 0, "{done2:?}");
        assert_eq!(done2.path, done.path);
        assert_eq!(identity(&done.path), before, "the copy was touched");
        assert_same_file(&done.path, &data);
        assert_eq!(names_in(&out), ["copy.bin"]);
        sharer.stop();
    });
}

/// A file at the destination that is not a copy of the content (same size
/// or not) is never overwritten: exit 1 with a clear error.
#[test]
fn peers_foreign_file_at_destination_is_refused() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 2 * MIB + 5;
        let (path, _data) = write_random(work.path(), "mine.bin", len, 21);
        let mut sharer = Node::share("sharer", &path, &[]);
        sharer.listening();
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        for (case, size) in [("same size", len), ("other size", 1000)] {
            let out = work.path().join(case.replace(' ', "-"));
            std::fs::create_dir_all(&out).unwrap();
            let foreign = random_bytes(size, 99);
            let target = out.join("mine.bin");
            std::fs::write(&target, &foreign).unwrap();
            let before = identity(&target);

            let mut g = Node::get(&format!("getter ({case})"), &ticket, &out, &["--no-seed"]);
            let stderr = g.expect_failure(1, SOON);
            let line = stderr
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or_else(|| panic!("{case}: no 'error:' line in stderr:\n{stderr}"));
            assert!(
                line.contains("mine.bin")
                    && line.contains("not a copy")
                    && line.contains("overwrite"),
                "{case}: unclear error: {line}"
            );
            let event = g
                .history()
                .iter()
                .find(|v| v["event"] == "error")
                .cloned()
                .unwrap_or_else(|| panic!("{case}: no error event"));
            assert_eq!(
                format!("error: {}", event["message"].as_str().unwrap()),
                line,
                "{case}: the event and stderr differ"
            );
            assert!(g.history().iter().all(|v| v["event"] != "done"), "{case}");
            assert_eq!(identity(&target), before, "{case}: the file was touched");
            assert_same_file(&target, &foreign);
            assert_eq!(names_in(&out), ["mine.bin"], "{case}: side files");
        }
        sharer.stop();
    });
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let opt = format!("size={size}");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &opt, "tmpfs", dir.to_str().unwrap()],
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        let opt = format!("remount,size={size}");
        run("mount", &["-o", &opt, self.dir.to_str().unwrap()]).expect("remounting the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap();
        if run("umount", &[dir]).is_err() {
            let _ = run("umount", &["-l", dir]);
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A 16 MiB download into an 8 MiB file system: exit 1 with "disk full",
/// the partial download kept; with room again, the same command resumes
/// and reuses what was verified. `sharer` are extra `share` arguments.
fn full_disk_then_resume(test: &'static str, sharer_args: &'static [&'static str]) {
    if !is_root() {
        cannot_run(test, "mounting a tmpfs needs root");
    }
    scenario(LIMIT, move || {
        let work = tempdir();
        let mnt = work.path().join("mnt");
        let fs = Tmpfs::mount(&mnt, "8m").unwrap_or_else(|e| cannot_run(test, &e));
        let len = 16 * MIB;
        let (path, data) = write_random(work.path(), "huge.bin", len, 22);
        let mut sharer = Node::share("sharer", &path, sharer_args);
        sharer.listening();
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let out = mnt.join("out");

        let mut g = Node::get("getter (8 MiB disk)", &ticket, &out, &["--no-seed"]);
        let stderr = g.expect_failure(1, Duration::from_secs(25));
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no 'error:' line in stderr:\n{stderr}"));
        assert!(
            line.contains("disk full") && line.contains("rerun"),
            "unclear error: {line}"
        );
        assert!(
            g.history().iter().any(|v| v["event"] == "error"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("disk full"))),
            "no error event"
        );
        let left = names_in(&out);
        assert!(!left.contains(&"huge.bin".to_string()), "{left:?}");
        assert!(
            left.contains(&".huge.bin.hayedik-part".to_string()),
            "partial download not kept: {left:?}"
        );

        fs.resize("64m");
        let mut again = Node::get("getter (64 MiB disk)", &ticket, &out, &["--no-seed"]);
        let done = again.done(Duration::from_secs(30));
        again.expect_success();
        assert!(
            done.reused > 0,
            "nothing of the partial download reused: {done:?}"
        );
        assert_eq!(done.reused + done.received(), len as u64, "{done:?}");
        assert_same_file(&done.path, &data);
        assert_eq!(names_in(&out), ["huge.bin"], "side files left");
        sharer.stop();
        drop(fs);
    });
}

/// The sharer capped so that the disk fills over a couple of seconds: the
/// resume state saved meanwhile is what the rerun reuses.
#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn peers_full_disk_then_resume() {
    full_disk_then_resume("peers_full_disk_then_resume", &["--max-upload", "4M"]);
}

/// The disk fills within the first resume interval (no cap on loopback).
#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn peers_full_disk_filled_at_once_then_resume() {
    full_disk_then_resume("peers_full_disk_filled_at_once_then_resume", &[]);
}
