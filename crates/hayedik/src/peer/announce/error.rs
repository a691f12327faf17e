//! What talking to a tracker fails with: [`AnnounceError`] (every message
//! says what to do) and [`CreateError`], and the mapping from the
//! protocol's ERROR codes.

use std::net::SocketAddr;
use std::time::Duration;

use hayedik_proto::tracker::ErrorCode;

use super::MAX_MESSAGE;

/// Why talking to a tracker failed. Every message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error(
        "no answer from the tracker at {tracker} within {:.1} s: is the tracker running? \
         check the tracker's HOST:PORT and the network (UDP must get through)",
        waited.as_secs_f64()
    )]
    Unreachable {
        tracker: SocketAddr,
        waited: Duration,
    },
    /// ERROR 4.
    #[error("the tracker at {tracker} serves another swarm on that port: check the ticket")]
    WrongSwarm { tracker: SocketAddr },
    /// ERROR 6, again and again.
    #[error(
        "swarm not confirmed yet at {tracker} (or being retired): check the ticket, \
         or retry in a moment"
    )]
    NotConfirmed { tracker: SocketAddr },
    /// ERROR 5.
    #[error("swarm is full at {tracker} (or the tracker is over capacity): retry later")]
    SwarmFull { tracker: SocketAddr },
    /// ERROR 5 to a JOIN, again and again: the central tracker refuses to
    /// create a swarm.
    #[error(
        "the tracker at {tracker} is full and creates no swarm for us now{}{message}{}: \
         try again later, or use another tracker",
        if message.is_empty() { "" } else { " (it says: " },
        if message.is_empty() { "" } else { ")" }
    )]
    TrackerFull {
        tracker: SocketAddr,
        /// The tracker's message, control characters replaced.
        message: String,
    },
    /// ERROR 1, 2, an unknown code, or ERROR 3 for a fresh connection id.
    #[error(
        "protocol error with the tracker at {tracker}: {} (error {code}{}{message})",
        reason(*code),
        if message.is_empty() { "" } else { ": " }
    )]
    Protocol {
        tracker: SocketAddr,
        code: u16,
        /// The tracker's message, control characters replaced.
        message: String,
    },
}

fn reason(code: u16) -> &'static str {
    match code {
        1 => "it speaks another protocol version; update hayedik or the tracker",
        2 => "it found our request malformed",
        3 => "it keeps refusing fresh connection ids",
        _ => "unexpected error code",
    }
}

pub(super) fn error_for(tracker: SocketAddr, code: ErrorCode, message: &str) -> AnnounceError {
    match code {
        ErrorCode::WrongSwarmKey => AnnounceError::WrongSwarm { tracker },
        ErrorCode::NotConfirmed => AnnounceError::NotConfirmed { tracker },
        ErrorCode::RateLimited => AnnounceError::SwarmFull { tracker },
        code => AnnounceError::Protocol {
            tracker,
            code: code.to_u16(),
            message: sanitize(message),
        },
    }
}

/// Keeps a remote message printable on one line and short.
pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Why [`TrackerClient::create`](super::TrackerClient::create) failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("cannot open a UDP socket to talk to the tracker: {0}")]
    Bind(#[source] std::io::Error),
    #[error(transparent)]
    Tracker(#[from] AnnounceError),
}
