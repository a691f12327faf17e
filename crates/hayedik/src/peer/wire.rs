//! The two halves of a session's secure channel ([`super::secure`]):
//! frames inside TLS, and the reader task. Decoding itself is `hayedik_proto::peer`'s (the functions the
//! fuzz targets exercise); the writer task is [`super::serve`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hayedik_proto::peer::{
    decode_frame, BlockHeader, FrameHeader, Message, MessageType, PeerWireError, BLOCK_HEADER_LEN,
    FRAME_HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::bufpool::BufPool;
use super::rate::RateLimit;
use super::secure;

/// The read half of a channel.
pub type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
/// The write half of a channel.
pub type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// Why a connection's bytes could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(io::Error),
    /// TLS refused what the peer sent after the handshake: a record that
    /// does not decrypt (tampered, reordered, truncated), or too large.
    #[error("bad TLS record: {0}")]
    Tls(io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] PeerWireError),
    #[error("connection closed")]
    Closed,
    #[error("idle for {0:?}")]
    Idle(Duration),
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        if secure::is_tls_violation(&e) {
            WireError::Tls(e)
        } else {
            WireError::Io(e)
        }
    }
}

/// Reads whole frames from a channel.
pub struct FrameReader {
    rd: ReadHalf,
    pool: BufPool,
}

impl FrameReader {
    pub fn new(rd: ReadHalf) -> Self {
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
        // The length first: a bad one (0, too large) is refused before
        // another byte arrives.
        match self.rd.read_exact(&mut head[..4]).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
            Err(e) => return Err(e.into()),
        }
        FrameHeader::decode(&head[..4])?;
        self.rd.read_exact(&mut head[4..]).await?;
        let header = FrameHeader::decode(&head)?.ok_or(WireError::Closed)?;
        let len = header.payload_len as usize;
        if header.kind == MessageType::Block {
            // Data goes straight into its own buffer: no second copy.
            let mut head13 = [0u8; BLOCK_HEADER_LEN];
            head13[..FRAME_HEADER_LEN].copy_from_slice(&head);
            self.rd.read_exact(&mut head13[FRAME_HEADER_LEN..]).await?;
            let block = BlockHeader::decode(&head13)?.ok_or(WireError::Closed)?;
            let n = block.len as usize;
            let mut data = self.pool.take();
            data.reserve_exact(n);
            // Fills spare capacity: no zeroing first.
            (&mut self.rd).take(n as u64).read_to_end(&mut data).await?;
            if data.len() != n {
                return Err(WireError::Closed);
            }
            return Ok(Message::Block {
                piece: block.piece,
                offset: block.offset,
                data,
            });
        }
        // The whole frame, decoded by the very function the fuzz target
        // exercises.
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + len.min(1 << 20));
        frame.extend_from_slice(&head);
        (&mut self.rd)
            .take(len as u64)
            .read_to_end(&mut frame)
            .await?;
        match decode_frame(&frame)? {
            Some((m, used)) if used == frame.len() => Ok(m),
            _ => Err(WireError::Closed),
        }
    }
}

/// Writes frames to a channel.
pub struct FrameWriter {
    wr: WriteHalf,
    buf: Vec<u8>,
}

impl FrameWriter {
    pub fn new(wr: WriteHalf) -> Self {
        Self {
            wr,
            buf: Vec::new(),
        }
    }

    /// The channel's write half, for a task that writes more than frames.
    pub fn into_inner(self) -> WriteHalf {
        self.wr
    }

    pub async fn send(&mut self, m: &Message) -> Result<(), WireError> {
        self.buf.clear();
        m.encode(&mut self.buf);
        self.wr.write_all(&self.buf).await?;
        // All of it on the socket (an encrypted channel may hold the end
        // of a write until it is flushed).
        self.wr.flush().await?;
        Ok(())
    }
}

/// Forwards decoded messages until the connection ends, the receiver goes
/// away, or nothing arrives for `idle`. Applies the download cap.
pub async fn read_loop(
    mut reader: FrameReader,
    tx: mpsc::Sender<Result<Message, WireError>>,
    down_limit: Arc<RateLimit>,
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
            down_limit.acquire(data.len()).await;
        }
        if tx.send(Ok(m)).await.is_err() {
            return;
        }
    }
}
