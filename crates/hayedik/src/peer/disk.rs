//! The disk side of a download: one thread writes every block the sessions
//! receive and hashes each piece as its blocks go by, so that no session
//! waits for the disk per block and writes to the files do not contend.
//! It is the only writer of a download's pieces, so checking a piece's
//! writer and writing it need no lock held across the write.
//!
//! Sessions hand work over in order through a bounded queue, which bounds
//! memory and slows the sessions down only when the disk falls behind. The
//! thread writes a block only while the session that fetched it is the
//! piece's writer ([`super::pieces::Pieces::may_write`]), and a piece
//! becomes held only when the hash of the very bytes it wrote matches the
//! manifest. It reports what it concluded to the session that sent the
//! work ([`DiskReply`]); the piece state it changes through
//! [`SharedPieces`], never through the swarm.
//!
//! Who gives a piece's assignment back: the session, while it still has
//! blocks of the piece to hand over; the thread, once it got the last one
//! (it then verifies, releases or strikes).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::bufpool::BufPool;
use super::content::Content;
use super::fatal::{Fatal, FatalSlot};
use super::pieces::{SharedPieces, Verified};
use crate::storage::{Op, StorageError};

/// Work items waiting for the disk (a 256 KiB block each, mostly) before
/// sessions wait. 4 rather than 8: the same times in the swarm bench
/// (1 -> 1 x0.99, 1 -> 4 x1.01, same run), 1 MiB less memory.
pub const QUEUE_BLOCKS: usize = 4;

/// What the thread tells a session about its pieces.
#[derive(Debug)]
pub enum DiskReply {
    /// Another session's verified copy took the piece over: stop fetching
    /// it (`stream` names the fetch, a session may fetch a piece twice).
    Lost { piece: u32, stream: u64 },
    /// The piece's last block (or its whole copy) was handled: it is held,
    /// or released for another try (and its sender struck).
    Concluded { piece: u32 },
    /// The piece did not verify and its sender is now banned.
    Banned,
    /// Writing failed: the download stops (already recorded).
    Failed(Fatal),
}

/// One fetch of one piece by one session: what the thread needs to write,
/// hash and conclude it. Shared by the session's job and its queued blocks.
#[derive(Debug)]
pub struct PieceStream {
    pub piece: u32,
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
        id: u64,
        stream: u64,
        listed: SocketAddr,
        replies: mpsc::UnboundedSender<DiskReply>,
    ) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            piece,
            id,
            stream,
            listed,
            replies,
            hasher: blake3::Hasher::new(),
            ok: true,
        }))
    }
}

/// Work for the thread.
#[derive(Debug)]
pub enum Work {
    /// A block of a streamed piece: `data` goes at `at` in the content's
    /// byte space; after the `last` one, the piece is concluded.
    Block {
        content: Arc<Content>,
        stream: Arc<Mutex<PieceStream>>,
        at: u64,
        data: Vec<u8>,
        last: bool,
    },
    /// A whole piece already verified in memory (an endgame duplicate):
    /// written unless the piece is held, then it is the piece's copy.
    Whole {
        content: Arc<Content>,
        piece: u32,
        id: u64,
        listed: SocketAddr,
        at: u64,
        data: Vec<u8>,
        replies: mpsc::UnboundedSender<DiskReply>,
        /// The download's leave to hold this copy in memory
        /// ([`super::pieces::MAX_DUPLICATES`]), given back once written.
        permit: OwnedSemaphorePermit,
    },
}

type Queue = Result<mpsc::Sender<Work>, String>;

/// The download's block buffers and its writer thread (started with the
/// first work; it ends once [`Disk::close`] is called or the disk is
/// dropped, after the work queued).
#[derive(Debug)]
pub struct Disk {
    /// Block buffers: filled by the session readers, given back here by the
    /// thread once written.
    pub pool: BufPool,
    pieces: Arc<SharedPieces>,
    fatal: Arc<FatalSlot>,
    queue: Mutex<Option<Queue>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Disk {
    pub fn new(pieces: Arc<SharedPieces>, fatal: Arc<FatalSlot>) -> Self {
        Self {
            pool: BufPool::default(),
            pieces,
            fatal,
            queue: Mutex::new(None),
            thread: Mutex::new(None),
        }
    }

    fn sender(&self) -> Result<mpsc::Sender<Work>, Fatal> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let queue = queue.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE_BLOCKS);
            let thread = Thread {
                pool: self.pool.clone(),
                pieces: self.pieces.clone(),
                fatal: self.fatal.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name("disk writer".into())
                .spawn(move || thread.run(rx));
            match spawned {
                Ok(handle) => {
                    *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
                    Ok(tx)
                }
                Err(e) => Err(format!("could not start: {e}")),
            }
        });
        match queue {
            Ok(tx) => Ok(tx.clone()),
            Err(e) => Err(Fatal::DiskThread(e.clone())),
        }
    }

    /// Queues `work`, waiting while the queue is full. An error means the
    /// thread is gone (it could not start, or it stopped).
    pub async fn write(&self, work: Work) -> Result<(), Fatal> {
        self.sender()?
            .send(work)
            .await
            .map_err(|_| Fatal::DiskThread("stopped".into()))
    }

    /// Lets the thread finish the work queued and end; returns it, to be
    /// joined (blocking) by whoever waits for the download to be over.
    /// Work queued afterwards is refused.
    pub fn close(&self) -> Option<std::thread::JoinHandle<()>> {
        *self.queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(Err("was closed".into()));
        self.thread.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
impl Disk {
    /// Does `work` here and now, as the thread would (unit tests).
    pub fn handle_now(&self, work: Work) {
        let thread = Thread {
            pool: self.pool.clone(),
            pieces: self.pieces.clone(),
            fatal: self.fatal.clone(),
        };
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(work);
        drop(tx);
        thread.run(rx);
    }
}

/// What the thread holds.
struct Thread {
    pool: BufPool,
    pieces: Arc<SharedPieces>,
    fatal: Arc<FatalSlot>,
}

impl Thread {
    fn run(self, mut rx: mpsc::Receiver<Work>) {
        while let Some(work) = rx.blocking_recv() {
            match work {
                Work::Block {
                    content,
                    stream,
                    at,
                    data,
                    last,
                } => {
                    self.block(&content, &stream, at, &data, last);
                    self.pool.give(data);
                }
                Work::Whole {
                    content,
                    piece,
                    id,
                    listed,
                    at,
                    data,
                    replies,
                    permit,
                } => {
                    self.whole(&content, piece, id, listed, at, &data);
                    drop((data, permit));
                    let _ = replies.send(DiskReply::Concluded { piece });
                }
            }
        }
    }

    fn block(
        &self,
        content: &Content,
        stream: &Mutex<PieceStream>,
        at: u64,
        data: &[u8],
        last: bool,
    ) {
        let mut s = stream.lock().unwrap_or_else(|e| e.into_inner());
        let (piece, id) = (s.piece, s.id);
        if s.ok {
            if !self.pieces.lock().may_write(piece, id, false) {
                s.ok = false;
                let stream = s.stream;
                let _ = s.replies.send(DiskReply::Lost { piece, stream });
            } else if let Err(e) = content.storage.write_at(at, data) {
                s.ok = false;
                let fatal = write_failed(content, e);
                self.fatal.fail(fatal.clone());
                let _ = s.replies.send(DiskReply::Failed(fatal));
            } else {
                s.hasher.update(data);
            }
        }
        if !last {
            return;
        }
        self.conclude(content, &s);
        let _ = s.replies.send(DiskReply::Concluded { piece });
    }

    /// After the last block of a piece: verify, then hold or release it.
    fn conclude(&self, content: &Content, s: &PieceStream) {
        let (piece, id) = (s.piece, s.id);
        if !s.ok {
            let mut p = self.pieces.lock();
            p.release(piece);
            p.release_writer(piece, id);
            return;
        }
        let good = Some(s.hasher.finalize().as_bytes()) == content.manifest.piece_hash(piece);
        if !good {
            if self.pieces.bad_piece(piece, id, s.listed) {
                let _ = s.replies.send(DiskReply::Banned);
            }
            return;
        }
        // What is on disk is what we hashed: this stream was its only writer.
        let mark = || content.mark_verified(piece);
        let v = self
            .pieces
            .verified(piece, id, Some(s.listed), Instant::now(), mark);
        if v == Verified::Duplicate {
            tracing::trace!(piece, "duplicate piece (endgame)");
        }
    }

    /// An endgame duplicate, verified in memory: written and held unless
    /// the piece is held already.
    fn whole(
        &self,
        content: &Content,
        piece: u32,
        id: u64,
        listed: SocketAddr,
        at: u64,
        data: &[u8],
    ) {
        {
            let mut p = self.pieces.lock();
            if !p.may_write(piece, id, true) {
                p.release(piece);
                tracing::trace!(piece, "duplicate piece (endgame)");
                return;
            }
        }
        if let Err(e) = content.storage.write_at(at, data) {
            let mut p = self.pieces.lock();
            p.release(piece);
            p.release_writer(piece, id);
            drop(p);
            self.fatal.fail(write_failed(content, e));
            return;
        }
        let mark = || content.mark_verified(piece);
        self.pieces
            .verified(piece, id, Some(listed), Instant::now(), mark);
    }
}

/// The fatal error of a failed write, naming the download's file.
fn write_failed(content: &Content, e: std::io::Error) -> Fatal {
    let path = content
        .download
        .as_ref()
        .map(|d| d.final_path().to_path_buf())
        .unwrap_or_default();
    Fatal::from(StorageError::io(Op::Writing, &path, e))
}
