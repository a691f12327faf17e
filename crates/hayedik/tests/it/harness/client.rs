//! A tiny tracker client on one UDP socket, built on
//! `hayedik_proto::tracker`, with receive timeouts; and helpers to build and
//! take apart the messages it exchanges.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hayedik_proto::tracker::{Announce, Datagram, ErrorCode, Message, PeerState, Peers};

use super::{REPLY_TIMEOUT, SILENCE};

/// A swarm key: `BLAKE3::derive_key("hayedik swarm key v1", root)` of a
/// made-up root.
pub fn swarm_key(n: u8) -> [u8; 32] {
    blake3::derive_key("hayedik swarm key v1", &[n; 32])
}

/// An ANNOUNCE body.
pub fn ann(key: [u8; 32], port: u16, state: PeerState, wanted: u16) -> Announce {
    Announce {
        swarm_key: key,
        port,
        state,
        wanted,
    }
}

/// The error code of an ERROR message, or a panic.
pub fn error_code(m: &Message) -> ErrorCode {
    match m {
        Message::Error { code, .. } => *code,
        m => panic!("expected an ERROR, got {m:?}"),
    }
}

/// The body of a PEERS message, or a panic.
pub fn peers(m: Message) -> Peers {
    match m {
        Message::Peers(p) => p,
        m => panic!("expected PEERS, got {m:?}"),
    }
}

/// The result of a JOIN with a cookie: the swarm the tracker launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub port: u16,
    pub token: u64,
    pub swarm: SocketAddr,
}

/// A tracker client on one UDP socket.
pub struct Client {
    sock: UdpSocket,
    next_tid: u32,
}

impl Client {
    /// A client on 127.0.0.1, any port.
    pub fn new() -> Client {
        Client::on(Ipv4Addr::LOCALHOST)
    }

    /// A client on `ip` (any 127.0.0.x works on Linux loopback), any port.
    pub fn on(ip: impl Into<IpAddr>) -> Client {
        let sock = UdpSocket::bind(SocketAddr::new(ip.into(), 0)).expect("binding a client");
        Client {
            sock,
            next_tid: rand::random::<u32>() >> 1,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("client address")
    }

    /// A fresh transaction id.
    pub fn tid(&mut self) -> u32 {
        self.next_tid = self.next_tid.wrapping_add(1);
        self.next_tid
    }

    pub fn send_raw(&self, to: SocketAddr, bytes: &[u8]) {
        let n = self.sock.send_to(bytes, to).expect("sending a datagram");
        assert_eq!(n, bytes.len());
    }

    pub fn send(&self, to: SocketAddr, d: &Datagram) {
        self.send_raw(to, &d.to_vec());
    }

    /// The next datagram within `limit`, if any.
    pub fn recv_within(&self, limit: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock
                .set_read_timeout(Some(left))
                .expect("setting a timeout");
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                // ICMP errors of earlier sends: keep listening.
                Err(_) => continue,
            }
        }
    }

    /// The next datagram, decoded, with its size and source.
    pub fn recv(&self) -> (Datagram, usize, SocketAddr) {
        let (bytes, from) = self
            .recv_within(REPLY_TIMEOUT)
            .expect("no reply within the timeout");
        let d = Datagram::decode(&bytes)
            .unwrap_or_else(|e| panic!("undecodable reply {bytes:?} from {from}: {e}"));
        (d, bytes.len(), from)
    }

    /// Panics if anything arrives within [`SILENCE`].
    pub fn expect_silence(&self, what: &str) {
        if let Some((bytes, from)) = self.recv_within(SILENCE) {
            panic!(
                "{what}: expected no reply, got {:?} ({} bytes) from {from}",
                Datagram::decode(&bytes),
                bytes.len()
            );
        }
    }

    /// Sends raw bytes and returns the reply, which must come from `to` and
    /// echo `tid`.
    pub fn request_raw(&mut self, to: SocketAddr, bytes: &[u8], tid: u32) -> (Message, usize) {
        self.send_raw(to, bytes);
        let (d, len, from) = self.recv();
        assert_eq!(from, to, "reply from another address: {d:?}");
        assert_eq!(d.tid, tid, "transaction id not echoed: {d:?}");
        (d.message, len)
    }

    /// Sends `message` with a fresh transaction id; returns the reply and its
    /// size.
    pub fn request(&mut self, to: SocketAddr, message: Message) -> (Message, usize) {
        let tid = self.tid();
        let bytes = Datagram::new(tid, message).to_vec();
        self.request_raw(to, &bytes, tid)
    }

    /// JOIN without a cookie: the CHALLENGE's cookie. The CHALLENGE is no
    /// larger than the JOIN.
    pub fn challenge(&mut self, central: SocketAddr) -> u64 {
        let (m, len) = self.request(central, Message::Join { cookie: 0 });
        assert!(len <= 20, "CHALLENGE of {len} bytes for a 20-byte JOIN");
        match m {
            Message::Challenge { cookie } if cookie != 0 => cookie,
            m => panic!("expected a CHALLENGE, got {m:?}"),
        }
    }

    /// JOIN with `cookie` and `tid`: checks BOTH OFFERs (one from the swarm
    /// port with an empty body, one from the central port with the port) and
    /// returns the swarm.
    pub fn join_with(&mut self, central: SocketAddr, cookie: u64, tid: u32) -> Joined {
        self.send(central, &Datagram::new(tid, Message::Join { cookie }));
        self.offers(central, tid)
    }

    /// Receives the two OFFERs answering the JOIN `tid`.
    pub fn offers(&mut self, central: SocketAddr, tid: u32) -> Joined {
        let (a, len_a, from_a) = self.recv();
        let (b, len_b, from_b) = self.recv();
        let mut offers = [(a, len_a, from_a), (b, len_b, from_b)];
        // The central one (with the port) first.
        offers.sort_by_key(|(_, _, from)| *from != central);
        let [(central_offer, central_len, central_from), (swarm_offer, swarm_len, swarm_from)] =
            offers;
        assert_eq!(
            central_from, central,
            "one OFFER comes from the central port"
        );
        assert_eq!(central_offer.tid, tid);
        assert_eq!(swarm_offer.tid, tid);
        let Message::Offer {
            token,
            port: Some(port),
        } = central_offer.message
        else {
            panic!("central OFFER must carry the port: {central_offer:?}");
        };
        assert_eq!(central_len, 22);
        let swarm = SocketAddr::new(central.ip(), port);
        assert_eq!(
            swarm_from, swarm,
            "the other OFFER comes from the swarm port"
        );
        assert_eq!(
            swarm_offer.message,
            Message::Offer { token, port: None },
            "the swarm's OFFER has an empty body and the same token"
        );
        assert_eq!(swarm_len, 20);
        assert_ne!(token, 0);
        assert_ne!(port, central.port());
        Joined { port, token, swarm }
    }

    /// CHALLENGE, then JOIN with the cookie: a pending swarm.
    pub fn join(&mut self, central: SocketAddr) -> Joined {
        let cookie = self.challenge(central);
        let tid = self.tid();
        self.join_with(central, cookie, tid)
    }

    /// CONFIRM, expecting CONFIRMED from the swarm port.
    pub fn confirm(&mut self, j: &Joined) {
        let (m, _) = self.request(j.swarm, Message::Confirm { token: j.token });
        assert_eq!(m, Message::Confirmed);
    }

    /// A confirmed swarm: JOIN, then CONFIRM.
    pub fn create_swarm(&mut self, central: SocketAddr) -> Joined {
        let j = self.join(central);
        self.confirm(&j);
        j
    }

    /// CONNECT: a connection id.
    pub fn connect(&mut self, swarm: SocketAddr) -> u64 {
        match self.request(swarm, Message::Connect) {
            (Message::Connected { connection_id }, 20) => connection_id,
            (m, len) => panic!("expected a 20-byte CONNECTED, got {m:?} ({len} bytes)"),
        }
    }

    /// ANNOUNCE with `connection_id`: the reply and its size.
    pub fn announce(&mut self, swarm: SocketAddr, cid: u64, a: Announce) -> (Message, usize) {
        self.request(
            swarm,
            Message::Announce {
                connection_id: cid,
                announce: a,
            },
        )
    }
}
