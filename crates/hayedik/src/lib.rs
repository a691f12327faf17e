//! hayedik: lightweight peer-to-peer file sharing.
//!
//! The original design's roles, one module each: [`tracker`] (the central
//! tracker and its swarm trackers), the peer (client and server), and
//! [`storage`]. Wire formats live in the `hayedik-proto` crate.

pub mod cli;
pub mod demo;
pub mod dirs;
pub mod events;
pub mod output;
pub mod peer;
pub mod portmap;
pub mod ratelimit;
pub mod relay;
pub mod spawn;
pub mod storage;
pub mod tracker;
pub mod ui;
