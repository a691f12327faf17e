//! The relay that `hayedik tracker --relay` serves on TCP (docs/relay.md):
//! a peer nobody can reach keeps a control connection to it and is listed
//! as reachable through it; a getter dials the relay and asks to be spliced
//! to that peer; the relay then copies bytes both ways and sees only the
//! peer wire's TLS records.
//!
//! - [`book`]: registrations, sessions, caps and rate limit, without sockets.
//! - [`server`]: the accept loop, one task per connection, the splice.
//! - [`client`]: the peer's side: registering, taking sessions, dialing.

pub mod book;
pub mod client;
pub mod server;

pub use book::RelayLimits;
pub use server::serve;

/// The key a peer registers under and a getter dials, from the content root.
pub fn relay_key(root: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(hayedik_proto::relay::RELAY_KEY_CONTEXT, root)
}
