//! The disk side of a download: one thread writes the blocks every session
//! receives and hashes each piece as its blocks go by, so that no session
//! waits for the disk per block and writes to the file do not contend.
//!
//! Sessions hand blocks over in order through a bounded queue, which bounds
//! memory and slows the sessions down only when the disk falls behind. The
//! thread keeps the invariants of [`Swarm::write_piece_data`]: it writes a
//! piece only while the session that fetched it is the piece's writer, and
//! the piece is marked verified only when the hash of the very bytes it
//! wrote matches the manifest.
//!
//! Who gives a piece's picker assignment back: the session, while it still
//! has blocks of the piece to hand over; the thread, once it got the last
//! one (it then completes, releases or strikes).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use super::swarm::{Content, Swarm};
use super::wire::BufPool;

/// Blocks waiting for the disk (256 KiB each) before sessions wait. 4
/// rather than 8: the same times in the swarm bench (1 -> 1 x0.99, 1 -> 4
/// x1.01, same run), 1 MiB less memory.
pub const QUEUE_BLOCKS: usize = 4;

/// What the thread tells a session about its pieces.
#[derive(Debug)]
pub enum DiskReply {
    /// Another session's verified copy took the piece over: stop fetching
    /// it (`stream` names the fetch, a session may fetch a piece twice).
    Lost { piece: u32, stream: u64 },
    /// The piece's last block was handled: it is verified, or released
    /// for another try (and its sender struck).
    Concluded { piece: u32 },
    /// The piece did not verify and its sender is now banned.
    Banned,
    /// Writing failed: the download stops (already recorded in the swarm).
    Failed(String),
}

/// One fetch of one piece by one session: what the thread needs to write,
/// hash and conclude it. Shared by the session's job and its queued blocks.
#[derive(Debug)]
pub struct PieceStream {
    pub piece: u32,
    pub len: u32,
    /// The session, as the piece's writer.
    pub id: u64,
    /// Distinguishes this fetch in [`DiskReply::Lost`].
    pub stream: u64,
    /// The peer's listed address: credited, or struck for bad data.
    pub listed: SocketAddr,
    pub replies: mpsc::UnboundedSender<DiskReply>,
    hasher: blake3::Hasher,
    /// False once a write was refused or failed: nothing more is written.
    ok: bool,
}

impl PieceStream {
    pub fn new(
        piece: u32,
        len: u32,
        id: u64,
        stream: u64,
        listed: SocketAddr,
        replies: mpsc::UnboundedSender<DiskReply>,
    ) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            piece,
            len,
            id,
            stream,
            listed,
            replies,
            hasher: blake3::Hasher::new(),
            ok: true,
        }))
    }
}

/// A block for the thread: `data` goes at `at` in the content's byte space.
pub struct Block {
    pub swarm: Arc<Swarm>,
    pub content: Arc<Content>,
    pub stream: Arc<Mutex<PieceStream>>,
    pub at: u64,
    pub data: Vec<u8>,
    /// The piece's last block: the thread concludes the piece after it.
    pub last: bool,
}

/// The download's block buffers and its writer thread (started when the
/// first block arrives; it ends once the swarm and its queue are gone).
#[derive(Debug, Default)]
pub struct Disk {
    /// Block buffers: filled by the session readers, given back here by the
    /// thread once written.
    pub pool: BufPool,
    queue: OnceLock<Result<mpsc::Sender<Block>, String>>,
}

impl Disk {
    /// Queues `block`, waiting while the queue is full. An error means the
    /// thread is gone (it could not start, or it stopped).
    pub async fn write(&self, block: Block) -> Result<(), String> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE_BLOCKS);
            let pool = self.pool.clone();
            std::thread::Builder::new()
                .name("disk writer".into())
                .spawn(move || run(rx, pool))
                .map(|_| tx)
                .map_err(|e| format!("cannot start the disk writer thread: {e}"))
        });
        match queue {
            Ok(tx) => tx
                .send(block)
                .await
                .map_err(|_| "the disk writer thread stopped".to_string()),
            Err(e) => Err(e.clone()),
        }
    }
}

fn run(mut rx: mpsc::Receiver<Block>, pool: BufPool) {
    while let Some(mut block) = rx.blocking_recv() {
        handle(&block);
        pool.give(std::mem::take(&mut block.data));
    }
}

fn handle(b: &Block) {
    let mut s = b.stream.lock().unwrap_or_else(|e| e.into_inner());
    let (piece, id) = (s.piece, s.id);
    if s.ok {
        let storage = b.content.storage.as_ref();
        match b
            .swarm
            .write_piece_data(piece, id, false, storage, b.at, &b.data)
        {
            Ok(true) => {
                s.hasher.update(&b.data);
            }
            Ok(false) => {
                s.ok = false;
                let stream = s.stream;
                let _ = s.replies.send(DiskReply::Lost { piece, stream });
            }
            Err(e) => {
                s.ok = false;
                let msg = storage_message(&b.content, e);
                b.swarm.fail(msg.clone());
                let _ = s.replies.send(DiskReply::Failed(msg));
            }
        }
    }
    if !b.last {
        return;
    }
    conclude(b, &s);
    let _ = s.replies.send(DiskReply::Concluded { piece });
}

/// After the last block of a piece: verify, then mark or release it.
fn conclude(b: &Block, s: &PieceStream) {
    let (piece, id) = (s.piece, s.id);
    if !s.ok {
        b.swarm.with_picker(|p| p.release(piece as usize));
        return;
    }
    let good = Some(s.hasher.finalize().as_bytes()) == b.content.manifest.piece_hash(piece);
    if !good {
        b.swarm.release_writer(piece, id);
        if b.swarm.bad_piece(piece, s.listed) {
            let _ = s.replies.send(DiskReply::Banned);
        }
        return;
    }
    // What is on disk is what we hashed: this stream was the only writer.
    if b.swarm.finalize(piece, id) {
        b.swarm
            .piece_verified(piece, u64::from(s.len), Some(s.listed));
    } else {
        tracing::trace!(piece, "duplicate piece (endgame)");
        b.swarm.with_picker(|p| p.release(piece as usize));
    }
}

/// The message of a failed write, naming the part file when there is one.
pub fn storage_message(content: &Content, e: std::io::Error) -> String {
    match &content.download {
        Some(d) => crate::storage::StorageError::io(crate::storage::Op::Writing, d.final_path(), e)
            .to_string(),
        None => e.to_string(),
    }
}
