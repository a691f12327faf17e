//! Token buckets per key (an IP, an address), in a bounded table: the rate
//! limit that the relay (connections per IP) and the swarm tracker's
//! INTRODUCE (per source IP, per target) and `dht-node` (requests per IP)
//! share.
//!
//! Invariant: the table holds at most `max_entries` keys. When it is full,
//! buckets that have refilled completely (they carry no information) are
//! forgotten; if none has, a new key is refused.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of `burst` tokens refilled at `per_sec`, one per key.
#[derive(Debug)]
pub struct RateTable<K> {
    per_sec: f64,
    burst: f64,
    max_entries: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Copy> RateTable<K> {
    pub fn new(per_sec: f64, burst: u32, max_entries: usize) -> Self {
        Self {
            per_sec,
            burst: f64::from(burst),
            max_entries,
            buckets: HashMap::new(),
        }
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Whether `key` has a token at `now`; takes it if so.
    pub fn admit(&mut self, key: K, now: Instant) -> bool {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_entries {
            let (per_sec, burst) = (self.per_sec, self.burst);
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst
            });
            if self.buckets.len() >= self.max_entries {
                return false;
            }
        }
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
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

    #[test]
    fn burst_then_refill_and_bounded() {
        let t0 = Instant::now();
        let mut t = RateTable::new(1.0, 2, 2);
        assert!(t.admit(1, t0));
        assert!(t.admit(1, t0));
        assert!(!t.admit(1, t0));
        assert!(t.admit(1, t0 + Duration::from_secs(1)));
        assert!(t.admit(2, t0));
        // Full: a third key is refused while the others hold information...
        assert!(!t.admit(3, t0));
        assert_eq!(t.len(), 2);
        // ... and admitted once they have refilled.
        assert!(t.admit(3, t0 + Duration::from_secs(10)));
        assert!(t.len() <= 2);
    }
}
