//! The peer's side of the tracker protocol (PROTOCOL.md): creating a swarm,
//! announcing to it, and the announce loop.
//!
//! - [`create_swarm`] runs the handshake with the central tracker on a socket
//!   the caller owns: JOIN, CHALLENGE, JOIN with the cookie, OFFER (from the
//!   swarm port or from the central port, whichever arrives first), CONFIRM to
//!   the swarm port, CONFIRMED. The caller then hands the same socket to
//!   [`TrackerClient::from_socket`]: until the swarm key is bound, only the
//!   address that confirmed may announce.
//! - [`TrackerClient`] owns one UDP socket, the swarm tracker's address, the
//!   swarm key and the TCP port it announces, and a cached connection id;
//!   [`TrackerClient::announce`] does CONNECT when needed, then ANNOUNCE.
//! - [`spawn_announcer`] runs a [`TrackerClient`] on its own task: it announces
//!   at once, then every interval the tracker gives, publishes every reply on
//!   a `watch` channel, and says "leaving" (state 3) when it stops.
//!
//! Retry policy. UDP loses datagrams, so every request is retransmitted when
//! no answer came within a retransmission timeout that starts at 250 ms and
//! doubles up to 4 s, each with ±20 % jitter, until a per-call deadline
//! (the handshake's `deadline`, [`TrackerClient::set_deadline`]); then the
//! call fails with [`AnnounceError::Unreachable`]. A retransmission keeps its
//! transaction id (and for a JOIN its cookie), so a late answer to an earlier
//! copy is accepted and a retransmitted JOIN gets the same OFFER instead of a
//! second swarm. A datagram from an unexpected source, with another
//! transaction id, of an unexpected type, or that does not decode is ignored:
//! it neither ends a wait nor derails a handshake. A connection id is reused
//! for [`CONN_ID_MAX_AGE`] (the tracker honours it for at least two minutes)
//! and renewed at once when the tracker answers ERROR 3. ERROR 6 is retried a
//! few times ([`NOT_CONFIRMED_TRIES`]); ERRORs 1, 2, 4 and 5 end the call with
//! a clear error. The announce loop retries a failed call after 1 s, doubling
//! up to 60 s, and shows the latest failure to its owner; when a listed state
//! gets ERROR 5 (the swarm, or our address's share of it, is full) it asks
//! again with state 0 at once, so it still gets peers, and shows the ERROR.
//!
//! Layout: [`create`](create_swarm) runs the handshake, `client`
//! ([`TrackerClient`]) one ANNOUNCE call, `announcer` ([`spawn_announcer`])
//! the loop; `transport` holds the datagram plumbing they share
//! (retransmission backoff, receiving, address folding) and `error` what
//! they fail with.

use std::time::Duration;

mod announcer;
mod client;
mod create;
mod error;
mod transport;

#[cfg(test)]
mod tests;

pub use announcer::{spawn_announcer, Announcer, FlagsHandle};
pub use client::{AnnounceReply, ExtReply, TrackerClient};
pub use create::{claim_swarm, create_swarm, Claimed, CLAIM_TRIES};
pub use error::{AnnounceError, CreateError};

/// First retransmission timeout.
pub const FIRST_RTO: Duration = Duration::from_millis(250);
/// Largest retransmission timeout.
pub const MAX_RTO: Duration = Duration::from_secs(4);
/// Default deadline of one [`TrackerClient::announce`] call.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(5);
/// A connection id older than this is renewed before use (the tracker
/// accepts it for at least 120 s).
pub const CONN_ID_MAX_AGE: Duration = Duration::from_secs(100);
/// ANNOUNCEs answered with ERROR 6 before giving up.
pub const NOT_CONFIRMED_TRIES: u32 = 3;
/// ERROR 3 answers to a fresh connection id before giving up.
const BAD_ID_TRIES: u32 = 3;
/// ERROR 5 answers to a JOIN before giving up: a rate limit passes within
/// a retransmission or two, a full tracker does not.
pub const JOIN_REFUSED_TRIES: u32 = 3;
/// Deadline of the best-effort "leaving" announce.
pub const LEAVE_DEADLINE: Duration = Duration::from_secs(2);
/// The announce loop never announces more often than this, whatever the
/// tracker says.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// First and largest pause of the announce loop after a failed call.
const LOOP_RETRY_FIRST: Duration = Duration::from_secs(1);
const LOOP_RETRY_MAX: Duration = Duration::from_secs(60);
/// Receive buffer: a PEERS datagram is at most 1,200 bytes.
const RECV_BUF: usize = 2048;
/// Longest tracker message kept in an error.
const MAX_MESSAGE: usize = 200;
