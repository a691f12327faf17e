//! A token bucket per source IP, bounded in the addresses it remembers:
//! the relay's connection rate and `dht-node`'s request rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// `rate` events per second per IP, up to `burst` at once; at most
/// `max_entries` addresses remembered (beyond, full buckets are forgotten,
/// and if that is not enough, new addresses are refused).
#[derive(Debug)]
pub struct PerIpBuckets {
    rate: f64,
    burst: f64,
    max_entries: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl PerIpBuckets {
    pub fn new(rate: f64, burst: u32, max_entries: usize) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            max_entries,
            buckets: HashMap::new(),
        }
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Whether one more event from `ip` at `now` is within its rate (and
    /// takes a token if so).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_entries {
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.max_entries {
                return false;
            }
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn rate_per_ip_and_bounded_memory() {
        let mut b = PerIpBuckets::new(1.0, 2, 2);
        let t0 = Instant::now();
        assert!(b.admit(ip(1), t0));
        assert!(b.admit(ip(1), t0));
        assert!(!b.admit(ip(1), t0));
        assert!(b.admit(ip(2), t0));
        // A third address: ip(2)'s bucket is not full, ip(1)'s neither.
        assert!(!b.admit(ip(3), t0));
        assert_eq!(b.len(), 2);
        assert!(b.admit(ip(1), t0 + Duration::from_secs(1)));
        // Later both refill: forgotten, room for a new one.
        assert!(b.admit(ip(3), t0 + Duration::from_secs(10)));
        assert!(b.len() <= 2);
    }
}
