//! Hostile peers against the real `get`: rogue peers written here with the
//! library (`hayedik_proto::peer` messages, the handshake's proofs, and
//! `hayedik::peer::announce` to join a swarm), not with the binary.
//!
//! - A swarm whose only seeder serves a manifest that does hash to the
//!   ticket's root but names `../evil`, `a/b`, `CON`...: `get` exits 1 with
//!   a clear error and writes nothing outside its `-o DIR`.
//! - Rogues in a real swarm (a lying manifest, blocks of garbage): the
//!   getter still ends with the right bytes, and counts nothing from them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hayedik::peer::announce::{create_swarm, spawn_announcer, Announcer, TrackerClient};
use hayedik::peer::secure;
use hayedik::peer::wire::{FrameReader, FrameWriter};
use hayedik_proto::manifest::{hash_piece, peer_auth_key, swarm_key, FileEntry, Manifest};
use hayedik_proto::peer::{handshake_proof, Bitfield, Message, Role};
use hayedik_proto::ticket::hex;
use hayedik_proto::tracker::PeerState;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::swarm_harness::{
    assert_same_file, names_in, random_bytes, scenario, tempdir, write_random, Node, MIB,
};

const LIMIT: Duration = Duration::from_secs(90);

/// How a rogue peer misbehaves once the handshake is done.
#[derive(Debug, Clone)]
enum Behaviour {
    /// Answers a manifest request with these bytes; has no pieces.
    ServeManifest(Vec<u8>),
    /// Never answers a manifest request; claims `pieces` pieces and answers
    /// every request with random bytes of the asked length.
    Garbage { pieces: u32 },
}

/// A rogue peer: a TCP server that speaks the handshake for `root`.
struct Rogue {
    addr: SocketAddr,
    /// Blocks of garbage sent.
    blocks: Arc<AtomicU64>,
    /// Manifests sent.
    manifests: Arc<AtomicU64>,
}

async fn start_rogue(root: [u8; 32], behaviour: Behaviour) -> Rogue {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let blocks = Arc::new(AtomicU64::new(0));
    let manifests = Arc::new(AtomicU64::new(0));
    let (b, m) = (blocks.clone(), manifests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (behaviour, b, m) = (behaviour.clone(), b.clone(), m.clone());
            tokio::spawn(async move {
                let _ = rogue_session(stream, root, addr.port(), behaviour, b, m).await;
            });
        }
    });
    Rogue {
        addr,
        blocks,
        manifests,
    }
}

async fn rogue_session(
    stream: tokio::net::TcpStream,
    root: [u8; 32],
    port: u16,
    behaviour: Behaviour,
    blocks: Arc<AtomicU64>,
    manifests: Arc<AtomicU64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = secure::accept(stream).await?;
    let binding = channel.binding;
    let (rd, wr) = tokio::io::split(channel.stream);
    let mut reader = FrameReader::new(Box::new(rd));
    let mut writer = FrameWriter::new(Box::new(wr));
    // We accepted: we are the responder.
    let Message::Hello { nonce: theirs, .. } = reader.next().await? else {
        return Ok(());
    };
    let mine: [u8; 32] = rand::random();
    writer
        .send(&Message::hello(swarm_key(&root), mine, port))
        .await?;
    let mac = handshake_proof(
        &peer_auth_key(&root),
        &binding,
        Role::Responder,
        &theirs,
        &mine,
    );
    writer.send(&Message::Proof { mac }).await?;
    let Message::Proof { .. } = reader.next().await? else {
        return Ok(());
    };
    if let Behaviour::Garbage { pieces } = &behaviour {
        let mut bits = Bitfield::new(*pieces);
        for i in 0..*pieces {
            bits.set(i);
        }
        writer
            .send(&Message::Bitfield {
                bits: bits.as_bytes().to_vec(),
            })
            .await?;
    }
    loop {
        match reader.next().await? {
            Message::ManifestRequest => {
                if let Behaviour::ServeManifest(bytes) = &behaviour {
                    manifests.fetch_add(1, Ordering::Relaxed);
                    writer
                        .send(&Message::Manifest {
                            bytes: bytes.clone(),
                        })
                        .await?;
                }
            }
            Message::Request { piece, offset, len } => {
                if matches!(behaviour, Behaviour::Garbage { .. }) {
                    blocks.fetch_add(1, Ordering::Relaxed);
                    let data = random_bytes(len as usize, rand::random());
                    writer
                        .send(&Message::Block {
                            piece,
                            offset,
                            data,
                        })
                        .await?;
                }
            }
            Message::Goodbye { .. } => return Ok(()),
            _ => {}
        }
    }
}

/// Lists `tcp_port` as a seeder in the swarm at `swarm` until dropped.
async fn announce_seeder(swarm: SocketAddr, root: &[u8; 32], tcp_port: u16) -> Announcer {
    let client = TrackerClient::bind(swarm, swarm_key(root), tcp_port)
        .await
        .unwrap();
    announce_with(client)
}

fn announce_with(client: TrackerClient) -> Announcer {
    spawn_announcer(client, PeerState::Complete, CancellationToken::new())
}

/// Waits until the tracker lists us (the first reply to our announce).
async fn listed(announcer: &Announcer) {
    let mut replies = announcer.replies();
    tokio::time::timeout(Duration::from_secs(10), replies.wait_for(|r| r.is_some()))
        .await
        .expect("the tracker answered the rogue's announce")
        .unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The encoding of a one-file manifest named `name` (not validated: it may
/// be anything a hostile peer would send), with its root.
fn hostile_manifest(files: &[&str]) -> (Vec<u8>, [u8; 32]) {
    let size = MIB as u64 + 5;
    let data = random_bytes(size as usize, 77);
    let m = Manifest {
        files: files
            .iter()
            .map(|name| FileEntry {
                path: (*name).to_string(),
                size,
                executable: false,
                directory: false,
            })
            .collect(),
        piece_size: 1 << 20,
        pieces: files
            .iter()
            .flat_map(|_| data.chunks(1 << 20).map(hash_piece))
            .collect(),
    };
    let bytes = m.encode();
    let root = *blake3::hash(&bytes).as_bytes();
    (bytes, root)
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One swarm per hostile manifest, whose only seeder is a rogue serving it
/// (its root is the ticket's): `get` must refuse it clearly, exit 1, and
/// write nothing outside `-o DIR`, nor any file under a hostile name.
/// With `clear`, the error line must contain every expected word.
fn hostile_names(cases: &[(&[&str], &[&str])], clear: bool) {
    let rt = runtime();
    let (mut tracker, central) = Node::tracker();
    for (files, expect) in cases {
        let (bytes, root) = hostile_manifest(files);
        let (rogue, _announcer, port) = rt.block_on(async {
            let rogue = start_rogue(root, Behaviour::ServeManifest(bytes)).await;
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = create_swarm(&socket, central, Duration::from_secs(5))
                .await
                .unwrap();
            let swarm = SocketAddr::from(([127, 0, 0, 1], port));
            let client =
                TrackerClient::from_socket(socket, swarm, swarm_key(&root), rogue.addr.port());
            let announcer = announce_with(client);
            listed(&announcer).await;
            (rogue, announcer, port)
        });
        let work = tempdir();
        let jail = work.path().join("jail");
        std::fs::create_dir(&jail).unwrap();
        let out = jail.join("out");
        let ticket = format!("hayedik://127.0.0.1:{port}/{}", hex(&root));
        let mut g = Node::spawn(
            &format!("getter of {files:?}"),
            &[
                "get",
                &ticket,
                "-o",
                out.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--timeout",
                "3",
                "--json",
            ],
        );
        let stderr = g.expect_failure(1, Duration::from_secs(15));
        assert!(
            rogue.manifests.load(Ordering::Relaxed) > 0,
            "{files:?}: the getter never asked the rogue for the manifest"
        );
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{files:?}: no error line:\n{stderr}"));
        for word in expect.iter().filter(|_| clear) {
            assert!(
                line.contains(word),
                "{files:?}: the error does not say what is wrong (expected {word:?}): {line}"
            );
        }
        // A rerun cannot fix the content itself: no hint to try again.
        assert!(
            !line.contains("rerun"),
            "{files:?}: a permanent error tells the user to rerun: {line}"
        );
        assert!(
            g.history().iter().any(|v| v["event"] == "error"),
            "{files:?}"
        );
        assert!(
            g.history().iter().all(|v| v["event"] != "done"),
            "{files:?}"
        );
        // Nothing outside -o DIR; inside it, nothing but the getter's own
        // side files (and not even those when the name is refused up front).
        assert_eq!(names_in(work.path()), ["jail"], "{files:?}");
        let inside: Vec<String> = tree(&jail).into_iter().filter(|p| p != "out").collect();
        assert!(inside.is_empty(), "{files:?}: written: {inside:?}");
    }
    tracker.stop();
}

/// Folder manifests that no file system could hold, or that would write
/// outside the download's own folder, although they hash to the ticket's
/// root: refused as a whole before anything is written.
#[test]
fn peers_hostile_tree_manifests() {
    scenario(LIMIT, || {
        let deep = vec!["d"; 65].join("/");
        hostile_names(
            &[
                (&["t/a", "t/b", "t/a"], &["\"t/a\"", "appears twice"]),
                (&["t/a", "t/a/b"], &["t/a/b", "both a file and a folder"]),
                (&["t/x", "u/x"], &["do not start with the same name"]),
                (&["t/ok", "t/x/../../evil"], &["'..'"]),
                (&[deep.as_str()], &["levels deep"]),
                (&["t/ok", "t/bell\u{7}"], &["control character"]),
                (&["t/ok", "t/a:b"], &["':'"]),
            ],
            true,
        );
    });
}

/// Names a manifest may not hold at all (`..`, a Windows device, an
/// absolute path), although the manifest hashes to the ticket's root:
/// exit 1, nothing written.
#[test]
fn peers_hostile_manifest_with_an_invalid_name_writes_nothing() {
    scenario(LIMIT, || {
        hostile_names(
            &[(&["../evil"], &[]), (&["CON"], &[]), (&["/etc/evil"], &[])],
            false,
        );
    });
}

/// The same, and the error says the shared content itself is unusable
/// (the manifest hashes to the root: it is the ticket's content, not a lie).
#[test]
fn peers_hostile_manifest_with_an_invalid_name_is_reported_clearly() {
    scenario(LIMIT, || {
        hostile_names(&[(&["../evil"], &["../evil", "manifest"])], true);
    });
}

/// A real sharer (capped, so the transfer takes a while) plus two rogues in
/// its swarm: one serves a manifest that does not hash to the root, one
/// claims every piece and answers with garbage. The getter ends with the
/// right bytes and counts nothing from the rogues.
#[test]
fn peers_rogues_in_a_real_swarm() {
    scenario(LIMIT, || {
        let rt = runtime();
        let work = tempdir();
        let len = 12 * MIB;
        let (path, data) = write_random(work.path(), "real.bin", len, 30);
        let mut sharer = Node::share("sharer", &path, &["--max-upload", "4M"]);
        let s_addr = sharer.listening();
        let t = sharer.ticket();
        let ticket = t["ticket"].as_str().unwrap().to_string();
        let pieces = t["pieces"].as_u64().unwrap() as u32;
        let root: [u8; 32] = {
            let hex = t["root"].as_str().unwrap();
            let mut r = [0u8; 32];
            for (i, b) in r.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            r
        };
        let swarm_port: u16 = ticket
            .trim_start_matches("hayedik://")
            .split('/')
            .next()
            .and_then(|hp| hp.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        let swarm = SocketAddr::from(([127, 0, 0, 1], swarm_port));
        let (liar, garbage, _a1, _a2) = rt.block_on(async {
            let (other, _) = hostile_manifest(&["real.bin"]);
            let liar = start_rogue(root, Behaviour::ServeManifest(other)).await;
            let garbage = start_rogue(root, Behaviour::Garbage { pieces }).await;
            let a1 = announce_seeder(swarm, &root, liar.addr.port()).await;
            let a2 = announce_seeder(swarm, &root, garbage.addr.port()).await;
            listed(&a1).await;
            listed(&a2).await;
            (liar, garbage, a1, a2)
        });

        let mut g = Node::get("getter", &ticket, &work.path().join("out"), &["--no-seed"]);
        let done = g.done(Duration::from_secs(40));
        g.expect_success();
        assert_same_file(&done.path, &data);
        assert_eq!(done.sources(), [s_addr].into(), "{done:?}");
        assert_eq!(done.received(), len as u64, "{done:?}");
        assert!(
            liar.manifests.load(Ordering::Relaxed) + garbage.blocks.load(Ordering::Relaxed) > 0,
            "the getter never talked to the rogues: the test proves nothing"
        );
        if garbage.blocks.load(Ordering::Relaxed) > 0 {
            assert!(
                g.stderr().contains("failed verification"),
                "garbage was sent but no piece failed verification:\n{}",
                g.stderr()
            );
        }
        sharer.stop();
    });
}

/// A peer driven step by step by the test: it speaks the handshake, may
/// serve the manifest, claims every piece, reports the requests it gets,
/// and sends exactly the messages the test hands it, when it hands them.
struct Scripted {
    addr: SocketAddr,
    requests: std::sync::mpsc::Receiver<(u32, u32, u32)>,
    send: tokio::sync::mpsc::UnboundedSender<Message>,
}

async fn start_scripted(root: [u8; 32], manifest: Option<Vec<u8>>, pieces: u32) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (req_tx, requests) = std::sync::mpsc::channel();
    let (send, mut script) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let to_writer = send.clone();
    tokio::spawn(async move {
        // One connection: the getter's.
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let Ok(channel) = secure::accept(stream).await else {
            return;
        };
        let binding = channel.binding;
        let (rd, wr) = tokio::io::split(channel.stream);
        let mut reader = FrameReader::new(Box::new(rd));
        let mut writer = FrameWriter::new(Box::new(wr));
        let Ok(Message::Hello { nonce: theirs, .. }) = reader.next().await else {
            return;
        };
        let mine: [u8; 32] = rand::random();
        let mac = handshake_proof(
            &peer_auth_key(&root),
            &binding,
            Role::Responder,
            &theirs,
            &mine,
        );
        let mut bits = Bitfield::new(pieces);
        for i in 0..pieces {
            bits.set(i);
        }
        for m in [
            Message::hello(swarm_key(&root), mine, addr.port()),
            Message::Proof { mac },
        ] {
            if writer.send(&m).await.is_err() {
                return;
            }
        }
        let Ok(Message::Proof { .. }) = reader.next().await else {
            return;
        };
        let _ = to_writer.send(Message::Bitfield {
            bits: bits.as_bytes().to_vec(),
        });
        tokio::spawn(async move {
            while let Some(m) = script.recv().await {
                if writer.send(&m).await.is_err() {
                    return;
                }
            }
        });
        while let Ok(m) = reader.next().await {
            match m {
                Message::ManifestRequest => {
                    if let Some(bytes) = &manifest {
                        let _ = to_writer.send(Message::Manifest {
                            bytes: bytes.clone(),
                        });
                    }
                }
                Message::Request { piece, offset, len } => {
                    let _ = req_tx.send((piece, offset, len));
                }
                _ => {}
            }
        }
    });
    Scripted {
        addr,
        requests,
        send,
    }
}

impl Scripted {
    /// The requests of the getter, until `n` arrived.
    fn requests(&self, n: usize) -> Vec<(u32, u32, u32)> {
        (0..n)
            .map(|_| {
                self.requests
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the getter's requests")
            })
            .collect()
    }

    /// Sends the block at `offset` of piece 0 with `data`.
    fn block(&self, offset: u32, data: &[u8]) {
        self.send
            .send(Message::Block {
                piece: 0,
                offset,
                data: data.to_vec(),
            })
            .unwrap();
    }
}

/// Endgame: the getter asks an honest peer and a corrupt one for the same
/// piece at once. The honest one sends three blocks, the corrupt one its
/// three blocks of garbage, then the honest one the last block, and the
/// piece verifies (on the honest stream). Whatever happens, the getter
/// must never call done a file whose bytes are not the content.
#[test]
fn peers_endgame_duplicate_from_a_corrupt_peer_never_corrupts_the_file() {
    scenario(LIMIT, || {
        let rt = runtime();
        // One piece of four 256 KiB blocks.
        let data = random_bytes(MIB, 40);
        let manifest = Manifest {
            files: vec![FileEntry {
                path: "one-piece.bin".into(),
                size: MIB as u64,
                executable: false,
                directory: false,
            }],
            piece_size: MIB as u32,
            pieces: vec![hash_piece(&data)],
        };
        let bytes = manifest.encode();
        let root = manifest.root();
        let (mut tracker, central) = Node::tracker();
        let (honest, corrupt, port, _a1, _a2) = rt.block_on(async {
            let honest = start_scripted(root, Some(bytes.clone()), 1).await;
            let corrupt = start_scripted(root, None, 1).await;
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = create_swarm(&socket, central, Duration::from_secs(5))
                .await
                .unwrap();
            let swarm = SocketAddr::from(([127, 0, 0, 1], port));
            let a1 = announce_with(TrackerClient::from_socket(
                socket,
                swarm,
                swarm_key(&root),
                honest.addr.port(),
            ));
            let a2 = announce_seeder(swarm, &root, corrupt.addr.port()).await;
            listed(&a1).await;
            listed(&a2).await;
            (honest, corrupt, port, a1, a2)
        });
        let work = tempdir();
        let ticket = format!("hayedik://127.0.0.1:{port}/{}", hex(&root));
        let mut g = Node::get("getter", &ticket, &work.path().join("out"), &["--no-seed"]);
        // Both are asked for the whole piece: four blocks each.
        let asked_honest = honest.requests(4);
        let asked_corrupt = corrupt.requests(4);
        let block = 256 << 10;
        for (piece, offset, len) in asked_honest.iter().chain(&asked_corrupt) {
            assert_eq!(
                (*piece, *len),
                (0, block),
                "{asked_honest:?} {asked_corrupt:?}"
            );
            assert_eq!(offset % block, 0);
        }
        let garbage = random_bytes(MIB, 41);
        let chunk = |d: &[u8], i: usize| d[i * block as usize..(i + 1) * block as usize].to_vec();
        // No event tells when the getter has written a block: these pauses
        // only order the writes of the two sessions.
        let pause = || std::thread::sleep(Duration::from_millis(300));
        for i in 0..3 {
            honest.block(i as u32 * block, &chunk(&data, i));
        }
        pause();
        for i in 0..3 {
            corrupt.block(i as u32 * block, &chunk(&garbage, i));
        }
        pause();
        honest.block(3 * block, &chunk(&data, 3));
        match g.try_wait_for(Duration::from_secs(10), |v| v["event"] == "done") {
            Some(done) => {
                let done = crate::swarm_harness::Done::from_event(&done);
                assert_same_file(&done.path, &data);
            }
            None => {
                // Not done: acceptable only as a clean failure.
                let status = g.wait_exit(Duration::from_secs(30));
                assert!(!status.success());
                g.assert_no_panic();
            }
        }
        drop(g);
        tracker.stop();
    });
}
