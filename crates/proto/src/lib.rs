//! hayedik's wire formats, with no I/O: the tracker's UDP datagrams
//! ([`tracker`]), the peer wire protocol over TCP ([`peer`]), the content
//! manifest ([`manifest`]) and the share ticket ([`ticket`]), and the hex
//! codec they all use ([`hex`]). Decoders are
//! total functions over bytes built on the checked readers of [`codec`], so
//! they are tested and fuzzed on their own.

pub mod codec;
pub mod hex;
pub mod manifest;
pub mod peer;
pub mod relay;
pub mod ticket;
pub mod tracker;
