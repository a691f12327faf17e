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
struct Serve {
    piece: u32,
    offset: u32,
    len: u32,
    at: u64,
}

/// Sends frames and serves blocks until the sender side is dropped or the
/// channel fails.
///
/// Requests queued together (up to [`SERVE_BATCH`] blocks) are read into a
/// reused buffer, each block's header right before its data. Blocks whose
/// pages are in memory and whose pieces need no re-check are read right
/// here ([`read_cached`]): the usual case for a sharer, which hashed its
/// file a moment ago, and the cheapest (no hand-off to another thread and
/// back, one buffer per session). The others are read on the blocking
/// pool, and the next batch is read there while the previous one is
/// encrypted and sent: the disk and the socket work at the same time.
/// A block goes to TLS in one write (header and data together),
/// which rustls cuts into full 16 KiB records. Frames queued meanwhile go
/// out first, several in one write. (Version 1 sent file-backed blocks
/// with `sendfile`; the encrypted channel cannot: the bytes must pass
/// through user space to be encrypted.)
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
                        });
                    }
                }
            }
        }
        let content = ctx.content.borrow().clone();
        let next = match content {
            Some(content) if !serves.is_empty() => {
                if spare.is_empty() && disk_misses < 2 {
                    // The one buffer is being filled (a re-check on the
                    // blocking pool): send it and reuse it rather than
                    // take a second one.
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
                match read_cached(&content, &serves, buf) {
                    Ok(batch) => {
                        disk_misses = 0;
                        Some(Next::Ready(batch))
                    }
                    Err((buf, miss)) => {
                        disk_misses = match miss {
                            Miss::Disk => disk_misses.saturating_add(1),
                            Miss::Recheck => 0,
                        };
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
            Some(Next::Ready(batch)) => {
                let Ok(buf) = send_batch(&mut wr, batch, &ctx, &outbox).await else {
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

/// The blocks to send next: read already, or being read on the blocking
/// pool (sent after the batch before them).
enum Next {
    Ready(Batch),
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

/// Reads `serves` into `buf` as [`read_batch`] does, but only if that takes
/// no disk I/O and no re-check: every piece recently verified and its file
/// unchanged ([`super::guard::ServeGuard::is_fresh`]), every byte in memory
/// ([`crate::storage::Storage::read_at_cached`]). Otherwise `buf` comes
/// back for [`read_batch`], which reads and re-checks on the blocking pool,
/// with what stopped it.
fn read_cached(
    content: &Content,
    serves: &[Serve],
    mut buf: Vec<u8>,
) -> Result<Batch, (Vec<u8>, Miss)> {
    let mut end = 0;
    let mut parts = Vec::with_capacity(serves.len());
    for serve in serves {
        if !content.guard.is_fresh(serve.piece) {
            return Err((buf, Miss::Recheck));
        }
        let need = end + BLOCK_HEADER_LEN + serve.len as usize;
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let (head, body) = buf[end..need].split_at_mut(BLOCK_HEADER_LEN);
        if !content.storage.read_at_cached(serve.at, body) {
            return Err((buf, Miss::Disk));
        }
        head.copy_from_slice(&encode_block_header(serve.piece, serve.offset, serve.len));
        parts.push(Part {
            range: end..need,
            block: Some((serve.piece, serve.offset, serve.len)),
        });
        end = need;
    }
    Ok(Batch { buf, parts })
}

/// Why [`read_cached`] could not read a batch from memory.
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
    for &Serve {
        piece,
        offset,
        len,
        at,
    } in serves
    {
        let servable = good == Some(piece)
            || content.guard.is_fresh(piece)
            || matches!(
                content.guard.check(
                    piece,
                    &content.manifest,
                    content.storage.as_ref(),
                    at - u64::from(offset)
                ),
                Check::Good
            );
        if !servable {
            content.piece_lost(pieces, piece);
        }
        good = servable.then_some(piece);
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
