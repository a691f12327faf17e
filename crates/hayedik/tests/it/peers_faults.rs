//! Peers that fail: a seeder killed mid-transfer, a seeder whose file was
//! altered on disk, a getter killed at about 40% and run again.

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use crate::swarm_harness::{
    assert_same_file, names_in, scenario, tempdir, write_random, Node, MIB, SOON,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Puts a complete copy of `data` at `dir/name` and runs `get` there: the
/// way to add a seeder to a swarm. Returns it once it seeds.
fn extra_seeder(
    name: &str,
    ticket: &str,
    dir: &std::path::Path,
    file: &str,
    data: &[u8],
    extra: &[&str],
) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), data).unwrap();
    let mut s = Node::get(name, ticket, dir, extra);
    let done = s.done(SOON);
    assert_eq!(done.reused, data.len() as u64, "{done:?}");
    s.wait_event("seeding");
    s
}

/// The first `progress` event with at least `fraction` of the bytes.
fn wait_fraction(node: &mut Node, fraction: f64, limit: Duration) -> serde_json::Value {
    node.wait_for(&format!("progress >= {fraction}"), limit, |v| {
        v["event"] == "progress"
            && v["bytes_done"].as_f64().unwrap_or(0.0)
                >= fraction * v["bytes_total"].as_f64().unwrap_or(f64::MAX)
    })
}

/// Two seeders at a capped rate; one is killed (SIGKILL) while the getter
/// is downloading from both; the getter completes from the other.
#[test]
fn peers_seeder_killed_mid_transfer() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 24 * MIB;
        let cap = ["--max-upload", "6M"];
        let (path, data) = write_random(work.path(), "f.bin", len, 10);
        let mut sharer = Node::share("sharer", &path, &cap);
        let s_addr = sharer.listening();
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let mut seeder = extra_seeder(
            "seeder",
            &ticket,
            &work.path().join("s"),
            "f.bin",
            &data,
            &cap,
        );
        let seeder_addr = seeder.listening();

        let mut getter = Node::get("getter", &ticket, &work.path().join("g"), &["--no-seed"]);
        let p = getter.wait_for("progress from two peers past 20%", SOON, |v| {
            v["event"] == "progress"
                && v["peers"] == 2
                && v["bytes_done"].as_u64().unwrap_or(0) >= len as u64 / 5
        });
        assert!(
            p["bytes_done"].as_u64().unwrap() < len as u64,
            "already done: {p}"
        );
        seeder.kill9();
        let done = getter.done(Duration::from_secs(30));
        getter.expect_success();
        assert_same_file(&done.path, &data);
        assert_eq!(done.received(), len as u64, "{done:?}");
        assert!(done.from.get(&s_addr).is_some_and(|&n| n > 0), "{done:?}");
        assert!(
            done.from.keys().all(|a| *a == s_addr || *a == seeder_addr),
            "{done:?}"
        );
        sharer.stop();
    });
}

/// The sharer's file is overwritten in the middle of pieces 0, 2, 4 and 6
/// after the ticket is out, with a second, honest seeder in the swarm.
/// `settle`: wait until the sharer's serving guard looks at the file again
/// (it stats it once a second) before the getter starts. Returns the
/// getter's stderr and the sharer's address.
fn altered_seeder(settle: bool) -> (String, std::net::SocketAddr) {
    let work = tempdir();
    let len = 8 * MIB + 99;
    let (path, data) = write_random(work.path(), "doc.bin", len, 11);
    let mut sharer = Node::share("sharer", &path, &[]);
    let s_addr = sharer.listening();
    let t = sharer.ticket();
    let shared_at = Instant::now();
    let ticket = t["ticket"].as_str().unwrap().to_string();
    assert_eq!(t["pieces"], 9, "1 MiB pieces expected: {t}");
    let mut honest = extra_seeder(
        "honest seeder",
        &ticket,
        &work.path().join("h"),
        "doc.bin",
        &data,
        &[],
    );
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        for piece in [0, 2, 4, 6] {
            f.seek(SeekFrom::Start((piece * MIB + MIB / 2) as u64))
                .unwrap();
            f.write_all(&[0xA5; 64 << 10]).unwrap();
        }
        f.sync_all().unwrap();
    }
    if settle {
        // No event says when the sharer's guard stats the file again: it
        // does so at most a second after the previous look.
        let wait = Duration::from_millis(1300).saturating_sub(shared_at.elapsed());
        std::thread::sleep(wait);
    }
    let intact = (len - 4 * MIB) as u64;

    let mut getter = Node::get("getter", &ticket, &work.path().join("g"), &["--no-seed"]);
    let done = getter.done(Duration::from_secs(30));
    getter.expect_success();
    assert_same_file(&done.path, &data);
    assert_eq!(done.received(), len as u64, "{done:?}");
    let from_sharer = done.from.get(&s_addr).copied().unwrap_or(0);
    assert!(
        from_sharer <= intact,
        "{from_sharer} bytes from the sharer, which holds only {intact} intact: {done:?}"
    );
    sharer.stop();
    honest.stop();
    if settle {
        assert!(
            sharer.stderr().contains("changed on disk"),
            "the sharer did not notice its file changed:\n{}",
            sharer.stderr()
        );
    }
    (getter.stderr(), s_addr)
}

/// Altered right after the ticket: the getter may receive altered pieces
/// from the sharer, and must still end with the right bytes.
#[test]
fn peers_seeder_with_a_file_altered_on_disk() {
    scenario(LIMIT, || {
        altered_seeder(false);
    });
}

/// Once the sharer has looked at its file again, it refuses the altered
/// pieces instead of serving them: the getter sees no bad piece from it.
#[test]
fn peers_seeder_refuses_pieces_altered_on_disk() {
    scenario(LIMIT, || {
        let (stderr, sharer) = altered_seeder(true);
        assert!(
            !stderr
                .lines()
                .any(|l| l.contains("failed verification") && l.contains(&sharer.to_string())),
            "the sharer served altered pieces:\n{stderr}"
        );
    });
}

/// A getter killed with SIGKILL at about 40% and run again in the same
/// directory resumes: it reuses what it had verified and ends with the
/// right bytes and no side files.
#[test]
fn peers_getter_killed_at_40_percent_resumes() {
    scenario(LIMIT, || {
        let work = tempdir();
        let len = 24 * MIB;
        let (path, data) = write_random(work.path(), "resume.bin", len, 12);
        let mut sharer = Node::share("sharer", &path, &["--max-upload", "8M"]);
        sharer.listening();
        let ticket = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let out = work.path().join("out");

        let mut first = Node::get("first run", &ticket, &out, &["--no-seed"]);
        let p = wait_fraction(&mut first, 0.4, Duration::from_secs(20));
        first.kill9();
        let at_kill = p["bytes_done"].as_u64().unwrap();
        assert!(at_kill < len as u64, "finished before the kill: {p}");
        let left = names_in(&out);
        assert!(
            !left.contains(&"resume.bin".to_string()),
            "a partial file under the final name: {left:?}"
        );
        assert!(
            left.contains(&".resume.bin.hayedik-part".to_string()),
            "{left:?}"
        );

        let mut second = Node::get("second run", &ticket, &out, &["--no-seed"]);
        let done = second.done(Duration::from_secs(30));
        second.expect_success();
        assert!(
            done.reused > 0,
            "nothing reused after a kill at {at_kill} bytes: {done:?}"
        );
        assert!(done.reused < len as u64, "{done:?}");
        assert_eq!(done.reused + done.received(), len as u64, "{done:?}");
        assert_same_file(&done.path, &data);
        assert_eq!(names_in(&out), ["resume.bin"], "side files left");
        sharer.stop();
    });
}
