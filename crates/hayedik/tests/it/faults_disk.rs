//! Disk faults with real mounts and real files: a read-only download
//! directory, and a seeder's file altered on disk after it was verified.
//! (A full disk, and a getter killed mid-download, are in `peers_disk.rs`
//! and `peers_faults.rs`.)
//!
//! Mounting needs root: those tests are `#[ignore]`d, so a plain `cargo test`
//! reports them as ignored; README's command (as root, with
//! `-- --include-ignored`) runs them, and fails them when they cannot mount.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::harness::{scenario, Tracker};
use crate::lab::{
    assert_file_is, cannot_run, is_root, place_copy, random_file, run, ticket_of, Proc,
};

const MIB: usize = 1 << 20;
const NAME: &str = "content.bin";
/// Scratch directories of these tests start with this and the test
/// process's id, so a crashed run's mounts are found and removed.
const MOUNT_PREFIX: &str = "hayedik-disk-";

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`16m`...); `Err` says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("mounting a tmpfs needs root".into());
        }
        unmount_leftovers();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{MOUNT_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = dir.path().to_str().ok_or("a non-UTF-8 temporary path")?;
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path],
        )?;
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let path = self.path().to_str().expect("UTF-8");
        run("mount", &["-o", &format!("remount,{options}"), path])
            .unwrap_or_else(|e| panic!("remounting: {e}"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(p) = self.dir.path().to_str() {
            let _ = run("umount", &["-l", p]);
        }
    }
}

/// Unmounts the tmpfs of test processes that no longer run.
fn unmount_leftovers() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        let Some(name) = Path::new(point).file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix(MOUNT_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if !pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
            let _ = run("umount", &["-l", point]);
        }
    }
}

/// `hayedik share` of `file` on loopback; returns it and its ticket.
fn share(tracker: &Tracker, file: &Path) -> (Proc, String) {
    let central = tracker.addr.to_string();
    let mut s = Proc::local(
        "sharer",
        &[
            "share",
            file.to_str().expect("UTF-8"),
            "--tracker",
            &central,
            "--listen",
            "127.0.0.1:0",
            "--json",
        ],
    );
    let ticket = ticket_of(&mut s);
    (s, ticket)
}

fn get(name: &str, ticket: &str, out: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "get",
        ticket,
        "-o",
        out.to_str().expect("UTF-8"),
        "--listen",
        "127.0.0.1:0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut g = Proc::local(name, &args);
    g.listening();
    g
}

/// A download into a read-only file system, into a directory that exists
/// and into one to be created: exit 1 with one clear line naming the
/// problem, nothing written, no panic.
#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn read_only_output_directory() {
    let fs = Tmpfs::mount("16m")
        .unwrap_or_else(|why| cannot_run("faults_disk::read_only_output_directory", &why));
    scenario(Duration::from_secs(60), move || {
        let tracker = Tracker::start(&[]);
        let dir = tempfile::tempdir().expect("a scratch directory");
        random_file(&dir.path().join(NAME), MIB + 5, 31);
        let (sharer, ticket) = share(&tracker, &dir.path().join(NAME));
        std::fs::create_dir(fs.path().join("out")).expect("creating out");
        fs.remount("ro");
        for out in ["out", "new/deeper"] {
            let mut g = get(out, &ticket, &fs.path().join(out), &["--timeout", "20"]);
            let status = g.wait_exit(Duration::from_secs(30));
            let err = g.stderr();
            assert_eq!(status.code(), Some(1), "{out}: {err}");
            let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
            assert_eq!(lines.len(), 1, "{out}: one error line expected:\n{err}");
            crate::lab::note(&format!("read_only_output_directory {out}: {}", lines[0]));
            assert!(
                lines[0].contains("Read-only file system")
                    && lines[0].contains(fs.path().to_str().expect("UTF-8")),
                "{out}: the error should name the directory and the cause: {}",
                lines[0]
            );
            g.assert_no_panic();
        }
        let left: Vec<_> = std::fs::read_dir(fs.path())
            .expect("listing")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(left, ["out"], "written to a read-only file system?");
        sharer.assert_no_panic();
        drop(fs);
    });
}

/// Overwrites 64 KiB at each of `at` in `file`; with `keep_mtime`, puts the
/// modification time back as it was.
fn alter(file: &Path, at: &[usize], keep_mtime: bool) {
    let before: SystemTime = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("opening the shared file");
    for &offset in at {
        f.seek(SeekFrom::Start(offset as u64)).expect("seeking");
        f.write_all(&[0xA5; 64 << 10]).expect("altering");
    }
    f.sync_all().expect("syncing");
    if keep_mtime {
        f.set_modified(before).expect("restoring the mtime");
    }
}

/// Lines of a getter's log that say a piece failed verification.
fn failed_pieces(getter: &Proc) -> usize {
    getter
        .stderr()
        .lines()
        .filter(|l| l.contains("failed verification"))
        .count()
}

/// The swarm of `altered_*`: a sharer whose every piece was served (and so
/// checked) once, then altered on disk, and an honest seeder.
struct Altered {
    _tracker: Tracker,
    sharer: Proc,
    honest: Proc,
    ticket: String,
    data: Vec<u8>,
    dir: tempfile::TempDir,
}

fn altered_swarm(keep_mtime: bool) -> Altered {
    let tracker = Tracker::start(&["--announce-interval", "2"]);
    let dir = tempfile::tempdir().expect("a scratch directory");
    let file = dir.path().join(NAME);
    let data = random_file(&file, 8 * MIB, 32);
    let (sharer, ticket) = share(&tracker, &file);
    let mut first = get(
        "first getter",
        &ticket,
        &dir.path().join("first"),
        &["--no-seed"],
    );
    first.wait_event("done", Duration::from_secs(30));
    first.expect_success(Duration::from_secs(15));
    // The guard looks at the file's stamp at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    alter(&file, &[MIB / 2, 3 * MIB + 10, 6 * MIB], keep_mtime);
    let seed: PathBuf = dir.path().join("honest");
    place_copy(&seed, NAME, &data);
    let mut honest = get("honest seeder", &ticket, &seed, &[]);
    honest.wait_event("seeding", Duration::from_secs(30));
    Altered {
        _tracker: tracker,
        sharer,
        honest,
        ticket,
        data,
        dir,
    }
}

/// A seeder's file altered on disk after its pieces were verified and
/// served: the seeder notices (the file's modification time moved), refuses
/// the altered pieces instead of serving them as good, and a getter ends
/// correct from the honest seeder without one piece failing verification.
#[test]
fn altered_file_is_refused_by_its_seeder() {
    scenario(Duration::from_secs(90), || {
        let s = altered_swarm(false);
        let out = s.dir.path().join("out");
        let mut g = get("getter", &s.ticket, &out, &["--no-seed", "--timeout", "30"]);
        g.wait_event("done", Duration::from_secs(60));
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&out.join(NAME), &s.data);
        assert_eq!(
            failed_pieces(&g),
            0,
            "the seeder served altered pieces as good:\n{}",
            g.stderr()
        );
        let err = s
            .sharer
            .stderr_when(Duration::from_secs(5), |e| e.contains("changed on disk"));
        assert!(
            err.contains("changed on disk"),
            "the seeder did not notice its file changed:\n{err}"
        );
        for p in [&s.sharer, &s.honest, &g] {
            p.assert_no_panic();
        }
    });
}

/// The same, but the alteration keeps the file's size and modification
/// time (as bit rot, or a tool that restores times, would): a getter still
/// ends correct. Whether the seeder served the altered pieces is printed:
/// the guard re-hashes only on a size or time change.
#[test]
fn altered_file_with_its_mtime_kept() {
    scenario(Duration::from_secs(90), || {
        let s = altered_swarm(true);
        let out = s.dir.path().join("out");
        let mut g = get("getter", &s.ticket, &out, &["--no-seed", "--timeout", "30"]);
        g.wait_event("done", Duration::from_secs(60));
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&out.join(NAME), &s.data);
        let banned = g.stderr().lines().any(|l| l.contains("banned"));
        crate::lab::note(&format!(
            "altered_file_with_its_mtime_kept: {} pieces from the altered seeder failed verification at the getter (seeder banned: {banned}); seeder noticed: {}",
            failed_pieces(&g),
            s.sharer.stderr().contains("changed on disk")
        ));
        for p in [&s.sharer, &s.honest, &g] {
            p.assert_no_panic();
        }
    });
}

/// A seeder's file cut short while it serves it. The seeder reads and
/// encrypts a block 64 KiB at a time, and the getter reads slowly (capped),
/// so the seeder is in the middle of a block when the file shrinks: the
/// read that fails makes it check that piece again at once, which stats
/// the file and says it changed; it drops that connection rather than send
/// anything short as a block, and keeps running. The getter ends correct
/// from an honest seeder. Bytes read before the cut (truncating can zero
/// page-cache pages just read) may still spoil a piece in flight: the
/// getter then fails that piece against the cut seeder, never against the
/// honest one.
#[test]
fn shared_file_cut_short_while_served() {
    scenario(Duration::from_secs(90), || {
        let tracker = Tracker::start(&["--announce-interval", "2"]);
        let dir = tempfile::tempdir().expect("a scratch directory");
        let file = dir.path().join(NAME);
        let data = random_file(&file, 24 * MIB, 33);
        let (mut sharer, ticket) = share(&tracker, &file);
        let out = dir.path().join("out");
        let mut g = get(
            "getter",
            &ticket,
            &out,
            &["--no-seed", "--timeout", "30", "--max-download", "8M"],
        );
        g.wait_progress(2 * MIB as u64, Duration::from_secs(30));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_len(2 * MIB as u64 + 5))
            .expect("cutting the shared file short");
        let seed = dir.path().join("honest");
        place_copy(&seed, NAME, &data);
        let mut honest = get("honest seeder", &ticket, &seed, &[]);
        let honest_addr = honest
            .events()
            .iter()
            .find(|v| v["event"] == "listening")
            .and_then(|v| v["addr"].as_str())
            .expect("the honest seeder's listening event")
            .to_string();
        honest.wait_event("seeding", Duration::from_secs(30));
        g.wait_event("done", Duration::from_secs(60));
        g.expect_success(Duration::from_secs(15));
        assert_file_is(&out.join(NAME), &data);
        let blamed: Vec<String> = g
            .stderr()
            .lines()
            .filter(|l| l.contains("failed verification") || l.contains("banned"))
            .filter(|l| l.contains(&honest_addr))
            .map(str::to_owned)
            .collect();
        assert!(
            blamed.is_empty(),
            "the honest seeder {honest_addr} was blamed: {blamed:?}"
        );
        assert!(
            sharer.is_running(),
            "the sharer ended:\n{}",
            sharer.stderr()
        );
        let err = sharer.stderr_when(Duration::from_secs(5), |e| e.contains("changed on disk"));
        assert!(
            err.contains("changed on disk"),
            "the sharer did not say its file changed:\n{err}"
        );
        crate::lab::note(&format!(
            "shared_file_cut_short_while_served: the sharer noticed {}; {} piece(s) from it failed at the getter",
            if err.contains("cannot read a piece to serve") {
                "when a read came up short"
            } else {
                "at a re-check"
            },
            failed_pieces(&g)
        ));
        for p in [&sharer, &honest, &g] {
            p.assert_no_panic();
        }
    });
}
