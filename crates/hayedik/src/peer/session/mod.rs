//! One session with a remote peer over TCP, in both directions at once: we
//! fetch the pieces it has that we lack, and serve it the pieces we hold.
//!
//! - [`state`]: the protocol logic, without sockets or clocks (unit-tested
//!   in `tests.rs`);
//! - [`io`]: the thin loop that runs it on a connection: the handshake,
//!   then three tasks, so that no side can deadlock the other (the reader
//!   decodes frames, the writer sends frames and serves blocks, the loop
//!   feeds the state and carries out its commands).
//!
//! A fetched piece is streamed: its blocks are requested in order from one
//! peer and handed as they arrive to the download's disk thread
//! ([`super::disk`]), which writes them at their offset and hashes them
//! incrementally; the piece is held only when the whole-piece hash matches
//! the manifest. Nothing unverified is ever served or counted as done.

pub mod io;
pub mod state;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

pub use io::{run, run_over};
pub use state::{BLOCK_SIZE, MAX_REMOTE_QUEUE, PIPELINE_BLOCKS};

use super::fatal::Fatal;
use super::secure::SecureError;
use super::wire::WireError;

/// Time allowed for the whole handshake (TLS and the proofs inside).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that sends nothing at all for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("handshake with {peer} timed out")]
    HandshakeTimeout { peer: SocketAddr },
    #[error("{peer} does not serve this swarm")]
    OtherSwarm { peer: SocketAddr },
    #[error("{peer} sent a wrong proof: it does not hold the ticket")]
    BadProof { peer: SocketAddr },
    #[error("{peer} broke the protocol: {what}")]
    Protocol { peer: SocketAddr, what: String },
    #[error("{peer} said goodbye: {reason}")]
    Goodbye { peer: SocketAddr, reason: String },
    #[error("{peer} is banned")]
    Banned { peer: SocketAddr },
    #[error("{peer} stalled")]
    Stalled { peer: SocketAddr },
    #[error("connection to {peer}: {source}")]
    Wire { peer: SocketAddr, source: WireError },
    /// No secure channel (TLS failed, or a version 1 peer).
    #[error("connection to {peer}: {source}")]
    Secure {
        peer: SocketAddr,
        source: SecureError,
    },
    /// The download stopped (already recorded in the swarm).
    #[error("{0}")]
    Fatal(Fatal),
}

impl SessionError {
    /// Whether the peer broke the protocol or lied (as opposed to leaving,
    /// a network failure, or our own shutdown).
    pub fn is_peers_fault(&self) -> bool {
        match self {
            SessionError::BadProof { .. }
            | SessionError::Protocol { .. }
            | SessionError::Banned { .. } => true,
            SessionError::Wire { source, .. } => {
                matches!(source, WireError::Frame(_) | WireError::Tls(_))
            }
            _ => false,
        }
    }
}
