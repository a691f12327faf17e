//! A swarm's peer table: who is listed, in which state, until when.
//!
//! Invariants:
//! - `index[k] == i` iff `list[i].key == k`: one entry per (IP, TCP port).
//! - `list` is in random order: a newcomer is swapped to a random place.
//! - only listed states (downloading, complete) are stored; `seeders` counts
//!   the `Complete` entries, so counts are O(1).
//! - an entry whose `last_seen` is older than the expiry is never returned by
//!   [`PeerTable::sample`] once [`PeerTable::expire`] ran; `expire` is called
//!   by the swarm task on a timer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hayedik_proto::tracker::{PeerEntry, PeerState};
use rand::Rng;

/// A peer is identified by the source IP of its announces and its TCP port.
pub type PeerKey = (IpAddr, u16);

#[derive(Debug, Clone)]
struct Record {
    key: PeerKey,
    state: PeerState,
    last_seen: Instant,
}

/// What an announce did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The peer is listed (new or refreshed).
    Listed,
    /// The peer was removed, or was only asking.
    NotListed,
    /// The table is full and the peer is new: refused.
    Full,
}

/// The peers of one swarm.
#[derive(Debug)]
pub struct PeerTable {
    list: Vec<Record>,
    index: HashMap<PeerKey, usize, foldhash::fast::RandomState>,
    rng: rand::rngs::SmallRng,
    seeders: usize,
    max_peers: usize,
}

impl PeerTable {
    pub fn new(max_peers: usize) -> Self {
        Self {
            list: Vec::new(),
            index: HashMap::default(),
            rng: rand::SeedableRng::from_entropy(),
            seeders: 0,
            max_peers,
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Seeders and partial sources, not counting `exclude`.
    pub fn counts(&self, exclude: Option<PeerKey>) -> (u32, u32) {
        let mut seeders = self.seeders;
        let mut partials = self.list.len() - self.seeders;
        if let Some(i) = exclude.and_then(|k| self.index.get(&k)) {
            match self.list[*i].state {
                PeerState::Complete => seeders -= 1,
                _ => partials -= 1,
            }
        }
        (
            u32::try_from(seeders).unwrap_or(u32::MAX),
            u32::try_from(partials).unwrap_or(u32::MAX),
        )
    }

    /// Applies an announce of `state` by `key` at `now`.
    pub fn announce(&mut self, key: PeerKey, state: PeerState, now: Instant) -> Update {
        if !state.is_listed() {
            self.remove(key);
            return Update::NotListed;
        }
        if let Some(&i) = self.index.get(&key) {
            let r = &mut self.list[i];
            if r.state == PeerState::Complete && state != PeerState::Complete {
                self.seeders -= 1;
            } else if r.state != PeerState::Complete && state == PeerState::Complete {
                self.seeders += 1;
            }
            r.state = state;
            r.last_seen = now;
            return Update::Listed;
        }
        if self.list.len() >= self.max_peers {
            return Update::Full;
        }
        if state == PeerState::Complete {
            self.seeders += 1;
        }
        let at = self.list.len();
        self.index.insert(key, at);
        self.list.push(Record {
            key,
            state,
            last_seen: now,
        });
        // Keep the list in random order: swap the newcomer to a random place.
        let j = self.rng.gen_range(0..=at);
        if j != at {
            self.list.swap(j, at);
            let moved = self.list[at].key;
            self.index.insert(moved, at);
            self.index.insert(key, j);
        }
        Update::Listed
    }

    fn remove(&mut self, key: PeerKey) {
        let Some(i) = self.index.remove(&key) else {
            return;
        };
        let r = self.list.swap_remove(i);
        if r.state == PeerState::Complete {
            self.seeders -= 1;
        }
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.key, i);
        }
    }

    /// Drops every peer not seen since `now - max_age`; returns how many.
    pub fn expire(&mut self, now: Instant, max_age: Duration) -> usize {
        let before = self.list.len();
        let mut i = 0;
        while i < self.list.len() {
            if now.saturating_duration_since(self.list[i].last_seen) > max_age {
                let key = self.list[i].key;
                self.remove(key);
            } else {
                i += 1;
            }
        }
        before - self.list.len()
    }

    /// Up to `max` peers other than `exclude`, a fair random sample when
    /// there are more (every peer equally likely), appended to `out`. `fits` is asked
    /// before each entry is added and stops the sample when it says no.
    pub fn sample(
        &self,
        exclude: Option<PeerKey>,
        max: usize,
        rng: &mut impl Rng,
        out: &mut Vec<PeerEntry>,
        mut fits: impl FnMut(&PeerEntry) -> bool,
    ) {
        let excluded = exclude.and_then(|k| self.index.get(&k).copied());
        let n = self.list.len();
        let available = n - usize::from(excluded.is_some());
        let take = max.min(available);
        if take == 0 {
            return;
        }
        // The list is kept in random order (each new peer lands at a random
        // position), so a window from a random start is a fair sample, and
        // costs no allocation and one random number.
        let start = if take == available {
            0
        } else {
            rng.gen_range(0..n)
        };
        let mut added = 0;
        for k in 0..n {
            let i = (start + k) % n;
            if Some(i) == excluded {
                continue;
            }
            let r = &self.list[i];
            let entry = PeerEntry {
                addr: SocketAddr::new(r.key.0, r.key.1),
                state: r.state,
            };
            if added >= take || !fits(&entry) {
                break;
            }
            out.push(entry);
            added += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    fn key(n: u32) -> PeerKey {
        (IpAddr::from((0x0A00_0000u32 + n).to_be_bytes()), 1000)
    }

    #[test]
    fn counts_exclude_the_requester() {
        let now = Instant::now();
        let mut t = PeerTable::new(10);
        assert_eq!(t.announce(key(1), PeerState::Complete, now), Update::Listed);
        assert_eq!(
            t.announce(key(2), PeerState::Downloading, now),
            Update::Listed
        );
        assert_eq!(t.counts(None), (1, 1));
        assert_eq!(t.counts(Some(key(1))), (0, 1));
        assert_eq!(t.counts(Some(key(2))), (1, 0));
        // Downloading -> complete moves it between the counts.
        t.announce(key(2), PeerState::Complete, now);
        assert_eq!(t.counts(None), (2, 0));
        assert_eq!(
            t.announce(key(2), PeerState::Leaving, now),
            Update::NotListed
        );
        assert_eq!(t.counts(None), (1, 0));
        assert_eq!(
            t.announce(key(3), PeerState::Asking, now),
            Update::NotListed
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn full_table_refuses_new_peers_only() {
        let now = Instant::now();
        let mut t = PeerTable::new(2);
        t.announce(key(1), PeerState::Complete, now);
        t.announce(key(2), PeerState::Complete, now);
        assert_eq!(t.announce(key(3), PeerState::Complete, now), Update::Full);
        assert_eq!(
            t.announce(key(1), PeerState::Downloading, now),
            Update::Listed
        );
    }

    #[test]
    fn expiry_drops_silent_peers() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(10);
        t.announce(key(1), PeerState::Complete, t0);
        t.announce(key(2), PeerState::Downloading, t0 + Duration::from_secs(50));
        assert_eq!(
            t.expire(t0 + Duration::from_secs(100), Duration::from_secs(60)),
            1
        );
        assert_eq!(t.counts(None), (0, 1));
        let mut out = Vec::new();
        t.sample(None, 10, &mut rand::thread_rng(), &mut out, |_| true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].addr.ip(), key(2).0);
    }

    #[test]
    fn sample_excludes_requester_and_is_spread() {
        let now = Instant::now();
        let mut t = PeerTable::new(1000);
        for n in 0..100 {
            t.announce(key(n), PeerState::Downloading, now);
        }
        let mut seen = HashSet::new();
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let mut out = Vec::new();
            t.sample(Some(key(0)), 10, &mut rng, &mut out, |_| true);
            assert_eq!(out.len(), 10);
            let distinct: HashSet<_> = out.iter().map(|e| e.addr).collect();
            assert_eq!(distinct.len(), 10);
            for e in out {
                assert_ne!(e.addr.ip(), key(0).0);
                seen.insert(e.addr);
            }
        }
        // 2,000 draws over 99 peers: a fair sample reaches all of them.
        assert_eq!(seen.len(), 99);
    }

    #[test]
    fn sample_stops_when_full() {
        let now = Instant::now();
        let mut t = PeerTable::new(100);
        for n in 0..50 {
            t.announce(key(n), PeerState::Complete, now);
        }
        let mut out = Vec::new();
        let mut budget = 5;
        t.sample(None, 50, &mut rand::thread_rng(), &mut out, |_| {
            budget -= 1;
            budget >= 0
        });
        assert_eq!(out.len(), 5);
    }
}
