//! What the two HTTP faces (`hayedik ui` and `tracker --http`) share: a
//! listener that holds at most a fixed number of connections at once, and
//! the `Host` check that defeats DNS rebinding.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A [`TcpListener`] for axum that accepts a connection only while fewer
/// than its bound are open: the next one waits in the kernel's backlog.
pub struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
}

impl BoundedListener {
    pub fn new(listener: TcpListener, max_connections: usize) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
        }
    }
}

/// An accepted connection; its slot is freed when it is dropped.
pub struct Bounded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
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
