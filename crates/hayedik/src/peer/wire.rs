//! The socket halves of a session: framing on top of TCP, and the reader
//! and writer tasks. Decoding itself lives in `hayedik_proto::peer`.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hayedik_proto::peer::{
    encode_block_header, FrameHeader, Message, MessageType, PeerWireError, BLOCK_HEADER_LEN,
    FRAME_HEADER_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::guard::Check;
use super::swarm::Swarm;

/// Why a connection's bytes could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] PeerWireError),
    #[error("connection closed")]
    Closed,
    #[error("idle for {0:?}")]
    Idle(Duration),
}

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

/// Block buffers handed back after use, so that receiving a block costs
/// neither an allocation nor page faults. Bounded.
#[derive(Debug, Clone, Default)]
pub struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

/// Idle buffers kept in a pool (one pool per download: 4 MiB of blocks).
const POOL_MAX: usize = 16;

impl BufPool {
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default()
    }

    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut p) = self.0.lock() {
            if p.len() < POOL_MAX {
                p.push(buf);
            }
        }
    }
}

/// Reads whole frames from a socket.
pub struct FrameReader {
    rd: OwnedReadHalf,
    pool: BufPool,
}

impl FrameReader {
    pub fn new(rd: OwnedReadHalf) -> Self {
        Self {
            rd,
            pool: BufPool::default(),
        }
    }

    /// Takes block buffers from `pool` (give them back when done).
    pub fn set_pool(&mut self, pool: BufPool) {
        self.pool = pool;
    }

    /// The next message. Lengths are checked against the type's bounds
    /// before anything is allocated, and the payload buffer grows only as
    /// bytes actually arrive.
    pub async fn next(&mut self) -> Result<Message, WireError> {
        let mut head = [0u8; FRAME_HEADER_LEN];
        match self.rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
            Err(e) => return Err(e.into()),
        }
        let header = FrameHeader::decode(&head)?.ok_or(WireError::Closed)?;
        let len = header.payload_len as usize;
        if header.kind == MessageType::Block {
            // Data goes straight into its own buffer: no second copy.
            // FrameHeader::decode bounded the length by MAX_BLOCK.
            let mut at = [0u8; 8];
            self.rd.read_exact(&mut at).await?;
            let [p0, p1, p2, p3, o0, o1, o2, o3] = at;
            let n = len - 8;
            let mut data = self.pool.take();
            data.reserve_exact(n);
            // Fills spare capacity: no zeroing first.
            (&mut self.rd).take(n as u64).read_to_end(&mut data).await?;
            if data.len() != n {
                return Err(WireError::Closed);
            }
            return Ok(Message::Block {
                piece: u32::from_be_bytes([p0, p1, p2, p3]),
                offset: u32::from_be_bytes([o0, o1, o2, o3]),
                data,
            });
        }
        let mut payload = Vec::with_capacity(len.min(BLOCK_HEADER_LEN + (1 << 20)));
        (&mut self.rd)
            .take(len as u64)
            .read_to_end(&mut payload)
            .await?;
        if payload.len() != len {
            return Err(WireError::Closed);
        }
        Ok(Message::decode_payload(header.kind, &payload)?)
    }
}

/// Writes frames to a socket.
pub struct FrameWriter {
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl FrameWriter {
    pub fn new(wr: OwnedWriteHalf) -> Self {
        Self {
            wr,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, m: &Message) -> Result<(), WireError> {
        self.buf.clear();
        m.encode(&mut self.buf);
        self.wr.write_all(&self.buf).await?;
        Ok(())
    }
}

/// Forwards decoded messages until the connection ends, the receiver goes
/// away, or nothing arrives for `idle`. Applies the download cap.
pub async fn read_loop(
    mut reader: FrameReader,
    tx: mpsc::Sender<Result<Message, WireError>>,
    swarm: Arc<Swarm>,
    idle: Duration,
) {
    loop {
        let m = match tokio::time::timeout(idle, reader.next()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(_) => {
                let _ = tx.send(Err(WireError::Idle(idle))).await;
                return;
            }
        };
        if let Message::Block { data, .. } = &m {
            swarm.down_limit.acquire(data.len()).await;
        }
        if tx.send(Ok(m)).await.is_err() {
            return;
        }
    }
}

/// Sends frames and serves blocks until the sender side is dropped or the
/// socket fails.
pub async fn write_loop(
    writer: FrameWriter,
    mut rx: mpsc::UnboundedReceiver<Out>,
    swarm: Arc<Swarm>,
    cancelled: Arc<Mutex<HashSet<(u32, u32)>>>,
    queued: Arc<AtomicUsize>,
) {
    let mut wr = writer.wr;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(out) = rx.recv().await {
        let r = match out {
            Out::Frame(bytes) => wr.write_all(&bytes).await,
            Out::Serve {
                piece,
                offset,
                len,
                at,
            } => {
                queued.fetch_sub(1, Ordering::Relaxed);
                let skip = cancelled
                    .lock()
                    .map(|mut c| c.remove(&(piece, offset)))
                    .unwrap_or(false);
                if skip {
                    continue;
                }
                let Some(content) = swarm.content() else {
                    continue;
                };
                if !content.guard.is_fresh(piece) {
                    let c = content.clone();
                    let base = at - u64::from(offset);
                    let check = tokio::task::spawn_blocking(move || {
                        c.guard.check(piece, &c.manifest, c.storage.as_ref(), base)
                    })
                    .await;
                    if !matches!(check, Ok(Check::Good)) {
                        swarm.piece_lost(piece);
                        let mut frame = Vec::new();
                        Message::Reject { piece, offset, len }.encode(&mut frame);
                        if wr.write_all(&frame).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                let storage = content.storage.clone();
                let mut block = std::mem::take(&mut buf);
                // Only grown, never re-zeroed: the read overwrites it all.
                let need = BLOCK_HEADER_LEN + len as usize;
                if block.len() < need {
                    block.resize(need, 0);
                }
                block.truncate(need);
                block[..BLOCK_HEADER_LEN].copy_from_slice(&encode_block_header(piece, offset, len));
                let read = tokio::task::spawn_blocking(move || {
                    let r = storage.read_at(at, &mut block[BLOCK_HEADER_LEN..]);
                    (block, r)
                })
                .await;
                let (block, r) = match read {
                    Ok(x) => x,
                    Err(_) => return,
                };
                if let Err(e) = r {
                    tracing::warn!(piece, "cannot read a piece to serve: {e}");
                    buf = block;
                    let mut frame = Vec::new();
                    Message::Reject { piece, offset, len }.encode(&mut frame);
                    if wr.write_all(&frame).await.is_err() {
                        return;
                    }
                    continue;
                }
                swarm.up_limit.acquire(len as usize).await;
                let r = wr.write_all(&block).await;
                if r.is_ok() {
                    swarm.uploaded.fetch_add(u64::from(len), Ordering::Relaxed);
                }
                buf = block;
                r
            }
        };
        if r.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}
