//! The peer: a client that is also a server.
//!
//! - [`announce`]: the tracker protocol from the peer's side (creating a
//!   swarm, announcing, the announce loop).
//! - [`node`]: the TCP listener and the connector that dials listed peers;
//!   [`pex`] tells connected peers about each other (peer exchange).
//! - [`session`]: one connection with a remote peer, both directions: its
//!   protocol state machine and the thin I/O loop that runs it;
//!   [`secure`] is the encrypted channel (TLS 1.3) it runs in,
//!   [`handshake`] proves inside it that both sides hold the ticket; [`wire`] is the
//!   framing and the reader task, [`serve`] the writer task; [`disk`] writes and hashes what all
//!   sessions of a download receive ([`bufpool`] recycles its buffers).
//! - [`swarm`]: what all sessions of one content share: [`content`] once
//!   known, [`pieces`] (the one owner of piece state: held, wanted,
//!   fetched, written, strikes and bans), [`fatal`] errors, [`rate`] caps.
//!
//! Dependencies run one way: `session` -> `wire`, `disk` -> `pieces`,
//! `content`, `bufpool`; nothing below `swarm` knows it.
//! - [`share`], [`get`]: the two commands' lifecycles; [`hashing`] builds the
//!   manifest; [`progress`] shows what happens.

pub mod announce;
pub mod bufpool;
pub mod content;
pub mod disk;
pub mod fatal;
pub mod get;
pub mod guard;
pub mod handshake;
pub mod hashing;
pub mod ls;
pub mod node;
pub mod pex;
pub mod pieces;
pub mod progress;
pub mod punch;
pub mod rate;
pub mod reach;
pub mod readbuf;
pub mod remembered;
pub mod revive;
pub mod secure;
pub mod select;
pub mod serve;
pub mod session;
pub mod share;
pub mod slots;
pub mod swarm;
pub mod wire;

use std::net::SocketAddr;

use anyhow::{anyhow, Context};

/// Resolves `host:port` (a DNS name, an IPv4 or a bracketed IPv6 host).
pub async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((bare, port))
        .await
        .with_context(|| format!("cannot resolve {host}: check the host name"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address: check the host name"))
}

/// A UDP socket of the right family to talk to `to`. Where the system
/// has SO_REUSEPORT, it is set, so that hole punching's QUIC socket can
/// share its port (`punch`).
pub async fn udp_socket_for(to: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    #[cfg(unix)]
    {
        punch::reusable_udp(any).context("opening a UDP socket for the tracker")
    }
    #[cfg(not(unix))]
    {
        tokio::net::UdpSocket::bind(any)
            .await
            .context("opening a UDP socket for the tracker")
    }
}
