//! The byte stream of an established secure channel ([`super::secure`]):
//! rustls does the TLS 1.3 handshake, fed one whole record at a time so
//! that nothing after the handshake is left inside it; then its traffic
//! keys are taken (`dangerous_extract_secrets`, the interface meant for
//! kernel TLS) and [`TlsStream`] protects application records itself
//! ([`super::record`]): received records are opened in place in one read
//! buffer, written ones sealed in place in one write buffer, several
//! records per system call, with no allocation per record.
//!
//! What rustls would otherwise do after the handshake and this stream
//! does not: key updates (a peer's KeyUpdate ends the connection, and ours
//! ends before the AES-GCM limit of 2^24 records per direction, 256 GiB;
//! the session is then dialled again) and session tickets (never issued:
//! `send_tls13_tickets = 0`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hayedik_proto::peer::{EXPORTER_LABEL, EXPORTER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::record::{self, Content, Keys, HEADER, MAX_BODY, MAX_PLAIN, OVERHEAD};

/// The read buffer of a stream that receives a lot (it starts at one
/// record's room and grows to this when a read fills it): 64 KiB per
/// system call, not 4 KiB as rustls reads.
const READ_BUFFER: usize = 64 << 10;
/// The smallest read buffer: one whole record of the largest size.
const READ_MIN: usize = HEADER + MAX_BODY;
/// Full records sealed per write to the stream (64 KiB of plaintext).
const WRITE_RECORDS: usize = 4;
/// A handshake record longer than this is refused before it is read
/// (rustls itself accepts 2^14 + 2048).
const MAX_HANDSHAKE_RECORD: usize = MAX_PLAIN + 2048;
/// Empty data records in a row accepted (each costs a decryption).
const MAX_EMPTY: u32 = 32;

/// An established channel, before it is boxed.
pub struct Established<S> {
    pub stream: TlsStream<S>,
    pub binding: [u8; EXPORTER_LEN],
    /// The protocol ALPN settled on, if any.
    pub alpn: Option<Vec<u8>>,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Runs the handshake of `conn` (a fresh client or server connection)
/// over `io`, starting with the bytes already read in `buf`.
pub async fn handshake<S>(
    mut io: S,
    mut conn: rustls::Connection,
    mut buf: Vec<u8>,
) -> io::Result<Established<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
        }
        if !conn.is_handshaking() {
            break;
        }
        // One whole record, no more: what follows the handshake's last
        // record stays in `buf`, for the stream.
        let need = loop {
            if let Some(h) = buf.get(..HEADER) {
                let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
                if len > MAX_HANDSHAKE_RECORD {
                    return Err(tls_error(rustls::Error::PeerSentOversizedRecord));
                }
                if buf.len() >= HEADER + len {
                    break HEADER + len;
                }
            }
            buf.reserve(READ_MIN);
            if io.read_buf(&mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let mut rec = &buf[..need];
        while !rec.is_empty() {
            if conn.read_tls(&mut rec)? == 0 {
                break;
            }
        }
        buf.drain(..need);
        if let Err(e) = conn.process_new_packets() {
            // The alert rustls queued, then the error.
            while conn.wants_write() {
                if conn.write_tls(&mut out).is_err() {
                    break;
                }
            }
            let _ = io.write_all(&out).await;
            return Err(tls_error(e));
        }
    }
    let binding = conn
        .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
        .map_err(tls_error)?;
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let secrets = conn.dangerous_extract_secrets().map_err(tls_error)?;
    let rx = Keys::new(secrets.rx.0, &secrets.rx.1).map_err(tls_error)?;
    let tx = Keys::new(secrets.tx.0, &secrets.tx.1).map_err(tls_error)?;
    let end = buf.len();
    if buf.len() < READ_MIN {
        buf.resize(READ_MIN, 0);
    }
    Ok(Established {
        stream: TlsStream {
            io,
            rx,
            tx,
            inbuf: buf,
            start: 0,
            end,
            plain: 0..0,
            empty: 0,
            failed: None,
            closed: false,
            outbuf: Vec::new(),
            out_pos: 0,
            out_len: 0,
            tx_closed: false,
        },
        binding,
        alpn,
    })
}

/// Application data over TLS 1.3 records, both directions.
pub struct TlsStream<S> {
    io: S,
    rx: Keys,
    tx: Keys,
    /// Received bytes: `start..end` not opened yet; `plain` (before
    /// `start`) opened and not read yet.
    inbuf: Vec<u8>,
    start: usize,
    end: usize,
    plain: std::ops::Range<usize>,
    /// Empty records received in a row.
    empty: u32,
    /// Why reading stopped for good (every later read fails the same).
    failed: Option<rustls::Error>,
    /// The peer closed (close_notify, or the end of the stream between
    /// records).
    closed: bool,
    /// Sealed records, `out_pos..out_len` not written yet.
    outbuf: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    /// close_notify sealed.
    tx_closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    fn fail(&mut self, e: rustls::Error) -> io::Error {
        self.failed = Some(e.clone());
        tls_error(e)
    }

    /// Opens the next whole record in the buffer, if there is one.
    /// `Ok(false)`: more bytes are needed.
    fn open_next(&mut self) -> io::Result<bool> {
        let body = match record::body_len(&self.inbuf[self.start..self.end]) {
            Ok(Some(body)) if self.end - self.start >= HEADER + body => body,
            Ok(_) => return Ok(false),
            Err(e) => return Err(self.fail(e)),
        };
        let at = self.start;
        self.start += HEADER + body;
        match self.rx.open(&mut self.inbuf[at..at + HEADER + body]) {
            Ok(Content::Data(r)) => {
                if r.is_empty() {
                    self.empty += 1;
                    if self.empty > MAX_EMPTY {
                        return Err(
                            self.fail(rustls::Error::General("too many empty records".into()))
                        );
                    }
                } else {
                    self.empty = 0;
                }
                self.plain = at + r.start..at + r.end;
            }
            Ok(Content::CloseNotify) => self.closed = true,
            Err(e) => return Err(self.fail(e)),
        }
        Ok(true)
    }

    /// Writes out the sealed records not written yet.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out_len {
            let n = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.outbuf[self.out_pos..self.out_len])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Room for `need` bytes of records at the start of the write buffer
    /// (grown, never re-zeroed: sealing overwrites it).
    fn out_room(&mut self, need: usize) {
        if self.outbuf.len() < need {
            self.outbuf.resize(need, 0);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.inbuf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(tls_error(e.clone())));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            if this.open_next()? {
                continue;
            }
            // More bytes: what is left of a record goes to the front when
            // a whole record might not fit after it.
            if this.start == this.end {
                (this.start, this.end) = (0, 0);
            } else if this.inbuf.len() - this.start < READ_MIN {
                this.inbuf.copy_within(this.start..this.end, 0);
                (this.start, this.end) = (0, this.end - this.start);
            }
            let free = this.inbuf.len() - this.end;
            let mut rb = ReadBuf::new(&mut this.inbuf[this.end..]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                if this.start == this.end {
                    this.closed = true;
                    continue;
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed inside a TLS record",
                )));
            }
            this.end += n;
            if n == free && this.inbuf.len() < READ_BUFFER {
                // Much is arriving: larger reads.
                this.inbuf.resize(READ_BUFFER, 0);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.tx_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = buf.len().min(WRITE_RECORDS * MAX_PLAIN);
        this.out_room(take + take.div_ceil(MAX_PLAIN) * OVERHEAD);
        let mut at = 0;
        for chunk in buf[..take].chunks(MAX_PLAIN) {
            let record = &mut this.outbuf[at..at + chunk.len() + OVERHEAD];
            record[HEADER..HEADER + chunk.len()].copy_from_slice(chunk);
            at += this
                .tx
                .seal(record, chunk.len(), record::INNER_DATA)
                .map_err(tls_error)?;
        }
        (this.out_pos, this.out_len) = (0, at);
        // The bytes are taken; what the socket does not take now goes out
        // with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.tx_closed {
            let len = record::CLOSE_NOTIFY.len();
            this.out_room(len + OVERHEAD);
            this.outbuf[HEADER..HEADER + len].copy_from_slice(&record::CLOSE_NOTIFY);
            let n = this
                .tx
                .seal(&mut this.outbuf[..len + OVERHEAD], len, record::INNER_ALERT)
                .map_err(tls_error)?;
            (this.out_pos, this.out_len) = (0, n);
            this.tx_closed = true;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
