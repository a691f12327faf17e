//! INTRODUCE (docs/protocol.md, "Extension: introductions"): which listed
//! peers of one swarm opted in to hole punching, from which UDP address
//! they announce, and the rate limits on introductions. No sockets, time
//! passed in.
//!
//! Invariants: at most [`MAX_OPTED`] opted-in peers per swarm (more are
//! simply not punchable); each rate table holds at most
//! [`MAX_RATE_KEYS`] keys; an introduction is only ever between two
//! opted-in peers, the requester asking from the very UDP address it
//! opted in from, so the tracker only sends to addresses that asked for it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::ratelimit::RateTable;

/// Opted-in peers remembered per swarm.
pub const MAX_OPTED: usize = 4096;
/// Keys per rate table.
pub const MAX_RATE_KEYS: usize = 1024;
/// Introductions per source IP, and per target, within [`RATE_WINDOW`].
pub const RATE_BURST: u32 = 16;
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A listed peer: its IP and announced TCP port.
pub type Listed = (IpAddr, u16);

/// Opted-in peers of one swarm and the introductions' rate limits.
#[derive(Debug)]
pub struct Introducer {
    /// Listed peer -> the UDP address of its latest announce, and when.
    opted: HashMap<Listed, (SocketAddr, Instant)>,
    per_source: RateTable<IpAddr>,
    per_target: RateTable<Listed>,
}

impl Default for Introducer {
    fn default() -> Self {
        let per_sec = f64::from(RATE_BURST) / RATE_WINDOW.as_secs_f64();
        Self {
            opted: HashMap::new(),
            per_source: RateTable::new(per_sec, RATE_BURST, MAX_RATE_KEYS),
            per_target: RateTable::new(per_sec, RATE_BURST, MAX_RATE_KEYS),
        }
    }
}

impl Introducer {
    /// `listed` announced from `udp` with the PUNCH flag (true) or without
    /// it, or left (false).
    pub fn set(&mut self, listed: Listed, udp: SocketAddr, punch: bool, now: Instant) {
        if !punch {
            // Most swarms have nobody opted in: no hash computed then.
            if !self.opted.is_empty() {
                self.opted.remove(&listed);
            }
        } else if self.opted.len() < MAX_OPTED || self.opted.contains_key(&listed) {
            self.opted.insert(listed, (udp, now));
        }
    }

    /// Whether `listed` opted in.
    pub fn is_punchable(&self, listed: Listed) -> bool {
        self.opted.contains_key(&listed)
    }

    /// Forgets peers that have not announced for `max_age`.
    pub fn expire(&mut self, now: Instant, max_age: Duration) {
        self.opted
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= max_age);
    }

    /// An INTRODUCE from `src` (listed at its IP and `port`) naming
    /// `target`: the UDP addresses of requester and target when both opted
    /// in (the requester from `src` itself), they differ, and neither rate
    /// limit is exceeded; `None` otherwise (the tracker then sends nothing).
    pub fn introduce(
        &mut self,
        src: SocketAddr,
        port: u16,
        target: SocketAddr,
        now: Instant,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let me = (src.ip().to_canonical(), port);
        let them = (target.ip().to_canonical(), target.port());
        if me == them {
            return None;
        }
        let (my_udp, _) = *self.opted.get(&me)?;
        if my_udp != src {
            return None;
        }
        let (their_udp, _) = *self.opted.get(&them)?;
        // Both buckets are checked before either is charged... as far as a
        // refusal by the second can tell: charging the first anyway is
        // the conservative side.
        if !self.per_source.admit(me.0, now) || !self.per_target.admit(them, now) {
            return None;
        }
        Some((my_udp, their_udp))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_between_opted_in_peers_from_their_own_socket() {
        let now = Instant::now();
        let mut i = Introducer::default();
        let (ip_a, ip_b) = (a("10.0.0.1:0").ip(), a("10.0.0.2:0").ip());
        i.set((ip_a, 7000), a("10.0.0.1:40000"), true, now);
        // Target not opted in yet.
        assert_eq!(
            i.introduce(a("10.0.0.1:40000"), 7000, a("10.0.0.2:7000"), now),
            None
        );
        i.set((ip_b, 7000), a("10.0.0.2:41000"), true, now);
        // Another socket of the requester's IP, another announced port,
        // or itself: nothing.
        assert_eq!(
            i.introduce(a("10.0.0.1:40001"), 7000, a("10.0.0.2:7000"), now),
            None
        );
        assert_eq!(
            i.introduce(a("10.0.0.1:40000"), 7001, a("10.0.0.2:7000"), now),
            None
        );
        assert_eq!(
            i.introduce(a("10.0.0.1:40000"), 7000, a("10.0.0.1:7000"), now),
            None
        );
        assert_eq!(
            i.introduce(a("10.0.0.1:40000"), 7000, a("10.0.0.2:7000"), now),
            Some((a("10.0.0.1:40000"), a("10.0.0.2:41000")))
        );
        // Opting out (an announce without the flag, or leaving).
        i.set((ip_b, 7000), a("10.0.0.2:41000"), false, now);
        assert_eq!(
            i.introduce(a("10.0.0.1:40000"), 7000, a("10.0.0.2:7000"), now),
            None
        );
    }

    #[test]
    fn rate_limited_and_expired() {
        let now = Instant::now();
        let mut i = Introducer::default();
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        for n in 1..=3 {
            i.set((ip(n), 7000), SocketAddr::new(ip(n), 40000), true, now);
        }
        let from = SocketAddr::new(ip(1), 40000);
        let mut ok = 0;
        for _ in 0..100 {
            ok += usize::from(
                i.introduce(from, 7000, SocketAddr::new(ip(2), 7000), now)
                    .is_some(),
            );
        }
        assert_eq!(ok, RATE_BURST as usize);
        // The source's budget is spent whatever the target.
        assert!(i
            .introduce(from, 7000, SocketAddr::new(ip(3), 7000), now)
            .is_none());
        // Refilled after the window.
        let later = now + RATE_WINDOW;
        assert!(i
            .introduce(from, 7000, SocketAddr::new(ip(3), 7000), later)
            .is_some());
        i.expire(later + Duration::from_secs(1000), Duration::from_secs(60));
        assert!(!i.is_punchable((ip(1), 7000)));
    }
}
