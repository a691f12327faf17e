//! The integration tests: one binary, one shared harness, a module per area.
#![allow(clippy::unwrap_used)]

mod dht;
mod durable;
mod events_stall;
mod faults_disk;
mod faults_fuzz_seeds;
mod faults_net;
mod faults_private;
mod faults_rogue;
mod faults_wire;
mod folders;
mod harness;
mod lab;
mod lab_nat;
mod layout;
mod peers;
mod peers_cli;
mod peers_cli_face;
mod peers_cli_output;
mod peers_disk;
mod peers_faults;
mod peers_hostile;
mod peers_part_file;
mod pex;
mod relay;
mod rogue;
mod swarm_harness;
mod tracker;
mod tracker_flood;
mod tracker_http;
mod tracker_introduce;
mod tracker_peers;
mod tracker_state;
mod tracker_sybil;
mod ui;
