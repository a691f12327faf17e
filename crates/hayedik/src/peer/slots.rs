//! Who may hold one of a peer's incoming session slots.
//!
//! [`Slots`] is a plain struct with time passed in: the listener asks it
//! before running a session on an accepted connection. Its rules:
//! - at most `max` sessions (handshaking or running) at once;
//! - at most `per_address` of them from one IPv4 address or one IPv6 /64,
//!   so one host (or one attacker) cannot take every slot;
//! - when every slot is taken, the session idle longest (nothing asked of
//!   us and nothing sent to us for [`EVICT_AFTER_IDLE`]) makes room for the
//!   newcomer: sessions that hold a slot and do nothing with it cannot
//!   lock out peers that want data.
//!
//! Invariant: `entries.len() <= max`, and per group at most `per_address`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A session that did nothing useful for this long may be evicted to make
/// room for a new one.
pub const EVICT_AFTER_IDLE: Duration = Duration::from_secs(10);

/// Sessions per address by default: well above what a household or an
/// office behind one NAT runs at once.
pub const DEFAULT_PER_ADDRESS: usize = 32;

/// When a session last did something useful (a request, a block), shared
/// between the session, which touches it, and [`Slots`], which reads it.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new(now: Instant) -> Activity {
        Activity {
            epoch: now,
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// What groups addresses for the per-address cap: an IPv4 address, or the
/// /64 of an IPv6 address (one household's prefix).
fn group(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) << 64 | 1,
        },
    }
}

struct Entry {
    group: u128,
    activity: Arc<Activity>,
    cancel: CancellationToken,
}

/// The incoming session slots of one peer.
pub struct Slots {
    max: usize,
    per_address: usize,
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

/// A slot given to a session: its id (give it back with [`Slots::release`]),
/// its activity to touch, and the token that evicts it.
#[derive(Debug)]
pub struct Slot {
    pub id: u64,
    pub activity: Arc<Activity>,
    pub cancel: CancellationToken,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many sessions from this address")]
    PerAddress,
    #[error("every session slot is busy")]
    Full,
}

impl Slots {
    pub fn new(max: usize, per_address: usize) -> Slots {
        Slots {
            max: max.max(1),
            per_address: per_address.max(1),
            next_id: 0,
            entries: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A slot for a connection from `ip`, evicting the longest-idle session
    /// if every slot is taken; the evicted session's token is cancelled.
    /// `parent` is the token the slot's own is a child of.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        now: Instant,
        parent: &CancellationToken,
    ) -> Result<Slot, Refused> {
        let g = group(ip);
        if self.entries.values().filter(|e| e.group == g).count() >= self.per_address {
            return Err(Refused::PerAddress);
        }
        if self.entries.len() >= self.max {
            let idlest = self
                .entries
                .iter()
                .map(|(id, e)| (*id, e.activity.last()))
                .filter(|(_, last)| now.saturating_duration_since(*last) >= EVICT_AFTER_IDLE)
                .min_by_key(|(_, last)| *last);
            let Some((id, _)) = idlest else {
                return Err(Refused::Full);
            };
            if let Some(e) = self.entries.remove(&id) {
                e.cancel.cancel();
            }
        }
        self.next_id += 1;
        let slot = Slot {
            id: self.next_id,
            activity: Arc::new(Activity::new(now)),
            cancel: parent.child_token(),
        };
        self.entries.insert(
            slot.id,
            Entry {
                group: g,
                activity: slot.activity.clone(),
                cancel: slot.cancel.clone(),
            },
        );
        Ok(slot)
    }

    /// Gives a slot back (its session ended). Unknown ids (evicted) are ignored.
    pub fn release(&mut self, id: u64) {
        self.entries.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_at_most_its_share() {
        let (t0, root) = (Instant::now(), CancellationToken::new());
        let mut slots = Slots::new(10, 3);
        for _ in 0..3 {
            slots.admit(ip("10.0.0.1"), t0, &root).unwrap();
        }
        assert_eq!(
            slots.admit(ip("10.0.0.1"), t0, &root).unwrap_err(),
            Refused::PerAddress
        );
        slots.admit(ip("10.0.0.2"), t0, &root).unwrap();
        // One IPv6 /64 is one household.
        for i in 1..=3 {
            slots
                .admit(ip(&format!("2001:db8::{i}")), t0, &root)
                .unwrap();
        }
        assert_eq!(
            slots.admit(ip("2001:db8::ff"), t0, &root).unwrap_err(),
            Refused::PerAddress
        );
        slots.admit(ip("2001:db8:0:1::1"), t0, &root).unwrap();
        assert_eq!(slots.len(), 8);
    }

    #[test]
    fn when_full_the_longest_idle_session_makes_room() {
        let (t0, root) = (Instant::now(), CancellationToken::new());
        let mut slots = Slots::new(3, 3);
        let a = slots.admit(ip("10.0.0.1"), t0, &root).unwrap();
        let b = slots.admit(ip("10.0.0.2"), t0, &root).unwrap();
        let c = slots.admit(ip("10.0.0.3"), t0, &root).unwrap();
        // Nobody idle long enough yet: refused.
        let soon = t0 + EVICT_AFTER_IDLE / 2;
        assert_eq!(
            slots.admit(ip("10.0.0.4"), soon, &root).unwrap_err(),
            Refused::Full
        );
        // a and c keep asking; b does nothing.
        let later = t0 + EVICT_AFTER_IDLE * 2;
        a.activity.touch(later);
        c.activity.touch(t0 + EVICT_AFTER_IDLE);
        let d = slots.admit(ip("10.0.0.4"), later, &root).unwrap();
        assert!(b.cancel.is_cancelled(), "the idle session is evicted");
        assert!(!a.cancel.is_cancelled() && !c.cancel.is_cancelled());
        assert_eq!(slots.len(), 3);
        // Next in line: c (idle since t0 + 10 s), never a (busy).
        let e = slots
            .admit(ip("10.0.0.5"), later + EVICT_AFTER_IDLE, &root)
            .unwrap();
        assert!(c.cancel.is_cancelled() && !a.cancel.is_cancelled());
        // Released and evicted slots are both gone; a later release of an
        // evicted id changes nothing.
        slots.release(b.id);
        slots.release(d.id);
        assert_eq!(slots.len(), 2);
        drop(e);
    }

    #[test]
    fn a_slot_is_cancelled_with_its_parent() {
        let root = CancellationToken::new();
        let mut slots = Slots::new(1, 1);
        let s = slots.admit(ip("::1"), Instant::now(), &root).unwrap();
        root.cancel();
        assert!(s.cancel.is_cancelled());
    }
}
