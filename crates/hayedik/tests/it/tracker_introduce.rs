//! INTRODUCE (docs/protocol.md, "Extension: introductions") against the
//! real tracker, with raw datagrams: two opted-in peers are introduced to
//! each other (both get INTRODUCED, together no larger than the request);
//! a forged connection id, an unknown or not opted-in target, a short or
//! long datagram, a requester that did not opt in, and a flood beyond the
//! budget get nothing at all.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hayedik_proto::tracker::{Announce, Datagram, ExtFlags, Message, PeerState, INTRODUCE_LEN};

use crate::harness::{scenario, Client, Tracker};

const KEY: [u8; 32] = [7; 32];

fn announce_x(c: &mut Client, swarm: SocketAddr, cid: u64, port: u16, punch: bool) -> Message {
    let tid = c.tid();
    let d = Datagram::new(
        tid,
        Message::AnnounceX {
            connection_id: cid,
            announce: Announce {
                swarm_key: KEY,
                port,
                state: PeerState::Complete,
                wanted: 0,
            },
            flags: ExtFlags {
                punch,
                ..ExtFlags::default()
            },
        },
    );
    c.request_raw(swarm, &d.to_vec(), tid).0
}

fn introduce(c: &mut Client, cid: u64, port: u16, target: SocketAddr) -> Vec<u8> {
    let tid = c.tid();
    Datagram::new(
        tid,
        Message::Introduce {
            connection_id: cid,
            port,
            target,
        },
    )
    .to_vec()
}

#[test]
fn tracker_introduce_only_between_opted_in_peers_and_bounded() {
    scenario(Duration::from_secs(60), || {
        let t = Tracker::start(&[]);
        let mut a = Client::on(Ipv4Addr::new(127, 0, 0, 1));
        let j = a.create_swarm(t.addr);
        let swarm = j.swarm;
        let cid_a = a.connect(swarm);
        let m = announce_x(&mut a, swarm, cid_a, 5001, true);
        assert!(matches!(m, Message::PeersX(_)), "{m:?}");
        let mut b = Client::on(Ipv4Addr::new(127, 0, 0, 2));
        let cid_b = b.connect(swarm);
        let m = announce_x(&mut b, swarm, cid_b, 5002, true);
        let Message::PeersX(p) = m else {
            panic!("{m:?}")
        };
        // B opted in: A's entry is shown as PUNCHABLE.
        assert!(p.peers.iter().any(|e| e.punchable), "{p:?}");
        // C did not opt in: nothing is PUNCHABLE for it, and it cannot
        // be introduced nor ask.
        let mut c = Client::on(Ipv4Addr::new(127, 0, 0, 3));
        let cid_c = c.connect(swarm);
        let Message::PeersX(p) = announce_x(&mut c, swarm, cid_c, 5003, false) else {
            panic!("PEERS_X")
        };
        assert!(p.peers.iter().all(|e| !e.punchable), "{p:?}");
        let (a_listed, b_listed, c_listed): (SocketAddr, SocketAddr, SocketAddr) = (
            "127.0.0.1:5001".parse().unwrap(),
            "127.0.0.2:5002".parse().unwrap(),
            "127.0.0.3:5003".parse().unwrap(),
        );

        // A valid introduction: both sides hear of the other.
        let req = introduce(&mut a, cid_a, 5001, b_listed);
        assert_eq!(req.len(), INTRODUCE_LEN);
        a.send_raw(swarm, &req);
        let (to_a, n_a, _) = a.recv();
        let (to_b, n_b, _) = b.recv();
        assert_eq!(
            to_a.message,
            Message::Introduced {
                peer: b_listed,
                udp_port: b.addr().port()
            }
        );
        assert_eq!(
            to_b.message,
            Message::Introduced {
                peer: a_listed,
                udp_port: a.addr().port()
            }
        );
        assert!(n_a + n_b <= INTRODUCE_LEN, "{n_a} + {n_b} bytes out");

        // Lies: a forged connection id, a target not listed, a target that
        // did not opt in, a requester that did not opt in, itself, a
        // requester naming another port than its own, a short datagram, a
        // long one. None gets anything, on either side.
        let mut lies = vec![
            introduce(&mut a, cid_a ^ 1, 5001, b_listed),
            introduce(&mut a, cid_a, 5001, "127.0.0.9:5009".parse().unwrap()),
            introduce(&mut a, cid_a, 5001, c_listed),
            introduce(&mut c, cid_c, 5003, a_listed),
            introduce(&mut a, cid_a, 5001, a_listed),
            introduce(&mut a, cid_a, 5999, b_listed),
        ];
        let mut short = introduce(&mut a, cid_a, 5001, b_listed);
        short.truncate(INTRODUCE_LEN - 1);
        let mut long = introduce(&mut a, cid_a, 5001, b_listed);
        long.push(0);
        lies.push(short);
        lies.push(long);
        for (i, lie) in lies.iter().enumerate() {
            let from = if i == 3 { &c } else { &a };
            from.send_raw(swarm, lie);
        }
        a.expect_silence("after lying INTRODUCEs");
        b.expect_silence("target of lying INTRODUCEs");
        c.expect_silence("non-opted-in requester");

        // A flood: at most the budget (16 per source per 10 s; one spent
        // above) is answered, and each answer is two small datagrams.
        for _ in 0..200 {
            let req = introduce(&mut a, cid_a, 5001, b_listed);
            a.send_raw(swarm, &req);
        }
        let mut answered = 0;
        while a.recv_within(Duration::from_millis(300)).is_some() {
            answered += 1;
        }
        let mut heard = 0;
        while b.recv_within(Duration::from_millis(300)).is_some() {
            heard += 1;
        }
        eprintln!("INTRODUCE flood: 200 sent, {answered} answered, target heard {heard}");
        assert!(answered <= 16, "{answered} answers to a flood");
        assert_eq!(answered, heard);
        t.stop();
    });
}
