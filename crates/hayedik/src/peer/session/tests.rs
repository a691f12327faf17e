//! The session's protocol logic, driven without sockets: messages in,
//! commands out, time passed in.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hayedik_proto::manifest::{hash_piece, FileEntry, Manifest};
use hayedik_proto::peer::Message;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::*;
use super::SessionError;
use crate::peer::content::Content;
use crate::peer::disk::{Disk, DiskReply, Work};
use crate::peer::fatal::FatalSlot;
use crate::peer::guard::ServeGuard;
use crate::peer::pieces::SharedPieces;
use crate::peer::pieces::MAX_DUPLICATES;
use crate::storage::{Bitfield, MemoryStorage, PieceLayout, Storage};

/// Two blocks per piece.
const PIECE: u32 = 2 * BLOCK_SIZE;

/// One side of a swarm: its content (held or empty), piece state, disk.
struct Side {
    data: Vec<u8>,
    manifest_bytes: Vec<u8>,
    root: [u8; 32],
    content: Arc<Content>,
    pieces: Arc<SharedPieces>,
    disk: Disk,
    storage: Arc<MemoryStorage>,
}

fn side(pieces: u32, held: bool) -> Side {
    let data: Vec<u8> = (0..pieces * PIECE).map(|i| (i % 251) as u8).collect();
    let manifest = Manifest::new(
        vec![FileEntry::file("f", data.len() as u64, false)],
        PIECE,
        data.chunks(PIECE as usize).map(hash_piece).collect(),
    )
    .unwrap();
    let manifest_bytes = manifest.encode();
    let root = manifest.root();
    let layout = PieceLayout::new(data.len() as u64, u64::from(PIECE)).unwrap();
    let storage = Arc::new(if held {
        MemoryStorage::from_vec(data.clone())
    } else {
        MemoryStorage::from_vec(vec![0; data.len()])
    });
    let shared = Arc::new(SharedPieces::new(Instant::now()));
    let have = if held {
        Bitfield::full(pieces)
    } else {
        Bitfield::new(pieces)
    };
    shared.start(layout.clone(), have, None, Instant::now());
    let content = Arc::new(Content {
        manifest,
        layout: layout.clone(),
        manifest_bytes: manifest_bytes.clone(),
        storage: storage.clone(),
        download: None,
        guard: ServeGuard::new(layout),
    });
    let disk = Disk::new(
        shared.clone(),
        Arc::new(FatalSlot::new(CancellationToken::new())),
    );
    Side {
        data,
        manifest_bytes,
        root,
        content,
        pieces: shared,
        disk,
        storage,
    }
}

/// Everything `storage` holds.
fn contents(storage: &MemoryStorage) -> Vec<u8> {
    let mut all = vec![0; storage.len() as usize];
    storage.read_at(0, &mut all).unwrap();
    all
}

fn addr(n: u8) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([10, 0, 0, n], 7000))
}

/// A session of `side` with peer number `n`, its disk replies, and the
/// content already known (or not).
fn session(
    side: &Side,
    n: u8,
    with_content: bool,
    now: Instant,
) -> (Session, mpsc::UnboundedReceiver<DiskReply>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut s = Session::new(
        side.pieces.clone(),
        side.root,
        Peer {
            id: u64::from(n),
            remote: addr(n),
            listed: addr(n),
        },
        tx,
        rand::rngs::SmallRng::seed_from_u64(u64::from(n)),
        now,
    );
    let content = with_content.then(|| side.content.clone());
    s.start(content, false, now).unwrap();
    (s, rx)
}

fn drain(s: &mut Session) -> Vec<Command> {
    std::iter::from_fn(|| s.poll_command()).collect()
}

fn sent(commands: &[Command]) -> Vec<&Message> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn requests(commands: &[Command]) -> Vec<(u32, u32, u32)> {
    sent(commands)
        .into_iter()
        .filter_map(|m| match m {
            Message::Request { piece, offset, len } => Some((*piece, *offset, *len)),
            _ => None,
        })
        .collect()
}

/// The bytes the remote holds for a request.
fn block(side: &Side, piece: u32, offset: u32, len: u32) -> Message {
    let at = (piece * PIECE + offset) as usize;
    Message::Block {
        piece,
        offset,
        data: side.data[at..at + len as usize].to_vec(),
    }
}

/// Carries out the disk work in `commands` on `side`'s disk, then feeds
/// the disk's replies to the session.
fn run_disk(
    side: &Side,
    s: &mut Session,
    rx: &mut mpsc::UnboundedReceiver<DiskReply>,
    commands: Vec<Command>,
    now: Instant,
) -> Result<Vec<Command>, SessionError> {
    let mut rest = Vec::new();
    for c in commands {
        match c {
            Command::Disk(w) => side.disk.handle_now(w),
            c => rest.push(c),
        }
    }
    while let Ok(reply) = rx.try_recv() {
        s.on_disk(reply, now)?;
    }
    rest.extend(drain(s));
    Ok(rest)
}

#[test]
fn asks_for_the_manifest_and_takes_only_the_ticket_s() {
    let sharer = side(2, true);
    let getter = side(2, false);
    let now = Instant::now();
    let (mut s, _rx) = session(&getter, 1, false, now);
    let c = drain(&mut s);
    assert!(matches!(sent(&c)[..], [Message::ManifestRequest]));
    let mut lie = sharer.manifest_bytes.clone();
    lie[0] ^= 1;
    let e = s
        .on_message(Message::Manifest { bytes: lie }, 0, now)
        .unwrap_err();
    assert!(matches!(e, SessionError::Protocol { .. }), "{e}");

    let (mut s, _rx) = session(&getter, 2, false, now);
    drain(&mut s);
    let bytes = sharer.manifest_bytes.clone();
    s.on_message(Message::Manifest { bytes }, 0, now).unwrap();
    assert!(drain(&mut s)
        .iter()
        .any(|c| matches!(c, Command::OfferManifest { .. })));
}

#[test]
fn a_manifest_nobody_asked_for_is_a_violation() {
    let sharer = side(1, true);
    let now = Instant::now();
    let (mut s, _rx) = session(&sharer, 1, true, now);
    let bytes = sharer.manifest_bytes.clone();
    let e = s.on_message(Message::Manifest { bytes }, 0, now);
    assert!(matches!(e, Err(SessionError::Protocol { .. })));
    // So is a second request for ours.
    let (mut s, _rx) = session(&sharer, 2, true, now);
    s.on_message(Message::ManifestRequest, 0, now).unwrap();
    let e = s.on_message(Message::ManifestRequest, 0, now);
    assert!(matches!(e, Err(SessionError::Protocol { .. })));
}

#[test]
fn serves_held_pieces_in_range_and_rejects_the_rest() {
    let sharer = side(2, true);
    let now = Instant::now();
    let (mut s, _rx) = session(&sharer, 1, true, now);
    let c = drain(&mut s);
    assert!(matches!(sent(&c)[..], [Message::Bitfield { .. }]));
    let ask = |s: &mut Session, piece, offset, len, queued| {
        s.on_message(Message::Request { piece, offset, len }, queued, now)
            .unwrap();
        drain(s)
    };
    let c = ask(&mut s, 1, BLOCK_SIZE, BLOCK_SIZE, 0);
    assert!(
        matches!(c[..], [Command::Serve { piece: 1, offset, at, .. }]
            if offset == BLOCK_SIZE && at == u64::from(PIECE + BLOCK_SIZE))
    );
    for (piece, offset, len) in [
        (2, 0, BLOCK_SIZE),  // no such piece
        (1, PIECE - 10, 11), // past the piece's end
        (0, 0, 0),           // empty
        (0, 0, hayedik_proto::peer::MAX_BLOCK + 1),
    ] {
        let c = ask(&mut s, piece, offset, len, 0);
        assert!(
            matches!(sent(&c)[..], [Message::Reject { .. }]),
            "{piece} {offset} {len}"
        );
    }
    let c = ask(&mut s, 0, 0, BLOCK_SIZE, MAX_REMOTE_QUEUE);
    assert!(
        matches!(sent(&c)[..], [Message::Reject { .. }]),
        "queue full"
    );
    // A getter that holds nothing serves nothing.
    let getter = side(2, false);
    let (mut g, _rx) = session(&getter, 2, true, now);
    drain(&mut g);
    let c = ask(&mut g, 0, 0, BLOCK_SIZE, 0);
    assert!(matches!(sent(&c)[..], [Message::Reject { .. }]));
}

#[test]
fn a_request_flood_from_a_peer_that_never_reads_is_held_back_then_dropped() {
    let sharer = side(1, true);
    let start = Instant::now();
    let (mut s, _rx) = session(&sharer, 1, true, start);
    // The I/O loop reads only while the state wants input; nothing we
    // queue is ever written (the peer does not read).
    let mut unsent = 0;
    let mut read = 0;
    while Session::wants_input(unsent) && read < 1_000_000 {
        let r = Message::Request {
            piece: 7,
            offset: 0,
            len: 1,
        };
        s.on_message(r, 0, start).unwrap();
        read += 1;
        for c in drain(&mut s) {
            if let Command::Send(m) = c {
                let mut b = Vec::new();
                m.encode(&mut b);
                unsent += b.len();
            }
        }
    }
    assert!(unsent <= MAX_UNSENT + 64, "memory stays bounded: {unsent}");
    assert!(read < 20_000, "reading stopped after {read} requests");
    s.on_tick(unsent, start + Duration::from_secs(1)).unwrap();
    let later = start + WRITE_STALL_TIMEOUT + Duration::from_secs(2);
    let e = s.on_tick(unsent, later).unwrap_err();
    assert!(e.to_string().contains("unread"), "{e}");
}

#[test]
fn fetches_streams_to_disk_and_verifies_every_piece() {
    let sharer = side(3, true);
    let getter = side(3, false);
    let now = Instant::now();
    let (mut s, mut rx) = session(&getter, 1, true, now);
    drain(&mut s);
    let bits = sharer.pieces.lock().have().as_bytes().to_vec();
    s.on_message(Message::Bitfield { bits }, 0, now).unwrap();
    let asked = requests(&drain(&mut s));
    assert_eq!(asked.len(), 6, "every block of every piece: {asked:?}");
    assert_eq!(s.in_flight(), 6);
    for (piece, offset, len) in asked {
        s.on_message(block(&sharer, piece, offset, len), 0, now)
            .unwrap();
        let c = drain(&mut s);
        run_disk(&getter, &mut s, &mut rx, c, now).unwrap();
    }
    assert!(getter.pieces.lock().is_complete());
    assert_eq!(contents(&getter.storage), sharer.data);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(
        getter.pieces.lock().from_counts().get(&addr(1)),
        Some(&u64::from(3 * PIECE))
    );
}

#[test]
fn bad_pieces_cost_strikes_then_a_ban() {
    let sharer = side(2, true);
    let getter = side(2, false);
    let now = Instant::now();
    let (mut s, mut rx) = session(&getter, 1, true, now);
    drain(&mut s);
    s.on_message(Message::Bitfield { bits: vec![0xC0] }, 0, now)
        .unwrap();
    let asked = requests(&drain(&mut s));
    let mut ended = None;
    for (piece, offset, len) in asked {
        let Message::Block { mut data, .. } = block(&sharer, piece, offset, len) else {
            unreachable!()
        };
        data[0] ^= 0xFF;
        let m = Message::Block {
            piece,
            offset,
            data,
        };
        s.on_message(m, 0, now).unwrap();
        let c = drain(&mut s);
        if let Err(e) = run_disk(&getter, &mut s, &mut rx, c, now) {
            ended = Some(e);
            break;
        }
    }
    assert!(
        matches!(ended, Some(SessionError::Banned { .. })),
        "{ended:?}"
    );
    assert!(getter.pieces.lock().is_banned(&addr(1)));
    assert!(sent(&drain(&mut s))
        .iter()
        .any(|m| matches!(m, Message::Goodbye { .. })));
    assert_eq!(getter.pieces.lock().remaining(), 2, "nothing held");
    s.release_all();
    assert_eq!(getter.pieces.lock().assigned(0), 0);
    assert_eq!(getter.pieces.lock().assigned(1), 0);
}

#[test]
fn blocks_nobody_asked_for_are_violations() {
    let sharer = side(1, true);
    let getter = side(1, false);
    let now = Instant::now();
    let (mut s, _rx) = session(&getter, 1, true, now);
    let e = s.on_message(block(&sharer, 0, 0, BLOCK_SIZE), 0, now);
    assert!(matches!(e, Err(SessionError::Protocol { .. })));
    // Once something was asked: tolerated a little, then dropped.
    let (mut s, _rx) = session(&getter, 2, true, now);
    s.on_message(Message::Bitfield { bits: vec![0x80] }, 0, now)
        .unwrap();
    drain(&mut s);
    let junk = || Message::Block {
        piece: 0,
        offset: 1,
        data: vec![0; 1],
    };
    for _ in 0..MAX_JUNK_BLOCKS {
        s.on_message(junk(), 0, now).unwrap();
    }
    let e = s.on_message(junk(), 0, now);
    assert!(matches!(e, Err(SessionError::Protocol { .. })), "{e:?}");
}

#[test]
fn a_refused_piece_is_not_asked_again_and_goes_back_to_the_picker() {
    let getter = side(1, false);
    let now = Instant::now();
    let (mut s, _rx) = session(&getter, 1, true, now);
    s.on_message(Message::Bitfield { bits: vec![0x80] }, 0, now)
        .unwrap();
    assert_eq!(requests(&drain(&mut s)).len(), 2);
    assert_eq!(getter.pieces.lock().assigned(0), 1);
    let reject = Message::Reject {
        piece: 0,
        offset: 0,
        len: BLOCK_SIZE,
    };
    s.on_message(reject, 0, now).unwrap();
    assert!(requests(&drain(&mut s)).is_empty(), "not asked again");
    assert_eq!(
        getter.pieces.lock().assigned(0),
        0,
        "another peer may fetch it"
    );
}

#[test]
fn a_peer_that_owes_blocks_and_sends_none_is_stalled() {
    let getter = side(1, false);
    let start = Instant::now();
    let (mut s, _rx) = session(&getter, 1, true, start);
    s.on_message(Message::Bitfield { bits: vec![0x80] }, 0, start)
        .unwrap();
    drain(&mut s);
    s.on_tick(0, start + STALL_TIMEOUT - Duration::from_secs(1))
        .unwrap();
    let e = s.on_tick(0, start + STALL_TIMEOUT + Duration::from_secs(1));
    assert!(matches!(e, Err(SessionError::Stalled { .. })), "{e:?}");
}

#[test]
fn an_idle_session_sends_keep_alives() {
    let sharer = side(1, true);
    let start = Instant::now();
    let (mut s, _rx) = session(&sharer, 1, true, start);
    drain(&mut s);
    s.on_tick(0, start + Duration::from_secs(5)).unwrap();
    assert!(drain(&mut s).is_empty());
    s.on_tick(0, start + KEEPALIVE_EVERY + Duration::from_secs(1))
        .unwrap();
    assert!(matches!(sent(&drain(&mut s))[..], [Message::KeepAlive]));
}

#[test]
fn endgame_the_first_verified_copy_wins_and_the_other_is_cancelled() {
    let sharer = side(1, true);
    let getter = side(1, false);
    let now = Instant::now();
    let (mut a, mut rx_a) = session(&getter, 1, true, now);
    let (mut b, mut rx_b) = session(&getter, 2, true, now);
    for s in [&mut a, &mut b] {
        s.on_message(Message::Bitfield { bits: vec![0x80] }, 0, now)
            .unwrap();
    }
    let asked_a = requests(&drain(&mut a));
    let asked_b = requests(&drain(&mut b));
    assert_eq!(
        (asked_a.len(), asked_b.len()),
        (2, 2),
        "b duplicates in endgame"
    );
    assert_eq!(getter.pieces.lock().assigned(0), 2);
    // a receives its first block (written: a is the piece's writer).
    let (p, o, l) = asked_a[0];
    a.on_message(block(&sharer, p, o, l), 0, now).unwrap();
    let c = drain(&mut a);
    run_disk(&getter, &mut a, &mut rx_a, c, now).unwrap();
    // b receives the whole piece first: its copy is written and held.
    for (p, o, l) in asked_b {
        b.on_message(block(&sharer, p, o, l), 0, now).unwrap();
        let c = drain(&mut b);
        run_disk(&getter, &mut b, &mut rx_b, c, now).unwrap();
    }
    assert!(getter.pieces.lock().is_complete());
    assert_eq!(contents(&getter.storage), sharer.data);
    // a hears of it: cancels what it still waits for.
    a.on_local_have(0, now);
    let c = drain(&mut a);
    assert!(sent(&c)
        .iter()
        .any(|m| matches!(m, Message::Cancel { piece: 0, .. })));
    assert_eq!(a.in_flight(), 0);
    // Its last block may still arrive: tolerated, not written.
    let (p, o, l) = asked_a[1];
    a.on_message(block(&sharer, p, o, l), 0, now).unwrap();
    assert_eq!(getter.pieces.lock().assigned(0), 0);
    assert_eq!(contents(&getter.storage), sharer.data);
}

#[test]
fn late_bitfields_and_haves_count_once_the_content_is_known() {
    let getter = side(2, false);
    let now = Instant::now();
    let (mut s, _rx) = session(&getter, 1, false, now);
    drain(&mut s);
    s.on_message(Message::Have { piece: 1 }, 0, now).unwrap();
    assert!(requests(&drain(&mut s)).is_empty());
    s.on_content(getter.content.clone(), now).unwrap();
    assert_eq!(
        requests(&drain(&mut s)),
        vec![(1, 0, BLOCK_SIZE), (1, BLOCK_SIZE, BLOCK_SIZE)]
    );
    let e = s.on_message(Message::Have { piece: 9 }, 0, now);
    assert!(
        matches!(e, Err(SessionError::Protocol { .. })),
        "out of range"
    );
    let e = s.on_message(Message::Bitfield { bits: vec![0xFF] }, 0, now);
    assert!(
        matches!(e, Err(SessionError::Protocol { .. })),
        "spare bits set"
    );
}

#[test]
fn endgame_copies_waiting_for_the_disk_count_toward_the_duplicate_bound() {
    let sharer = side(4, true);
    let getter = side(4, false);
    let now = Instant::now();
    let (mut a, _rx_a) = session(&getter, 1, true, now);
    let (mut b, mut rx_b) = session(&getter, 2, true, now);
    let all = Message::Bitfield { bits: vec![0xF0] };
    a.on_message(all.clone(), 0, now).unwrap();
    assert_eq!(requests(&drain(&mut a)).len(), 8, "a fetches every piece");
    b.on_message(all, 0, now).unwrap();
    let asked = requests(&drain(&mut b));
    let pieces: std::collections::BTreeSet<u32> = asked.iter().map(|r| r.0).collect();
    assert_eq!(
        pieces.len(),
        MAX_DUPLICATES,
        "b duplicates in endgame: {asked:?}"
    );
    // b's copies verify; the disk thread has not taken them yet.
    let mut held_back = Vec::new();
    for (p, o, l) in asked {
        b.on_message(block(&sharer, p, o, l), 0, now).unwrap();
        held_back.extend(drain(&mut b));
    }
    let wholes = held_back
        .iter()
        .filter(|c| matches!(c, Command::Disk(Work::Whole { .. })))
        .count();
    assert_eq!(wholes, MAX_DUPLICATES);
    assert!(
        requests(&held_back).is_empty(),
        "no third copy while two wait in memory"
    );
    // Once the disk thread is done with them, b goes on.
    let rest = run_disk(&getter, &mut b, &mut rx_b, held_back, now).unwrap();
    assert!(!requests(&rest).is_empty(), "{rest:?}");
}

#[test]
fn endgame_duplicates_are_bounded_per_download_not_per_session() {
    let getter = side(4, false);
    let now = Instant::now();
    let (mut a, _rx_a) = session(&getter, 1, true, now);
    let (mut b, _rx_b) = session(&getter, 2, true, now);
    let (mut c, _rx_c) = session(&getter, 3, true, now);
    let all = Message::Bitfield { bits: vec![0xF0] };
    a.on_message(all.clone(), 0, now).unwrap();
    assert_eq!(requests(&drain(&mut a)).len(), 8, "a fetches every piece");
    b.on_message(all.clone(), 0, now).unwrap();
    c.on_message(all, 0, now).unwrap();
    let pieces = |asked: Vec<(u32, u32, u32)>| {
        asked
            .into_iter()
            .map(|r| r.0)
            .collect::<std::collections::BTreeSet<u32>>()
    };
    let (from_b, from_c) = (
        pieces(requests(&drain(&mut b))),
        pieces(requests(&drain(&mut c))),
    );
    assert_eq!(
        from_b.len() + from_c.len(),
        MAX_DUPLICATES,
        "whole copies in memory across the download: b {from_b:?}, c {from_c:?}"
    );
    // b gives its copies up (its peer left): c may take their place.
    b.release_all();
    c.on_tick(0, now + Duration::from_secs(1)).unwrap();
    let more = pieces(requests(&drain(&mut c)));
    assert_eq!(
        from_c.len() + more.len(),
        MAX_DUPLICATES,
        "c after b left: {from_c:?} then {more:?}"
    );
}
