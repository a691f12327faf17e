//! The writer task of a session: sends the frames the session queues and
//! serves the blocks the remote asked for, re-checking each piece against
//! the manifest on disk before it leaves ([`super::guard`]).

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hayedik_proto::peer::{encode_block_header, Message, BLOCK_HEADER_LEN};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::content::Content;
use super::guard::Check;
use super::pieces::SharedPieces;
use super::rate::RateLimit;
use super::wire::FrameWriter;

/// What the writer task sends.
#[derive(Debug)]
pub enum Out {
    /// An encoded frame.
    Frame(Vec<u8>),
    /// A block to read from storage at `at` and send.
    Serve {
        piece: u32,
        offset: u32,
        len: u32,
        at: u64,
    },
}

/// Bytes of frames a session has queued for its writer and the writer has
/// not written yet. The session stops reading while there are too many
/// (`session::state::MAX_UNSENT`): a peer that asks and never reads the
/// answers is held back by TCP instead of growing our memory.
#[derive(Debug, Default)]
pub struct OutPending {
    bytes: AtomicUsize,
    /// Woken each time the writer has written queued frames.
    drained: tokio::sync::Notify,
}

impl OutPending {
    pub fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn written(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.drained.notify_one();
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Resolves once the writer has written something since the last call.
    pub async fn drained(&self) {
        self.drained.notified().await
    }
}

/// What a session's loop and its writer share.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Frame bytes queued and not written yet.
    pub pending: OutPending,
    /// Blocks the remote asked for that the writer has not sent yet.
    pub queued: AtomicUsize,
    /// Blocks the remote withdrew its request for, while still queued.
    cancelled: Mutex<HashSet<(u32, u32)>>,
}

/// Cancels remembered at once: bounded by the requests a remote may have
/// queued (a cancel for anything else is dropped).
const MAX_CANCELLED: usize = 256;

impl Outbox {
    fn cancelled(&self) -> std::sync::MutexGuard<'_, HashSet<(u32, u32)>> {
        self.cancelled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remote withdrew its request for the block at `(piece, offset)`.
    pub fn cancel(&self, piece: u32, offset: u32) {
        let mut c = self.cancelled();
        if c.len() < MAX_CANCELLED {
            c.insert((piece, offset));
        }
    }

    /// The remote asks for the block again: an older cancel no longer
    /// applies.
    pub fn uncancel(&self, piece: u32, offset: u32) {
        self.cancelled().remove(&(piece, offset));
    }

    /// Whether the block's request was withdrawn (forgetting the cancel:
    /// it is used up).
    fn take_cancel(&self, piece: u32, offset: u32) -> bool {
        self.cancelled().remove(&(piece, offset))
    }
}

/// What the writer needs besides its socket.
#[derive(Debug)]
pub struct ServeCtx {
    /// To stop serving a piece that no longer matches on disk.
    pub pieces: Arc<SharedPieces>,
    pub content: tokio::sync::watch::Receiver<Option<Arc<Content>>>,
    pub up_limit: Arc<RateLimit>,
    /// Bytes of blocks sent, for the swarm's totals.
    pub uploaded: Arc<AtomicU64>,
}

/// Blocks read from storage in one hand-off to the blocking pool. 2 was
/// faster in the swarm bench (1 -> 4 x0.85 against x0.93 with 1, same run)
/// but made a capped sharer upload more with four getters (1.6 to 2.2
/// copies in `peers_four_getters_trade_pieces`, against 1.6 to 1.8): 1,
/// which still reads one block ahead while the previous one is sent.
pub const SERVE_BATCH: usize = 1;

/// Requested blocks to read and send together.
#[derive(Clone, Copy)]
struct Serve {
    piece: u32,
    offset: u32,
    len: u32,
    at: u64,
    /// Cleared when its piece failed its re-check: a Reject goes out
    /// instead.
    servable: bool,
}

/// Sends frames and serves blocks until the sender side is dropped or the
/// channel fails.
///
/// Blocks whose pages are in memory are read right here, [`CHUNK`] bytes
/// at a time, each chunk encrypted and sent before the next is read
/// ([`start_cached`], [`send_chunked`]): the usual case for a sharer, which
/// hashed its file a moment ago, and the cheapest (no hand-off to another
/// thread and back, one small buffer per session). A piece due for its
/// re-check is checked on the blocking pool first, then sent the same way.
/// Blocks whose pages are not in memory are read whole, header and data
/// together, into a reused buffer on the blocking pool, and from the second
/// such batch in a row the next one is read there while the previous one
/// is encrypted and sent: the disk and the socket work at the same time.
/// rustls cuts every write into full 16 KiB records. Frames queued meanwhile go out first,
/// several in one write. (Version 1 sent file-backed blocks with
/// `sendfile`; the encrypted channel cannot: the bytes must pass through
/// user space to be encrypted.)
pub async fn write_loop(
    writer: FrameWriter,
    mut rx: mpsc::UnboundedReceiver<Out>,
    ctx: ServeCtx,
    outbox: Arc<Outbox>,
) {
    let pending = &outbox.pending;
    let mut wr = writer.into_inner();
    let mut frames: Vec<u8> = Vec::new();
    // Batch buffers, reused: one, or while blocks come from the disk, one
    // being sent and one being filled.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut reading: Option<tokio::task::JoinHandle<Batch>> = None;
    // Batches in a row that had to wait for the disk (not for a re-check):
    // from two on, the next one is read ahead, in a second buffer, while
    // the previous one is sent. A page missing now and then does not.
    let mut disk_misses = 0u8;
    let mut open = true;
    while open || reading.is_some() {
        let mut serves = Vec::new();
        while open && serves.len() < SERVE_BATCH {
            let out = if serves.is_empty() && reading.is_none() && frames.is_empty() {
                // Going idle: what the encrypted channel still holds goes
                // out first. A write that finds the socket full returns
                // once its bytes are taken, with the end of them still in
                // the TLS layer's buffer; unflushed, a peer would wait for
                // the end of a block until our next write.
                if wr.flush().await.is_err() {
                    return;
                }
                rx.recv().await
            } else {
                match rx.try_recv() {
                    Ok(out) => Some(out),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            match out {
                None => open = false,
                Some(Out::Frame(bytes)) => frames.extend_from_slice(&bytes),
                Some(Out::Serve {
                    piece,
                    offset,
                    len,
                    at,
                }) => {
                    outbox.queued.fetch_sub(1, Ordering::Relaxed);
                    let skip = outbox.take_cancel(piece, offset);
                    if !skip {
                        serves.push(Serve {
                            piece,
                            offset,
                            len,
                            at,
                            servable: true,
                        });
                    }
                }
            }
        }
        let content = ctx.content.borrow().clone();
        let next = match content {
            Some(content) if !serves.is_empty() => {
                if spare.is_empty() && disk_misses < 2 {
                    // The one buffer is being filled from the disk (a
                    // miss not yet read ahead): send it and reuse it
                    // rather than take a second one.
                    if let Some(read) = reading.take() {
                        let Ok(buf) = send_read(read, &mut wr, &ctx, &outbox).await else {
                            return;
                        };
                        spare.push(buf);
                    }
                }
                let buf = spare.pop().unwrap_or_default();
                // Blocks already in memory are read here: no hand-off to
                // another thread and back, and no buffer read ahead.
                match start_cached(content, serves, buf) {
                    Ok(chunked) => {
                        disk_misses = 0;
                        Some(Next::Chunked(chunked))
                    }
                    Err((content, serves, buf, Miss::Recheck)) => {
                        disk_misses = 0;
                        let pieces = ctx.pieces.clone();
                        let checking = crate::spawn::spawn_blocking("check pieces", move || {
                            check_serves(&pieces, content, serves)
                        });
                        Some(Next::Checking(checking, buf))
                    }
                    Err((content, serves, buf, Miss::Disk)) => {
                        disk_misses = disk_misses.saturating_add(1);
                        let pieces = ctx.pieces.clone();
                        Some(Next::Reading(crate::spawn::spawn_blocking(
                            "read blocks",
                            move || read_batch(&pieces, &content, &serves, buf),
                        )))
                    }
                }
            }
            _ => None,
        };
        if !frames.is_empty() {
            if wr.write_all(&frames).await.is_err() {
                return;
            }
            pending.written(frames.len());
            frames.clear();
        }
        if let Some(read) = reading.take() {
            let Ok(buf) = send_read(read, &mut wr, &ctx, &outbox).await else {
                return;
            };
            spare.push(buf);
        }
        match next {
            Some(Next::Chunked(chunked)) => {
                let Ok(buf) = send_chunked(&mut wr, chunked, &ctx, &outbox).await else {
                    return;
                };
                spare.push(buf);
            }
            Some(Next::Checking(checking, buf)) => {
                let Ok((content, serves)) = checking.await else {
                    return;
                };
                let chunked = Chunked {
                    content,
                    serves,
                    buf,
                    started: false,
                };
                let Ok(buf) = send_chunked(&mut wr, chunked, &ctx, &outbox).await else {
                    return;
                };
                spare.push(buf);
            }
            Some(Next::Reading(read)) => reading = Some(read),
            None => {}
        }
        if reading.is_none() && disk_misses < 2 {
            // Nothing read ahead: one buffer is all the next batch needs.
            spare.truncate(1);
        }
    }
    let _ = wr.shutdown().await;
}

/// The blocks to send next: in memory (the first chunk read already),
/// being re-checked on the blocking pool (then sent a chunk at a time, in
/// the buffer given), or being read there (sent after the batch before
/// them).
enum Next {
    Chunked(Chunked),
    Checking(tokio::task::JoinHandle<(Arc<Content>, Vec<Serve>)>, Vec<u8>),
    Reading(tokio::task::JoinHandle<Batch>),
}

/// Waits for a batch being read on the blocking pool, then sends it as
/// [`send_batch`] does.
async fn send_read(
    read: tokio::task::JoinHandle<Batch>,
    wr: &mut super::wire::WriteHalf,
    ctx: &ServeCtx,
    outbox: &Outbox,
) -> io::Result<Vec<u8>> {
    let batch = read.await.map_err(io::Error::other)?;
    send_batch(wr, batch, ctx, outbox).await
}

/// Sends `batch`'s frames (but the blocks cancelled meanwhile) and gives
/// its buffer back for the next one.
async fn send_batch(
    wr: &mut super::wire::WriteHalf,
    batch: Batch,
    ctx: &ServeCtx,
    outbox: &Outbox,
) -> io::Result<Vec<u8>> {
    for part in &batch.parts {
        let mut data = 0;
        if let Some((piece, offset, len)) = part.block {
            // Cancelled while it was read: not sent after all.
            let skip = outbox.take_cancel(piece, offset);
            if skip {
                continue;
            }
            data = len;
            ctx.up_limit.acquire(len as usize).await;
        }
        let frame = batch.buf.get(part.range.clone()).unwrap_or_default();
        wr.write_all(frame).await?;
        ctx.uploaded.fetch_add(u64::from(data), Ordering::Relaxed);
    }
    Ok(batch.buf)
}

/// Frames ready to send, one after the other in `buf`.
struct Batch {
    buf: Vec<u8>,
    parts: Vec<Part>,
}

/// One frame of a [`Batch`]: a block (piece, offset, length) or a Reject.
struct Part {
    range: std::ops::Range<usize>,
    block: Option<(u32, u32, u32)>,
}

/// Bytes of a block read and sent at once when its pages are in memory:
/// rustls' own limit on the records it holds ahead of the socket, so a
/// chunk is encrypted and written in one go. A session's buffer stays this
/// small: a quarter of a 256 KiB block.
pub const CHUNK: usize = 64 << 10;

/// Blocks to send a chunk at a time ([`send_chunked`]).
struct Chunked {
    content: Arc<Content>,
    serves: Vec<Serve>,
    buf: Vec<u8>,
    /// `buf` holds the first block's header and first chunk already.
    started: bool,
}

/// The length of the chunk of a `len`-byte block that starts `done` bytes
/// into it.
fn chunk_len(len: u32, done: usize) -> usize {
    (len as usize).saturating_sub(done).min(CHUNK)
}

/// Starts sending `serves` from memory: only if no piece is due for a
/// re-check ([`super::guard::ServeGuard::is_fresh`]) and the first chunk's
/// bytes are in memory ([`crate::storage::Storage::read_at_cached`]).
/// Otherwise everything comes back, with what stopped it. A buffer grown
/// for a whole block (by [`read_batch`]) is let go here.
#[allow(clippy::type_complexity)]
fn start_cached(
    content: Arc<Content>,
    serves: Vec<Serve>,
    mut buf: Vec<u8>,
) -> Result<Chunked, (Arc<Content>, Vec<Serve>, Vec<u8>, Miss)> {
    if buf.len() > BLOCK_HEADER_LEN + CHUNK {
        buf = Vec::new();
    }
    if serves.iter().any(|s| !content.guard.is_fresh(s.piece)) {
        return Err((content, serves, buf, Miss::Recheck));
    }
    let Some(first) = serves.first() else {
        return Err((content, serves, buf, Miss::Disk));
    };
    let need = BLOCK_HEADER_LEN + chunk_len(first.len, 0);
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let (head, body) = buf[..need].split_at_mut(BLOCK_HEADER_LEN);
    if !content.storage.read_at_cached(first.at, body) {
        return Err((content, serves, buf, Miss::Disk));
    }
    head.copy_from_slice(&encode_block_header(first.piece, first.offset, first.len));
    Ok(Chunked {
        content,
        serves,
        buf,
        started: true,
    })
}

/// Re-checks the pieces of `serves` (blocking: it may stat a file and hash
/// a piece), clearing `servable` where one no longer matches.
fn check_serves(
    pieces: &SharedPieces,
    content: Arc<Content>,
    mut serves: Vec<Serve>,
) -> (Arc<Content>, Vec<Serve>) {
    let mut good = None;
    for serve in &mut serves {
        serve.servable = servable(pieces, &content, serve, &mut good);
    }
    (content, serves)
}

/// Whether `serve`'s piece may be served, re-checking it on disk if it is
/// due (blocking). `good` is the piece last found servable: checked once
/// per batch.
fn servable(
    pieces: &SharedPieces,
    content: &Content,
    serve: &Serve,
    good: &mut Option<u32>,
) -> bool {
    let piece = serve.piece;
    let ok = *good == Some(piece)
        || content.guard.is_fresh(piece)
        || matches!(
            content.guard.check(
                piece,
                &content.manifest,
                content.storage.as_ref(),
                serve.at - u64::from(serve.offset)
            ),
            Check::Good
        );
    if !ok {
        content.piece_lost(pieces, piece);
    }
    *good = ok.then_some(piece);
    ok
}

/// After a read of `serve` failed (blocking): most likely its file changed
/// or got shorter under us. Its piece is checked again at once, which
/// stats the file (telling the user if it changed) and stops serving the
/// piece if it no longer matches.
fn read_failed(pieces: &SharedPieces, content: &Content, serve: Serve) {
    content.guard.suspect(serve.piece);
    servable(pieces, content, &serve, &mut None);
}

/// Sends `chunked`'s blocks a chunk at a time, each read from memory, or
/// on the blocking pool if its pages are not there; gives the buffer back.
/// A block cancelled meanwhile is not sent; a block whose piece failed its
/// re-check, or whose first chunk cannot be read, is rejected. A read that
/// fails once a block's header is out ends the session (the remote waits
/// for bytes we cannot send, and asks another peer once we are gone): the
/// file changed under us since its piece was checked.
async fn send_chunked(
    wr: &mut super::wire::WriteHalf,
    chunked: Chunked,
    ctx: &ServeCtx,
    outbox: &Outbox,
) -> io::Result<Vec<u8>> {
    let Chunked {
        content,
        serves,
        mut buf,
        mut started,
    } = chunked;
    for serve in &serves {
        let Serve {
            piece,
            offset,
            len,
            at,
            servable,
        } = *serve;
        if outbox.take_cancel(piece, offset) {
            started = false;
            continue;
        }
        if !servable {
            send_reject(wr, piece, offset, len).await?;
            continue;
        }
        let mut done = 0;
        while done < len as usize {
            let n = chunk_len(len, done);
            let head = if done == 0 { BLOCK_HEADER_LEN } else { 0 };
            if !std::mem::take(&mut started) {
                if buf.len() < head + n {
                    buf.resize(head + n, 0);
                }
                let read;
                (buf, read) = read_chunk(&content, at + done as u64, head..head + n, buf).await?;
                if let Err(e) = read {
                    tracing::warn!(piece, "cannot read a piece to serve: {e}");
                    let (pieces, content, serve) = (ctx.pieces.clone(), content.clone(), *serve);
                    crate::spawn::spawn_blocking("check pieces", move || {
                        read_failed(&pieces, &content, serve)
                    })
                    .await
                    .map_err(io::Error::other)?;
                    if done > 0 {
                        return Err(e);
                    }
                    send_reject(wr, piece, offset, len).await?;
                    break;
                }
                if done == 0 {
                    buf[..head].copy_from_slice(&encode_block_header(piece, offset, len));
                }
            }
            if done == 0 {
                ctx.up_limit.acquire(len as usize).await;
            }
            wr.write_all(&buf[..head + n]).await?;
            done += n;
            if done == len as usize {
                ctx.uploaded.fetch_add(u64::from(len), Ordering::Relaxed);
            }
        }
    }
    Ok(buf)
}

/// Tells the remote that the block it asked for will not come.
async fn send_reject(
    wr: &mut super::wire::WriteHalf,
    piece: u32,
    offset: u32,
    len: u32,
) -> io::Result<()> {
    let mut frame = Vec::new();
    Message::Reject { piece, offset, len }.encode(&mut frame);
    wr.write_all(&frame).await
}

/// Fills `buf[range]` with the bytes at `at`: from memory if they are
/// there, else on the blocking pool. The buffer comes back with how the
/// read went; an error of its own only if the blocking pool failed.
async fn read_chunk(
    content: &Arc<Content>,
    at: u64,
    range: std::ops::Range<usize>,
    mut buf: Vec<u8>,
) -> io::Result<(Vec<u8>, io::Result<()>)> {
    let Some(body) = buf.get_mut(range.clone()) else {
        return Ok((buf, Err(io::ErrorKind::InvalidInput.into())));
    };
    if content.storage.read_at_cached(at, body) {
        return Ok((buf, Ok(())));
    }
    let content = content.clone();
    crate::spawn::spawn_blocking("read a chunk", move || {
        let read = match buf.get_mut(range) {
            Some(body) => content.storage.read_at(at, body),
            None => Err(io::ErrorKind::InvalidInput.into()),
        };
        (buf, read)
    })
    .await
    .map_err(io::Error::other)
}

/// Why [`start_cached`] could not send a batch from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// A piece is due for a look at its file, or a hash.
    Recheck,
    /// Bytes not in memory, a file not open, or a platform that cannot tell.
    Disk,
}

/// Reads `serves` into `buf` as the frames to send (a block, or a Reject
/// for a block that may not or cannot be served). Blocking: it may
/// re-verify a piece on disk.
fn read_batch(
    pieces: &SharedPieces,
    content: &Content,
    serves: &[Serve],
    mut buf: Vec<u8>,
) -> Batch {
    let mut end = 0;
    let mut parts = Vec::with_capacity(serves.len());
    // The piece last found servable: checked once per piece and batch.
    let mut good: Option<u32> = None;
    for serve in serves {
        let Serve {
            piece,
            offset,
            len,
            at,
            ..
        } = *serve;
        let servable = servable(pieces, content, serve, &mut good);
        let need = end + BLOCK_HEADER_LEN + len as usize;
        // Only grown, never re-zeroed: the read overwrites it all.
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let block = &mut buf[end..need];
        let (head, body) = block.split_at_mut(BLOCK_HEADER_LEN);
        let read = if servable {
            content.storage.read_at(at, body)
        } else {
            Err(io::Error::other("no longer matches the ticket"))
        };
        match read {
            Ok(()) => {
                head.copy_from_slice(&encode_block_header(piece, offset, len));
                parts.push(Part {
                    range: end..need,
                    block: Some((piece, offset, len)),
                });
                end = need;
            }
            Err(e) => {
                if servable {
                    tracing::warn!(piece, "cannot read a piece to serve: {e}");
                    read_failed(pieces, content, *serve);
                }
                let mut frame = Vec::new();
                Message::Reject { piece, offset, len }.encode(&mut frame);
                let need = end + frame.len();
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                buf[end..need].copy_from_slice(&frame);
                parts.push(Part {
                    range: end..need,
                    block: None,
                });
                end = need;
            }
        }
    }
    Batch { buf, parts }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::peer::rate::RateLimit;

    /// A writer that keeps what it is given until it is flushed, as an
    /// encrypted channel keeps the end of a write that found the socket
    /// full.
    struct HoldsUntilFlushed {
        held: Vec<u8>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl tokio::io::AsyncWrite for HoldsUntilFlushed {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let held = std::mem::take(&mut self.held);
            self.out.lock().unwrap().extend_from_slice(&held);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    /// Storage in memory whose bytes below `cached_below` count as in the
    /// page cache; it records the longest read from memory it was asked
    /// for.
    struct PartlyCached {
        data: crate::storage::MemoryStorage,
        cached_below: u64,
        longest_cached: AtomicUsize,
    }

    impl crate::storage::Storage for PartlyCached {
        fn len(&self) -> u64 {
            self.data.len()
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.data.read_at(offset, buf)
        }

        fn read_at_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
            self.longest_cached.fetch_max(buf.len(), Ordering::Relaxed);
            offset + buf.len() as u64 <= self.cached_below && self.data.read_at(offset, buf).is_ok()
        }

        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.data.write_at(offset, data)
        }

        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that keeps everything it is given.
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl tokio::io::AsyncWrite for Collect {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// How [`serve_blocks`] sets up its content.
    struct Setup {
        /// Bytes below this offset count as in the page cache.
        cached_below: u64,
        /// Both pieces verified a moment ago: no re-check due.
        verified: bool,
        /// A piece whose bytes on disk no longer match the manifest.
        corrupt: Option<u32>,
    }

    /// Serves the blocks `(piece, offset, len)` of a two-piece content
    /// (pieces of 512 KiB); returns what was written, the frames expected
    /// (a block, or a Reject for the corrupt piece) and the longest single
    /// read from memory.
    async fn serve_blocks(setup: Setup, blocks: &[(u32, u32, u32)]) -> (Vec<u8>, Vec<u8>, usize) {
        use hayedik_proto::manifest::{hash_piece, FileEntry, Manifest};

        const PIECE: u32 = 512 << 10;
        let data: Vec<u8> = (0..2 * PIECE).map(|i| (i % 251) as u8).collect();
        let manifest = Manifest::new(
            vec![FileEntry::file("f", data.len() as u64, false)],
            PIECE,
            data.chunks(PIECE as usize).map(hash_piece).collect(),
        )
        .unwrap();
        let mut on_disk = data.clone();
        if let Some(piece) = setup.corrupt {
            on_disk[(piece * PIECE) as usize + 7] ^= 1;
        }
        let layout = crate::storage::PieceLayout::new(data.len() as u64, u64::from(PIECE)).unwrap();
        let storage = Arc::new(PartlyCached {
            data: crate::storage::MemoryStorage::from_vec(on_disk),
            cached_below: setup.cached_below,
            longest_cached: AtomicUsize::new(0),
        });
        let content = Arc::new(Content {
            manifest_bytes: manifest.encode(),
            manifest,
            layout: layout.clone(),
            storage: storage.clone(),
            download: None,
            guard: crate::peer::guard::ServeGuard::new(layout),
        });
        if setup.verified {
            content.mark_verified(0);
            content.mark_verified(1);
        }
        let (_content_tx, content_rx) = tokio::sync::watch::channel(Some(content));
        let uploaded = Arc::new(AtomicU64::new(0));
        let ctx = ServeCtx {
            pieces: Arc::new(SharedPieces::new(Instant::now())),
            content: content_rx,
            up_limit: Arc::new(RateLimit::unlimited()),
            uploaded: uploaded.clone(),
        };
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = crate::peer::wire::FrameWriter::new(Box::new(Collect(out.clone())));
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Arc::new(Outbox::default());
        let mut expected = Vec::new();
        let mut sent = 0;
        for &(piece, offset, len) in blocks {
            let at = u64::from(piece) * u64::from(PIECE) + u64::from(offset);
            outbox.queued.fetch_add(1, Ordering::Relaxed);
            tx.send(Out::Serve {
                piece,
                offset,
                len,
                at,
            })
            .unwrap();
            if setup.corrupt == Some(piece) {
                Message::Reject { piece, offset, len }.encode(&mut expected);
            } else {
                expected.extend_from_slice(&encode_block_header(piece, offset, len));
                expected.extend_from_slice(&data[at as usize..][..len as usize]);
                sent += u64::from(len);
            }
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(30), write_loop(writer, rx, ctx, outbox))
            .await
            .unwrap();
        assert_eq!(uploaded.load(Ordering::Relaxed), sent);
        let written = out.lock().unwrap().clone();
        (
            written,
            expected,
            storage.longest_cached.load(Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn blocks_in_memory_go_out_a_chunk_at_a_time() {
        let setup = Setup {
            cached_below: u64::MAX,
            verified: true,
            corrupt: None,
        };
        let blocks = [
            (0, 0, 256 << 10),
            (1, 256 << 10, 256 << 10),
            (0, 256 << 10, 1000),
        ];
        let (written, expected, longest) = serve_blocks(setup, &blocks).await;
        assert!(
            written == expected,
            "the frames sent are not the blocks asked for"
        );
        assert_eq!(
            longest, CHUNK,
            "no read larger than a chunk: one small buffer"
        );
    }

    #[tokio::test]
    async fn pieces_due_for_a_recheck_are_checked_then_sent_a_chunk_at_a_time() {
        // Nothing verified yet: each piece is hashed on the blocking pool
        // first. Piece 1 no longer matches: rejected, never sent.
        let setup = Setup {
            cached_below: u64::MAX,
            verified: false,
            corrupt: Some(1),
        };
        let blocks = [
            (0, 0, 256 << 10),
            (1, 0, 256 << 10),
            (0, 256 << 10, 256 << 10),
        ];
        let (written, expected, longest) = serve_blocks(setup, &blocks).await;
        assert!(
            written == expected,
            "the frames sent are not the blocks and Reject expected"
        );
        assert_eq!(
            longest, CHUNK,
            "no read larger than a chunk: one small buffer"
        );
    }

    #[tokio::test]
    async fn a_block_whose_pages_leave_memory_halfway_is_finished_from_the_disk() {
        // The first block's first chunk is in memory, the rest is not.
        let setup = Setup {
            cached_below: 100_000,
            verified: true,
            corrupt: None,
        };
        let blocks = [(0, 0, 256 << 10), (0, 256 << 10, 256 << 10)];
        let (written, expected, _) = serve_blocks(setup, &blocks).await;
        assert!(
            written == expected,
            "the frames sent are not the blocks asked for"
        );
    }

    #[tokio::test]
    async fn blocks_not_in_memory_are_read_whole_on_the_blocking_pool() {
        let setup = Setup {
            cached_below: 0,
            verified: true,
            corrupt: None,
        };
        let blocks = [(1, 0, 256 << 10), (0, 0, 300_000), (1, 256 << 10, 1)];
        let (written, expected, _) = serve_blocks(setup, &blocks).await;
        assert!(
            written == expected,
            "the frames sent are not the blocks asked for"
        );
    }

    #[tokio::test]
    async fn the_writer_flushes_before_it_waits() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = crate::peer::wire::FrameWriter::new(Box::new(HoldsUntilFlushed {
            held: Vec::new(),
            out: out.clone(),
        }));
        let (_content_tx, content) = tokio::sync::watch::channel(None);
        let ctx = ServeCtx {
            pieces: Arc::new(SharedPieces::new(Instant::now())),
            content,
            up_limit: Arc::new(RateLimit::unlimited()),
            uploaded: Arc::new(AtomicU64::new(0)),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_loop(writer, rx, ctx, Arc::new(Outbox::default())));
        tx.send(Out::Frame(b"the end of a block".to_vec())).unwrap();
        // The sender stays open: the writer goes idle rather than closing
        // (closing flushes anyway).
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.lock().unwrap().as_slice() != b"the end of a block" {
            assert!(
                Instant::now() < deadline,
                "the frame is still held by the writer: {:?}",
                out.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(tx);
        task.await.unwrap();
    }
}
