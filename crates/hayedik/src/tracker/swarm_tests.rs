#![allow(clippy::unwrap_used)]

use super::*;
use hayedik_proto::tracker::{Announce, PeerState};

fn settings() -> SwarmSettings {
    SwarmSettings {
        interval: Duration::from_secs(60),
        max_peers: 1000,
        max_peers_per_source: 32,
        relay: hayedik_proto::tracker::RelayAddr::SameHost(7410),
        external: None,
        max_listed: usize::MAX,
    }
}

fn new_swarm(now: Instant) -> SwarmTracker {
    let record = SwarmRecord {
        port: 5000,
        creator: None,
        token: 77,
        confirmer: None,
        key: None,
        last_announce_unix: 0,
    };
    SwarmTracker::new(record, false, settings(), now)
}

fn reply(s: &mut SwarmTracker, src: SocketAddr, d: &Datagram, now: Instant) -> Option<Message> {
    let mut out = Vec::new();
    s.handle(src, &d.to_vec(), now, &mut out);
    (!out.is_empty()).then(|| Datagram::decode(&out).unwrap().message)
}

fn announce(cid: u64, key: [u8; 32], port: u16, state: PeerState) -> Datagram {
    Datagram::new(
        1,
        Message::Announce {
            connection_id: cid,
            announce: Announce {
                swarm_key: key,
                port,
                state,
                wanted: 0,
            },
        },
    )
}

#[test]
fn confirm_then_announce_binds_key() {
    let now = Instant::now();
    let mut s = new_swarm(now);
    let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    // Wrong token: silence.
    assert_eq!(
        reply(
            &mut s,
            a,
            &Datagram::new(1, Message::Confirm { token: 1 }),
            now
        ),
        None
    );
    // Not confirmed: CONNECT is 20 bytes, ERROR 6 would be 22: silence.
    assert_eq!(
        reply(&mut s, a, &Datagram::new(1, Message::Connect), now),
        None
    );
    // ANNOUNCE is big enough for ERROR 6.
    let m = reply(
        &mut s,
        a,
        &announce(1, [1; 32], 1, PeerState::Complete),
        now,
    )
    .unwrap();
    assert!(matches!(
        m,
        Message::Error {
            code: ErrorCode::NotConfirmed,
            ..
        }
    ));
    assert_eq!(
        reply(
            &mut s,
            a,
            &Datagram::new(1, Message::Confirm { token: 77 }),
            now
        ),
        Some(Message::Confirmed)
    );
    // A repeated CONFIRM gets CONFIRMED again.
    assert_eq!(
        reply(
            &mut s,
            a,
            &Datagram::new(1, Message::Confirm { token: 77 }),
            now
        ),
        Some(Message::Confirmed)
    );
    let cid = s.connection_id(a, now);
    assert_eq!(
        reply(&mut s, a, &Datagram::new(1, Message::Connect), now),
        Some(Message::Connected { connection_id: cid })
    );
    // Another address may not bind the key first.
    let b: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let cid_b = s.connection_id(b, now);
    let m = reply(
        &mut s,
        b,
        &announce(cid_b, [1; 32], 1, PeerState::Complete),
        now,
    )
    .unwrap();
    assert!(matches!(
        m,
        Message::Error {
            code: ErrorCode::WrongSwarmKey,
            ..
        }
    ));
    let m = reply(
        &mut s,
        a,
        &announce(cid, [1; 32], 6000, PeerState::Complete),
        now,
    )
    .unwrap();
    assert!(matches!(m, Message::Peers(ref p) if p.seeders == 0 && p.peers.is_empty()));
    assert_eq!(s.record.key, Some([1; 32]));
    // Now b may announce with the right key, and sees a.
    let m = reply(
        &mut s,
        b,
        &announce(cid_b, [1; 32], 7000, PeerState::Downloading),
        now,
    )
    .unwrap();
    let Message::Peers(p) = m else { panic!() };
    assert_eq!((p.seeders, p.partials), (1, 0));
    assert_eq!(p.peers.len(), 1);
    assert_eq!(p.peers[0].addr, "127.0.0.1:6000".parse().unwrap());
    // Wrong key afterwards.
    let m = reply(
        &mut s,
        b,
        &announce(cid_b, [2; 32], 7000, PeerState::Downloading),
        now,
    )
    .unwrap();
    assert!(matches!(
        m,
        Message::Error {
            code: ErrorCode::WrongSwarmKey,
            ..
        }
    ));
}

#[test]
fn bad_connection_ids_refused() {
    let now = Instant::now();
    let mut s = new_swarm(now);
    let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    reply(
        &mut s,
        a,
        &Datagram::new(1, Message::Confirm { token: 77 }),
        now,
    );
    let cid = s.connection_id(a, now);
    let m = reply(
        &mut s,
        a,
        &announce(cid ^ 1, [1; 32], 1, PeerState::Complete),
        now,
    )
    .unwrap();
    assert!(matches!(
        m,
        Message::Error {
            code: ErrorCode::BadConnectionId,
            ..
        }
    ));
    // Expired: more than two windows later.
    let later = now + Duration::from_secs(2 * CONNECTION_ID_WINDOW_SECS + 1);
    let m = reply(
        &mut s,
        a,
        &announce(cid, [1; 32], 1, PeerState::Complete),
        later,
    )
    .unwrap();
    assert!(matches!(
        m,
        Message::Error {
            code: ErrorCode::BadConnectionId,
            ..
        }
    ));
    // Still valid within the first window.
    let soon = now + Duration::from_secs(CONNECTION_ID_WINDOW_SECS);
    let m = reply(
        &mut s,
        a,
        &announce(cid, [1; 32], 1, PeerState::Complete),
        soon,
    )
    .unwrap();
    assert!(matches!(m, Message::Peers(_)));
}

#[test]
fn peers_fit_in_1200_bytes() {
    let now = Instant::now();
    let mut s = new_swarm(now);
    let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    reply(
        &mut s,
        a,
        &Datagram::new(1, Message::Confirm { token: 77 }),
        now,
    );
    let cid = s.connection_id(a, now);
    reply(
        &mut s,
        a,
        &announce(cid, [1; 32], 1, PeerState::Complete),
        now,
    );
    for n in 0..300u32 {
        let src = SocketAddr::new(std::net::IpAddr::from((0x0A00_0000 + n).to_be_bytes()), 1);
        let cid = s.connection_id(src, now);
        reply(
            &mut s,
            src,
            &announce(cid, [1; 32], 2, PeerState::Downloading),
            now,
        );
    }
    let mut d = announce(cid, [1; 32], 1, PeerState::Complete);
    if let Message::Announce { announce, .. } = &mut d.message {
        announce.wanted = 1000;
    }
    let mut out = Vec::new();
    s.handle(a, &d.to_vec(), now, &mut out);
    assert!(out.len() <= MAX_PEERS_DATAGRAM);
    let Message::Peers(p) = Datagram::decode(&out).unwrap().message else {
        panic!()
    };
    assert_eq!(p.peers.len(), (MAX_PEERS_DATAGRAM - PEERS_FIXED_LEN) / 8);
    assert_eq!((p.seeders, p.partials), (0, 300));
}

/// A confirmed swarm whose key ([1; 32]) is bound by `owner`, a seeder on
/// TCP port 6000.
fn bound_swarm(owner: SocketAddr, now: Instant) -> SwarmTracker {
    let mut s = new_swarm(now);
    reply(
        &mut s,
        owner,
        &Datagram::new(1, Message::Confirm { token: 77 }),
        now,
    );
    let cid = s.connection_id(owner, now);
    let m = reply(
        &mut s,
        owner,
        &announce(cid, [1; 32], 6000, PeerState::Complete),
        now,
    );
    assert!(matches!(m, Some(Message::Peers(_))), "{m:?}");
    s
}

/// Issue 11, item 4: one address announcing 10,000 ports filled the peer
/// table and every new peer got ERROR 5. Now that address gets ERROR 5
/// after its 32nd port and a getter from elsewhere is listed and sees the
/// sharer.
#[test]
fn one_address_cannot_fill_the_swarm() {
    let now = Instant::now();
    let owner: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let mut s = bound_swarm(owner, now);
    let flooder: SocketAddr = "127.0.0.2:9000".parse().unwrap();
    let cid = s.connection_id(flooder, now);
    let mut refused = 0;
    for port in 1..=10_000u16 {
        match reply(
            &mut s,
            flooder,
            &announce(cid, [1; 32], port, PeerState::Complete),
            now,
        ) {
            Some(Message::Peers(_)) => {}
            Some(Message::Error {
                code: ErrorCode::RateLimited,
                message,
            }) => {
                assert!(message.contains("your address"), "{message}");
                refused += 1;
            }
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(refused, 10_000 - 32);
    assert_eq!(s.peer_count(), 33);
    let getter: SocketAddr = "127.0.0.3:9000".parse().unwrap();
    let cid = s.connection_id(getter, now);
    let Some(Message::Peers(p)) = reply(
        &mut s,
        getter,
        &announce(cid, [1; 32], 7000, PeerState::Downloading),
        now,
    ) else {
        panic!("the getter was refused")
    };
    assert_eq!((p.seeders, p.partials), (33, 0));
    assert!(p
        .peers
        .iter()
        .any(|e| e.addr == "127.0.0.1:6000".parse().unwrap()));
    assert_eq!(s.peer_count(), 34);
}

/// Also reported in issue 11: another socket on the sharer's IP could
/// delist the sharer (identity is IP and TCP port). Only the socket that
/// listed an entry may now remove or downgrade it.
#[test]
fn a_neighbour_on_the_same_ip_cannot_delist_the_sharer() {
    let now = Instant::now();
    let owner: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let mut s = bound_swarm(owner, now);
    let neighbour: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let cid = s.connection_id(neighbour, now);
    for state in [
        PeerState::Leaving,
        PeerState::Downloading,
        PeerState::Asking,
    ] {
        let m = reply(&mut s, neighbour, &announce(cid, [1; 32], 6000, state), now);
        assert!(matches!(m, Some(Message::Peers(_))), "{m:?}");
    }
    let getter: SocketAddr = "127.0.0.3:9000".parse().unwrap();
    let cid = s.connection_id(getter, now);
    let Some(Message::Peers(p)) = reply(
        &mut s,
        getter,
        &announce(cid, [1; 32], 0, PeerState::Asking),
        now,
    ) else {
        panic!()
    };
    assert_eq!(
        (p.seeders, p.partials),
        (1, 0),
        "the sharer is still a seeder"
    );
    // The sharer's own socket still leaves.
    let cid = s.connection_id(owner, now);
    reply(
        &mut s,
        owner,
        &announce(cid, [1; 32], 6000, PeerState::Leaving),
        now,
    );
    assert_eq!(s.peer_count(), 0);
}

/// Issue 11, item 5: swarms that nobody ever announced to lived until
/// `--retire-after` (30 days), so a flood of confirmed swarms held the
/// tracker's slots for a month. A confirmed swarm whose key no ANNOUNCE
/// bound is now retired after `unannounced`; an announced one is kept.
#[test]
fn a_swarm_never_announced_to_is_retired_soon() {
    let t0 = Instant::now();
    let retire = Retire {
        after: Duration::from_secs(30 * 24 * 3600),
        unannounced: Duration::from_secs(600),
    };
    let unix = 1_800_000_000;
    let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let mut s = new_swarm(t0);
    s.record.last_announce_unix = unix;
    // Pending: never retired (the confirm timeout reclaims it).
    assert!(!s.retire_due(t0 + Duration::from_secs(3600), unix + 3600, retire));
    let t1 = t0 + Duration::from_secs(100);
    reply(
        &mut s,
        a,
        &Datagram::new(1, Message::Confirm { token: 77 }),
        t1,
    );
    assert!(!s.retire_due(t1 + Duration::from_secs(600), unix + 700, retire));
    assert!(s.retire_due(t1 + Duration::from_secs(601), unix + 701, retire));

    // The same, announced to once: kept until it is silent for `after`.
    let mut s = bound_swarm(a, t0);
    s.record.last_announce_unix = unix;
    let later = t0 + Duration::from_secs(86_400);
    assert!(!s.retire_due(later, unix + 86_400, retire));
    assert!(s.retire_due(later, unix + 30 * 86_400 + 1, retire));

    // Restored from --state without a key: `unannounced` counts from the
    // restoration (its `epoch`), not from a confirmation long ago.
    let record = SwarmRecord {
        port: 5000,
        creator: None,
        token: 77,
        confirmer: Some(a),
        key: None,
        last_announce_unix: unix - 86_400,
    };
    let restored_at = t0 + Duration::from_secs(5);
    let s = SwarmTracker::new(record, true, settings(), restored_at);
    assert!(!s.retire_due(restored_at + Duration::from_secs(599), unix, retire));
    assert!(s.retire_due(restored_at + Duration::from_secs(601), unix, retire));
}

fn announce_x(cid: u64, key: [u8; 32], port: u16, state: PeerState, flags: ExtFlags) -> Datagram {
    Datagram::new(
        2,
        Message::AnnounceX {
            connection_id: cid,
            announce: Announce {
                swarm_key: key,
                port,
                state,
                wanted: 0,
            },
            flags,
        },
    )
}

/// A confirmed swarm whose key [9; 32] was bound by `sharer`.
fn keyed_swarm(now: Instant, sharer: SocketAddr) -> SwarmTracker {
    let mut s = new_swarm(now);
    reply(
        &mut s,
        sharer,
        &Datagram::new(1, Message::Confirm { token: 77 }),
        now,
    );
    let cid = s.connection_id(sharer, now);
    reply(
        &mut s,
        sharer,
        &announce(cid, [9; 32], 8000, PeerState::Complete),
        now,
    );
    s
}

#[test]
fn announce_x_lists_relayed_peers_and_tells_the_relay() {
    let now = Instant::now();
    let sharer: SocketAddr = "192.0.2.1:9000".parse().unwrap();
    let mut s = keyed_swarm(now, sharer);
    // The sharer says it is reachable through the relay.
    let cid = s.connection_id(sharer, now);
    let flags = ExtFlags {
        probe: false,
        relayed: true,
        mapped: false,
        punch: false,
    };
    let Some(Message::PeersX(p)) = reply(
        &mut s,
        sharer,
        &announce_x(cid, [9; 32], 8000, PeerState::Complete, flags),
        now,
    ) else {
        panic!("no PEERS_X");
    };
    assert_eq!(p.observed, "192.0.2.1:8000".parse().unwrap());
    assert_eq!(p.relay, RelayAddr::SameHost(7410));
    assert_eq!(p.probe, Probe::NotAsked);
    // A getter asking with ANNOUNCE_X sees the sharer flagged relayed.
    let getter: SocketAddr = "198.51.100.2:4000".parse().unwrap();
    let cid = s.connection_id(getter, now);
    let Some(Message::PeersX(p)) = reply(
        &mut s,
        getter,
        &announce_x(
            cid,
            [9; 32],
            7000,
            PeerState::Downloading,
            ExtFlags::default(),
        ),
        now,
    ) else {
        panic!("no PEERS_X");
    };
    assert_eq!(p.peers.len(), 1);
    assert!(p.peers[0].relayed);
    assert_eq!(p.peers[0].entry.addr, "192.0.2.1:8000".parse().unwrap());
    // A plain ANNOUNCE still gets a plain PEERS with the same entry.
    let Some(Message::Peers(p)) = reply(
        &mut s,
        getter,
        &announce(cid, [9; 32], 7000, PeerState::Downloading),
        now,
    ) else {
        panic!("no PEERS");
    };
    assert_eq!(p.peers.len(), 1);
    // A plain ANNOUNCE from the sharer clears the flag.
    let cid = s.connection_id(sharer, now);
    reply(
        &mut s,
        sharer,
        &announce(cid, [9; 32], 8000, PeerState::Complete),
        now,
    );
    let cid = s.connection_id(getter, now);
    let Some(Message::PeersX(p)) = reply(
        &mut s,
        getter,
        &announce_x(
            cid,
            [9; 32],
            7000,
            PeerState::Downloading,
            ExtFlags::default(),
        ),
        now,
    ) else {
        panic!("no PEERS_X");
    };
    assert!(!p.peers[0].relayed);
}

#[test]
fn announce_x_keeps_the_order_of_checks() {
    let now = Instant::now();
    let sharer: SocketAddr = "192.0.2.1:9000".parse().unwrap();
    let mut s = keyed_swarm(now, sharer);
    // Bad connection id: ERROR 3, no larger than the request.
    let d = announce_x(1, [9; 32], 8000, PeerState::Complete, ExtFlags::default());
    let mut out = Vec::new();
    s.handle(sharer, &d.to_vec(), now, &mut out);
    assert!(out.len() <= d.to_vec().len());
    assert!(matches!(
        Datagram::decode(&out).unwrap().message,
        Message::Error {
            code: ErrorCode::BadConnectionId,
            ..
        }
    ));
    // Wrong key: ERROR 4.
    let cid = s.connection_id(sharer, now);
    let m = reply(
        &mut s,
        sharer,
        &announce_x(cid, [8; 32], 8000, PeerState::Complete, ExtFlags::default()),
        now,
    );
    assert!(matches!(
        m,
        Some(Message::Error {
            code: ErrorCode::WrongSwarmKey,
            ..
        })
    ));
    // Unknown flag bits: ERROR 2.
    let mut bytes =
        announce_x(cid, [9; 32], 8000, PeerState::Complete, ExtFlags::default()).to_vec();
    *bytes.last_mut().unwrap() = 0x80;
    let mut out = Vec::new();
    s.handle(sharer, &bytes, now, &mut out);
    assert!(matches!(
        Datagram::decode(&out).unwrap().message,
        Message::Error {
            code: ErrorCode::Malformed,
            ..
        }
    ));
}

#[test]
fn probes_start_once_and_report_their_result() {
    let now = Instant::now();
    let sharer: SocketAddr = "192.0.2.1:9000".parse().unwrap();
    let mut s = keyed_swarm(now, sharer);
    let cid = s.connection_id(sharer, now);
    let flags = ExtFlags {
        probe: true,
        relayed: false,
        mapped: false,
        punch: false,
    };
    let ask = announce_x(cid, [9; 32], 8000, PeerState::Complete, flags);
    let probe_of = |m: Option<Message>| match m {
        Some(Message::PeersX(p)) => p.probe,
        other => panic!("{other:?}"),
    };
    assert_eq!(probe_of(reply(&mut s, sharer, &ask, now)), Probe::Pending);
    // Only the requester's own IP and announced port are probed.
    assert_eq!(s.take_probe(), Some("192.0.2.1:8000".parse().unwrap()));
    assert_eq!(probe_of(reply(&mut s, sharer, &ask, now)), Probe::Pending);
    assert_eq!(s.take_probe(), None);
    s.probe_finished("192.0.2.1:8000".parse().unwrap(), Some(false), now);
    assert_eq!(
        probe_of(reply(&mut s, sharer, &ask, now)),
        Probe::Unreachable
    );
    assert_eq!(s.take_probe(), None);
}

/// `--max-listed`: an answer lists at most that many peers, whatever the
/// ANNOUNCE (or ANNOUNCE_X) asks for, while the counts stay whole.
#[test]
fn max_listed_caps_every_answer() {
    let now = Instant::now();
    let sharer: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let mut s = keyed_swarm(now, sharer);
    s.settings.max_listed = 1;
    for i in 1..=3u8 {
        let p = SocketAddr::from(([127, 0, 0, 1 + i], 9000));
        let cid = s.connection_id(p, now);
        reply(
            &mut s,
            p,
            &announce(cid, [9; 32], 8000, PeerState::Complete),
            now,
        );
    }
    let asker: SocketAddr = "127.0.0.9:9000".parse().unwrap();
    let cid = s.connection_id(asker, now);
    let Some(Message::Peers(p)) = reply(
        &mut s,
        asker,
        &announce(cid, [9; 32], 0, PeerState::Asking),
        now,
    ) else {
        panic!("no PEERS")
    };
    assert_eq!((p.peers.len(), p.seeders), (1, 4));
    let Some(Message::PeersX(p)) = reply(
        &mut s,
        asker,
        &announce_x(cid, [9; 32], 0, PeerState::Asking, ExtFlags::default()),
        now,
    ) else {
        panic!("no PEERS_X")
    };
    assert_eq!((p.peers.len(), p.seeders), (1, 4));
}
