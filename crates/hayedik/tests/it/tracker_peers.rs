//! A swarm tracker's peer lists over real sockets: who is listed and counted,
//! expiry, sampling, and the 1,200-byte cap.

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hayedik_proto::tracker::{ErrorCode, PeerState, Peers, MAX_PEERS_DATAGRAM, PEERS_FIXED_LEN};

use crate::harness::{ann, peers, scenario, swarm_key, Client, Joined, Tracker};

const LIMIT: Duration = Duration::from_secs(30);

/// A peer: a client socket, its connection id, and the TCP port it announces.
struct Peer {
    client: Client,
    cid: u64,
}

impl Peer {
    fn new(ip: Ipv4Addr, swarm: &Joined) -> Peer {
        let mut client = Client::on(ip);
        let cid = client.connect(swarm.swarm);
        Peer { client, cid }
    }

    fn announce(&mut self, swarm: &Joined, port: u16, state: PeerState, wanted: u16) -> Peers {
        let a = ann(swarm_key(1), port, state, wanted);
        peers(self.client.announce(swarm.swarm, self.cid, a).0)
    }
}

/// A tracker with one confirmed swarm whose key is bound by its owner
/// (announcing as a seeder on TCP port 1000).
fn bound_swarm(extra: &[&str]) -> (Tracker, Joined, Peer) {
    let t = Tracker::start(extra);
    let mut owner = Client::new();
    let j = owner.create_swarm(t.addr);
    let cid = owner.connect(j.swarm);
    let mut owner = Peer { client: owner, cid };
    let p = owner.announce(&j, 1000, PeerState::Complete, 0);
    assert_eq!((p.seeders, p.partials, p.peers.len()), (0, 0, 0));
    (t, j, owner)
}

fn listed(p: &Peers) -> BTreeSet<(SocketAddr, PeerState)> {
    p.peers.iter().map(|e| (e.addr, e.state)).collect()
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

#[test]
fn tracker_peer_lists_exclude_the_requester_and_count_states_apart() {
    scenario(LIMIT, || {
        let (t, j, mut owner) = bound_swarm(&[]);
        let mut b = Peer::new(Ipv4Addr::new(127, 0, 0, 2), &j);
        let mut c = Peer::new(Ipv4Addr::new(127, 0, 0, 3), &j);
        let p = b.announce(&j, 2000, PeerState::Downloading, 0);
        assert_eq!((p.seeders, p.partials), (1, 0), "b sees the owner only");
        assert_eq!(
            listed(&p),
            [(addr([127, 0, 0, 1], 1000), PeerState::Complete)].into()
        );
        // One IP, two TCP ports: two peers.
        c.announce(&j, 3000, PeerState::Complete, 0);
        let p = c.announce(&j, 3001, PeerState::Downloading, 0);
        assert_eq!((p.seeders, p.partials), (2, 1), "all but c:3001");
        assert_eq!(
            listed(&p),
            [
                (addr([127, 0, 0, 1], 1000), PeerState::Complete),
                (addr([127, 0, 0, 2], 2000), PeerState::Downloading),
                (addr([127, 0, 0, 3], 3000), PeerState::Complete),
            ]
            .into()
        );
        // The owner is left out of its own list and counts.
        let p = owner.announce(&j, 1000, PeerState::Complete, 0);
        assert_eq!((p.seeders, p.partials), (1, 2));
        assert_eq!(
            listed(&p),
            [
                (addr([127, 0, 0, 2], 2000), PeerState::Downloading),
                (addr([127, 0, 0, 3], 3000), PeerState::Complete),
                (addr([127, 0, 0, 3], 3001), PeerState::Downloading),
            ]
            .into()
        );
        // Finishing moves b from the partial sources to the seeders.
        let p = b.announce(&j, 2000, PeerState::Complete, 0);
        assert_eq!((p.seeders, p.partials), (2, 1));
        // Leaving: PEERS with the counts and no peers; then gone.
        let p = c.announce(&j, 3001, PeerState::Leaving, 0);
        assert_eq!((p.seeders, p.partials), (3, 0));
        assert!(p.peers.is_empty(), "state 3 gets no peers: {p:?}");
        // Only asking (state 0, port 0) lists nobody new.
        let mut asker = Peer::new(Ipv4Addr::new(127, 0, 0, 4), &j);
        let p = asker.announce(&j, 0, PeerState::Asking, 0);
        assert_eq!((p.seeders, p.partials), (3, 0));
        assert_eq!(
            listed(&p),
            [
                (addr([127, 0, 0, 1], 1000), PeerState::Complete),
                (addr([127, 0, 0, 2], 2000), PeerState::Complete),
                (addr([127, 0, 0, 3], 3000), PeerState::Complete),
            ]
            .into()
        );
        t.stop();
    });
}

#[test]
fn tracker_silent_peers_expire_after_twice_the_interval() {
    scenario(LIMIT, || {
        let (t, j, mut owner) = bound_swarm(&["--announce-interval", "1"]);
        let mut b = Peer::new(Ipv4Addr::new(127, 0, 0, 2), &j);
        let p = b.announce(&j, 2000, PeerState::Downloading, 0);
        let announced = Instant::now();
        assert_eq!(p.interval, 1);
        // The owner keeps announcing (so it stays) and watches b.
        let deadline = announced + Duration::from_secs(6);
        let gone_after = loop {
            let p = owner.announce(&j, 1000, PeerState::Complete, 0);
            let b_listed = p.peers.iter().any(|e| e.addr == addr([127, 0, 0, 2], 2000));
            assert_eq!(p.partials, u32::from(b_listed));
            if !b_listed {
                break announced.elapsed();
            }
            assert!(Instant::now() < deadline, "b still listed after 6 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            gone_after >= Duration::from_secs(2),
            "b dropped after {gone_after:?}, before twice the interval"
        );
        // The owner, announcing all along, is still listed for b.
        let p = b.announce(&j, 2000, PeerState::Downloading, 0);
        assert_eq!((p.seeders, p.partials), (1, 0));
        t.stop();
    });
}

/// Registers `per_client` peers (TCP ports `base..`) from each client.
fn populate(j: &Joined, clients: &mut [Peer], per_client: u16) -> HashSet<SocketAddr> {
    let mut all = HashSet::new();
    for (i, peer) in clients.iter_mut().enumerate() {
        let ip = match peer.client.addr() {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => unreachable!("clients are IPv4"),
        };
        for k in 0..per_client {
            let port = 10_000 + u16::try_from(i).unwrap() * 100 + k;
            let state = if k % 3 == 0 {
                PeerState::Complete
            } else {
                PeerState::Downloading
            };
            peer.announce(j, port, state, 1);
            all.insert(SocketAddr::from((ip, port)));
        }
    }
    all
}

/// Eight clients: one on 127.0.0.1 (beside the owner) and seven on other
/// loopback IPs, so that no IP lists more than the default
/// `--max-peers-per-ip` (32) ports.
fn many_clients(j: &Joined) -> Vec<Peer> {
    let mut clients = vec![Peer::new(Ipv4Addr::LOCALHOST, j)];
    for last in 2..=8 {
        clients.push(Peer::new(Ipv4Addr::new(127, 0, 0, last), j));
    }
    clients
}

#[test]
fn tracker_samples_a_large_swarm_fairly() {
    scenario(LIMIT, || {
        let (t, j, mut owner) = bound_swarm(&[]);
        let mut clients = many_clients(&j);
        let everyone = populate(&j, &mut clients, 12);
        assert_eq!(everyone.len(), 96);
        let me = addr([127, 0, 0, 1], 1000);
        let mut seen = HashSet::new();
        let mut subsets = HashSet::new();
        let mut rounds = 0;
        while seen.len() < everyone.len() {
            rounds += 1;
            assert!(
                rounds <= 300,
                "after 300 samples of 8, only {} of 96 peers were ever listed",
                seen.len()
            );
            let p = owner.announce(&j, 1000, PeerState::Complete, 8);
            assert_eq!(p.seeders + p.partials, 96, "counts leave out the owner");
            assert_eq!(p.peers.len(), 8);
            let addrs: BTreeSet<SocketAddr> = p.peers.iter().map(|e| e.addr).collect();
            assert_eq!(addrs.len(), 8, "no peer twice in one sample");
            assert!(!addrs.contains(&me), "the requester is never listed");
            assert!(addrs.iter().all(|a| everyone.contains(a)));
            seen.extend(addrs.iter().copied());
            subsets.insert(addrs);
        }
        assert!(subsets.len() > 1, "every sample was the same subset");
        t.stop();
    });
}

#[test]
fn tracker_peers_reply_fits_in_1200_bytes() {
    scenario(LIMIT, || {
        let (t, j, mut owner) = bound_swarm(&[]);
        let mut clients = many_clients(&j);
        let everyone = populate(&j, &mut clients, 25);
        assert_eq!(everyone.len(), 200);
        let a = ann(swarm_key(1), 1000, PeerState::Complete, 0xFFFF);
        let (m, len) = owner.client.announce(j.swarm, owner.cid, a);
        assert!(len <= MAX_PEERS_DATAGRAM, "PEERS of {len} bytes");
        let p = peers(m);
        assert_eq!(p.peers.len(), (MAX_PEERS_DATAGRAM - PEERS_FIXED_LEN) / 8);
        assert_eq!(p.seeders + p.partials, 200);
        // 0 asks for the tracker's default, also within the cap.
        let (m, len) = owner.client.announce(
            j.swarm,
            owner.cid,
            ann(swarm_key(1), 1000, PeerState::Complete, 0),
        );
        assert!(len <= MAX_PEERS_DATAGRAM);
        assert!(!peers(m).peers.is_empty());
        t.stop();
    });
}

#[test]
fn tracker_full_swarm_refuses_new_peers_with_error_5() {
    scenario(LIMIT, || {
        let (t, j, mut owner) = bound_swarm(&["--max-peers-per-swarm", "2"]);
        let mut b = Peer::new(Ipv4Addr::new(127, 0, 0, 2), &j);
        b.announce(&j, 2000, PeerState::Downloading, 0);
        let a = ann(swarm_key(1), 2001, PeerState::Downloading, 0);
        let (m, _) = b.client.announce(j.swarm, b.cid, a);
        assert_eq!(crate::harness::error_code(&m), ErrorCode::RateLimited);
        // Listed peers still refresh, and asking is always answered.
        let p = owner.announce(&j, 1000, PeerState::Complete, 0);
        assert_eq!((p.seeders, p.partials), (0, 1));
        let p = b.announce(&j, 0, PeerState::Asking, 0);
        assert_eq!((p.seeders, p.partials), (1, 1));
        t.stop();
    });
}

#[test]
fn tracker_one_ip_lists_at_most_max_peers_per_ip() {
    scenario(LIMIT, || {
        let (t, j, mut owner) = bound_swarm(&["--max-peers-per-ip", "3"]);
        // The owner's port 1000 is one of 127.0.0.1's three.
        owner.announce(&j, 1001, PeerState::Complete, 0);
        owner.announce(&j, 1002, PeerState::Complete, 0);
        let a = ann(swarm_key(1), 1003, PeerState::Complete, 0);
        let (m, _) = owner.client.announce(j.swarm, owner.cid, a);
        assert_eq!(crate::harness::error_code(&m), ErrorCode::RateLimited);
        // Another socket of the same IP counts for the same IP...
        let mut same_ip = Peer::new(Ipv4Addr::LOCALHOST, &j);
        let a = ann(swarm_key(1), 3000, PeerState::Downloading, 0);
        let (m, _) = same_ip.client.announce(j.swarm, same_ip.cid, a);
        assert_eq!(crate::harness::error_code(&m), ErrorCode::RateLimited);
        // ...and may still ask for the list.
        let p = same_ip.announce(&j, 0, PeerState::Asking, 0);
        assert_eq!((p.seeders, p.partials), (3, 0));
        // Another IP is listed; a port that leaves frees a slot.
        let mut b = Peer::new(Ipv4Addr::new(127, 0, 0, 2), &j);
        let p = b.announce(&j, 2000, PeerState::Downloading, 0);
        assert_eq!(p.seeders, 3);
        owner.announce(&j, 1002, PeerState::Leaving, 0);
        let p = same_ip.announce(&j, 3000, PeerState::Downloading, 0);
        assert_eq!((p.seeders, p.partials), (2, 1));
        t.stop();
    });
}
