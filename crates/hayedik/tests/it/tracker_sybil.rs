//! Many identities against one tracker, through the real binaries: one
//! address announcing thousands of ports into a swarm's peer table, and many
//! addresses creating swarms until the tracker is full.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hayedik_proto::ticket::Ticket;
use hayedik_proto::tracker::{Announce, Datagram, ErrorCode, Message, PeerState};

use crate::harness::Client;
use crate::swarm_harness::{assert_same_file, scenario, tempdir, write_random, Node, MIB};

/// Announces `count` TCP ports (`1..=count`, as seeders) into `swarm` from
/// one UDP socket on `ip`, in batches of 100 each followed by their replies;
/// returns how many were listed (PEERS) and refused (ERROR 5).
fn flood_ports(ip: Ipv4Addr, swarm: SocketAddr, key: [u8; 32], count: u16) -> (usize, usize) {
    let mut f = Client::on(ip);
    let cid = f.connect(swarm);
    let (mut listed, mut refused) = (0, 0);
    let ports: Vec<u16> = (1..=count).collect();
    for batch in ports.chunks(100) {
        for &port in batch {
            let tid = f.tid();
            let announce = Announce {
                swarm_key: key,
                port,
                state: PeerState::Complete,
                wanted: 1,
            };
            f.send(
                swarm,
                &Datagram::new(
                    tid,
                    Message::Announce {
                        connection_id: cid,
                        announce,
                    },
                ),
            );
        }
        for _ in batch {
            let Some((bytes, _)) = f.recv_within(Duration::from_secs(2)) else {
                break;
            };
            match Datagram::decode(&bytes).map(|d| d.message) {
                Ok(Message::Peers(_)) => listed += 1,
                Ok(Message::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }) => refused += 1,
                other => panic!("unexpected reply to the flood: {other:?}"),
            }
        }
    }
    (listed, refused)
}

/// Issue 11, item 4: one UDP socket announced 10,000 ports and filled the
/// swarm's peer table; every new peer then got ERROR 5 and an honest getter
/// never found the sharer. Now one address lists at most
/// `--max-peers-per-ip` ports (32) and the getter downloads.
#[test]
fn tracker_one_address_flooding_ports_cannot_lock_out_a_getter() {
    scenario(Duration::from_secs(90), || {
        let work = tempdir();
        let (path, data) = write_random(work.path(), "sybil.bin", MIB, 41);
        let (_tracker, central) = Node::tracker();
        let tracker_arg = format!("127.0.0.1:{}", central.port());
        let mut sharer = Node::share("sharer", &path, &["--tracker", &tracker_arg]);
        let ticket_text = sharer.ticket()["ticket"].as_str().unwrap().to_string();
        let ticket: Ticket = ticket_text.parse().unwrap();
        let swarm = SocketAddr::new(central.ip(), ticket.port);

        let started = Instant::now();
        let (listed, refused) = flood_ports(
            Ipv4Addr::new(127, 0, 0, 2),
            swarm,
            ticket.swarm_key(),
            10_000,
        );
        eprintln!(
            "10,000 ports from one address in {:?}: {listed} listed, {refused} refused",
            started.elapsed()
        );

        let mut getter = Node::get(
            "getter",
            &ticket_text,
            &work.path().join("got"),
            &["--no-seed"],
        );
        let done = getter.done(Duration::from_secs(20));
        getter.expect_success();
        assert_same_file(&done.path, &data);
        assert!(
            listed <= 32,
            "{listed} ports of one address listed (the default cap is 32)"
        );
        sharer.stop();
    });
}
