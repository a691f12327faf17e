//! The relay's bookkeeping, without sockets: registered peers, sessions
//! waiting for their relayed peer, the caps and the per-IP rate limit.
//!
//! Invariants: at most `max_peers` registrations (`max_peers_per_ip` from
//! one IP) and `max_sessions` sessions, pending or spliced
//! (`max_sessions_per_ip` dialed from one IP); the rate table holds at most
//! [`MAX_RATE_ENTRIES`] addresses. Every admission returns a value whose
//! release the I/O code must report ([`Book::unregister`],
//! [`Book::session_ended`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// Limits of one relay; the defaults are `hayedik tracker --help`'s.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayLimits {
    /// Peers registered (reachable through the relay), in total.
    pub max_peers: usize,
    /// Peers registered from one IP.
    pub max_peers_per_ip: usize,
    /// Sessions (pending or spliced), in total.
    pub max_sessions: usize,
    /// Sessions dialed from one IP.
    pub max_sessions_per_ip: usize,
    /// Bytes one session may carry, both ways together.
    pub session_bytes: u64,
    /// How long one session may last.
    pub session_time: Duration,
    /// A session or a control connection silent this long is closed.
    pub idle: Duration,
    /// New connections accepted per second from one IP.
    pub conns_per_ip_per_sec: f64,
    /// Burst of new connections from one IP.
    pub conn_burst: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_peers: 1024,
            max_peers_per_ip: 16,
            max_sessions: 512,
            max_sessions_per_ip: 16,
            session_bytes: 16 << 30,
            session_time: Duration::from_secs(6 * 3600),
            idle: Duration::from_secs(60),
            conns_per_ip_per_sec: 10.0,
            conn_burst: 40,
        }
    }
}

/// Addresses the rate limiter remembers; beyond this, full buckets are
/// forgotten, and if that is not enough, new addresses are refused.
pub const MAX_RATE_ENTRIES: usize = 16_384;

/// What a registration is found by: relay key, the peer's IP as the relay
/// saw its control connection, the TCP port it announces.
pub type RegKey = ([u8; 32], IpAddr, u16);

#[derive(Debug)]
struct Registration {
    id: u64,
    /// INCOMING session ids, with the dialer's IP, for the control
    /// connection's task.
    incoming: mpsc::Sender<Incoming>,
}

#[derive(Debug)]
struct Pending {
    /// The relayed peer must take the session from this IP.
    peer_ip: IpAddr,
    stream: oneshot::Sender<tokio::net::TcpStream>,
}

/// A session waiting for the registered peer: its id and the IP of the
/// getter that dialed (the peer keys the session by it).
pub type Incoming = (u64, IpAddr);

/// Why the relay refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Busy,
    NotFound,
}

/// Counters shown in the tracker's `relay` events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub peers: usize,
    pub sessions: usize,
    pub sessions_total: u64,
    pub refused: u64,
    pub bytes: u64,
}

/// The relay's state.
#[derive(Debug)]
pub struct Book {
    limits: RelayLimits,
    regs: HashMap<RegKey, Registration>,
    regs_per_ip: HashMap<IpAddr, usize>,
    pending: HashMap<u64, Pending>,
    sessions: usize,
    sessions_per_ip: HashMap<IpAddr, usize>,
    rate: crate::ratelimit::RateTable<IpAddr>,
    next_id: u64,
    pub counters: Counters,
}

fn inc(map: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    *map.entry(ip).or_insert(0) += 1;
}

fn dec(map: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = map.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&ip);
        }
    }
}

impl Book {
    pub fn new(limits: RelayLimits) -> Self {
        let rate = crate::ratelimit::RateTable::new(
            limits.conns_per_ip_per_sec,
            limits.conn_burst,
            MAX_RATE_ENTRIES,
        );
        Self {
            limits,
            regs: HashMap::new(),
            regs_per_ip: HashMap::new(),
            pending: HashMap::new(),
            sessions: 0,
            sessions_per_ip: HashMap::new(),
            rate,
            next_id: rand::random::<u64>() | 1,
            counters: Counters::default(),
        }
    }

    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    fn refuse(&mut self, why: Refusal) -> Refusal {
        self.counters.refused += 1;
        why
    }

    fn fresh_id(&mut self) -> u64 {
        // Unpredictable enough that a stranger cannot take a session by
        // guessing; ACCEPT is also checked against the peer's IP.
        self.next_id = self.next_id.wrapping_add(rand::random::<u64>() | 1);
        self.next_id
    }

    /// Whether a new connection from `ip` is within its rate at `now`.
    pub fn admit_connection(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate.admit(ip, now) {
            true
        } else {
            self.refuse(Refusal::Busy);
            false
        }
    }

    /// Registers the peer at `key`; a registration at the same key is
    /// replaced (the peer reconnected). Returns its id and the receiver of
    /// INCOMING session ids.
    pub fn register(&mut self, key: RegKey) -> Result<(u64, mpsc::Receiver<Incoming>), Refusal> {
        let ip = key.1;
        if !self.regs.contains_key(&key) {
            if self.regs.len() >= self.limits.max_peers
                || self.regs_per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_peers_per_ip
            {
                return Err(self.refuse(Refusal::Busy));
            }
            inc(&mut self.regs_per_ip, ip);
        }
        let id = self.fresh_id();
        let (tx, rx) = mpsc::channel(16);
        self.regs.insert(key, Registration { id, incoming: tx });
        self.counters.peers = self.regs.len();
        Ok((id, rx))
    }

    /// The control connection of registration `id` ended.
    pub fn unregister(&mut self, key: RegKey, id: u64) {
        if self.regs.get(&key).is_some_and(|r| r.id == id) {
            self.regs.remove(&key);
            dec(&mut self.regs_per_ip, key.1);
            self.counters.peers = self.regs.len();
        }
    }

    /// A getter at `from` dials the peer registered at `key`: a session
    /// slot is taken (release it with [`Book::session_ended`]), the peer is
    /// told, and the receiver yields the peer's connection when it takes
    /// the session.
    pub fn dial(
        &mut self,
        from: IpAddr,
        key: RegKey,
    ) -> Result<(u64, oneshot::Receiver<tokio::net::TcpStream>), Refusal> {
        if self.sessions >= self.limits.max_sessions
            || self.sessions_per_ip.get(&from).copied().unwrap_or(0)
                >= self.limits.max_sessions_per_ip
        {
            return Err(self.refuse(Refusal::Busy));
        }
        let Some(reg) = self.regs.get(&key) else {
            return Err(self.refuse(Refusal::NotFound));
        };
        let incoming = reg.incoming.clone();
        let id = self.fresh_id();
        if incoming.try_send((id, from)).is_err() {
            return Err(self.refuse(Refusal::Busy));
        }
        let (tx, rx) = oneshot::channel();
        self.pending.insert(
            id,
            Pending {
                peer_ip: key.1,
                stream: tx,
            },
        );
        self.sessions += 1;
        self.counters.sessions = self.sessions;
        self.counters.sessions_total += 1;
        inc(&mut self.sessions_per_ip, from);
        Ok((id, rx))
    }

    /// The relayed peer at `from` takes session `id`: where to send its
    /// connection.
    pub fn accept(
        &mut self,
        from: IpAddr,
        id: u64,
    ) -> Result<oneshot::Sender<tokio::net::TcpStream>, Refusal> {
        match self.pending.get(&id) {
            Some(p) if p.peer_ip == from => {}
            _ => return Err(self.refuse(Refusal::NotFound)),
        }
        self.pending
            .remove(&id)
            .map(|p| p.stream)
            .ok_or(Refusal::NotFound)
    }

    /// Session `id`, dialed from `from`, ended (spliced or not).
    pub fn session_ended(&mut self, from: IpAddr, id: u64, bytes: u64) {
        self.pending.remove(&id);
        self.sessions = self.sessions.saturating_sub(1);
        self.counters.sessions = self.sessions;
        self.counters.bytes += bytes;
        dec(&mut self.sessions_per_ip, from);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    fn small() -> RelayLimits {
        RelayLimits {
            max_peers: 3,
            max_peers_per_ip: 2,
            max_sessions: 3,
            max_sessions_per_ip: 2,
            conns_per_ip_per_sec: 1.0,
            conn_burst: 2,
            ..RelayLimits::default()
        }
    }

    #[test]
    fn registrations_are_capped_in_total_and_per_ip_and_replaced() {
        let mut b = Book::new(small());
        let (id1, _rx1) = b.register(([1; 32], ip(1), 10)).unwrap();
        // Same key: replaced, not counted twice.
        let (id2, _rx2) = b.register(([1; 32], ip(1), 10)).unwrap();
        assert_ne!(id1, id2);
        b.register(([1; 32], ip(1), 11)).unwrap();
        assert_eq!(b.register(([1; 32], ip(1), 12)).unwrap_err(), Refusal::Busy);
        b.register(([1; 32], ip(2), 10)).unwrap();
        assert_eq!(b.register(([1; 32], ip(3), 10)).unwrap_err(), Refusal::Busy);
        // The replaced registration's end does not remove the new one.
        b.unregister(([1; 32], ip(1), 10), id1);
        assert_eq!(b.counters.peers, 3);
        b.unregister(([1; 32], ip(1), 10), id2);
        assert_eq!(b.counters.peers, 2);
        b.register(([1; 32], ip(3), 10)).unwrap();
    }

    #[test]
    fn sessions_are_capped_and_accepted_only_by_the_peers_ip() {
        let mut b = Book::new(small());
        let key = ([1; 32], ip(1), 10);
        let (_, mut incoming) = b.register(key).unwrap();
        assert_eq!(
            b.dial(ip(9), ([2; 32], ip(1), 10)).unwrap_err(),
            Refusal::NotFound
        );
        let (s1, _rx1) = b.dial(ip(9), key).unwrap();
        let (s2, _rx2) = b.dial(ip(9), key).unwrap();
        assert_eq!(b.dial(ip(9), key).unwrap_err(), Refusal::Busy);
        let (s3, _rx3) = b.dial(ip(8), key).unwrap();
        assert_eq!(b.dial(ip(7), key).unwrap_err(), Refusal::Busy);
        assert_eq!(incoming.try_recv().unwrap(), (s1, ip(9)));
        assert_eq!(incoming.try_recv().unwrap(), (s2, ip(9)));
        assert_eq!(incoming.try_recv().unwrap(), (s3, ip(8)));
        // Another IP cannot take the session; the peer can, once.
        assert_eq!(b.accept(ip(9), s1).unwrap_err(), Refusal::NotFound);
        assert!(b.accept(ip(1), s1).is_ok());
        assert_eq!(b.accept(ip(1), s1).unwrap_err(), Refusal::NotFound);
        b.session_ended(ip(9), s1, 100);
        assert_eq!(b.counters.bytes, 100);
        b.dial(ip(9), key).unwrap();
        // A session that ends before being accepted cannot be accepted.
        b.session_ended(ip(8), s3, 0);
        assert_eq!(b.accept(ip(1), s3).unwrap_err(), Refusal::NotFound);
        assert_eq!(b.counters.sessions, 2);
    }

    #[test]
    fn connection_rate_per_ip() {
        let mut b = Book::new(small());
        let t0 = Instant::now();
        assert!(b.admit_connection(ip(1), t0));
        assert!(b.admit_connection(ip(1), t0));
        assert!(!b.admit_connection(ip(1), t0));
        // Another address is not affected.
        assert!(b.admit_connection(ip(2), t0));
        assert!(b.admit_connection(ip(1), t0 + Duration::from_secs(1)));
        assert_eq!(b.counters.refused, 1);
    }
}
