//! What the two HTTP faces (`hayedik ui` and `tracker --http`) share: a
//! listener that holds at most a fixed number of connections at once and
//! closes those that stall, and the `Host` check that defeats DNS
//! rebinding.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection that has written nothing for this long is closed: a client
/// that never finishes its request (slowloris) or stops reading what it
/// asked for, or a keep-alive connection left idle. Event streams send a
/// keep-alive well within it.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`TcpListener`] for axum that accepts a connection only while fewer
/// than its bound are open (the next one waits in the kernel's backlog),
/// and closes one that writes nothing for [`STALL_TIMEOUT`]: hyper has no
/// deadline of its own for reading a request under `axum::serve`, so a
/// few slow clients could otherwise hold every slot.
pub struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    stall: Duration,
}

impl BoundedListener {
    pub fn new(listener: TcpListener, max_connections: usize) -> Self {
        Self::with_stall_timeout(listener, max_connections, STALL_TIMEOUT)
    }

    /// The same with another stall timeout (tests).
    pub fn with_stall_timeout(
        listener: TcpListener,
        max_connections: usize,
        stall: Duration,
    ) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            stall,
        }
    }
}

/// An accepted connection; its slot is freed when it is dropped. Reads and
/// writes fail with `TimedOut` once it has written nothing for its stall
/// timeout.
pub struct Bounded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    stall: Duration,
    /// When it is closed unless it writes before.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Bounded {
    /// `Err(TimedOut)` once the deadline has passed; otherwise the waker
    /// is woken at the deadline.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "http: nothing written for too long",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Bounded, SocketAddr) {
        loop {
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                // Never closed; wait forever rather than spin.
                std::future::pending::<()>().await;
                continue;
            };
            match self.listener.accept().await {
                Ok((stream, from)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        Bounded {
                            stream,
                            _slot: slot,
                            stall: self.stall,
                            deadline: Box::pin(tokio::time::sleep(self.stall)),
                        },
                        from,
                    );
                }
                Err(e) => {
                    // Out of descriptors, mostly: let others finish.
                    tracing::debug!("http: accepting: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => match this.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            // Bytes keep coming but no answer goes out: a request that
            // never ends.
            Poll::Ready(Ok(())) => match this.check_stall(cx) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    let next = tokio::time::Instant::now() + this.stall;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match this.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Which `Host` headers a server bound to `bound` answers: the names a
/// browser uses for it, never a DNS name an attacker controls (DNS
/// rebinding). `public_host` is the name or address the user gave.
#[derive(Debug, Clone)]
pub struct HostCheck {
    bound: SocketAddr,
    public_host: Option<String>,
}

impl HostCheck {
    pub fn new(bound: SocketAddr, public_host: Option<String>) -> Self {
        Self {
            bound,
            public_host: public_host.map(|h| h.to_ascii_lowercase()),
        }
    }

    /// Whether `host` (a `Host` header, `name[:port]`) names this server:
    /// the bound address; `localhost` when bound to loopback; any IP
    /// address of ours when bound to every address (an IP literal cannot
    /// be rebound); the public host. The port must be ours.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some((name, port)) = split_host(&host) else {
            return false;
        };
        if port != Some(self.bound.port()) {
            return false;
        }
        if self.public_host.as_deref() == Some(name) {
            return true;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) if self.bound.ip().is_unspecified() => !ip.is_unspecified(),
            Ok(ip) => ip == self.bound.ip(),
            Err(_) => name == "localhost" && self.bound.ip().is_loopback(),
        }
    }

    /// The `http://host:port` origins this server is reached at, for the
    /// `Origin` check: `origin` must be `http://` and an allowed host.
    pub fn allows_origin(&self, origin: &str) -> bool {
        origin
            .trim()
            .strip_prefix("http://")
            .is_some_and(|host| !host.contains('/') && self.allows(host))
    }
}

/// `name:port` into its parts (`[v6]:port` too); `None` when malformed.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    if host.is_empty() {
        return None;
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let name = &host[..end + 2];
        match after.strip_prefix(':') {
            Some(p) => (name, Some(p)),
            None if after.is_empty() => (name, None),
            None => return None,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') => (n, Some(p)),
            Some(_) => return None,
            None => (host, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((name, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A request that never ends, sent all at once or trickled, is closed
    /// after the stall timeout; an answer that flows longer than it is not
    /// cut.
    #[tokio::test]
    async fn stalled_connections_are_closed_flowing_ones_are_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stall = Duration::from_millis(300);
        let slow_body = || async {
            // Ten chunks 100 ms apart: a second in all.
            let chunks = futures_util::stream::unfold(0u8, |i| async move {
                if i == 10 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let chunk = axum::body::Bytes::from_static(b"Z");
                Some((Ok::<_, std::convert::Infallible>(chunk), i + 1))
            });
            axum::body::Body::from_stream(chunks)
        };
        let router = axum::Router::new().route("/slow", axum::routing::get(slow_body));
        let listener = BoundedListener::with_stall_timeout(listener, 4, stall);
        let server = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
            listener, router,
        )));

        // A head that never ends.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        silent
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x")
            .await
            .unwrap();
        // The same, trickled a byte every 50 ms for 3 s.
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        trickle
            .write_all(b"GET /slow HTTP/1.1\r\nX: ")
            .await
            .unwrap();
        let (mut trickle_rd, mut trickle_wr) = trickle.into_split();
        let dribble = tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if trickle_wr.write_all(b"a").await.is_err() {
                    return true;
                }
            }
            false
        });
        for (what, stream) in [
            (
                "silent",
                &mut silent as &mut (dyn tokio::io::AsyncRead + Unpin + Send),
            ),
            ("trickled", &mut trickle_rd),
        ] {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("the {what} request was not closed"));
            assert!(matches!(read, Ok(0) | Err(_)), "{what}: {read:?}");
        }
        assert!(dribble.await.unwrap(), "the trickle could go on for 3 s");

        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), ok.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(text.matches("\r\nZ\r\n").count(), 10, "{text}");
        server.abort();
    }

    #[test]
    fn loopback_hosts() {
        let c = HostCheck::new("127.0.0.1:8080".parse().unwrap(), None);
        assert!(c.allows("127.0.0.1:8080"));
        assert!(c.allows("localhost:8080"));
        assert!(c.allows("LocalHost:8080"));
        assert!(!c.allows("127.0.0.1:8081"));
        assert!(!c.allows("127.0.0.1"));
        assert!(!c.allows("evil.example:8080"));
        assert!(!c.allows("127.0.0.2:8080"));
        assert!(!c.allows(""));
        assert!(!c.allows("[::1]:8080"));
        assert!(c.allows_origin("http://127.0.0.1:8080"));
        assert!(c.allows_origin("http://localhost:8080"));
        assert!(!c.allows_origin("https://127.0.0.1:8080"));
        assert!(!c.allows_origin("http://evil.example:8080"));
        assert!(!c.allows_origin("null"));
        assert!(!c.allows_origin("http://127.0.0.1:8080/x"));
    }

    #[test]
    fn wildcard_and_public_hosts() {
        let c = HostCheck::new("0.0.0.0:80".parse().unwrap(), Some("Box.Lan".into()));
        assert!(c.allows("192.168.1.5:80"));
        assert!(c.allows("box.lan:80"));
        assert!(!c.allows("localhost:80"));
        assert!(!c.allows("0.0.0.0:80"));
        assert!(!c.allows("rebind.example:80"));
        let v6 = HostCheck::new("[::1]:9".parse().unwrap(), None);
        assert!(v6.allows("[::1]:9"));
        assert!(v6.allows("localhost:9"));
        assert!(!v6.allows("[::1"));
        assert!(!v6.allows("::1:9"));
    }
}
