//! Tests of the tracker client against a real tracker on 127.0.0.1 and
//! against fake ones, and of the handshake's transitions.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hayedik_proto::tracker::{Datagram, ErrorCode, Message, PeerState};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::ConnId;
use super::create::Handshake;
use super::*;
use crate::events::Events;
use crate::tracker::TrackerConfig;

const KEY: [u8; 32] = [7; 32];

/// A tracker on 127.0.0.1:0; cancel the token to stop it.
async fn tracker(config: TrackerConfig) -> (SocketAddr, CancellationToken) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        crate::tracker::run(socket, config, Events::new(false), c)
            .await
            .unwrap();
    });
    (addr, cancel)
}

async fn seeder(central: SocketAddr) -> TrackerClient {
    let mut c = TrackerClient::create(central, KEY, 4001, Duration::from_secs(5))
        .await
        .unwrap();
    c.set_deadline(Duration::from_secs(5));
    let r = c.announce(PeerState::Complete, 0).await.unwrap();
    assert!(r.peers.is_empty());
    c
}

async fn client(swarm: SocketAddr, port: u16) -> TrackerClient {
    let mut c = TrackerClient::bind(swarm, KEY, port).await.unwrap();
    c.set_deadline(Duration::from_secs(5));
    c
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn create_announce_see_and_leave() {
    within(async {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let mut a = seeder(central).await;
        assert_eq!(a.swarm_addr().ip(), central.ip());
        assert_ne!(a.swarm_addr().port(), central.port());

        let mut b = client(a.swarm_addr(), 4002).await;
        let r = b.announce(PeerState::Downloading, 0).await.unwrap();
        assert_eq!(r.interval, Duration::from_secs(60));
        assert_eq!((r.seeders, r.partials), (1, 0));
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, local(4001));
        assert_eq!(r.peers[0].state, PeerState::Complete);

        let r = a.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!((r.seeders, r.partials), (0, 1));
        assert_eq!(r.peers[0].addr, local(4002));

        let r = a.announce(PeerState::Leaving, 0).await.unwrap();
        assert!(r.peers.is_empty());
        let r = b.announce(PeerState::Downloading, 0).await.unwrap();
        assert_eq!((r.seeders, r.partials), (0, 0));
        assert!(r.peers.is_empty());
        stop.cancel();
    })
    .await
}

#[tokio::test]
async fn wrong_key_is_a_clear_error() {
    within(async {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let a = seeder(central).await;
        let mut other = TrackerClient::bind(a.swarm_addr(), [8; 32], 4003)
            .await
            .unwrap();
        let e = other.announce(PeerState::Downloading, 0).await.unwrap_err();
        assert_eq!(
            e,
            AnnounceError::WrongSwarm {
                tracker: a.swarm_addr()
            }
        );
        assert!(e.to_string().contains("check the ticket"), "{e}");
        stop.cancel();
    })
    .await
}

#[tokio::test]
async fn bad_connection_id_reconnects() {
    within(async {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let mut a = seeder(central).await;
        assert_eq!(a.connects, 1);
        let good = a.conn.unwrap().id;
        a.conn = Some(ConnId {
            id: good ^ 1,
            at: Instant::now(),
        });
        a.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(a.connects, 2, "reconnected once");
        assert_ne!(a.conn.unwrap().id, good ^ 1);
        // An old id is renewed before use, without an ERROR 3 round trip.
        a.conn = Some(ConnId {
            id: good ^ 1,
            at: Instant::now() - CONN_ID_MAX_AGE,
        });
        a.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(a.connects, 3);
        stop.cancel();
    })
    .await
}

#[tokio::test]
async fn unreachable_tracker_fails_within_the_deadline() {
    within(async {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t0 = std::time::Instant::now();
        let e = create_swarm(&socket, addr, Duration::from_millis(600))
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(matches!(e, AnnounceError::Unreachable { tracker, .. } if tracker == addr));
        assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(2));
        assert!(e.to_string().contains("is the tracker running?"), "{e}");

        let mut c = client(addr, 4004).await;
        c.set_deadline(Duration::from_millis(400));
        let t0 = std::time::Instant::now();
        let e = c.announce(PeerState::Downloading, 0).await.unwrap_err();
        assert!(matches!(e, AnnounceError::Unreachable { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        // The silent socket saw retransmissions of the same CONNECT.
        let mut buf = [0u8; 64];
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        let first = Datagram::decode(&buf[..n]).unwrap();
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        assert_eq!(Datagram::decode(&buf[..n]).unwrap(), first);
    })
    .await
}

#[tokio::test]
async fn hostile_datagrams_do_not_derail_the_handshake() {
    within(async {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = socket.local_addr().unwrap();
        let hostile = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let junk = |tid: u32| {
            vec![
                Vec::new(),
                b"HYDK".to_vec(),
                vec![0xff; 40],
                Datagram::new(
                    tid,
                    Message::Offer {
                        token: 1,
                        port: Some(9),
                    },
                )
                .to_vec(),
                Datagram::new(
                    tid,
                    Message::Offer {
                        token: 1,
                        port: None,
                    },
                )
                .to_vec(),
                Datagram::new(tid, Message::Challenge { cookie: 5 }).to_vec(),
                Datagram::new(tid, Message::Confirmed).to_vec(),
            ]
        };
        // Queued before the handshake starts...
        for d in junk(0) {
            hostile.send_to(&d, me).await.unwrap();
        }
        // ...and sent while it runs.
        let flood = tokio::spawn(async move {
            for tid in 0u32.. {
                for d in junk(tid) {
                    let _ = hostile.send_to(&d, me).await;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let port = create_swarm(&socket, central, Duration::from_secs(5))
            .await
            .unwrap();
        flood.abort();
        assert_ne!(port, 9);
        let mut a = TrackerClient::from_socket(socket, local(port), KEY, 4005);
        a.set_deadline(Duration::from_secs(5));
        a.announce(PeerState::Complete, 0).await.unwrap();
        stop.cancel();
    })
    .await
}

/// Drops the first JOIN with a cookie, then pretends the cookie expired,
/// then offers from the central port only (as behind a NAT that drops
/// the swarm port's OFFER).
#[tokio::test]
async fn handshake_retransmits_and_follows_a_fresh_cookie() {
    within(async {
        let central = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let central_addr = central.local_addr().unwrap();
        let swarm = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let swarm_port = swarm.local_addr().unwrap().port();
        let fake = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut joins = Vec::new();
            loop {
                let (n, src) = central.recv_from(&mut buf).await.unwrap();
                let d = Datagram::decode(&buf[..n]).unwrap();
                let Message::Join { cookie } = d.message else {
                    panic!("{d:?}")
                };
                joins.push((d.tid, cookie));
                let reply = match cookie {
                    0 => Some(Message::Challenge { cookie: 77 }),
                    77 if joins.iter().filter(|j| j.1 == 77).count() == 1 => None,
                    77 => Some(Message::Challenge { cookie: 78 }),
                    78 => Some(Message::Offer {
                        token: 5,
                        port: Some(swarm_port),
                    }),
                    _ => panic!("{joins:?}"),
                };
                if let Some(m) = reply {
                    central
                        .send_to(&Datagram::new(d.tid, m).to_vec(), src)
                        .await
                        .unwrap();
                }
                if cookie == 78 {
                    break;
                }
            }
            let (n, src) = swarm.recv_from(&mut buf).await.unwrap();
            let d = Datagram::decode(&buf[..n]).unwrap();
            assert_eq!(d.message, Message::Confirm { token: 5 });
            swarm
                .send_to(&Datagram::new(d.tid, Message::Confirmed).to_vec(), src)
                .await
                .unwrap();
            joins
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = create_swarm(&socket, central_addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(port, swarm_port);
        let joins = fake.await.unwrap();
        let cookies: Vec<u64> = joins.iter().map(|j| j.1).collect();
        assert_eq!(cookies, [0, 77, 77, 78]);
        assert!(
            joins.iter().all(|j| j.0 == joins[0].0),
            "one tid: {joins:?}"
        );
    })
    .await
}

/// A fake swarm tracker that answers CONNECT, then `error` to every
/// ANNOUNCE; counts the ANNOUNCEs.
async fn fake_swarm(error: u16) -> (SocketAddr, Arc<AtomicU32>, JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let announces = Arc::new(AtomicU32::new(0));
    let count = announces.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 128];
        loop {
            let (n, src) = s.recv_from(&mut buf).await.unwrap();
            let d = Datagram::decode(&buf[..n]).unwrap();
            let m = match d.message {
                Message::Connect => Message::Connected { connection_id: 42 },
                Message::Announce { connection_id, .. }
                | Message::AnnounceX { connection_id, .. } => {
                    assert_eq!(connection_id, 42);
                    count.fetch_add(1, Ordering::SeqCst);
                    Message::Error {
                        code: ErrorCode::from_u16(error),
                        message: "x\u{1b}[31m".into(),
                    }
                }
                m => panic!("{m:?}"),
            };
            s.send_to(&Datagram::new(d.tid, m).to_vec(), src)
                .await
                .unwrap();
        }
    });
    (addr, announces, task)
}

#[tokio::test]
async fn error_codes_map_to_clear_errors() {
    within(async {
        for (code, expect) in [
            (6, "not confirmed yet"),
            (5, "swarm is full"),
            (4, "serves another swarm on that port: check the ticket"),
            (1, "protocol version"),
            (2, "malformed"),
        ] {
            let (addr, announces, task) = fake_swarm(code).await;
            let e = client(addr, 4006)
                .await
                .announce(PeerState::Downloading, 0)
                .await
                .unwrap_err();
            let text = e.to_string();
            assert!(text.contains(expect), "{text}");
            assert!(!text.contains('\u{1b}'), "control characters: {text}");
            let tries = if code == 6 { NOT_CONFIRMED_TRIES } else { 1 };
            assert_eq!(announces.load(Ordering::SeqCst), tries, "{text}");
            task.abort();
        }
    })
    .await
}

#[tokio::test]
async fn announce_loop_publishes_peers_and_leaves() {
    within(async {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let a = seeder(central).await;
        let swarm = a.swarm_addr();
        let cancel = CancellationToken::new();
        let seed = spawn_announcer(a, PeerState::Complete, cancel.clone());

        let b = client(swarm, 4007).await;
        let getter = spawn_announcer(b, PeerState::Downloading, cancel.clone());
        let mut replies = getter.replies();
        let r = replies
            .wait_for(|r| r.is_some())
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, local(4001));
        assert!(getter.last_error().is_none());

        // "Finished, free to share": announced at once, seen by a newcomer.
        getter.set_state(PeerState::Complete);
        let mut probe = client(swarm, 4008).await;
        let seen = loop {
            let r = probe.announce(PeerState::Asking, 0).await.unwrap();
            if r.seeders == 2 {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(seen.peers.iter().all(|p| p.state == PeerState::Complete));

        // Leaving removes the seeder from the list at once.
        seed.leave().await;
        let r = probe.announce(PeerState::Asking, 0).await.unwrap();
        assert_eq!(r.seeders, 1);
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, local(4007));

        // Cancelling the parent token stops the other loop the same way.
        cancel.cancel();
        getter.leave().await;
        let r = probe.announce(PeerState::Asking, 0).await.unwrap();
        assert_eq!((r.seeders, r.partials), (0, 0));
        stop.cancel();
    })
    .await
}

#[tokio::test]
async fn announce_loop_reports_an_unreachable_tracker() {
    within(async {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut c = client(silent.local_addr().unwrap(), 4009).await;
        c.set_deadline(Duration::from_millis(300));
        let announcer = spawn_announcer(c, PeerState::Downloading, CancellationToken::new());
        let mut errors = announcer.errors();
        let e = errors
            .wait_for(|e| e.is_some())
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert!(matches!(e, AnnounceError::Unreachable { .. }));
        assert!(announcer.latest().is_none());
        // Nothing was ever listed: leaving is immediate.
        tokio::time::timeout(Duration::from_millis(200), announcer.leave())
            .await
            .unwrap();
    })
    .await
}

/// Issue 11, item 5: a tracker full of swarms did not answer a JOIN,
/// and creating a swarm failed after its whole deadline with "is the
/// tracker running?". The tracker now answers ERROR 5 and the client
/// says the tracker is full, in about a second.
#[tokio::test]
async fn a_full_tracker_is_a_clear_error_at_once() {
    within(async {
        let config = TrackerConfig {
            limits: crate::tracker::limits::Limits {
                max_swarms: 1,
                ..Default::default()
            },
            ..TrackerConfig::default()
        };
        let (central, stop) = tracker(config).await;
        let _a = seeder(central).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t0 = std::time::Instant::now();
        let e = create_swarm(&socket, central, Duration::from_secs(10))
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(
            matches!(e, AnnounceError::TrackerFull { tracker, .. } if tracker == central),
            "{e}"
        );
        assert!(took < Duration::from_secs(4), "took {took:?}");
        let text = e.to_string();
        assert!(
            text.contains("is full") && text.contains("it holds as many swarms"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        stop.cancel();
    })
    .await
}

/// Issue 11, item 4: a getter that the tracker does not list (ERROR 5)
/// got no peers at all. It now asks with state 0 and gets them.
#[tokio::test]
async fn announce_loop_asks_only_when_it_cannot_be_listed() {
    within(async {
        let config = TrackerConfig {
            limits: crate::tracker::limits::Limits {
                max_peers_per_ip: 1,
                ..Default::default()
            },
            ..TrackerConfig::default()
        };
        let (central, stop) = tracker(config).await;
        let a = seeder(central).await;
        // Same IP as the seeder, whose one slot it holds.
        let b = client(a.swarm_addr(), 4010).await;
        let getter = spawn_announcer(b, PeerState::Downloading, CancellationToken::new());
        let mut replies = getter.replies();
        let r = tokio::time::timeout(Duration::from_secs(5), replies.wait_for(|r| r.is_some()))
            .await
            .expect("no peers for a getter the tracker does not list")
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, local(4001));
        assert!(matches!(
            getter.last_error(),
            Some(AnnounceError::SwarmFull { .. })
        ));
        getter.leave().await;
        stop.cancel();
    })
    .await
}

#[test]
fn handshake_transitions_ignore_the_unexpected() {
    let central = local(7410);
    let join = Handshake::Join { cookie: 0 };
    let offer_from = |src, port| join.on_reply(central, src, Message::Offer { token: 3, port });
    // OFFER from the swarm port, or from the central port with the port.
    let swarm = local(9000);
    let confirm = Handshake::Confirm { swarm, token: 3 };
    assert_eq!(offer_from(swarm, None), Some(confirm));
    assert_eq!(offer_from(central, Some(9000)), Some(confirm));
    // From another IP, or a central OFFER without a port: ignored.
    let elsewhere: SocketAddr = "127.0.0.2:9000".parse().unwrap();
    assert_eq!(offer_from(elsewhere, None), None);
    assert_eq!(offer_from(central, None), None);
    assert_eq!(offer_from(swarm, Some(9001)), None);
    assert_eq!(offer_from(central, Some(0)), None);
    // CHALLENGE: only from the central port, only a new cookie.
    let ch = |s: Handshake, src, cookie| s.on_reply(central, src, Message::Challenge { cookie });
    assert_eq!(ch(join, central, 9), Some(Handshake::Join { cookie: 9 }));
    assert_eq!(ch(Handshake::Join { cookie: 9 }, central, 9), None);
    assert_eq!(ch(join, swarm, 9), None);
    assert_eq!(ch(confirm, central, 9), None);
    // CONFIRMED only from the swarm being confirmed; a v4-mapped source
    // is the same address.
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:9000".parse().unwrap();
    assert_eq!(
        confirm.on_reply(central, mapped, Message::Confirmed),
        Some(Handshake::Done { port: 9000 })
    );
    assert_eq!(confirm.on_reply(central, central, Message::Confirmed), None);
    assert_eq!(join.on_reply(central, swarm, Message::Confirmed), None);
}

/// Runs a test's body with a deadline: a tracker that never answers fails
/// the test instead of hanging the run.
async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), body)
        .await
        .expect("the test did not finish within 60 s")
}

/// A tracker that predates the extensions drops ANNOUNCE_X: a client that
/// uses them falls back to ANNOUNCE within its first call, for good.
#[tokio::test]
async fn extensions_fall_back_on_an_older_tracker() {
    within(async {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let dropped = Arc::new(AtomicU32::new(0));
        let count = dropped.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, src) = s.recv_from(&mut buf).await.unwrap();
                let d = Datagram::decode(&buf[..n]).unwrap();
                let m = match d.message {
                    Message::Connect => Message::Connected { connection_id: 42 },
                    Message::Announce { .. } => Message::Peers(hayedik_proto::tracker::Peers {
                        interval: 60,
                        seeders: 0,
                        partials: 0,
                        peers: vec![],
                    }),
                    // An unknown type: silence, as PROTOCOL.md requires.
                    _ => {
                        count.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                s.send_to(&Datagram::new(d.tid, m).to_vec(), src)
                    .await
                    .unwrap();
            }
        });
        let mut c = client(addr, 4100).await;
        c.use_extensions();
        c.flags = hayedik_proto::tracker::ExtFlags {
            probe: true,
            relayed: false,
            mapped: false,
            punch: false,
        };
        let r = c.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(r.ext, None);
        assert_eq!(dropped.load(Ordering::SeqCst), 3);
        assert!(!c.extensions_on());
        c.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 3, "no second try");
        task.abort();
    })
    .await;
}

/// Against our tracker, ANNOUNCE_X gets PEERS_X: a probe of a closed port
/// is pending, then "not reachable"; relayed peers are marked.
#[tokio::test]
async fn extensions_probe_and_relayed_entries() {
    within(async {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let mut sharer = seeder(central).await;
        sharer.use_extensions();
        sharer.flags = hayedik_proto::tracker::ExtFlags {
            probe: false,
            relayed: true,
            mapped: false,
            punch: false,
        };
        let r = sharer.announce(PeerState::Complete, 0).await.unwrap();
        let ext = r.ext.unwrap();
        assert_eq!(ext.relay, None, "no --relay");
        assert_eq!(ext.observed, local(4001));
        // A port nobody listens on (bound, then closed).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut g = client(sharer.swarm_addr(), port).await;
        g.use_extensions();
        g.flags = hayedik_proto::tracker::ExtFlags {
            probe: true,
            relayed: false,
            mapped: false,
            punch: false,
        };
        let mut probe = hayedik_proto::tracker::Probe::Pending;
        for _ in 0..50 {
            let r = g.announce(PeerState::Downloading, 0).await.unwrap();
            assert_eq!(r.relayed, vec![local(4001)]);
            probe = r.ext.unwrap().probe;
            if probe != hayedik_proto::tracker::Probe::Pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(probe, hayedik_proto::tracker::Probe::Unreachable);
        // An open port is reachable.
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut g2 = client(sharer.swarm_addr(), open.local_addr().unwrap().port()).await;
        g2.use_extensions();
        g2.flags = g.flags;
        for _ in 0..50 {
            let r = g2.announce(PeerState::Downloading, 0).await.unwrap();
            probe = r.ext.unwrap().probe;
            if probe != hayedik_proto::tracker::Probe::Pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(probe, hayedik_proto::tracker::Probe::Reachable);
        stop.cancel();
    })
    .await;
}

/// A tracker that finds MAPPED malformed (one older than the flag) is
/// asked again without it: two announces, then its answer.
#[tokio::test]
async fn mapped_flag_is_dropped_for_a_tracker_that_refuses_it() {
    within(async {
        let (addr, announces, task) = fake_swarm(2).await;
        let mut c = client(addr, 4007).await;
        c.set_mapped();
        let e = c.announce(PeerState::Downloading, 0).await.unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
        assert_eq!(announces.load(Ordering::SeqCst), 2);
        assert!(!c.mapped, "the flag is dropped for good");
        task.abort();
    })
    .await
}

/// MAPPED announces are listed as mapped, and an embedded tracker that
/// knows its router's address lists its own sharer's MAPPED announces
/// (from a local IP) under it; announces without MAPPED are not rewritten.
#[tokio::test]
async fn mapped_entries_and_the_embedded_trackers_external_address() {
    within(async {
        let external = Arc::new(crate::tracker::swarm::ExternalAddress::default());
        let router: SocketAddr = "203.0.113.5:4001".parse().unwrap();
        external.set(local(1).ip(), router.ip());
        let config = TrackerConfig {
            external: Some(external),
            ..TrackerConfig::default()
        };
        let (central, stop) = tracker(config).await;
        let mut sharer = seeder(central).await;
        sharer.set_mapped();
        let r = sharer.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(r.ext.unwrap().observed, router, "listed at the router");
        let mut g = client(sharer.swarm_addr(), 4002).await;
        g.use_extensions();
        let r = g.announce(PeerState::Downloading, 0).await.unwrap();
        assert_eq!(r.mapped, vec![router], "{r:?}");
        assert!(r.peers.iter().any(|e| e.addr == router), "{r:?}");
        assert_eq!(
            r.ext.unwrap().observed,
            local(4002),
            "no MAPPED: as it came"
        );
        stop.cancel();
    })
    .await
}

/// The stable-swarm extension against a real tracker: a CLAIM creates a
/// swarm bound to the key that anyone may announce to; the key then finds
/// it; another key cannot have its port; and after a restart without state
/// the same port comes back for the key.
#[tokio::test]
async fn claim_creates_finds_and_revives() {
    within(async {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let deadline = Duration::from_secs(5);
        let made = claim_swarm(&socket, central, KEY, 0, deadline)
            .await
            .unwrap()
            .unwrap();
        let Claimed::Created(port) = made else {
            panic!("{made:?}")
        };
        // Bound by the claim: another address announces first.
        let mut other = client(local(port), 4100).await;
        other.announce(PeerState::Complete, 0).await.unwrap();
        let again = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for wish in [0, port, port.wrapping_add(1).max(1024)] {
            assert_eq!(
                claim_swarm(&again, central, KEY, wish, deadline)
                    .await
                    .unwrap(),
                Some(Claimed::Found(port))
            );
        }
        // Another key, this port: refused (ERROR 4), nothing created.
        let e = claim_swarm(&again, central, [8; 32], port, deadline)
            .await
            .unwrap_err();
        assert!(matches!(e, AnnounceError::WrongSwarm { .. }), "{e}");
        stop.cancel();
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut revived = None;
        for _ in 0..40 {
            match claim_swarm(&s, central, KEY, port, deadline).await {
                Ok(Some(c)) => {
                    revived = Some(c);
                    break;
                }
                // The old tracker's socket may still be closing.
                Err(AnnounceError::SwarmFull { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => panic!("{r:?}"),
            }
        }
        assert_eq!(revived, Some(Claimed::Created(port)));
        // The old swarm's peers find it again where the ticket says.
        let r = other.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(r.peers.len(), 0);
        let mut back = client(local(port), 4101).await;
        let r = back.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(r.peers.len(), 1);
        stop.cancel();
    })
    .await
}

/// A tracker that predates CLAIM drops it: the call says so (`None`)
/// after [`CLAIM_TRIES`] unanswered CLAIMs, and the caller falls back.
#[tokio::test]
async fn claim_on_an_older_tracker_is_none() {
    within(async {
        let old = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = old.local_addr().unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let s = seen.clone();
        let fake = tokio::spawn(async move {
            let mut buf = [0u8; 128];
            while let Ok((n, _)) = old.recv_from(&mut buf).await {
                if let Ok(d) = Datagram::decode(&buf[..n]) {
                    assert!(matches!(d.message, Message::Claim { .. }));
                    s.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = claim_swarm(&socket, addr, KEY, 0, Duration::from_secs(20)).await;
        assert_eq!(r, Ok(None));
        assert_eq!(seen.load(Ordering::Relaxed), CLAIM_TRIES);
        fake.abort();
    })
    .await
}

/// INTRODUCE with an aged connection id CONNECTs once first, then sends
/// the request under the new id.
#[tokio::test]
async fn introduce_reconnects_when_its_connection_id_aged() {
    within(async {
        let tracker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut c = client(tracker.local_addr().unwrap(), 4100).await;
        let (req_tx, requests) = tokio::sync::mpsc::channel(4);
        let (introduced, _intro_rx) = tokio::sync::mpsc::channel(4);
        c.set_punch(crate::peer::punch::AnnounceLink {
            requests,
            introduced,
        });
        c.conn = Some(ConnId {
            id: 11,
            at: Instant::now() - CONN_ID_MAX_AGE,
        });
        let target = local(4200);
        req_tx.send(target).await.unwrap();
        let fake = async {
            let mut buf = [0u8; 2048];
            let (n, from) = tracker.recv_from(&mut buf).await.unwrap();
            let d = Datagram::decode(&buf[..n]).unwrap();
            assert!(matches!(d.message, Message::Connect), "{:?}", d.message);
            let reply = Datagram::new(d.tid, Message::Connected { connection_id: 42 });
            tracker.send_to(&reply.to_vec(), from).await.unwrap();
            let (n, _) = tracker.recv_from(&mut buf).await.unwrap();
            Datagram::decode(&buf[..n]).unwrap().message
        };
        let got = tokio::select! {
            m = fake => m,
            _ = c.serve_punch() => unreachable!("serve_punch never returns"),
        };
        match got {
            Message::Introduce {
                connection_id,
                target: t,
                ..
            } => {
                assert_eq!(connection_id, 42);
                assert_eq!(t, target);
            }
            other => panic!("expected INTRODUCE, got {other:?}"),
        }
        assert_eq!(c.conn.unwrap().id, 42);
    })
    .await
}
