//! The read buffer under a session's TLS layer: it starts small and grows
//! while the stream keeps it full.
//!
//! rustls reads at most 4 KiB from its transport at a time, so without a
//! buffer a session receiving blocks makes a system call per 4 KiB. A fixed
//! 64 KiB buffer fixes that but costs 64 KiB per session, and most sessions
//! of a sharer only ever receive requests of a few dozen bytes. This one
//! starts at [`START`] and doubles, up to its limit, each time a single
//! read from the stream fills it: a session that receives blocks reaches
//! 64 KiB within its first few reads, one that receives requests stays
//! small.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// The buffer's first size.
pub const START: usize = 4 << 10;

/// A stream read through a buffer that grows from [`START`] to `max`;
/// writes pass straight through.
#[derive(Debug)]
pub struct GrowingReader<S> {
    inner: S,
    buf: Vec<u8>,
    /// `buf[pos..filled]` is read from the stream and not consumed yet.
    pos: usize,
    filled: usize,
    max: usize,
}

impl<S> GrowingReader<S> {
    /// Reads `inner` through a buffer of [`START`] bytes (or `max`, if
    /// smaller) that may grow to `max`.
    pub fn new(inner: S, max: usize) -> Self {
        let max = max.max(1);
        GrowingReader {
            inner,
            buf: vec![0; START.min(max)],
            pos: 0,
            filled: 0,
            max,
        }
    }

    /// The buffer's size now.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncBufRead for GrowingReader<S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let me = self.get_mut();
        if me.pos >= me.filled {
            let mut read = ReadBuf::new(&mut me.buf);
            ready!(Pin::new(&mut me.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            me.pos = 0;
            me.filled = n;
            if n == me.buf.len() && me.buf.len() < me.max {
                // The stream had at least this much waiting: read more at
                // once next time.
                let grown = me.buf.len().saturating_mul(2).min(me.max);
                me.buf.resize(grown, 0);
            }
        }
        Poll::Ready(Ok(me.buf.get(me.pos..me.filled).unwrap_or_default()))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let me = self.get_mut();
        me.pos = me.pos.saturating_add(amt).min(me.filled);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GrowingReader<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GrowingReader<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_keep_it_small_and_a_full_stream_grows_it() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let mut reader = GrowingReader::new(near, 64 << 10);
        // Requests: a few bytes at a time, each read before the next.
        for i in 0..100u8 {
            far.write_all(&[i; 20]).await.unwrap();
            let mut got = [0; 20];
            reader.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [i; 20]);
        }
        assert_eq!(reader.capacity(), START);
        // A stream of blocks: 1 MiB already waiting, read 4 KiB at a time
        // as rustls does.
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        far.write_all(&data).await.unwrap();
        let mut got = vec![0; data.len()];
        for chunk in got.chunks_mut(4096) {
            reader.read_exact(chunk).await.unwrap();
        }
        assert!(got == data, "bytes read differ from those written");
        assert_eq!(reader.capacity(), 64 << 10);
        // Writes pass through, and the end of the stream reads as such.
        reader.write_all(b"back").await.unwrap();
        let mut back = [0; 4];
        far.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        drop(far);
        assert!(reader.fill_buf().await.unwrap().is_empty());
    }
}
