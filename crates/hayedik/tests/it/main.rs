//! The integration tests: one binary, one shared harness, a module per area.
#![allow(clippy::unwrap_used)]

mod faults_disk;
mod faults_fuzz_seeds;
mod faults_net;
mod faults_rogue;
mod harness;
mod lab;
mod rogue;
mod tracker;
mod tracker_flood;
mod tracker_peers;
mod tracker_state;
