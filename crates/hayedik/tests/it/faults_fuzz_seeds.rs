//! The fuzz corpus seeds (`fuzz/corpus/TARGET/seed-*`): a few valid
//! encodings per decoder, generated here from the encoders so they stay
//! valid as the formats evolve, and the whole committed corpus (seeds and
//! any regression input a fuzzer found) replayed through the decoders with
//! the fuzz targets' checks, so a regression fails `cargo test` too.
//!
//! `HAYEDIK_WRITE_FUZZ_SEEDS=1 cargo test --release -p hayedik --test it
//! fuzz_seeds` rewrites the seeds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hayedik::storage::{Bitfield, ResumeState};
use hayedik_proto::manifest::{hash_piece, FileEntry, Manifest};
use hayedik_proto::peer::{decode_frame, Message as PeerMessage};
use hayedik_proto::ticket::Ticket;
use hayedik_proto::tracker::{Announce, Datagram, ErrorCode, Message, PeerEntry, PeerState, Peers};

/// Named inputs of one fuzz target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn tracker_seeds() -> Seeds {
    let key = hayedik_proto::manifest::swarm_key(&[3; 32]);
    let peer = |a: &str, state| PeerEntry {
        addr: a.parse::<SocketAddr>().expect("an address"),
        state,
    };
    let d = |tid, m| Datagram::new(tid, m).to_vec();
    vec![
        ("join", d(1, Message::Join { cookie: 0 })),
        ("join-cookie", d(2, Message::Join { cookie: 0xC0FFEE })),
        ("challenge", d(2, Message::Challenge { cookie: 0xC0FFEE })),
        (
            "offer-central",
            d(
                3,
                Message::Offer {
                    token: 77,
                    port: Some(40001),
                },
            ),
        ),
        (
            "offer-swarm",
            d(
                3,
                Message::Offer {
                    token: 77,
                    port: None,
                },
            ),
        ),
        ("confirm", d(4, Message::Confirm { token: 77 })),
        ("confirmed", d(4, Message::Confirmed)),
        ("connect", d(5, Message::Connect)),
        ("connected", d(5, Message::Connected { connection_id: 9 })),
        (
            "announce",
            d(
                6,
                Message::Announce {
                    connection_id: 9,
                    announce: Announce {
                        swarm_key: key,
                        port: 6881,
                        state: PeerState::Downloading,
                        wanted: 50,
                    },
                },
            ),
        ),
        (
            "peers",
            d(
                6,
                Message::Peers(Peers {
                    interval: 60,
                    seeders: 1,
                    partials: 2,
                    peers: vec![
                        peer("198.18.0.2:6881", PeerState::Complete),
                        peer("[2001:db8::1]:7000", PeerState::Downloading),
                    ],
                }),
            ),
        ),
        (
            "error",
            d(
                7,
                Message::Error {
                    code: ErrorCode::BadConnectionId,
                    message: "bad connection id".into(),
                },
            ),
        ),
    ]
}

fn sample_manifest() -> Manifest {
    let data = vec![7u8; 3000];
    Manifest {
        files: vec![FileEntry {
            path: "notes.txt".into(),
            size: data.len() as u64,
            executable: false,
            directory: false,
        }],
        piece_size: 1024,
        pieces: data.chunks(1024).map(hash_piece).collect(),
    }
}

fn manifest_seeds() -> Seeds {
    let two = Manifest {
        files: vec![
            FileEntry {
                path: "dir/a.bin".into(),
                size: 2048,
                executable: true,
                directory: false,
            },
            FileEntry {
                path: "dir/b".into(),
                size: 0,
                executable: false,
                directory: false,
            },
        ],
        piece_size: 1024,
        pieces: vec![[1; 32], [2; 32]],
    };
    vec![
        ("one-file", sample_manifest().encode()),
        ("two-files", two.encode()),
    ]
}

fn peer_seeds() -> Seeds {
    let frames = vec![
        ("keepalive", PeerMessage::KeepAlive),
        ("hello", PeerMessage::hello([1; 32], [2; 32], 6881)),
        ("proof", PeerMessage::Proof { mac: [3; 32] }),
        ("goodbye", PeerMessage::goodbye("wrong proof")),
        ("manifest-request", PeerMessage::ManifestRequest),
        (
            "manifest",
            PeerMessage::Manifest {
                bytes: sample_manifest().encode(),
            },
        ),
        ("bitfield", PeerMessage::Bitfield { bits: vec![0xE0] }),
        ("have", PeerMessage::Have { piece: 2 }),
        (
            "request",
            PeerMessage::Request {
                piece: 1,
                offset: 0,
                len: 1024,
            },
        ),
        (
            "block",
            PeerMessage::Block {
                piece: 1,
                offset: 512,
                data: vec![9; 64],
            },
        ),
        (
            "cancel",
            PeerMessage::Cancel {
                piece: 1,
                offset: 0,
                len: 1024,
            },
        ),
        (
            "reject",
            PeerMessage::Reject {
                piece: 1,
                offset: 0,
                len: 1024,
            },
        ),
    ];
    let mut stream = Vec::new();
    for (_, m) in &frames {
        m.encode(&mut stream);
    }
    let mut seeds: Seeds = frames.into_iter().map(|(n, m)| (n, m.to_vec())).collect();
    seeds.push(("stream", stream));
    seeds
}

fn ticket_seeds() -> Seeds {
    let root = [0xAB; 32];
    vec![
        ("ipv4", Ticket::new("198.18.0.1", 40001, root)),
        ("ipv6", Ticket::new("2001:db8::1", 7411, root)),
        ("dns", Ticket::new("tracker.example.org", 7410, root)),
    ]
    .into_iter()
    .map(|(n, t)| (n, t.to_string().into_bytes()))
    .collect()
}

fn resume_seeds() -> Seeds {
    let state = |count: u32, picks: &[u32]| {
        let mut have = Bitfield::new(count);
        for &p in picks {
            have.set(p);
        }
        ResumeState {
            root: [5; 32],
            content_len: u64::from(count) * 1024 - 10,
            piece_size: 1024,
            have,
        }
        .encode()
    };
    let full = state(9, &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
    let partial = state(100, &[0, 50, 99]);
    // The fuzz target also decodes its input with a checksum appended: a
    // body without its checksum reaches the fields.
    let body = partial[..partial.len() - 32].to_vec();
    vec![
        ("empty", state(1, &[])),
        ("full", full),
        ("partial", partial),
        ("partial-body", body),
    ]
}

/// Every target's seeds.
fn seeds() -> Vec<(&'static str, Seeds)> {
    vec![
        ("tracker_datagram", tracker_seeds()),
        ("peer_frame", peer_seeds()),
        ("manifest", manifest_seeds()),
        ("ticket", ticket_seeds()),
        ("resume_state", resume_seeds()),
    ]
}

/// The checks of fuzz target `target` on `data`; panics where it would.
fn replay(target: &str, data: &[u8]) {
    match target {
        "tracker_datagram" => {
            if let Ok(d) = Datagram::decode(data) {
                assert_eq!(Datagram::decode(&d.to_vec()).as_ref(), Ok(&d));
            }
        }
        "peer_frame" => {
            let mut rest = data;
            while let Ok(Some((m, used))) = decode_frame(rest) {
                assert_eq!(m.to_vec(), &rest[..used]);
                rest = &rest[used..];
            }
        }
        "manifest" => {
            if let Ok(m) = Manifest::decode(data) {
                assert_eq!(m.encode(), data);
            }
        }
        "ticket" => {
            if let Some(t) = std::str::from_utf8(data)
                .ok()
                .and_then(|s| s.parse::<Ticket>().ok())
            {
                assert_eq!(t.to_string().parse::<Ticket>(), Ok(t));
            }
        }
        "resume_state" => {
            for bytes in [data.to_vec(), {
                let mut v = data.to_vec();
                v.extend_from_slice(blake3::hash(data).as_bytes());
                v
            }] {
                if let Ok(s) = ResumeState::decode(&bytes) {
                    assert_eq!(s.encode(), bytes);
                }
            }
        }
        other => panic!("no replay for fuzz target {other}"),
    }
}

/// Whether `data` decodes as a value of `target` (what a seed must do).
fn decodes(target: &str, data: &[u8]) -> bool {
    match target {
        "tracker_datagram" => Datagram::decode(data).is_ok(),
        "peer_frame" => {
            let mut rest = data;
            while !rest.is_empty() {
                match decode_frame(rest) {
                    Ok(Some((_, used))) => rest = &rest[used..],
                    _ => return false,
                }
            }
            true
        }
        "manifest" => Manifest::decode(data).is_ok(),
        "ticket" => std::str::from_utf8(data).is_ok_and(|s| s.parse::<Ticket>().is_ok()),
        "resume_state" => {
            let mut sealed = data.to_vec();
            sealed.extend_from_slice(blake3::hash(data).as_bytes());
            ResumeState::decode(data).is_ok() || ResumeState::decode(&sealed).is_ok()
        }
        _ => false,
    }
}

/// The seeds decode, and the committed ones are the ones generated here
/// (rewritten with `HAYEDIK_WRITE_FUZZ_SEEDS=1`).
#[test]
fn fuzz_seeds_are_valid_and_committed() {
    let write = std::env::var_os("HAYEDIK_WRITE_FUZZ_SEEDS").is_some();
    for (target, list) in seeds() {
        let dir = corpus().join(target);
        if write {
            std::fs::create_dir_all(&dir).expect("creating the corpus directory");
        }
        for (name, bytes) in list {
            assert!(
                decodes(target, &bytes),
                "{target} seed {name} does not decode"
            );
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::write(&path, &bytes).expect("writing a seed");
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run with HAYEDIK_WRITE_FUZZ_SEEDS=1 to write the seeds",
                    path.display()
                )
            });
            assert_eq!(
                committed,
                bytes,
                "{} is stale; run with HAYEDIK_WRITE_FUZZ_SEEDS=1 to rewrite it",
                path.display()
            );
        }
    }
}

/// Every committed corpus file (seeds, and inputs a fuzzer found) passes the
/// fuzz targets' checks.
#[test]
fn fuzz_corpus_replays() {
    let mut replayed = 0;
    for (target, _) in seeds() {
        let Ok(entries) = std::fs::read_dir(corpus().join(target)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let data = std::fs::read(entry.path()).expect("reading a corpus file");
            replay(target, &data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus under {}", corpus().display());
}
