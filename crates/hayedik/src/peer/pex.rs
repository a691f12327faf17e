//! Peer exchange (peer wire 2.1, docs/peer-protocol.md "Peer exchange"):
//! once both proofs have passed, each side tells the other the listen
//! addresses of the swarm's other peers it has sessions with, so a getter
//! finds peers the tracker's sample did not list, and a swarm keeps
//! finding itself while its tracker is down.
//!
//! - [`PexShared`] (one per swarm, in [`Swarm::pex`]): what the swarm knows
//!   of its own addresses and its tracker's, so that addresses pointing at
//!   ourselves or at the tracker are never dialled.
//! - [`PexSession`] (one per session): when to send, what the remote has
//!   already been told, and the checks on what it sends. A plain struct
//!   with `now` passed in; the session's I/O loop calls [`PexSession::poll`]
//!   on its tick and [`PexSession::on_message`] for a received
//!   `PeerExchange`.
//!
//! Sending: only when both sides agreed on ALPN `hayedik/2.1`; the first
//! message [`FIRST_AFTER`] after the handshake (as soon as there is
//! something to say), later ones at least [`EVERY`] apart and only with
//! changes; never the recipient itself; to a peer on a public address,
//! never a private, loopback or link-local address.
//!
//! Receiving: a frame larger than the limit or a list longer than 50 does
//! not decode (the session ends with a strike, as for any invalid frame);
//! a second message less than [`MIN_GAP`] after the previous one is a
//! flood (the session ends with a strike); a message when 2.1 was not
//! agreed is a protocol violation. Addresses that point at ourselves, at
//! the tracker, at port 0, at an unspecified, multicast or broadcast
//! address (and, from a peer on a public address, at a private one) are
//! ignored; the others are offered to the connector
//! ([`Swarm::offer_peer`], a bounded queue), which dials them like listed
//! peers: they must pass the proof like any other. `dropped` lists are
//! read and bounded but not acted on: a peer that left simply fails to be
//! dialled, with backoff.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hayedik_proto::peer::{Message, MAX_PEX_ADDRS};

use super::swarm::{Found, Swarm};

/// The first message goes this long after the handshake.
pub const FIRST_AFTER: Duration = Duration::from_secs(2);
/// Later messages at least this far apart.
pub const EVERY: Duration = Duration::from_secs(60);
/// A message from the remote less than this after its previous one is a
/// flood (an honest peer waits [`EVERY`]).
pub const MIN_GAP: Duration = Duration::from_secs(30);
/// Addresses one session remembers having told its remote.
const MAX_TOLD: usize = 1024;
/// Our own IPs remembered (the local addresses of our connections).
const MAX_OWN_IPS: usize = 64;
/// Tracker addresses remembered.
const MAX_TRACKERS: usize = 16;

/// What a swarm knows of its own addresses and its tracker's.
#[derive(Debug, Default)]
pub struct PexShared {
    inner: Mutex<Own>,
}

#[derive(Debug, Default)]
struct Own {
    /// IPs this peer was seen at: the local address of its connections,
    /// the address the tracker observed for it.
    ips: HashSet<IpAddr>,
    /// The tracker's addresses (the ticket's swarm tracker, the central
    /// tracker `share` was given).
    trackers: HashSet<SocketAddr>,
}

impl PexShared {
    fn lock(&self) -> MutexGuard<'_, Own> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One of our IPs: a connection's local address, or the address the
    /// tracker observed for us.
    pub fn note_own_ip(&self, ip: IpAddr) {
        let ip = canonical(ip);
        let mut own = self.lock();
        if own.ips.len() < MAX_OWN_IPS && !ip.is_unspecified() {
            own.ips.insert(ip);
        }
    }

    /// A tracker's address (never dialled as a peer).
    pub fn note_tracker(&self, addr: SocketAddr) {
        let addr = SocketAddr::new(canonical(addr.ip()), addr.port());
        let mut own = self.lock();
        if own.trackers.len() < MAX_TRACKERS {
            own.trackers.insert(addr);
        }
    }

    /// Whether `addr` is us (our listen port on one of our IPs, or on any
    /// loopback or unspecified address) or a tracker.
    pub fn is_ours(&self, addr: SocketAddr, listen_port: u16) -> bool {
        let ip = canonical(addr.ip());
        let own = self.lock();
        if own.trackers.contains(&SocketAddr::new(ip, addr.port())) {
            return true;
        }
        addr.port() == listen_port
            && (ip.is_loopback() || ip.is_unspecified() || own.ips.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether `ip` is reachable on the internet at large: not private,
/// loopback, link-local, shared (CGNAT), unique-local or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || is_shared_v4(v4))
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || is_unique_local_v6(v6)
                || is_link_local_v6(v6))
        }
    }
}

fn is_shared_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 100 && (o[1] & 0xC0) == 64
}

fn is_unique_local_v6(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xFE00) == 0xFC00
}

fn is_link_local_v6(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xFFC0) == 0xFE80
}

/// An address no peer can be dialled at.
fn is_undialable(addr: SocketAddr) -> bool {
    let ip = canonical(addr.ip());
    addr.port() == 0
        || ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Why a received PeerExchange ends the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PexViolation {
    #[error("sent peer exchange although hayedik/2.1 was not agreed")]
    NotAgreed,
    #[error("sent peer exchange messages less than {} s apart", MIN_GAP.as_secs())]
    Flood,
}

/// Peer exchange with one remote peer.
#[derive(Debug)]
pub struct PexSession {
    /// Both sides agreed on `hayedik/2.1`.
    agreed: bool,
    /// The remote's listed address (never told to itself).
    listed: SocketAddr,
    /// Whether the remote is on a public address (then it is told public
    /// addresses only).
    public_remote: bool,
    /// Addresses the remote has been told and not told dropped since.
    told: HashSet<SocketAddr>,
    /// No message before this.
    next_send: Instant,
    /// When the remote's last PeerExchange came.
    last_received: Option<Instant>,
}

impl PexSession {
    /// A session whose handshake ended at `now`. `listed`: the remote's
    /// listen address; `remote`: where its connection comes from.
    pub fn new(agreed: bool, listed: SocketAddr, remote: SocketAddr, now: Instant) -> Self {
        Self {
            agreed,
            listed,
            public_remote: is_public(remote.ip()),
            told: HashSet::new(),
            next_send: now + FIRST_AFTER,
            last_received: None,
        }
    }

    /// The message to send now, if any: `connected` are the listen
    /// addresses of the swarm's sessions (the remote's among them).
    pub fn poll(&mut self, now: Instant, connected: &[SocketAddr]) -> Option<Message> {
        if !self.agreed || now < self.next_send {
            return None;
        }
        let current: HashSet<SocketAddr> = connected
            .iter()
            .copied()
            .filter(|a| *a != self.listed && !is_undialable(*a))
            .filter(|a| !self.public_remote || is_public(a.ip()))
            .collect();
        let dropped: Vec<SocketAddr> = self
            .told
            .iter()
            .filter(|a| !current.contains(a))
            .take(MAX_PEX_ADDRS)
            .copied()
            .collect();
        let room = MAX_TOLD.saturating_sub(self.told.len() - dropped.len());
        let added: Vec<SocketAddr> = current
            .iter()
            .filter(|a| !self.told.contains(a))
            .take(MAX_PEX_ADDRS.min(room))
            .copied()
            .collect();
        if added.is_empty() && dropped.is_empty() {
            return None;
        }
        for a in &dropped {
            self.told.remove(a);
        }
        self.told.extend(added.iter().copied());
        self.next_send = now + EVERY;
        Some(Message::PeerExchange { added, dropped })
    }

    /// A PeerExchange from the remote: the addresses worth dialling, or
    /// why the session must end. `listen_port`: the port we serve on.
    pub fn on_message(
        &mut self,
        added: &[SocketAddr],
        now: Instant,
        own: &PexShared,
        listen_port: u16,
    ) -> Result<Vec<SocketAddr>, PexViolation> {
        if !self.agreed {
            return Err(PexViolation::NotAgreed);
        }
        if self
            .last_received
            .is_some_and(|last| now.duration_since(last) < MIN_GAP)
        {
            return Err(PexViolation::Flood);
        }
        self.last_received = Some(now);
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in added.iter().take(MAX_PEX_ADDRS) {
            let a = SocketAddr::new(canonical(a.ip()), a.port());
            let worth = !is_undialable(a)
                && a != self.listed
                && !own.is_ours(a, listen_port)
                && (!self.public_remote || is_public(a.ip()))
                && !out.contains(&a);
            if worth {
                out.push(a);
            }
        }
        Ok(out)
    }
}

/// Offers what a PeerExchange brought to the connector; returns how many
/// were queued (the rest did not fit the bounded queue).
pub fn offer(swarm: &Swarm, addrs: &[SocketAddr]) -> usize {
    addrs
        .iter()
        .filter(|a| !swarm.is_connected(a) && !swarm.is_banned(a))
        .filter(|a| swarm.offer_peer(**a, Found::Pex))
        .count()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn added(m: Option<Message>) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        match m {
            Some(Message::PeerExchange {
                mut added,
                mut dropped,
            }) => {
                added.sort();
                dropped.sort();
                (added, dropped)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_soon_then_a_minute_apart_with_changes_only() {
        let t0 = Instant::now();
        let me = a("10.0.0.9:4000");
        let mut s = PexSession::new(true, me, me, t0);
        let peers = [a("10.0.0.1:1"), a("10.0.0.2:2"), me];
        assert_eq!(s.poll(t0, &peers), None, "not right after the handshake");
        let (add, drop) = added(s.poll(t0 + FIRST_AFTER, &peers));
        assert_eq!(add, vec![a("10.0.0.1:1"), a("10.0.0.2:2")], "never itself");
        assert!(drop.is_empty());
        let t1 = t0 + FIRST_AFTER;
        let changed = [a("10.0.0.1:1"), a("10.0.0.3:3")];
        assert_eq!(s.poll(t1 + EVERY / 2, &changed), None, "a minute apart");
        let (add, drop) = added(s.poll(t1 + EVERY, &changed));
        assert_eq!((add, drop), (vec![a("10.0.0.3:3")], vec![a("10.0.0.2:2")]));
        assert_eq!(s.poll(t1 + 5 * EVERY, &changed), None, "no change, nothing");
    }

    #[test]
    fn nothing_without_2_1_and_at_most_50_per_list() {
        let t0 = Instant::now();
        let me = a("10.0.0.9:4000");
        let many: Vec<SocketAddr> = (1..=120u16)
            .map(|p| SocketAddr::from(([10, 0, 1, 1], p)))
            .collect();
        let mut old = PexSession::new(false, me, me, t0);
        assert_eq!(old.poll(t0 + EVERY, &many), None);
        let mut s = PexSession::new(true, me, me, t0);
        let (add, _) = added(s.poll(t0 + FIRST_AFTER, &many));
        assert_eq!(add.len(), MAX_PEX_ADDRS);
        let (add2, _) = added(s.poll(t0 + FIRST_AFTER + EVERY, &many));
        assert_eq!(add2.len(), MAX_PEX_ADDRS);
        assert!(add2.iter().all(|x| !add.contains(x)), "the rest, later");
    }

    #[test]
    fn a_public_peer_is_told_no_private_address() {
        let t0 = Instant::now();
        let public = a("203.0.113.5:7000");
        let mut s = PexSession::new(true, public, public, t0);
        let peers = [
            a("192.168.1.2:1"),
            a("127.0.0.1:2"),
            a("169.254.1.1:3"),
            a("100.64.0.1:4"),
            a("[fe80::1]:5"),
            a("[fd00::1]:6"),
            a("[::1]:7"),
            a("198.51.100.7:8"),
            a("[2001:db8::7]:9"),
        ];
        let (add, _) = added(s.poll(t0 + FIRST_AFTER, &peers));
        assert_eq!(add, vec![a("198.51.100.7:8"), a("[2001:db8::7]:9")]);
        // A private peer hears of everyone.
        let lan = a("192.168.1.3:7000");
        let mut s = PexSession::new(true, lan, lan, t0);
        let (add, _) = added(s.poll(t0 + FIRST_AFTER, &peers));
        assert_eq!(add.len(), peers.len());
    }

    #[test]
    fn received_addresses_are_filtered_and_floods_refused() {
        let t0 = Instant::now();
        let own = PexShared::default();
        own.note_own_ip("192.168.1.50".parse().unwrap());
        own.note_own_ip("198.51.100.50".parse().unwrap());
        own.note_tracker(a("192.168.1.1:7411"));
        let sender = a("192.168.1.3:7000");
        let mut s = PexSession::new(true, sender, sender, t0);
        let got = s
            .on_message(
                &[
                    a("127.0.0.1:4000"),
                    a("127.0.0.2:4000"),
                    a("192.168.1.50:4000"),
                    a("198.51.100.50:4000"),
                    a("[::ffff:192.168.1.50]:4000"),
                    a("192.168.1.1:7411"),
                    a("192.168.1.9:0"),
                    a("0.0.0.0:5"),
                    a("224.0.0.1:5"),
                    a("255.255.255.255:5"),
                    a("[ff02::1]:5"),
                    sender,
                    a("192.168.1.4:4001"),
                    a("192.168.1.4:4001"),
                    a("192.168.1.50:4001"),
                    a("192.168.1.1:7412"),
                ],
                t0,
                &own,
                4000,
            )
            .unwrap();
        assert_eq!(
            got,
            vec![
                a("192.168.1.4:4001"),
                a("192.168.1.50:4001"),
                a("192.168.1.1:7412")
            ]
        );
        assert_eq!(
            s.on_message(&[], t0 + MIN_GAP / 2, &own, 4000),
            Err(PexViolation::Flood)
        );
        assert!(s.on_message(&[], t0 + MIN_GAP, &own, 4000).is_ok());
        let mut old = PexSession::new(false, sender, sender, t0);
        assert_eq!(
            old.on_message(&[], t0, &own, 4000),
            Err(PexViolation::NotAgreed)
        );
    }

    #[test]
    fn a_public_sender_cannot_point_at_private_addresses() {
        let t0 = Instant::now();
        let sender = a("203.0.113.5:7000");
        let mut s = PexSession::new(true, sender, sender, t0);
        let got = s
            .on_message(
                &[a("10.0.0.1:80"), a("198.51.100.7:8")],
                t0,
                &PexShared::default(),
                4000,
            )
            .unwrap();
        assert_eq!(got, vec![a("198.51.100.7:8")]);
    }

    #[test]
    fn own_addresses_are_bounded() {
        let own = PexShared::default();
        for i in 0..1000u32 {
            own.note_own_ip(IpAddr::V4(Ipv4Addr::from(i)));
            own.note_tracker(SocketAddr::from((Ipv4Addr::from(i), 1)));
        }
        let inner = own.lock();
        assert!(inner.ips.len() <= MAX_OWN_IPS && inner.trackers.len() <= MAX_TRACKERS);
    }
}
