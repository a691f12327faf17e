//! The central tracker's budget: a per-IP rate limit on swarm-creating JOINs
//! and caps on swarms, per IP, per network (IPv4 /24, IPv6 /64) and in
//! total, so a flood from one address, or from the many addresses of one
//! network, cannot exhaust ports, tasks or memory, nor deny service to
//! others. Also [`LogEvery`], which keeps a flood from flooding the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Configurable limits; every field has a default in [`Limits::default`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Swarm-creating JOINs per second per source IP (token bucket rate).
    pub joins_per_ip_per_sec: f64,
    /// Burst of swarm-creating JOINs per source IP.
    pub join_burst: u32,
    /// Swarms waiting for CONFIRM, all sources together.
    pub max_pending: usize,
    /// Swarms waiting for CONFIRM per source IP.
    pub max_pending_per_ip: usize,
    /// Swarms (pending and confirmed) in total.
    pub max_swarms: usize,
    /// Swarms (pending and confirmed) created by one source IP.
    pub max_swarms_per_ip: usize,
    /// Swarms (pending and confirmed) created from one IPv4 /24.
    pub max_swarms_per_24: usize,
    /// Swarms (pending and confirmed) created from one IPv6 /64.
    pub max_swarms_per_64: usize,
    /// Peers listed in one swarm.
    pub max_peers_per_swarm: usize,
    /// Peers (TCP ports) listed in one swarm from one source IPv4 address
    /// or IPv6 /64: a household or an office behind one NAT needs a few.
    pub max_peers_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            joins_per_ip_per_sec: 5.0,
            join_burst: 20,
            max_pending: 512,
            max_pending_per_ip: 16,
            max_swarms: 10_000,
            max_swarms_per_ip: 256,
            max_swarms_per_24: 1024,
            max_swarms_per_64: 256,
            max_peers_per_swarm: 10_000,
            max_peers_per_ip: 32,
        }
    }
}

/// Why a JOIN was refused. The JOIN carried a valid cookie, so its source
/// is proven: it gets ERROR 5 with [`Refusal::message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RateLimited,
    TooManyPending,
    TooManyPendingFromIp,
    TooManySwarms,
    TooManySwarmsFromIp,
    /// From the IPv4 /24 or IPv6 /64 of the source.
    TooManySwarmsFromNetwork,
}

impl Refusal {
    /// The ERROR 5 message: what is full, and whether waiting helps.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::RateLimited => "too many new swarms from your address: retry in a moment",
            Refusal::TooManyPending => {
                "tracker busy: too many swarms waiting for confirmation; retry in a moment"
            }
            Refusal::TooManyPendingFromIp => {
                "too many unconfirmed swarms from your address: retry in a moment"
            }
            Refusal::TooManySwarms => "tracker is full: it holds as many swarms as it may",
            Refusal::TooManySwarmsFromIp => {
                "tracker is full for your address: it created as many swarms for it as it may"
            }
            Refusal::TooManySwarmsFromNetwork => {
                "tracker is full for your network: it created as many swarms for it as it may"
            }
        }
    }
}

/// A source network: an IPv4 /24 or an IPv6 /64 (an IPv4-mapped IPv6
/// address counts as its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    V4([u8; 3]),
    V6(u64),
}

impl Network {
    pub fn of(ip: IpAddr) -> Network {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Network::V4([a, b, c])
            }
            IpAddr::V6(v6) => Network::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PerIp {
    pending: usize,
    swarms: usize,
    tokens: f64,
    refilled: Option<Instant>,
}

/// Counters and buckets; owned by the central tracker.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    per_ip: HashMap<IpAddr, PerIp>,
    /// Swarms per source network; a network with none has no key, so this
    /// holds at most one key per swarm.
    per_net: HashMap<Network, usize>,
    pending: usize,
    swarms: usize,
}

/// Entries kept for idle IPs before a sweep forgets the idle ones.
const MAX_IDLE_ENTRIES: usize = 65_536;

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            per_ip: HashMap::new(),
            per_net: HashMap::new(),
            pending: 0,
            swarms: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn swarms(&self) -> usize {
        self.swarms
    }

    /// Asks to create a swarm for `ip`; on success the swarm is counted as
    /// pending and must later be [`Budget::confirmed`] or [`Budget::released`].
    pub fn try_create(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let l = &self.limits;
        if self.swarms >= l.max_swarms {
            return Err(Refusal::TooManySwarms);
        }
        if self.pending >= l.max_pending {
            return Err(Refusal::TooManyPending);
        }
        if self.per_ip.len() >= MAX_IDLE_ENTRIES {
            self.per_ip.retain(|_, e| e.pending > 0 || e.swarms > 0);
        }
        let e = self.per_ip.entry(ip).or_insert(PerIp {
            tokens: f64::from(l.join_burst),
            ..PerIp::default()
        });
        if e.swarms >= l.max_swarms_per_ip {
            return Err(Refusal::TooManySwarmsFromIp);
        }
        if e.pending >= l.max_pending_per_ip {
            return Err(Refusal::TooManyPendingFromIp);
        }
        let net = Network::of(ip);
        let net_cap = match net {
            Network::V4(_) => l.max_swarms_per_24,
            Network::V6(_) => l.max_swarms_per_64,
        };
        if self.per_net.get(&net).copied().unwrap_or(0) >= net_cap {
            return Err(Refusal::TooManySwarmsFromNetwork);
        }
        if let Some(last) = e.refilled {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            e.tokens = (e.tokens + secs * l.joins_per_ip_per_sec).min(f64::from(l.join_burst));
        }
        e.refilled = Some(now);
        if e.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        e.tokens -= 1.0;
        e.pending += 1;
        e.swarms += 1;
        *self.per_net.entry(net).or_insert(0) += 1;
        self.pending += 1;
        self.swarms += 1;
        Ok(())
    }

    /// Counts a swarm restored from the state directory.
    pub fn restored(&mut self, ip: Option<IpAddr>) {
        self.swarms += 1;
        if let Some(ip) = ip {
            *self.per_net.entry(Network::of(ip)).or_insert(0) += 1;
            let burst = f64::from(self.limits.join_burst);
            self.per_ip
                .entry(ip)
                .or_insert(PerIp {
                    tokens: burst,
                    ..PerIp::default()
                })
                .swarms += 1;
        }
    }

    /// A pending swarm of `ip` was confirmed: no longer pending.
    pub fn confirmed(&mut self, ip: IpAddr) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(e) = self.per_ip.get_mut(&ip) {
            e.pending = e.pending.saturating_sub(1);
        }
    }

    /// A swarm of `ip` is gone (reclaimed while pending, or retired).
    pub fn released(&mut self, ip: Option<IpAddr>, was_pending: bool) {
        self.swarms = self.swarms.saturating_sub(1);
        if was_pending {
            self.pending = self.pending.saturating_sub(1);
        }
        if let Some(e) = ip.and_then(|ip| self.per_ip.get_mut(&ip)) {
            e.swarms = e.swarms.saturating_sub(1);
            if was_pending {
                e.pending = e.pending.saturating_sub(1);
            }
        }
        if let Some(net) = ip.map(Network::of) {
            if let Some(n) = self.per_net.get_mut(&net) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_net.remove(&net);
                }
            }
        }
    }
}

/// Rate-limits a log line that a flood could repeat: the first occurrence
/// is written at once, later ones are counted and summarised at most once
/// per `every` (by [`LogEvery::hit`], or by [`LogEvery::flush`] on a timer
/// once the flood stopped).
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    /// Occurrences not written yet.
    count: u64,
}

impl LogEvery {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            count: 0,
        }
    }

    /// Counts one occurrence at `now`; `Some(n)` when a line is due, `n`
    /// being the occurrences it stands for (this one included).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        self.flush(now)
    }

    /// `Some(n)` when occurrences are waiting and a line is due.
    pub fn flush(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if self.count == 0 || !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn pending_cap_per_ip_does_not_touch_others() {
        let mut b = Budget::new(Limits {
            max_pending_per_ip: 3,
            join_burst: 100,
            ..Limits::default()
        });
        let now = Instant::now();
        for _ in 0..3 {
            b.try_create(ip(1), now).unwrap();
        }
        assert_eq!(b.try_create(ip(1), now), Err(Refusal::TooManyPendingFromIp));
        b.try_create(ip(2), now).unwrap();
        b.released(Some(ip(1)), true);
        b.try_create(ip(1), now).unwrap();
        b.confirmed(ip(1));
        b.try_create(ip(1), now).unwrap();
        assert_eq!(b.pending(), 4);
        assert_eq!(b.swarms(), 5);
    }

    #[test]
    fn rate_limit_refills() {
        let mut b = Budget::new(Limits {
            joins_per_ip_per_sec: 2.0,
            join_burst: 2,
            max_pending_per_ip: 100,
            ..Limits::default()
        });
        let t0 = Instant::now();
        b.try_create(ip(1), t0).unwrap();
        b.try_create(ip(1), t0).unwrap();
        assert_eq!(b.try_create(ip(1), t0), Err(Refusal::RateLimited));
        b.try_create(ip(1), t0 + Duration::from_millis(600))
            .unwrap();
    }

    #[test]
    fn global_caps() {
        let mut b = Budget::new(Limits {
            max_pending: 2,
            max_swarms: 3,
            ..Limits::default()
        });
        let now = Instant::now();
        b.try_create(ip(1), now).unwrap();
        b.try_create(ip(2), now).unwrap();
        assert_eq!(b.try_create(ip(3), now), Err(Refusal::TooManyPending));
        b.confirmed(ip(1));
        b.try_create(ip(3), now).unwrap();
        b.confirmed(ip(2));
        assert_eq!(b.try_create(ip(4), now), Err(Refusal::TooManySwarms));
        b.released(Some(ip(1)), false);
        b.try_create(ip(4), now).unwrap();
    }

    /// Issue 11, item 5: 520 loopback addresses, each within the per-IP
    /// limits, filled the 10,000 swarms. Now one /24 (or IPv6 /64) creates
    /// at most its cap, and other networks are not affected.
    #[test]
    fn one_network_cannot_take_every_swarm() {
        let mut b = Budget::new(Limits {
            max_swarms_per_24: 600,
            max_swarms_per_64: 3,
            max_pending_per_ip: 1000,
            max_pending: 10_000,
            ..Limits::default()
        });
        let now = Instant::now();
        let mut created = 0;
        'flood: for host in 1..=255u8 {
            let ip = IpAddr::from([127, 0, 0, host]);
            for _ in 0..20 {
                match b.try_create(ip, now) {
                    Ok(()) => created += 1,
                    Err(Refusal::TooManySwarmsFromNetwork) => break 'flood,
                    Err(r) => panic!("{r:?}"),
                }
            }
        }
        assert_eq!(created, 600);
        let next_door = IpAddr::from([127, 0, 0, 200]);
        assert_eq!(
            b.try_create(next_door, now),
            Err(Refusal::TooManySwarmsFromNetwork)
        );
        b.try_create(IpAddr::from([127, 0, 1, 1]), now).unwrap();
        // A swarm of the /24 gone: room for one more.
        b.released(Some(ip(1)), true);
        b.try_create(next_door, now).unwrap();
        // IPv6: per /64; an IPv4-mapped address counts in its /24.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for a in ["2001:db8::1", "2001:db8::2", "2001:db8::3"] {
            b.try_create(v6(a), now).unwrap();
        }
        assert_eq!(
            b.try_create(v6("2001:db8::4"), now),
            Err(Refusal::TooManySwarmsFromNetwork)
        );
        b.try_create(v6("2001:db8:0:1::4"), now).unwrap();
        assert_eq!(
            b.try_create(v6("::ffff:127.0.0.77"), now),
            Err(Refusal::TooManySwarmsFromNetwork)
        );
        // Restored swarms count too.
        let mut b = Budget::new(Limits {
            max_swarms_per_24: 1,
            ..Limits::default()
        });
        b.restored(Some(ip(1)));
        assert_eq!(
            b.try_create(ip(2), now),
            Err(Refusal::TooManySwarmsFromNetwork)
        );
    }

    #[test]
    fn log_lines_are_summarised() {
        let t0 = Instant::now();
        let mut l = LogEvery::new(Duration::from_secs(10));
        assert_eq!(l.hit(t0), Some(1));
        for i in 1..1000 {
            assert_eq!(l.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.flush(t0 + Duration::from_secs(5)), None);
        assert_eq!(l.flush(t0 + Duration::from_secs(10)), Some(999));
        assert_eq!(l.flush(t0 + Duration::from_secs(30)), None);
        assert_eq!(l.hit(t0 + Duration::from_secs(31)), Some(1));
    }

    #[test]
    fn restored_ips_keep_their_allowance() {
        let mut b = Budget::new(Limits::default());
        b.restored(Some(ip(1)));
        b.try_create(ip(1), Instant::now()).unwrap();
        assert_eq!(b.swarms(), 2);
    }
}
