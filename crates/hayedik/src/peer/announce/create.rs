//! Creating a swarm: the JOIN, CHALLENGE, JOIN with the cookie, OFFER,
//! CONFIRM, CONFIRMED handshake with the central tracker (PROTOCOL.md), as
//! a small state machine ([`Handshake::on_reply`]) driven by
//! [`create_swarm`] on the caller's socket.

use std::net::SocketAddr;
use std::time::Duration;

use hayedik_proto::tracker::{Datagram, ErrorCode, Message};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::error::{error_for, sanitize};
use super::transport::{canonical, recv_datagram, same_ip, Backoff};
use super::{AnnounceError, FIRST_RTO, JOIN_REFUSED_TRIES, MAX_RTO, RECV_BUF};

/// Where the handshake stands; [`Handshake::on_reply`] is its transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// Sending JOIN (or CLAIM) with this cookie (0: none yet) to the
    /// central tracker.
    Join { cookie: u64 },
    /// SWARM_AT came back: the key's swarm exists on this port.
    Found { port: u16 },
    /// Sending CONFIRM with the OFFER's token to the swarm tracker.
    Confirm { swarm: SocketAddr, token: u64 },
    /// CONFIRMED came back: the swarm is ours.
    Done { port: u16 },
}

impl Handshake {
    /// The next step after `message` (carrying our transaction id) from
    /// `src`, or `None` to ignore it.
    pub(super) fn on_reply(
        self,
        central: SocketAddr,
        src: SocketAddr,
        message: Message,
    ) -> Option<Self> {
        let from_central = canonical(src) == canonical(central);
        match (self, message) {
            (Handshake::Join { cookie }, Message::Challenge { cookie: fresh })
                if from_central && fresh != 0 && fresh != cookie =>
            {
                // The first cookie, or a fresh one because ours expired.
                Some(Handshake::Join { cookie: fresh })
            }
            (
                Handshake::Join { .. },
                Message::Offer {
                    token,
                    port: Some(port),
                },
            ) if from_central && port != 0 => Some(Handshake::Confirm {
                swarm: SocketAddr::new(central.ip(), port),
                token,
            }),
            (Handshake::Join { .. }, Message::Offer { token, port: None })
                if !from_central && same_ip(src.ip(), central.ip()) && src.port() != 0 =>
            {
                // From the new swarm tracker's own socket: its source port is
                // the swarm port.
                Some(Handshake::Confirm {
                    swarm: SocketAddr::new(central.ip(), src.port()),
                    token,
                })
            }
            (Handshake::Join { .. }, Message::SwarmAt { port }) if from_central => {
                Some(Handshake::Found { port })
            }
            (Handshake::Confirm { swarm, .. }, Message::Confirmed)
                if canonical(src) == canonical(swarm) =>
            {
                Some(Handshake::Done { port: swarm.port() })
            }
            _ => None,
        }
    }
}

/// Creates a swarm: runs the handshake of PROTOCOL.md with the central
/// tracker at `central` on `socket` (not connected), and returns the swarm
/// tracker's port once it is confirmed.
///
/// An ERROR from the central tracker to our JOIN ends the handshake with
/// that error; ERROR 5 (a limit or a cap refused the swarm) only after
/// [`JOIN_REFUSED_TRIES`] of them, as [`AnnounceError::TrackerFull`].
///
/// Announce on the same socket afterwards ([`TrackerClient::from_socket`](super::TrackerClient::from_socket)):
/// the first ANNOUNCE must come from the address that confirmed.
pub async fn create_swarm(
    socket: &UdpSocket,
    central: SocketAddr,
    deadline: Duration,
) -> Result<u16, AnnounceError> {
    match handshake(socket, central, None, deadline).await? {
        Some(Claimed::Created(port) | Claimed::Found(port)) => Ok(port),
        None => Err(AnnounceError::Unreachable {
            tracker: central,
            waited: deadline,
        }),
    }
}

/// How [`claim_swarm`] got its swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// A new swarm, bound to our key, confirmed by us.
    Created(u16),
    /// The key's swarm already existed there (SWARM_AT).
    Found(u16),
}

impl Claimed {
    pub fn port(self) -> u16 {
        match self {
            Claimed::Created(p) | Claimed::Found(p) => p,
        }
    }
}

/// CLAIMs sent without any answer before the client decides the tracker
/// predates the extension (about 1.75 s with the backoff).
pub const CLAIM_TRIES: u32 = 3;

/// The stable-swarm extension (docs/protocol.md, CLAIM): finds the swarm of
/// `key` at the central tracker, or creates one bound to it, on `port` when
/// it is not 0. `Ok(None)`: the tracker answered none of [`CLAIM_TRIES`]
/// CLAIMs (it predates the extension, or is down): fall back to
/// [`create_swarm`]. With a `port`, an ERROR 4 (a live swarm holds it) or 5
/// (not available) ends the call at once, so the caller can ask for any
/// port instead.
pub async fn claim_swarm(
    socket: &UdpSocket,
    central: SocketAddr,
    key: [u8; 32],
    port: u16,
    deadline: Duration,
) -> Result<Option<Claimed>, AnnounceError> {
    handshake(socket, central, Some((key, port)), deadline).await
}

async fn handshake(
    socket: &UdpSocket,
    central: SocketAddr,
    claim: Option<([u8; 32], u16)>,
    deadline: Duration,
) -> Result<Option<Claimed>, AnnounceError> {
    let start = Instant::now();
    let end = start + deadline;
    // One transaction id for the whole handshake: every copy of every step.
    let tid: u32 = rand::random();
    let mut step = Handshake::Join { cookie: 0 };
    let mut refused = 0u32;
    // CLAIMs sent while nothing at all came back from the central tracker.
    let mut unanswered = 0u32;
    let mut backoff = Backoff::new(FIRST_RTO, MAX_RTO);
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::with_capacity(32);
    loop {
        let (to, message) = match (step, claim) {
            (Handshake::Join { cookie }, None) => (central, Message::Join { cookie }),
            (Handshake::Join { cookie }, Some((swarm_key, port))) => {
                if cookie == 0 {
                    if unanswered >= CLAIM_TRIES {
                        return Ok(None);
                    }
                    unanswered += 1;
                }
                (
                    central,
                    Message::Claim {
                        cookie,
                        swarm_key,
                        port,
                    },
                )
            }
            (Handshake::Confirm { swarm, token }, _) => (swarm, Message::Confirm { token }),
            (Handshake::Done { port }, _) => return Ok(Some(Claimed::Created(port))),
            (Handshake::Found { port }, _) => return Ok(Some(Claimed::Found(port))),
        };
        let now = Instant::now();
        if now >= end {
            return Err(AnnounceError::Unreachable {
                tracker: central,
                waited: now - start,
            });
        }
        out.clear();
        Datagram::new(tid, message).encode(&mut out);
        if let Err(e) = socket.send_to(&out, to).await {
            tracing::debug!("sending to the tracker at {to}: {e}");
        }
        let until = (now + backoff.next()).min(end);
        while let Some((src, d)) = recv_datagram(socket, &mut buf, until).await {
            if d.tid != tid {
                continue;
            }
            if let (Handshake::Join { cookie }, Message::Error { code, message }) =
                (step, &d.message)
            {
                // Only an answer to a JOIN with a cookie can be an ERROR.
                if cookie == 0 || canonical(src) != canonical(central) {
                    continue;
                }
                let for_port = claim.is_some_and(|(_, port)| port != 0);
                if *code != ErrorCode::RateLimited || for_port {
                    return Err(error_for(central, *code, message));
                }
                refused += 1;
                tracing::debug!("the tracker refused our JOIN ({refused}): {message}");
                if refused >= JOIN_REFUSED_TRIES {
                    return Err(AnnounceError::TrackerFull {
                        tracker: central,
                        message: sanitize(message),
                    });
                }
                // Ask again after this attempt's timeout.
                tokio::time::sleep_until(until).await;
                break;
            }
            if let Some(next) = step.on_reply(central, src, d.message) {
                tracing::debug!(?next, "swarm handshake");
                step = next;
                backoff.reset();
                break;
            }
        }
    }
}
