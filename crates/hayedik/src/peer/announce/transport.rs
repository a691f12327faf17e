//! The datagram plumbing shared by the swarm handshake and the tracker
//! client: retransmission backoff with jitter, receiving a datagram that
//! decodes before a deadline, and folding IPv4-mapped addresses.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hayedik_proto::tracker::Datagram;
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The same address, IPv4-mapped IPv6 folded to IPv4 (a dual-stack socket
/// reports IPv4 sources that way).
pub(super) fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

pub(super) fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Retransmission timeouts: doubling, capped, jittered.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first,
            first,
            max,
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }

    pub(super) fn next(&mut self) -> Duration {
        let d = jitter(self.next);
        self.next = (self.next * 2).min(self.max);
        d
    }
}

pub(super) fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// Waits until `until` for a datagram that decodes; skips garbage and
/// receive errors (on Linux, ICMP errors of earlier sends surface here).
pub(super) async fn recv_datagram(
    socket: &UdpSocket,
    buf: &mut [u8],
    until: Instant,
) -> Option<(SocketAddr, Datagram)> {
    let mut errors = 0u32;
    loop {
        let received = tokio::time::timeout_at(until, socket.recv_from(buf))
            .await
            .ok()?;
        match received {
            Ok((n, src)) => match buf.get(..n).map(Datagram::decode) {
                Some(Ok(d)) => return Some((src, d)),
                _ => tracing::trace!(%src, "ignored a datagram that does not decode"),
            },
            Err(e) => {
                tracing::debug!("tracker socket: {e}");
                errors += 1;
                // A socket that fails every time must not spin: wait the
                // attempt out instead.
                if errors >= 16 {
                    tokio::time::sleep_until(until).await;
                    return None;
                }
            }
        }
    }
}

/// The unspecified address of `to`'s family, any port.
pub(super) fn any_port_for(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}
