//! The integration tests: one binary, one shared harness, a module per area.
#![allow(clippy::unwrap_used)]

mod harness;
mod tracker;
mod tracker_flood;
mod tracker_peers;
mod tracker_state;
