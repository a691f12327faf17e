//! A swarm's peer table: who is listed, in which state, since and until when.
//!
//! Invariants:
//! - `index[k] == i` iff `list[i].key == k`: one entry per (IP, TCP port).
//! - `by_tenure[list[i].seq] == i` for every entry: the entries in the order
//!   they were first listed (a refresh keeps an entry's place).
//! - `per_source[s]` is the number of entries whose IP is in source `s` (an
//!   IPv4 address, or an IPv6 /64); it never exceeds `max_per_source` through
//!   [`PeerTable::announce`], and sources with no entry have no key.
//! - `list` is in random order: a newcomer is swapped to a random place.
//! - only listed states (downloading, complete) are stored; `seeders` counts
//!   the `Complete` entries, so counts are O(1).
//! - an entry is downgraded (complete to downloading) or removed (states 0
//!   and 3) only by an announce from the UDP source port that listed it
//!   (`owner_port`); another process on the same IP may refresh it or mark it
//!   complete, never delist it.
//! - an entry whose `last_seen` is older than the expiry is never returned by
//!   [`PeerTable::sample`] once [`PeerTable::expire`] ran; `expire` is called
//!   by the swarm task on a timer.
//!
//! Every map holds at most one key per entry, and entries are capped by
//! `max_peers`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hayedik_proto::tracker::{PeerEntry, PeerState};
use rand::Rng;

/// A peer is identified by the source IP of its announces and its TCP port.
pub type PeerKey = (IpAddr, u16);

/// Where announces come from, for the per-source cap: an IPv4 address, or
/// the /64 of an IPv6 address (one household or LAN gets a whole /64).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    key: PeerKey,
    state: PeerState,
    last_seen: Instant,
    /// Order of first listing: smaller is listed longer.
    seq: u64,
    /// UDP source port of the announce that listed the entry.
    owner_port: u16,
    /// Reachable only through the tracker's relay (its latest ANNOUNCE_X
    /// said so).
    relayed: bool,
    /// Reachable at a port its router forwards (its latest ANNOUNCE_X said
    /// so).
    mapped: bool,
}

/// What an announce did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The peer is listed (new or refreshed).
    Listed,
    /// The peer was removed, or was only asking.
    NotListed,
    /// Another UDP socket of the entry's IP asked to downgrade or remove it:
    /// ignored (the entry stays as it was).
    NotOwner,
    /// The table is full and the peer is new: refused.
    Full,
    /// The peer is new and its source (IPv4 address or IPv6 /64) already
    /// has `max_per_source` entries: refused.
    SourceFull,
}

/// The peers of one swarm.
#[derive(Debug)]
pub struct PeerTable {
    list: Vec<Record>,
    index: HashMap<PeerKey, usize, foldhash::fast::RandomState>,
    per_source: HashMap<Source, u32, foldhash::fast::RandomState>,
    by_tenure: BTreeMap<u64, usize>,
    next_seq: u64,
    rng: rand::rngs::SmallRng,
    seeders: usize,
    max_peers: usize,
    max_per_source: usize,
}

impl PeerTable {
    /// A table of at most `max_peers` entries, at most `max_per_source` of
    /// them from one IPv4 address or IPv6 /64.
    pub fn new(max_peers: usize, max_per_source: usize) -> Self {
        Self {
            list: Vec::new(),
            index: HashMap::default(),
            per_source: HashMap::default(),
            by_tenure: BTreeMap::new(),
            next_seq: 0,
            rng: rand::SeedableRng::from_entropy(),
            seeders: 0,
            max_peers,
            max_per_source,
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

    /// Applies an announce of `state` for TCP port `port`, sent from `src`,
    /// at `now`. The entry is `(src.ip(), port)`.
    pub fn announce(
        &mut self,
        src: SocketAddr,
        port: u16,
        state: PeerState,
        now: Instant,
    ) -> Update {
        let key = (src.ip(), port);
        if let Some(&i) = self.index.get(&key) {
            let r = &mut self.list[i];
            if r.owner_port != src.port() {
                // Another socket of the same IP (behind the same NAT, or
                // another process of the same host): it may refresh the
                // entry or mark it complete (what a peer whose NAT mapping
                // changed sends), never downgrade or remove it.
                let upgrade = r.state != PeerState::Complete && state == PeerState::Complete;
                if state != r.state && !upgrade {
                    return Update::NotOwner;
                }
            }
            if !state.is_listed() {
                self.remove(key);
                return Update::NotListed;
            }
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
        if !state.is_listed() {
            return Update::NotListed;
        }
        if self.list.len() >= self.max_peers {
            return Update::Full;
        }
        let source = Source::of(key.0);
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        if usize::try_from(from_source).unwrap_or(usize::MAX) >= self.max_per_source {
            return Update::SourceFull;
        }
        *self.per_source.entry(source).or_insert(0) += 1;
        if state == PeerState::Complete {
            self.seeders += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let at = self.list.len();
        self.list.push(Record {
            key,
            state,
            last_seen: now,
            seq,
            owner_port: src.port(),
            relayed: false,
            mapped: false,
        });
        self.place(at);
        // Keep the list in random order: swap the newcomer to a random place.
        let j = self.rng.gen_range(0..=at);
        if j != at {
            self.list.swap(j, at);
            self.place(j);
            self.place(at);
        }
        Update::Listed
    }

    /// Points the indexes at `list[i]`.
    fn place(&mut self, i: usize) {
        let r = &self.list[i];
        self.index.insert(r.key, i);
        self.by_tenure.insert(r.seq, i);
    }

    fn remove(&mut self, key: PeerKey) {
        let Some(i) = self.index.remove(&key) else {
            return;
        };
        let r = self.list.swap_remove(i);
        self.by_tenure.remove(&r.seq);
        let source = Source::of(r.key.0);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
        if r.state == PeerState::Complete {
            self.seeders -= 1;
        }
        if i < self.list.len() {
            self.place(i);
        }
    }

    /// Marks a listed peer as reachable only through the relay, or not.
    pub fn set_relayed(&mut self, key: PeerKey, relayed: bool) {
        if let Some(&i) = self.index.get(&key) {
            self.list[i].relayed = relayed;
        }
    }

    /// Marks a listed peer as reachable at a mapped port, or not.
    pub fn set_mapped(&mut self, key: PeerKey, mapped: bool) {
        if let Some(&i) = self.index.get(&key) {
            self.list[i].mapped = mapped;
        }
    }

    /// Whether a listed peer is reachable at a mapped port.
    pub fn is_mapped(&self, key: PeerKey) -> bool {
        self.index.get(&key).is_some_and(|&i| self.list[i].mapped)
    }

    /// Whether a listed peer is reachable only through the relay.
    pub fn is_relayed(&self, key: PeerKey) -> bool {
        self.index.get(&key).is_some_and(|&i| self.list[i].relayed)
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

    /// Up to `max` peers other than `exclude`, appended to `out`: when there
    /// are more, the first half are the peers listed longest, the rest a
    /// fair random sample of the others. `fits` is asked before each entry
    /// is added and stops the sample when it says no.
    ///
    /// Why the longest listed: a swarm's first peer is its sharer, and fake
    /// peers announced later (from many addresses, each under the
    /// per-source cap) cannot push it out of every reply; a uniform sample
    /// of 50 out of 2,000 would miss it 97 times in 100.
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
        let entry = |r: &Record| PeerEntry {
            addr: SocketAddr::new(r.key.0, r.key.1),
            state: r.state,
        };
        let mut added = 0;
        // Entries with a `seq` up to this one were taken as the longest
        // listed (none when everyone fits).
        let mut senior_until = None;
        if take < available {
            for &i in self.by_tenure.values() {
                if added == take.div_ceil(2) {
                    break;
                }
                if Some(i) == excluded {
                    continue;
                }
                let r = &self.list[i];
                let e = entry(r);
                if !fits(&e) {
                    return;
                }
                out.push(e);
                added += 1;
                senior_until = Some(r.seq);
            }
        }
        // The list is kept in random order (each new peer lands at a random
        // position), so a window from a random start is a fair sample of the
        // rest, and costs no allocation and one random number.
        let start = if take == available {
            0
        } else {
            rng.gen_range(0..n)
        };
        for k in 0..n {
            if added >= take {
                break;
            }
            let i = (start + k) % n;
            let r = &self.list[i];
            if Some(i) == excluded || senior_until.is_some_and(|s| r.seq <= s) {
                continue;
            }
            let e = entry(r);
            if !fits(&e) {
                break;
            }
            out.push(e);
            added += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    /// Peer `n`: its own IPv4 address, TCP port 1000.
    fn key(n: u32) -> PeerKey {
        (IpAddr::from((0x0A00_0000u32 + n).to_be_bytes()), 1000)
    }

    /// The UDP source of peer `n`'s announces.
    fn src(n: u32) -> SocketAddr {
        SocketAddr::new(key(n).0, 5000)
    }

    fn announce(t: &mut PeerTable, n: u32, state: PeerState, now: Instant) -> Update {
        t.announce(src(n), key(n).1, state, now)
    }

    fn sampled(t: &PeerTable, exclude: Option<PeerKey>, max: usize) -> Vec<PeerEntry> {
        let mut out = Vec::new();
        t.sample(exclude, max, &mut rand::thread_rng(), &mut out, |_| true);
        out
    }

    #[test]
    fn counts_exclude_the_requester() {
        let now = Instant::now();
        let mut t = PeerTable::new(10, 32);
        assert_eq!(
            announce(&mut t, 1, PeerState::Complete, now),
            Update::Listed
        );
        assert_eq!(
            announce(&mut t, 2, PeerState::Downloading, now),
            Update::Listed
        );
        assert_eq!(t.counts(None), (1, 1));
        assert_eq!(t.counts(Some(key(1))), (0, 1));
        assert_eq!(t.counts(Some(key(2))), (1, 0));
        // Downloading -> complete moves it between the counts.
        announce(&mut t, 2, PeerState::Complete, now);
        assert_eq!(t.counts(None), (2, 0));
        assert_eq!(
            announce(&mut t, 2, PeerState::Leaving, now),
            Update::NotListed
        );
        assert_eq!(t.counts(None), (1, 0));
        assert_eq!(
            announce(&mut t, 3, PeerState::Asking, now),
            Update::NotListed
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn full_table_refuses_new_peers_only() {
        let now = Instant::now();
        let mut t = PeerTable::new(2, 32);
        announce(&mut t, 1, PeerState::Complete, now);
        announce(&mut t, 2, PeerState::Complete, now);
        assert_eq!(announce(&mut t, 3, PeerState::Complete, now), Update::Full);
        assert_eq!(
            announce(&mut t, 1, PeerState::Downloading, now),
            Update::Listed
        );
        // Only asking is never refused.
        assert_eq!(
            announce(&mut t, 3, PeerState::Asking, now),
            Update::NotListed
        );
    }

    /// Issue 11, item 4: one address announced 10,000 ports and filled the
    /// table. Now an IPv4 address, or an IPv6 /64, lists at most
    /// `max_per_source` ports; others are not affected.
    #[test]
    fn one_source_lists_at_most_its_cap() {
        let now = Instant::now();
        let mut t = PeerTable::new(10_000, 32);
        let flooder: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        let mut listed = 0;
        for port in 1..=10_000u16 {
            match t.announce(flooder, port, PeerState::Complete, now) {
                Update::Listed => listed += 1,
                Update::SourceFull => {}
                u => panic!("{u:?}"),
            }
        }
        assert_eq!(listed, 32);
        // A listed port still refreshes; another address is listed.
        assert_eq!(
            t.announce(flooder, 1, PeerState::Complete, now),
            Update::Listed
        );
        assert_eq!(
            announce(&mut t, 1, PeerState::Downloading, now),
            Update::Listed
        );
        // A port that leaves frees a slot for that address.
        assert_eq!(
            t.announce(flooder, 1, PeerState::Leaving, now),
            Update::NotListed
        );
        assert_eq!(
            t.announce(flooder, 20_000, PeerState::Complete, now),
            Update::Listed
        );
        // IPv6: one /64 is one source, another /64 another; a v4-mapped
        // address is its IPv4 address.
        let mut t = PeerTable::new(100, 2);
        let v6 = |s: &str| SocketAddr::new(s.parse().unwrap(), 9);
        assert_eq!(
            t.announce(v6("2001:db8::1"), 1, PeerState::Complete, now),
            Update::Listed
        );
        assert_eq!(
            t.announce(v6("2001:db8::ffff:2"), 1, PeerState::Complete, now),
            Update::Listed
        );
        assert_eq!(
            t.announce(v6("2001:db8::3"), 1, PeerState::Complete, now),
            Update::SourceFull
        );
        assert_eq!(
            t.announce(v6("2001:db8:0:1::3"), 1, PeerState::Complete, now),
            Update::Listed
        );
        assert_eq!(
            t.announce(v6("10.0.0.1"), 1, PeerState::Complete, now),
            Update::Listed
        );
        assert_eq!(
            t.announce(v6("::ffff:10.0.0.1"), 2, PeerState::Complete, now),
            Update::Listed
        );
        assert_eq!(
            t.announce(v6("::ffff:10.0.0.1"), 3, PeerState::Complete, now),
            Update::SourceFull
        );
        // Expiry gives the slots back.
        let mut t = PeerTable::new(100, 1);
        t.announce(flooder, 1, PeerState::Complete, now);
        let later = now + Duration::from_secs(200);
        assert_eq!(t.expire(later, Duration::from_secs(120)), 1);
        assert_eq!(
            t.announce(flooder, 2, PeerState::Complete, later),
            Update::Listed
        );
        assert!(t.per_source.len() == 1 && t.by_tenure.len() == 1 && t.index.len() == 1);
    }

    /// Issue 11, item 4: 2,000 fake peers on closed ports (from many
    /// addresses, each under the cap) made a sample of 50 miss the sharer.
    /// The sharer, listed first, is now in every sample.
    #[test]
    fn sample_favours_the_peers_listed_longest() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(10_000, 32);
        let sharer: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        t.announce(sharer, 4000, PeerState::Complete, t0);
        let later = t0 + Duration::from_secs(1);
        for n in 0..2_000u32 {
            let ip = IpAddr::from((0x0A00_0000u32 + n / 20).to_be_bytes());
            let port = u16::try_from(1 + n % 20).unwrap();
            let fake = SocketAddr::new(ip, 9);
            assert_eq!(
                t.announce(fake, port, PeerState::Complete, later),
                Update::Listed
            );
        }
        let sharer_entry = SocketAddr::new(sharer.ip(), 4000);
        let getter = key(99_999);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let out = sampled(&t, Some(getter), 50);
            assert_eq!(out.len(), 50);
            let distinct: HashSet<_> = out.iter().map(|e| e.addr).collect();
            assert_eq!(distinct.len(), 50, "no peer twice");
            assert!(
                out.iter().any(|e| e.addr == sharer_entry),
                "the sharer is missing from a sample of 50"
            );
            seen.extend(distinct);
        }
        // The other half still reaches everyone over time.
        assert!(seen.len() > 1_000, "only {} distinct peers", seen.len());
        // The sharer asking is left out of its own sample.
        let out = sampled(&t, Some((sharer.ip(), 4000)), 50);
        assert_eq!(out.len(), 50);
        assert!(out.iter().all(|e| e.addr != sharer_entry));
    }

    /// Issue 11 (also reported): another process on the sharer's IP could
    /// downgrade or delist the sharer's entry. Only the UDP socket that
    /// listed an entry may now downgrade or remove it.
    #[test]
    fn only_the_listing_socket_downgrades_or_removes_an_entry() {
        let now = Instant::now();
        let mut t = PeerTable::new(100, 32);
        let sharer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let neighbour: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        t.announce(sharer, 4000, PeerState::Complete, now);
        for state in [
            PeerState::Leaving,
            PeerState::Asking,
            PeerState::Downloading,
        ] {
            assert_eq!(t.announce(neighbour, 4000, state, now), Update::NotOwner);
            assert_eq!(t.counts(None), (1, 0), "{state:?}");
        }
        // A refresh from another socket (a NAT that changed its mapping) is
        // fine, and so is "complete".
        assert_eq!(
            t.announce(neighbour, 4000, PeerState::Complete, now),
            Update::Listed
        );
        t.announce(neighbour, 4001, PeerState::Downloading, now);
        assert_eq!(
            t.announce(sharer, 4001, PeerState::Complete, now),
            Update::Listed
        );
        assert_eq!(t.counts(None), (2, 0));
        // The owner itself leaves.
        assert_eq!(
            t.announce(sharer, 4000, PeerState::Leaving, now),
            Update::NotListed
        );
        assert_eq!(t.counts(None), (1, 0));
    }

    #[test]
    fn expiry_drops_silent_peers() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(10, 32);
        announce(&mut t, 1, PeerState::Complete, t0);
        announce(
            &mut t,
            2,
            PeerState::Downloading,
            t0 + Duration::from_secs(50),
        );
        assert_eq!(
            t.expire(t0 + Duration::from_secs(100), Duration::from_secs(60)),
            1
        );
        assert_eq!(t.counts(None), (0, 1));
        let out = sampled(&t, None, 10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].addr.ip(), key(2).0);
    }

    #[test]
    fn sample_excludes_requester_and_is_spread() {
        let now = Instant::now();
        let mut t = PeerTable::new(1000, 32);
        for n in 0..100 {
            announce(&mut t, n, PeerState::Downloading, now);
        }
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let out = sampled(&t, Some(key(0)), 10);
            assert_eq!(out.len(), 10);
            let distinct: HashSet<_> = out.iter().map(|e| e.addr).collect();
            assert_eq!(distinct.len(), 10);
            for e in out {
                assert_ne!(e.addr.ip(), key(0).0);
                seen.insert(e.addr);
            }
        }
        // 2,000 draws over 99 peers: the random half reaches all of them.
        assert_eq!(seen.len(), 99);
    }

    #[test]
    fn sample_stops_when_full() {
        let now = Instant::now();
        let mut t = PeerTable::new(100, 100);
        for n in 0..50 {
            announce(&mut t, n, PeerState::Complete, now);
        }
        let mut out = Vec::new();
        let mut budget = 5;
        t.sample(None, 50, &mut rand::thread_rng(), &mut out, |_| {
            budget -= 1;
            budget >= 0
        });
        assert_eq!(out.len(), 5);
        // Also when it stops among the longest listed.
        let mut out = Vec::new();
        let mut budget = 3;
        t.sample(None, 20, &mut rand::thread_rng(), &mut out, |_| {
            budget -= 1;
            budget >= 0
        });
        assert_eq!(out.len(), 3);
    }

    /// The indexes agree after any sequence of announces and expiries.
    #[test]
    fn indexes_stay_consistent() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut t = PeerTable::new(50, 4);
        for step in 0..20_000u64 {
            let now = t0 + Duration::from_millis(step);
            let ip = IpAddr::from([10, 0, 0, rng.gen_range(0..20)]);
            let from = SocketAddr::new(ip, rng.gen_range(1..3));
            let state = [
                PeerState::Asking,
                PeerState::Downloading,
                PeerState::Complete,
                PeerState::Leaving,
            ][rng.gen_range(0..4)];
            t.announce(from, rng.gen_range(1..8), state, now);
            if step % 997 == 0 {
                t.expire(now, Duration::from_millis(500));
            }
            assert_eq!(t.index.len(), t.list.len());
            assert_eq!(t.by_tenure.len(), t.list.len());
            let mut per = HashMap::<Source, u32>::new();
            for (i, r) in t.list.iter().enumerate() {
                assert_eq!(t.index[&r.key], i);
                assert_eq!(t.by_tenure[&r.seq], i);
                *per.entry(Source::of(r.key.0)).or_default() += 1;
            }
            assert!(per.values().all(|n| *n <= 4));
            assert_eq!(per.len(), t.per_source.len());
            for (s, n) in per {
                assert_eq!(t.per_source[&s], n);
            }
            let seeders = t
                .list
                .iter()
                .filter(|r| r.state == PeerState::Complete)
                .count();
            assert_eq!(t.seeders, seeders);
        }
    }
}
