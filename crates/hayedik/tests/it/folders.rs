//! Folder shares through the real binary on loopback: a nested tree with
//! odd sizes, empty files and folders, unicode names, an executable and
//! symbolic links; `--only` and then the rest; resume of a tree after a
//! kill; things in the way that must not be written through or over;
//! seeding a tree on; and a tree of 10,000 small files. Hostile folder
//! manifests from a rogue are in `peers_hostile`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::swarm_harness::{note, random_bytes, scenario, tempdir, Node, MIB, SOON};

const LIMIT: Duration = Duration::from_secs(90);

/// What a tree holds, by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    File { bytes: Vec<u8>, executable: bool },
    Folder,
    Link,
}

/// Everything under `dir`, by `/`-separated relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, Item> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let item = if m.file_type().is_symlink() {
                Item::Link
            } else if m.is_dir() {
                stack.push(p.clone());
                Item::Folder
            } else {
                Item::File {
                    bytes: std::fs::read(&p).unwrap(),
                    executable: m.permissions().mode() & 0o100 != 0,
                }
            };
            out.insert(rel, item);
        }
    }
    out
}

/// What a getter must recreate of `src`: everything but the links.
fn shared_part(src: &Path) -> BTreeMap<String, Item> {
    snapshot(src)
        .into_iter()
        .filter(|(_, i)| *i != Item::Link)
        .collect()
}

fn file_bytes(tree: &BTreeMap<String, Item>) -> u64 {
    tree.values()
        .map(|i| match i {
            Item::File { bytes, .. } => bytes.len() as u64,
            _ => 0,
        })
        .sum()
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A tree named `tree` under `base`: nested folders, odd sizes (a file over
/// several pieces, one piece and a byte, tiny ones), empty files, empty
/// folders (one nested), unicode names, an executable, and two symbolic
/// links (one to a file inside, one out of the tree).
fn odd_tree(base: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = base.join("tree");
    write(&root, "a.txt", b"hello\n");
    write(
        &root,
        "big/three-pieces.bin",
        &random_bytes(2 * MIB + 12_345, 1),
    );
    write(
        &root,
        "big/one-piece-and-a-byte.bin",
        &random_bytes(MIB + 1, 2),
    );
    write(&root, "nested/deeper/still/x.bin", &random_bytes(777, 3));
    write(&root, "nested/empty.txt", b"");
    write(&root, "données/été ☀.txt", "soleil\n".as_bytes());
    write(&root, "日本語/ファイル.bin", &random_bytes(4096, 4));
    write(&root, "run.sh", b"#!/bin/sh\necho hi\n");
    let run = root.join("run.sh");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("nested/hollow/inside")).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link-inside")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("nested/link-out")).unwrap();
    root
}

/// Names of hayedik side files anywhere under `dir`.
fn side_files(dir: &Path) -> Vec<String> {
    snapshot(dir)
        .into_keys()
        .filter(|p| p.contains(".hayedik-"))
        .collect()
}

fn ticket_of(sharer: &mut Node) -> (String, serde_json::Value) {
    let t = sharer.ticket();
    (t["ticket"].as_str().unwrap().to_string(), t)
}

/// The odd tree under `work`, shared: what a getter must recreate of it,
/// the sharer and the ticket.
fn share_odd_tree(work: &Path) -> (BTreeMap<String, Item>, Node, String) {
    let src = odd_tree(work);
    let want = shared_part(&src);
    let mut sharer = Node::share("sharer", &src, &[]);
    let (ticket, _) = ticket_of(&mut sharer);
    (want, sharer, ticket)
}

/// The tree arrives whole: files, sizes, bytes, empty files and folders,
/// unicode names, the executable bit; links are not shared (the sharer
/// says so); events name the top folder; no side file is left.
#[test]
fn folders_round_trip() {
    scenario(LIMIT, || {
        let work = tempdir();
        let src = odd_tree(work.path());
        let want = shared_part(&src);
        let mut sharer = Node::share("sharer", &src, &[]);
        let s_addr = sharer.listening();
        let (ticket, t) = ticket_of(&mut sharer);
        assert_eq!(t["bytes"], file_bytes(&want), "{t}");
        assert_eq!(t["name"], "tree", "{t}");
        assert_eq!(t["folder"], true, "{t}");
        let files = want
            .values()
            .filter(|i| matches!(i, Item::File { .. }))
            .count();
        assert_eq!(t["files"], files as u64, "{t}");
        let err = sharer.stderr_when(Duration::from_secs(5), |e| {
            e.contains("link-inside") && e.contains("link-out")
        });
        assert!(
            err.contains("link-inside") && err.contains("link-out"),
            "{err}"
        );
        assert!(err.contains("symbolic links are not followed"), "{err}");

        let out = work.path().join("out");
        let mut g = Node::get("getter", &ticket, &out, &["--no-seed"]);
        let m = g.wait_event("manifest");
        assert_eq!(m["name"], "tree", "{m}");
        assert_eq!(m["bytes"], file_bytes(&want), "{m}");
        let done = g.done(SOON);
        g.expect_success();
        assert_eq!(done.path, out.join("tree"));
        assert_eq!(done.bytes, file_bytes(&want));
        assert_eq!(done.reused, 0);
        assert_eq!(done.sources(), BTreeSet::from([s_addr]), "{done:?}");
        assert_eq!(done.received(), done.bytes, "{done:?}");
        assert_eq!(snapshot(&out.join("tree")), want);
        assert!(side_files(&out).is_empty(), "{:?}", side_files(&out));
        for p in g.history().iter().filter(|v| v["event"] == "progress") {
            assert!(p["bytes_done"].as_u64() <= p["bytes_total"].as_u64(), "{p}");
        }
        // Sharing the same tree again gives the same ticket root.
        let mut again = Node::share("sharer again", &src, &[]);
        assert_eq!(again.ticket()["root"], t["root"]);
        again.stop();
        sharer.stop();
    });
}

/// A complete copy of the tree already in place is verified and reused
/// untouched, and served on: the getter downloads nothing.
#[test]
fn folders_reuse_a_complete_copy() {
    scenario(LIMIT, || {
        let work = tempdir();
        let (want, mut sharer, ticket) = share_odd_tree(work.path());
        let out = work.path().join("out");
        for (rel, item) in &want {
            match item {
                Item::File { bytes, .. } => write(&out.join("tree"), rel, bytes),
                Item::Folder => std::fs::create_dir_all(out.join("tree").join(rel)).unwrap(),
                Item::Link => {}
            }
        }
        let before = crate::swarm_harness::identity(&out.join("tree/big/three-pieces.bin"));
        let mut g = Node::get("getter", &ticket, &out, &[]);
        let done = g.done(SOON);
        g.wait_event("seeding");
        assert_eq!(done.reused, file_bytes(&want), "{done:?}");
        assert_eq!(done.received(), 0, "{done:?}");
        assert_eq!(
            crate::swarm_harness::identity(&out.join("tree/big/three-pieces.bin")),
            before,
            "reused files are not rewritten"
        );
        assert!(side_files(&out).is_empty(), "{:?}", side_files(&out));
        g.stop();
        sharer.stop();
    });
}

/// `--only` fetches the matching files and no others; a later `get`
/// without it reuses them and completes the rest.
#[test]
fn folders_only_then_the_rest() {
    scenario(LIMIT, || {
        let work = tempdir();
        let (want, mut sharer, ticket) = share_odd_tree(work.path());
        let out = work.path().join("out");

        let mut g = Node::get(
            "getter --only",
            &ticket,
            &out,
            &["--no-seed", "--only", "big/*three*", "--only", "données"],
        );
        let done = g.done(SOON);
        g.expect_success();
        let got = snapshot(&out.join("tree"));
        let files: Vec<&String> = got
            .iter()
            .filter(|(_, i)| matches!(i, Item::File { .. }))
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            files,
            ["big/three-pieces.bin", "données/été ☀.txt"],
            "{got:?}"
        );
        for (p, item) in &got {
            assert_eq!(Some(item), want.get(p), "{p}");
        }
        let selected = (2 * MIB + 12_345 + "soleil\n".len()) as u64;
        assert_eq!(done.bytes, selected, "{done:?}");
        assert_eq!(done.received(), selected, "{done:?}");

        let mut rest = Node::get("getter, the rest", &ticket, &out, &["--no-seed"]);
        let done = rest.done(SOON);
        rest.expect_success();
        assert_eq!(done.reused, selected, "{done:?}");
        assert_eq!(done.received(), file_bytes(&want) - selected, "{done:?}");
        assert_eq!(snapshot(&out.join("tree")), want);
        assert!(side_files(&out).is_empty(), "{:?}", side_files(&out));
        sharer.stop();
    });
}

/// A pattern that matches nothing is a clear error, and nothing is written.
#[test]
fn folders_only_matching_nothing_is_an_error() {
    scenario(LIMIT, || {
        let work = tempdir();
        let (_, mut sharer, ticket) = share_odd_tree(work.path());
        let out = work.path().join("out");
        let mut g = Node::get("getter", &ticket, &out, &["--only", "*.docx"]);
        let err = g.expect_failure(1, SOON);
        assert!(err.contains("--only \"*.docx\" matches nothing"), "{err}");
        assert!(!out.exists(), "nothing may be written");
        let mut bad = Node::get("getter", &ticket, &out, &["--only", "[oops"]);
        let err = bad.expect_failure(2, SOON);
        assert!(err.contains("not a valid pattern"), "{err}");
        sharer.stop();
    });
}

/// A getter killed halfway through a tree resumes: what it verified is
/// reused, the rest downloaded, the tree ends whole.
#[test]
fn folders_resume_after_a_kill() {
    scenario(LIMIT, || {
        let work = tempdir();
        let src = work.path().join("album");
        for i in 0..6 {
            write(
                &src,
                &format!("disc{}/track{i}.flac", i % 2),
                &random_bytes(4 * MIB + i * 1000, 10 + i as u64),
            );
        }
        let want = shared_part(&src);
        let total = file_bytes(&want);
        let mut sharer = Node::share("sharer", &src, &["--max-upload", "8M"]);
        let (ticket, _) = ticket_of(&mut sharer);
        let out = work.path().join("out");
        let mut g = Node::get("getter", &ticket, &out, &[]);
        g.wait_for("a third of the tree", SOON, |v| {
            v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) >= total / 3
        });
        g.kill9();
        let mut again = Node::get("getter again", &ticket, &out, &["--no-seed"]);
        let done = again.done(Duration::from_secs(30));
        again.expect_success();
        assert!(
            done.reused > 0 && done.reused < total,
            "reused {} of {total}",
            done.reused
        );
        assert_eq!(done.reused + done.received(), total, "{done:?}");
        assert_eq!(snapshot(&out.join("album")), want);
        assert!(side_files(&out).is_empty(), "{:?}", side_files(&out));
        sharer.stop();
    });
}

/// A symbolic link where the tree has a folder is not written through, and
/// a different file where the tree has one is not overwritten: both are
/// refused before anything is written.
#[test]
fn folders_refuse_what_is_in_the_way() {
    scenario(LIMIT, || {
        let work = tempdir();
        let (_, mut sharer, ticket) = share_odd_tree(work.path());

        // OUT/tree/big is a link to a folder outside OUT.
        let outside = work.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let out = work.path().join("out-link");
        std::fs::create_dir_all(out.join("tree")).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("tree/big")).unwrap();
        let mut g = Node::get("getter", &ticket, &out, &["--no-seed"]);
        let err = g.expect_failure(1, SOON);
        assert!(err.contains("is a symbolic link"), "{err}");
        assert!(err.contains("nothing was written"), "{err}");
        assert!(snapshot(&outside).is_empty(), "written through the link");
        assert_eq!(snapshot(&out.join("tree")).len(), 1, "only the link");

        // OUT/tree/a.txt holds something else.
        let out = work.path().join("out-file");
        write(&out, "tree/a.txt", b"mine!\n");
        let mut g = Node::get("getter", &ticket, &out, &["--no-seed"]);
        let err = g.expect_failure(1, SOON);
        assert!(err.contains("refusing to overwrite it"), "{err}");
        assert_eq!(std::fs::read(out.join("tree/a.txt")).unwrap(), b"mine!\n");
        assert_eq!(snapshot(&out.join("tree")).len(), 1, "nothing else written");
        sharer.stop();
    });
}

/// A getter that completed a tree seeds it: with the sharer gone, a new
/// getter gets the whole tree from it.
#[test]
fn folders_seed_after_completion() {
    scenario(LIMIT, || {
        let work = tempdir();
        let src = odd_tree(work.path());
        let want = shared_part(&src);
        let (mut tracker, central) = Node::tracker();
        let mut sharer = Node::share(
            "sharer",
            &src,
            &["--tracker", &format!("127.0.0.1:{}", central.port())],
        );
        let (ticket, _) = ticket_of(&mut sharer);
        let mut a = Node::get("getter A", &ticket, &work.path().join("a"), &[]);
        let a_addr = a.listening();
        a.done(SOON);
        a.wait_event("seeding");
        sharer.stop();
        let out = work.path().join("b");
        let mut b = Node::get("getter B", &ticket, &out, &["--no-seed"]);
        let done = b.done(SOON);
        b.expect_success();
        assert_eq!(done.sources(), BTreeSet::from([a_addr]), "{done:?}");
        assert_eq!(snapshot(&out.join("tree")), want);
        let stopped = a.stop();
        assert!(
            stopped["uploaded"].as_u64().unwrap() >= file_bytes(&want),
            "{stopped}"
        );
        tracker.stop();
    });
}

/// 10,000 files of 4 KiB in 100 folders: shared and fetched whole, in
/// seconds (printed; the benchmark `cargo bench --bench tree` measures it).
#[test]
fn folders_ten_thousand_small_files() {
    scenario(Duration::from_secs(180), || {
        let work = tempdir();
        let src = work.path().join("small");
        let data = random_bytes(4096 * 100, 99);
        for d in 0..100 {
            for f in 0..100 {
                let mut bytes = data[f * 4096..(f + 1) * 4096].to_vec();
                bytes[..4].copy_from_slice(&(d as u32).to_le_bytes());
                write(&src, &format!("d{d:02}/f{f:02}.bin"), &bytes);
            }
        }
        let want = shared_part(&src);
        assert_eq!(want.len(), 10_100);
        let started = Instant::now();
        let mut sharer = Node::share("sharer", &src, &[]);
        let (ticket, t) = ticket_of(&mut sharer);
        let shared_in = started.elapsed();
        assert_eq!(t["bytes"], 10_000 * 4096, "{t}");
        assert_eq!(t["pieces"], 10_000, "{t}");
        let out = work.path().join("out");
        let started = Instant::now();
        let mut g = Node::get("getter", &ticket, &out, &["--no-seed"]);
        let done = g.done(Duration::from_secs(120));
        g.expect_success();
        let got_in = started.elapsed();
        note(&format!(
            "10,000 files of 4 KiB: share {:.2} s to the ticket, get {:.2} s to done ({:.2} s by the getter)",
            shared_in.as_secs_f64(),
            got_in.as_secs_f64(),
            done.seconds
        ));
        assert_eq!(snapshot(&out.join("small")), want);
        assert!(side_files(&out).is_empty());
        sharer.stop();
    });
}
