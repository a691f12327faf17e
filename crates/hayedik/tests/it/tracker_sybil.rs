//! Many identities against one tracker, through the real binaries: one
//! address announcing thousands of ports into a swarm's peer table, and many
//! addresses creating swarms until the tracker is full.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hayedik_proto::ticket::Ticket;
use hayedik_proto::tracker::{Announce, Datagram, ErrorCode, Message, PeerState};

use crate::harness::{Client, Joined, Tracker};
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

/// JOIN (CHALLENGE, then JOIN with the cookie) and, when the tracker
/// offers a swarm, CONFIRM it; `Err` carries the message of an ERROR 5.
fn try_create_swarm(c: &mut Client, central: SocketAddr) -> Result<Joined, String> {
    let cookie = c.challenge(central);
    let tid = c.tid();
    c.send(central, &Datagram::new(tid, Message::Join { cookie }));
    let (first, _, from) = c.recv();
    assert_eq!(first.tid, tid);
    match first.message {
        Message::Error {
            code: ErrorCode::RateLimited,
            message,
        } => {
            assert_eq!(from, central);
            return Err(message);
        }
        Message::Offer { .. } => {}
        m => panic!("expected an OFFER or ERROR 5, got {m:?}"),
    }
    // Both OFFERs carry the token; the central one also the port.
    let (second, _, _) = c.recv();
    let (token, port) = match (first.message, second.message) {
        (
            Message::Offer {
                token,
                port: Some(p),
            },
            _,
        )
        | (
            _,
            Message::Offer {
                token,
                port: Some(p),
            },
        ) => (token, p),
        m => panic!("no central OFFER: {m:?}"),
    };
    let j = Joined {
        port,
        token,
        swarm: SocketAddr::new(central.ip(), port),
    };
    c.confirm(&j);
    Ok(j)
}

/// Issue 11, item 5: a full tracker did not answer a JOIN, so an honest
/// `share --tracker` gave up after 30 s asking "is the tracker running?".
/// A JOIN with a valid cookie now gets ERROR 5 saying what is full, and
/// `share` says the tracker is full, in seconds.
#[test]
fn tracker_full_tracker_answers_error_5_and_share_says_so() {
    scenario(Duration::from_secs(60), || {
        let t = Tracker::start(&["--max-swarms", "4"]);
        for host in 1..=4 {
            let mut c = Client::on(Ipv4Addr::new(127, 0, 1, host));
            try_create_swarm(&mut c, t.addr).expect("room for four swarms");
        }
        let work = tempdir();
        let (path, _) = write_random(work.path(), "full.bin", 1000, 42);
        let tracker_arg = t.addr.to_string();
        let started = Instant::now();
        let mut sharer = Node::share("sharer", &path, &["--tracker", &tracker_arg]);
        let stderr = sharer.expect_failure(1, Duration::from_secs(40));
        let took = started.elapsed();
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line: {stderr}"));
        assert!(
            line.contains("is full") && line.contains("tracker is full"),
            "{line}"
        );
        assert!(!line.contains("is the tracker running"), "{line}");
        assert!(
            took < Duration::from_secs(10),
            "share gave up after {took:?}"
        );
        // The same through the wire: ERROR 5 and what is full.
        let mut c = Client::on(Ipv4Addr::new(127, 0, 2, 1));
        let message = try_create_swarm(&mut c, t.addr).expect_err("the tracker is full");
        assert!(message.contains("tracker is full"), "{message}");
        t.stop();
    });
}

/// Issue 11, item 5: 520 loopback addresses, each within the per-IP limits,
/// filled the tracker. Swarms are now also counted per IPv4 /24 (and IPv6
/// /64): one network stops at `--max-swarms-per-24`, others go on.
#[test]
fn tracker_one_network_cannot_take_every_swarm() {
    scenario(Duration::from_secs(60), || {
        let t = Tracker::start(&["--max-swarms", "30", "--max-swarms-per-24", "10"]);
        let (mut created, mut refused) = (0, 0);
        for host in 1..=20 {
            let mut c = Client::on(Ipv4Addr::new(127, 0, 1, host));
            match try_create_swarm(&mut c, t.addr) {
                Ok(_) => created += 1,
                Err(message) => {
                    assert!(message.contains("your network"), "{message}");
                    refused += 1;
                }
            }
        }
        assert_eq!((created, refused), (10, 10));
        // Another /24, and the honest user's own.
        let mut c = Client::on(Ipv4Addr::new(127, 0, 2, 1));
        try_create_swarm(&mut c, t.addr).expect("another /24 is not affected");
        let mut me = Client::new();
        try_create_swarm(&mut me, t.addr).expect("127.0.0.0/24 is not affected");
        t.stop();
    });
}

/// Issue 11, item 5: out of descriptors, the tracker wrote one WARN line per
/// refused JOIN (1,487 lines in 20 s). Here out of ports (a range of one):
/// every JOIN with a cookie gets ERROR 5, and the log gets one line.
#[test]
fn tracker_out_of_ports_answers_error_5_and_logs_once() {
    scenario(Duration::from_secs(60), || {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let range = format!("{port}-{port}");
        let t = Tracker::start(&[
            "--swarm-ports",
            &range,
            "--join-burst",
            "1000",
            "--max-joins-per-ip-per-sec",
            "1000",
        ]);
        let mut owner = Client::new();
        let j = owner.create_swarm(t.addr);
        assert_eq!(j.port, port);
        let mut f = Client::on(Ipv4Addr::new(127, 0, 3, 1));
        let cookie = f.challenge(t.addr);
        let mut refused = 0;
        for _ in 0..6 {
            for _ in 0..50 {
                let tid = f.tid();
                f.send(t.addr, &Datagram::new(tid, Message::Join { cookie }));
            }
            while let Some((bytes, _)) = f.recv_within(Duration::from_millis(300)) {
                match Datagram::decode(&bytes).map(|d| d.message) {
                    Ok(Message::Error {
                        code: ErrorCode::RateLimited,
                        message,
                    }) => {
                        assert!(message.contains("no free port"), "{message}");
                        refused += 1;
                    }
                    m => panic!("unexpected reply: {m:?}"),
                }
            }
        }
        // The log pipe is read on a thread: give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        let log = t.stderr();
        let lines = log.lines().filter(|l| l.contains("no port for")).count();
        assert!(
            lines <= 2,
            "{lines} log lines for 300 refused JOINs:\n{log}"
        );
        assert_eq!(refused, 300, "every JOIN gets ERROR 5");
        t.stop();
    });
}
