//! A swarm's peer table: who is listed, in which state, since and until when.
//!
//! The layout is compact, like opentracker's, and split by use. Per address
//! family, one sorted `Vec` of the entries a reply reads (address, TCP
//! port, flags: 8 bytes for IPv4, as opentracker's; 24 for IPv6), and beside it, at the
//! same index, one of what only announces and expiry read (tenure, last
//! seen, owner port: 12 bytes). A reply then reads 8 bytes per candidate,
//! not 20: at 10,000 swarms, where every announce finds its swarm's table
//! out of the cache, that is 13 cache lines per table of 100 instead of 32.
//! Nothing else per entry: no hash index, no per-source map, no tenure
//! tree. Lookups are binary searches; the entries of one source (an IPv4
//! address, or an IPv6 /64) are contiguous in address order, so counting
//! them is two more.
//!
//! Invariants:
//! - `v4` and `v6` are sorted by (IP, TCP port), with one entry per key,
//!   and each has as many tenures as entries. An IPv4-mapped IPv6 address
//!   is stored as its IPv4 address (flag `V4_MAPPED` gives its form back).
//! - every entry has a distinct `seq`: the order it was first listed in (a
//!   refresh keeps it), smaller is listed longer.
//! - the entries of one source never exceed `max_per_source` through
//!   [`PeerTable::announce`].
//! - only listed states (downloading, complete) are stored; `seeders` counts
//!   the complete entries, so counts are O(1).
//! - an entry is downgraded (complete to downloading) or removed (states 0
//!   and 3) only by an announce from the UDP source port that listed it
//!   (`owner_port`); another process on the same IP may refresh it or mark it
//!   complete, never delist it.
//! - an entry whose `seen` is older than the expiry is never returned by
//!   [`PeerTable::sample_without`] once [`PeerTable::expire`] ran; `expire`
//!   is called by the swarm task on a timer.
//!
//! Entries are capped by `max_peers`. Inserting or removing moves the
//! entries after it (a `memmove` of at most `max_peers` * 20 bytes).

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hayedik_proto::tracker::{
    peer_entry_v4, peer_entry_v6, put_peer_entry_v4, put_peer_entry_v6, PeerEntry, PeerState,
    PEER_ENTRY_V4_LEN, PEER_ENTRY_V6_LEN,
};
use rand::Rng;

/// A peer is identified by the source IP of its announces and its TCP port.
pub type PeerKey = (IpAddr, u16);

/// Entry flags (one byte per entry).
const COMPLETE: u8 = 1;
/// Reachable only through the tracker's relay (its latest ANNOUNCE_X said so).
const RELAYED: u8 = 1 << 1;
/// Reachable at a port its router forwards (its latest ANNOUNCE_X said so).
const MAPPED: u8 = 1 << 2;
/// Announced from an IPv4-mapped IPv6 address (a dual-stack socket): listed
/// in that form.
const V4_MAPPED: u8 = 1 << 3;
/// Taken as one of the longest listed by the sample being made (set and
/// cleared within [`PeerTable::sample_without`]; [`PeerTable::put_sample`]
/// marks by generation instead, see `Entry::mark`), so that its random part
/// skips it without reading any tenure.
const TAKEN: u8 = 1 << 4;
// Bits 5 to 7 are free for later per-entry flags (e.g. "punchable").

/// An address family's key: IPv4 as `u32`, IPv6 as its high and low 64
/// bits (ordered as the `u128`, but 8-byte aligned: an IPv6 entry is then
/// 24 bytes, where a `u128`'s alignment made it 32).
trait Ip: Copy + Ord + std::fmt::Debug {
    /// The source this address counts against: itself (IPv4) or its /64.
    fn source(self) -> Self;
}

impl Ip for u32 {
    fn source(self) -> Self {
        self
    }
}

impl Ip for (u64, u64) {
    fn source(self) -> Self {
        (self.0, 0)
    }
}

/// An IPv6 address as the table keeps it.
fn v6_key(ip: Ipv6Addr) -> (u64, u64) {
    let bits = u128::from(ip);
    ((bits >> 64) as u64, bits as u64)
}

/// The IPv6 address the table keeps as `(high, low)`.
fn v6_addr((high, low): (u64, u64)) -> Ipv6Addr {
    Ipv6Addr::from((u128::from(high) << 64) | u128::from(low))
}

/// What a reply reads of a listed peer.
#[derive(Debug, Clone, Copy)]
struct Entry<A> {
    ip: A,
    /// TCP port.
    port: u16,
    flags: u8,
    /// The generation of the last [`PeerTable::put_sample`] that took it
    /// as one of the longest listed (0: none). A new generation per sample
    /// means no mark is ever cleared, but all at once when the count wraps.
    /// In what was padding: the entry is no larger.
    mark: u8,
}

impl<A: Ip> Entry<A> {
    /// A new entry, unmarked.
    fn new(ip: A, port: u16, flags: u8) -> Self {
        Self {
            ip,
            port,
            flags,
            mark: 0,
        }
    }

    fn key(&self) -> (A, u16) {
        (self.ip, self.port)
    }

    fn is_complete(&self) -> bool {
        self.flags & COMPLETE != 0
    }
}

/// What only announces, expiry and the choice of the longest listed read
/// of a listed peer.
#[derive(Debug, Clone, Copy)]
struct Tenure {
    /// Order of first listing: smaller is listed longer.
    seq: u32,
    /// Milliseconds since the table's `epoch` at the last announce.
    seen: u32,
    /// UDP source port of the announce that listed the entry.
    owner_port: u16,
}

/// One address family's listed peers: entries sorted by key, and their
/// tenures at the same indices.
#[derive(Debug)]
struct List<A> {
    entries: Vec<Entry<A>>,
    tenures: Vec<Tenure>,
}

impl<A: Ip> List<A> {
    fn new() -> Self {
        Self {
            entries: Vec::new(),
            tenures: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Where `(ip, port)` is, or where it would go.
    fn find(&self, ip: A, port: u16) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| e.key().cmp(&(ip, port)))
    }

    /// How many entries count against the source of `ip`.
    fn count_source(&self, ip: A) -> usize {
        let source = ip.source();
        let lo = self.entries.partition_point(|e| e.ip.source() < source);
        let hi = self.entries.partition_point(|e| e.ip.source() <= source);
        hi - lo
    }

    fn insert(&mut self, i: usize, entry: Entry<A>, tenure: Tenure) {
        self.entries.insert(i, entry);
        self.tenures.insert(i, tenure);
    }

    fn remove(&mut self, i: usize) -> Entry<A> {
        self.tenures.remove(i);
        self.entries.remove(i)
    }

    /// Keeps the entries whose tenure `keep` accepts, in order.
    fn retain(&mut self, keep: impl Fn(&Tenure) -> bool) {
        let mut kept = 0;
        for i in 0..self.len() {
            if keep(&self.tenures[i]) {
                self.entries[kept] = self.entries[i];
                self.tenures[kept] = self.tenures[i];
                kept += 1;
            }
        }
        self.entries.truncate(kept);
        self.tenures.truncate(kept);
    }

    /// Gives memory back when the list emptied to under a quarter.
    fn shrink(&mut self) {
        let (len, capacity) = (self.entries.len(), self.entries.capacity());
        if capacity > 16 && len < capacity / 4 {
            self.entries.shrink_to(len * 2);
            self.tenures.shrink_to(len * 2);
        }
    }
}

/// The state a record's flags say.
fn state_of(flags: u8) -> PeerState {
    if flags & COMPLETE != 0 {
        PeerState::Complete
    } else {
        PeerState::Downloading
    }
}

/// An IP as the table stores it.
#[derive(Debug, Clone, Copy)]
enum Key {
    V4 { ip: u32, mapped: bool },
    V6((u64, u64)),
}

impl Key {
    fn of(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(v4) => Key::V4 {
                ip: u32::from(v4),
                mapped: false,
            },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::V4 {
                    ip: u32::from(v4),
                    mapped: true,
                },
                None => Key::V6(v6_key(v6)),
            },
        }
    }
}

/// Where an entry is: which list, which index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    V4(usize),
    V6(usize),
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
    v4: List<u32>,
    v6: List<(u64, u64)>,
    /// Zero of the `seen` clock; moved forward by [`PeerTable::expire`]
    /// before the millisecond count could overflow.
    epoch: Instant,
    next_seq: u32,
    /// Global indices (IPv4 entries first, then IPv6) of the entries
    /// listed longest, longest first (empty: not computed). A sample takes
    /// its longest-listed half from here; it is computed (one selection
    /// over the table, a sort of the few found) when a sample needs more
    /// than it holds, and kept up to date as entries come and go, so a
    /// swarm whose peers only refresh never computes it again.
    seniors: Vec<u32>,
    /// The last [`PeerTable::put_sample`]'s generation (see `Entry::mark`).
    generation: u8,
    seeders: usize,
    max_peers: usize,
    max_per_source: usize,
}

/// Seniors computed beyond what a sample needs, so that a few leaving do not
/// make the next sample compute them again.
const SENIOR_SLACK: usize = 8;

thread_local! {
    /// The scratch of [`PeerTable::compute_seniors`]: `seq << 32 | global index`.
    static SENIORS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl PeerTable {
    /// A table of at most `max_peers` entries, at most `max_per_source` of
    /// them from one IPv4 address or IPv6 /64.
    pub fn new(max_peers: usize, max_per_source: usize) -> Self {
        Self {
            v4: List::new(),
            v6: List::new(),
            epoch: Instant::now(),
            next_seq: 0,
            seniors: Vec::new(),
            generation: 0,
            seeders: 0,
            max_peers,
            max_per_source,
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tick(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u32::MAX)
    }

    fn slot(&self, key: PeerKey) -> Option<Slot> {
        match Key::of(key.0) {
            Key::V4 { ip, .. } => self.v4.find(ip, key.1).ok().map(Slot::V4),
            Key::V6(ip) => self.v6.find(ip, key.1).ok().map(Slot::V6),
        }
    }

    fn flags(&self, slot: Slot) -> u8 {
        match slot {
            Slot::V4(i) => self.v4.entries[i].flags,
            Slot::V6(i) => self.v6.entries[i].flags,
        }
    }

    fn flags_mut(&mut self, slot: Slot) -> &mut u8 {
        match slot {
            Slot::V4(i) => &mut self.v4.entries[i].flags,
            Slot::V6(i) => &mut self.v6.entries[i].flags,
        }
    }

    fn tenure(&self, slot: Slot) -> &Tenure {
        match slot {
            Slot::V4(i) => &self.v4.tenures[i],
            Slot::V6(i) => &self.v6.tenures[i],
        }
    }

    fn tenure_mut(&mut self, slot: Slot) -> &mut Tenure {
        match slot {
            Slot::V4(i) => &mut self.v4.tenures[i],
            Slot::V6(i) => &mut self.v6.tenures[i],
        }
    }

    /// Seeders and partial sources, not counting `exclude`.
    pub fn counts(&self, exclude: Option<PeerKey>) -> (u32, u32) {
        self.counts_without(exclude.and_then(|k| self.slot(k)).map(|s| self.global(s)))
    }

    /// Seeders and partial sources, not counting the entry at global index
    /// `exclude` (from [`PeerTable::announce_listed`]).
    pub fn counts_without(&self, exclude: Option<usize>) -> (u32, u32) {
        let mut seeders = self.seeders;
        let mut partials = self.len() - self.seeders;
        if let Some(slot) = exclude.filter(|&g| g < self.len()).map(|g| self.slot_at(g)) {
            if self.flags(slot) & COMPLETE != 0 {
                seeders -= 1;
            } else {
                partials -= 1;
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
        self.apply(src, port, state, now).0
    }

    /// [`PeerTable::announce`] that also sets a listed entry's relayed and
    /// mapped flags (what its latest announce said, none for a plain
    /// ANNOUNCE), in one lookup; returns where the announcer's entry is
    /// after it (its global index, until the table next changes), for
    /// [`PeerTable::counts_without`] and [`PeerTable::sample_without`].
    pub fn announce_listed(
        &mut self,
        src: SocketAddr,
        port: u16,
        state: PeerState,
        (relayed, mapped): (bool, bool),
        now: Instant,
    ) -> (Update, Option<usize>) {
        let (update, slot) = self.apply(src, port, state, now);
        if let (Update::Listed, Some(slot)) = (update, slot) {
            let flags = self.flags_mut(slot);
            *flags = (*flags & !(RELAYED | MAPPED))
                | if relayed { RELAYED } else { 0 }
                | if mapped { MAPPED } else { 0 };
        }
        (update, slot.map(|s| self.global(s)))
    }

    /// The announce, and where its entry is after it (listed, or left as
    /// it was for another socket of its IP).
    fn apply(
        &mut self,
        src: SocketAddr,
        port: u16,
        state: PeerState,
        now: Instant,
    ) -> (Update, Option<Slot>) {
        let seen = self.tick(now);
        let key = Key::of(src.ip());
        let found = match key {
            Key::V4 { ip, .. } => self.v4.find(ip, port).map(Slot::V4).map_err(Slot::V4),
            Key::V6(ip) => self.v6.find(ip, port).map(Slot::V6).map_err(Slot::V6),
        };
        let complete = state == PeerState::Complete;
        match found {
            Ok(slot) => {
                let owner_port = self.tenure(slot).owner_port;
                let was_complete = self.flags(slot) & COMPLETE != 0;
                if owner_port != src.port() {
                    // Another socket of the same IP (behind the same NAT, or
                    // another process of the same host): it may refresh the
                    // entry or mark it complete (what a peer whose NAT mapping
                    // changed sends), never downgrade or remove it.
                    let same = state.is_listed() && complete == was_complete;
                    let upgrade = !was_complete && complete;
                    if !same && !upgrade {
                        return (Update::NotOwner, Some(slot));
                    }
                }
                if !state.is_listed() {
                    self.remove(slot);
                    return (Update::NotListed, None);
                }
                if was_complete && !complete {
                    self.seeders -= 1;
                } else if !was_complete && complete {
                    self.seeders += 1;
                }
                self.tenure_mut(slot).seen = seen;
                let flags = self.flags_mut(slot);
                *flags = (*flags & !COMPLETE) | if complete { COMPLETE } else { 0 };
                (Update::Listed, Some(slot))
            }
            Err(at) => {
                if !state.is_listed() {
                    return (Update::NotListed, None);
                }
                if self.len() >= self.max_peers {
                    return (Update::Full, None);
                }
                let same_source = match key {
                    Key::V4 { ip, .. } => self.v4.count_source(ip),
                    Key::V6(ip) => self.v6.count_source(ip),
                };
                if same_source >= self.max_per_source {
                    return (Update::SourceFull, None);
                }
                let tenure = Tenure {
                    seq: self.take_seq(),
                    seen,
                    owner_port: src.port(),
                };
                let mut flags = if complete { COMPLETE } else { 0 };
                if complete {
                    self.seeders += 1;
                }
                self.shift_seniors(self.global(at), true);
                match (key, at) {
                    (Key::V4 { ip, mapped }, Slot::V4(i)) => {
                        if mapped {
                            flags |= V4_MAPPED;
                        }
                        self.v4.insert(i, Entry::new(ip, port, flags), tenure);
                    }
                    (Key::V6(ip), Slot::V6(i)) => {
                        self.v6.insert(i, Entry::new(ip, port, flags), tenure);
                    }
                    // `at` comes from the list of `key`'s family.
                    _ => {}
                }
                (Update::Listed, Some(at))
            }
        }
    }

    /// The next tenure number; renumbers the entries (keeping their order)
    /// in the unlikely case the counter ran out.
    fn take_seq(&mut self) -> u32 {
        if self.next_seq == u32::MAX {
            let mut order: Vec<(u32, Slot)> = self
                .v4
                .tenures
                .iter()
                .enumerate()
                .map(|(i, t)| (t.seq, Slot::V4(i)))
                .chain(
                    self.v6
                        .tenures
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (t.seq, Slot::V6(i))),
                )
                .collect();
            order.sort_unstable_by_key(|&(seq, _)| seq);
            for (n, &(_, slot)) in (0u32..).zip(order.iter()) {
                self.tenure_mut(slot).seq = n;
            }
            // The order is kept, and so are the indices of the seniors.
            self.next_seq = u32::try_from(order.len()).unwrap_or(u32::MAX - 1);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn remove(&mut self, slot: Slot) {
        self.shift_seniors(self.global(slot), false);
        let complete = match slot {
            Slot::V4(i) => self.v4.remove(i).is_complete(),
            Slot::V6(i) => self.v6.remove(i).is_complete(),
        };
        if complete {
            self.seeders -= 1;
        }
        self.v4.shrink();
        self.v6.shrink();
    }

    /// Drops every peer not seen since `now - max_age`; returns how many.
    pub fn expire(&mut self, now: Instant, max_age: Duration) -> usize {
        let before = self.len();
        let now_tick = self.tick(now);
        let max_age = u32::try_from(max_age.as_millis()).unwrap_or(u32::MAX);
        let fresh = |t: &Tenure| now_tick.saturating_sub(t.seen) <= max_age;
        self.v4.retain(fresh);
        self.v6.retain(fresh);
        if self.len() != before {
            self.seniors.clear();
        }
        self.seeders = self.v4.entries.iter().filter(|e| e.is_complete()).count()
            + self.v6.entries.iter().filter(|e| e.is_complete()).count();
        self.v4.shrink();
        self.v6.shrink();
        // Move the epoch forward long before the u32 of milliseconds (49
        // days) runs out: every entry left was seen within `max_age`.
        if now_tick > 1 << 31 {
            let shift = now_tick.saturating_sub(max_age);
            self.epoch += Duration::from_millis(u64::from(shift));
            for t in self.v4.tenures.iter_mut().chain(&mut self.v6.tenures) {
                t.seen = t.seen.saturating_sub(shift);
            }
        }
        before - self.len()
    }

    /// The encoded length of the entry at global index `g` (IPv4 entries
    /// first, then IPv6).
    fn encoded_len(&self, g: usize) -> usize {
        match self.v4.entries.get(g) {
            Some(e) if e.flags & V4_MAPPED == 0 => PEER_ENTRY_V4_LEN,
            _ => PEER_ENTRY_V6_LEN,
        }
    }

    /// The encoded length of the entry at global index `g`, or `None` if
    /// the sample being made took it already.
    fn untaken_len(&self, g: usize) -> Option<usize> {
        let flags = match self.v4.entries.get(g) {
            Some(e) if e.flags & V4_MAPPED == 0 => {
                return (e.flags & TAKEN == 0).then_some(PEER_ENTRY_V4_LEN)
            }
            Some(e) => e.flags,
            None => self.v6.entries[g - self.v4.len()].flags,
        };
        (flags & TAKEN == 0).then_some(PEER_ENTRY_V6_LEN)
    }

    fn flags_at_mut(&mut self, g: usize) -> &mut u8 {
        let slot = self.slot_at(g);
        self.flags_mut(slot)
    }

    /// The tenure of the entry at global index `g`.
    #[cfg(test)]
    fn seq(&self, g: usize) -> u32 {
        match self.v4.tenures.get(g) {
            Some(t) => t.seq,
            None => self.v6.tenures[g - self.v4.len()].seq,
        }
    }

    /// Appends the entry at global index `g` to a PEERS body, written
    /// straight from its record: the bytes of [`PeerTable::entry`]'s
    /// encoding.
    pub fn put_entry(&self, g: usize, out: &mut Vec<u8>) {
        match self.v4.entries.get(g) {
            Some(e) if e.flags & V4_MAPPED != 0 => {
                let ip = Ipv4Addr::from(e.ip).to_ipv6_mapped().octets();
                put_peer_entry_v6(out, ip, e.port, state_of(e.flags));
            }
            Some(e) => put_peer_entry_v4(out, e.ip.to_be_bytes(), e.port, state_of(e.flags)),
            None => {
                let e = &self.v6.entries[g - self.v4.len()];
                put_peer_entry_v6(out, v6_addr(e.ip).octets(), e.port, state_of(e.flags));
            }
        }
    }

    /// The entry at global index `g` (from [`PeerTable::sample_without`]).
    pub fn entry(&self, g: usize) -> PeerEntry {
        match self.v4.entries.get(g) {
            Some(e) => {
                let v4 = Ipv4Addr::from(e.ip);
                let ip = if e.flags & V4_MAPPED != 0 {
                    IpAddr::V6(v4.to_ipv6_mapped())
                } else {
                    IpAddr::V4(v4)
                };
                PeerEntry {
                    addr: SocketAddr::new(ip, e.port),
                    state: state_of(e.flags),
                }
            }
            None => {
                let e = &self.v6.entries[g - self.v4.len()];
                PeerEntry {
                    addr: SocketAddr::new(IpAddr::V6(v6_addr(e.ip)), e.port),
                    state: state_of(e.flags),
                }
            }
        }
    }

    /// [`PeerTable::sample_without`] leaving out the peer `exclude` (by
    /// key): for tests, where no index from an announce is at hand.
    #[cfg(test)]
    pub fn sample(
        &mut self,
        exclude: Option<PeerKey>,
        max: usize,
        rng: &mut impl Rng,
        out: &mut Vec<usize>,
        fits: impl FnMut(usize) -> bool,
    ) {
        let excluded = exclude.and_then(|k| self.slot(k)).map(|s| self.global(s));
        self.sample_without(excluded, max, rng, out, fits);
    }

    /// Up to `max` peers other than the entry at global index `excluded`
    /// (from [`PeerTable::announce_listed`]), their global indices
    /// appended to `out` (read them with [`PeerTable::entry`], or write
    /// them with [`PeerTable::put_entry`]): when there are more, the first
    /// half are the peers listed longest, the rest a fair random sample of
    /// the others. `fits` is given each entry's encoded length before it is
    /// added, and stops the sample when it says no.
    ///
    /// Why the longest listed: a swarm's first peer is its sharer, and fake
    /// peers announced later (from many addresses, each under the
    /// per-source cap) cannot push it out of every reply; a uniform sample
    /// of 50 out of 2,000 would miss it 97 times in 100.
    pub fn sample_without(
        &mut self,
        excluded: Option<usize>,
        max: usize,
        rng: &mut impl Rng,
        out: &mut Vec<usize>,
        fits: impl FnMut(usize) -> bool,
    ) {
        let excluded = excluded.filter(|&g| g < self.len());
        let first = out.len();
        let seniors = self.sample_marked(excluded, max, rng, out, fits);
        for &g in &out[first..first + seniors] {
            *self.flags_at_mut(g) &= !TAKEN;
        }
    }

    /// [`PeerTable::sample_without`], leaving the longest listed it took
    /// marked [`TAKEN`]: how many (the first ones it appended).
    fn sample_marked(
        &mut self,
        excluded: Option<usize>,
        max: usize,
        rng: &mut impl Rng,
        out: &mut Vec<usize>,
        mut fits: impl FnMut(usize) -> bool,
    ) -> usize {
        let n = self.len();
        let available = n - usize::from(excluded.is_some());
        let take = max.min(available);
        if take == 0 {
            return 0;
        }
        let mut seniors = 0;
        if take < available {
            let want_seniors = take.div_ceil(2);
            // One more than needed: the requester may be among them.
            let want = (want_seniors + 1).min(n);
            if self.seniors.len() < want {
                self.compute_seniors(want + SENIOR_SLACK);
            }
            let longest = self
                .seniors
                .iter()
                .map(|&g| g as usize)
                .filter(|&g| Some(g) != excluded)
                .take(want_seniors);
            let mut full = false;
            for g in longest {
                if !fits(self.encoded_len(g)) {
                    full = true;
                    break;
                }
                out.push(g);
                seniors += 1;
            }
            for &g in &out[out.len() - seniors..] {
                *self.flags_at_mut(g) |= TAKEN;
            }
            if full {
                return seniors;
            }
        }
        let mut added = seniors;
        let (start, stride) = walk(n, take == available, rng);
        let mut g = start;
        for _ in 0..n {
            if added >= take {
                break;
            }
            let here = g;
            g += stride;
            if g >= n {
                g -= n;
            }
            if Some(here) == excluded {
                continue;
            }
            let Some(len) = self.untaken_len(here) else {
                continue;
            };
            if !fits(len) {
                break;
            }
            out.push(here);
            added += 1;
        }
        seniors
    }

    /// [`PeerTable::sample_without`] written straight into a PEERS body:
    /// appends to `out` the entries that a sample whose `fits` counts down
    /// `room` bytes would take, in its order, from the same random draws.
    /// One pass over the table, no list of indices, and no branch on
    /// whether an entry was taken already (each is written, and kept or
    /// written over). Only for a table of IPv4 entries: returns false, and
    /// does nothing, if it holds IPv6 ones.
    pub fn put_sample(
        &mut self,
        excluded: Option<usize>,
        max: usize,
        rng: &mut impl Rng,
        room: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        if !self.v6.entries.is_empty() {
            return false;
        }
        let n = self.v4.entries.len();
        // Never a listed index: nothing is left out.
        let excluded = excluded.filter(|&g| g < n).unwrap_or(usize::MAX);
        let available = n - usize::from(excluded != usize::MAX);
        let take = max.min(available);
        if take == 0 {
            return true;
        }
        let base = out.len();
        // Written in place, then cut to what was kept: room for `take`
        // entries of the longer form.
        out.resize(base + take * PEER_ENTRY_V6_LEN, 0);
        let want_seniors = take.div_ceil(2);
        if take < available {
            // One more than needed: the requester may be among them.
            let want = (want_seniors + 1).min(n);
            if self.seniors.len() < want {
                self.compute_seniors(want + SENIOR_SLACK);
            }
        }
        // This sample's mark: a new one, or, when the count wraps, every
        // mark cleared (one pass in 255 samples).
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            for e in &mut self.v4.entries {
                e.mark = 0;
            }
            self.generation = 1;
        }
        let mark = self.generation;
        // From here on the table, the longest listed and the body are
        // slices held in registers: through `self` and `out`, the compiler
        // reloads them after every byte written.
        let entries = self.v4.entries.as_mut_slice();
        let longest = self.seniors.as_slice();
        let body = &mut out[base..];
        // Where the body is written up to, and the most it may hold.
        let (mut at, end) = (0, room);
        let mut seniors = 0;
        let mut full = false;
        if take < available {
            for &g in longest {
                let g = g as usize;
                if g == excluded {
                    continue;
                }
                if seniors == want_seniors {
                    break;
                }
                let Some(e) = entries.get_mut(g) else {
                    continue;
                };
                let len = put_v4_at(body, at, e);
                if at + len > end {
                    full = true;
                    break;
                }
                e.mark = mark;
                (at, seniors) = (at + len, seniors + 1);
            }
        }
        if !full {
            let mut added = seniors;
            let (start, stride) = walk(n, take == available, rng);
            let mut g = start;
            for _ in 0..n {
                if added >= take {
                    break;
                }
                let Some(e) = entries.get(g) else {
                    break;
                };
                let here = g;
                // Whether the walk wraps, and whether an entry was taken
                // already, are coin tosses that a branch predictor loses:
                // selects, not branches (`&`, not `&&`).
                g += stride;
                g = std::hint::select_unpredictable(g >= n, g.wrapping_sub(n), g);
                let keep = (here != excluded) & (e.mark != mark);
                let len = put_v4_at(body, at, e);
                if keep & (at + len > end) {
                    break;
                }
                at += std::hint::select_unpredictable(keep, len, 0);
                added += usize::from(keep);
            }
        }
        out.truncate(base + at);
        true
    }

    /// Reads one word of every cache line of a small table's entries (not
    /// its tenures, which a reply does not read), with loads that do not
    /// depend on each other: the lines that are not in the cache (a tracker
    /// of many swarms) then arrive together, while the connection id is
    /// checked, instead of one after another in the binary search and the
    /// sample that follow. A large table is left alone.
    pub fn warm(&self) {
        const UP_TO: usize = 256;
        if self.len() > UP_TO {
            return;
        }
        // At most 64 bytes apart (8 IPv4 entries, 2 IPv6): no line is skipped.
        let v4 = self.v4.entries.iter().step_by(8).fold(0, |x, e| x ^ e.port);
        let v6 = self.v6.entries.iter().step_by(2).fold(0, |x, e| x ^ e.port);
        std::hint::black_box(v4 ^ v6);
    }

    /// [`PeerTable::warm`], and also the tenures (an announce updates its
    /// own) and the longest listed: for the swarm served next, while this
    /// one is (see `Reactor::run`).
    pub fn warm_ahead(&self) {
        self.warm();
        const UP_TO: usize = 256;
        if self.len() > UP_TO {
            return;
        }
        // 12 bytes each: every fifth is at most 60 bytes from the last.
        let v4 = self.v4.tenures.iter().step_by(5).fold(0, |x, t| x ^ t.seq);
        let v6 = self.v6.tenures.iter().step_by(5).fold(0, |x, t| x ^ t.seq);
        let seniors = self.seniors.iter().step_by(16).fold(0, |x, &g| x ^ g);
        std::hint::black_box(v4 ^ v6 ^ seniors);
    }

    /// Whether the entry at global index `g` is reachable only through the
    /// relay, and whether at a mapped port.
    pub fn relayed_mapped(&self, g: usize) -> (bool, bool) {
        let flags = self.flags(self.slot_at(g));
        (flags & RELAYED != 0, flags & MAPPED != 0)
    }

    /// Where the entry at global index `g` is.
    fn slot_at(&self, g: usize) -> Slot {
        match g.checked_sub(self.v4.len()) {
            None => Slot::V4(g),
            Some(i) => Slot::V6(i),
        }
    }

    /// The global index of `slot`: IPv4 entries first, then IPv6.
    fn global(&self, slot: Slot) -> usize {
        match slot {
            Slot::V4(i) => i,
            Slot::V6(i) => self.v4.len() + i,
        }
    }

    /// Keeps the seniors' indices right when an entry is inserted at (or
    /// removed from) global index `g`. A new entry is listed shortest, so
    /// it never joins them; a removed one leaves them if it was one.
    fn shift_seniors(&mut self, g: usize, inserted: bool) {
        let g = u32::try_from(g).unwrap_or(u32::MAX);
        if inserted {
            for s in &mut self.seniors {
                if *s >= g {
                    *s += 1;
                }
            }
        } else {
            self.seniors.retain(|&s| s != g);
            for s in &mut self.seniors {
                if *s > g {
                    *s -= 1;
                }
            }
        }
    }

    /// Finds the `m` entries listed longest (all when there are fewer), in
    /// order.
    fn compute_seniors(&mut self, m: usize) {
        let m = m.min(self.len());
        self.seniors.clear();
        if m == 0 {
            return;
        }
        SENIORS.with(|cell| {
            let found = &mut *cell.borrow_mut();
            found.clear();
            let seqs = self
                .v4
                .tenures
                .iter()
                .chain(&self.v6.tenures)
                .map(|t| t.seq);
            found.extend(
                seqs.enumerate()
                    .map(|(g, seq)| (u64::from(seq) << 32) | g as u64),
            );
            found.select_nth_unstable(m - 1);
            found[..m].sort_unstable();
            self.seniors.extend(
                found[..m]
                    .iter()
                    .map(|&item| u32::try_from(item & u64::from(u32::MAX)).unwrap_or(u32::MAX)),
            );
        });
    }
}

/// Where a sample's random part starts in a table of `n`, and its step:
/// it visits every index once, in the order start, start + stride, ...
/// (mod n), with a random start and a random stride coprime with n, so
/// every entry is equally likely to be in the window, and neighbours in
/// address order (one provider's range) are spread. `whole`: every entry
/// is taken, in order.
fn walk(n: usize, whole: bool, rng: &mut impl Rng) -> (usize, usize) {
    if whole || n < 2 {
        return (0, 1);
    }
    let mut stride = rng.gen_range(1..n);
    while gcd(stride, n) != 1 {
        stride = stride % (n - 1) + 1;
    }
    (rng.gen_range(0..n), stride)
}

/// Writes the encoding of IPv4 entry `e` into `out` at `at` (which has
/// room for the longer form): its length.
#[inline]
fn put_v4_at(out: &mut [u8], at: usize, e: &Entry<u32>) -> usize {
    let state = state_of(e.flags);
    if e.flags & V4_MAPPED == 0 {
        if let Some(to) = out.get_mut(at..at + PEER_ENTRY_V4_LEN) {
            to.copy_from_slice(&peer_entry_v4(e.ip.to_be_bytes(), e.port, state));
        }
        PEER_ENTRY_V4_LEN
    } else {
        let ip = Ipv4Addr::from(e.ip).to_ipv6_mapped().octets();
        if let Some(to) = out.get_mut(at..at + PEER_ENTRY_V6_LEN) {
            to.copy_from_slice(&peer_entry_v6(ip, e.port, state));
        }
        PEER_ENTRY_V6_LEN
    }
}

/// Greatest common divisor, by Stein's binary algorithm: shifts and
/// subtractions, no division (a sample draws its stride with it).
fn gcd(a: usize, b: usize) -> usize {
    if a == 0 || b == 0 {
        return a | b;
    }
    let shift = (a | b).trailing_zeros();
    let (mut a, mut b) = (a >> a.trailing_zeros(), b);
    loop {
        b >>= b.trailing_zeros();
        if a > b {
            std::mem::swap(&mut a, &mut b);
        }
        b -= a;
        if b == 0 {
            return a << shift;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// Issue 16, point 7: what a reply reads of an IPv4 entry is 8 bytes,
    /// as opentracker's whole entry; its tenure, owner and last-seen time
    /// are 12 more, apart. The target is 48 bytes per listed peer, all
    /// costs included.
    #[test]
    fn records_are_compact() {
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 8);
        assert_eq!(std::mem::size_of::<Tenure>(), 12);
        assert_eq!(std::mem::size_of::<Entry<(u64, u64)>>(), 24);
        let ip: Ipv6Addr = "2001:db8::7:8".parse().unwrap();
        assert_eq!(v6_addr(v6_key(ip)), ip);
        // Ordered as the addresses are, and a /64 is one source.
        let next: Ipv6Addr = "2001:db8:0:1::".parse().unwrap();
        assert!(v6_key(ip) < v6_key(next));
        assert_eq!(v6_key(ip).source(), v6_key("2001:db8::".parse().unwrap()));
    }

    /// Sampling, counts and flags see IPv6 entries and IPv4-mapped ones in
    /// the form they were announced in.
    #[test]
    fn both_families_and_mapped_addresses() {
        let now = Instant::now();
        let mut t = PeerTable::new(100, 4);
        let v6: SocketAddr = "[2001:db8::7]:9".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:9".parse().unwrap();
        let v4: SocketAddr = "10.1.2.4:9".parse().unwrap();
        for a in [v6, mapped, v4] {
            let relayed = a == v6;
            let (update, _) = t.announce_listed(a, 7, PeerState::Complete, (relayed, false), now);
            assert_eq!(update, Update::Listed);
        }
        let relayed = |t: &PeerTable, ip: IpAddr| {
            let g = t.global(t.slot((ip, 7)).unwrap());
            t.relayed_mapped(g).0
        };
        assert!(relayed(&t, v6.ip()) && !relayed(&t, v4.ip()));
        let got: HashSet<_> = sampled(&mut t, None, 10)
            .into_iter()
            .map(|e| e.addr)
            .collect();
        let want: HashSet<_> = [v6, mapped, v4]
            .into_iter()
            .map(|a| SocketAddr::new(a.ip(), 7))
            .collect();
        assert_eq!(got, want);
        assert_eq!(t.counts(Some((mapped.ip(), 7))), (2, 0));
        assert_eq!(
            t.announce(v6, 7, PeerState::Leaving, now),
            Update::NotListed
        );
        assert_eq!(t.counts(None), (2, 0));
    }

    /// The tenure counter running out renumbers, keeping the order.
    #[test]
    fn tenure_counter_wraps_safely() {
        let now = Instant::now();
        let mut t = PeerTable::new(100, 100);
        announce(&mut t, 1, PeerState::Complete, now);
        t.next_seq = u32::MAX - 1;
        announce(&mut t, 2, PeerState::Complete, now);
        announce(&mut t, 3, PeerState::Complete, now);
        let seq = |n: u32| {
            let ip = match key(n).0 {
                IpAddr::V4(v4) => u32::from(v4),
                IpAddr::V6(_) => unreachable!(),
            };
            let i = t.v4.entries.iter().position(|e| e.ip == ip).unwrap();
            t.v4.tenures[i].seq
        };
        assert!(seq(1) < seq(2) && seq(2) < seq(3));
        assert!(t.next_seq < 10);
    }

    /// An entry written straight from its record is the bytes that
    /// encoding its [`PeerEntry`] gives, for each form an address is kept
    /// in (IPv4, IPv4-mapped IPv6, IPv6), and so is its length.
    #[test]
    fn entries_written_from_records_encode_alike() {
        let now = Instant::now();
        let mut t = PeerTable::new(100, 100);
        announce(&mut t, 1, PeerState::Complete, now);
        announce(&mut t, 2, PeerState::Downloading, now);
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:9".parse().unwrap();
        t.announce(mapped, 61_000, PeerState::Complete, now);
        let v6: SocketAddr = "[2001:db8::7]:9".parse().unwrap();
        t.announce(v6, 443, PeerState::Downloading, now);
        assert_eq!(t.len(), 4);
        for g in 0..t.len() {
            let mut ours = Vec::new();
            t.put_entry(g, &mut ours);
            let mut theirs = Vec::new();
            hayedik_proto::tracker::encode_peers(&mut theirs, 7, 60, 1, 2, [t.entry(g)]);
            let head = theirs.len() - t.entry(g).encoded_len();
            assert_eq!(ours, theirs[head..], "entry {g}: {:?}", t.entry(g));
            assert_eq!(t.encoded_len(g), ours.len());
        }
        // Two IPv4 records, then the mapped one; the IPv6 one last.
        let lens: Vec<usize> = (0..t.len()).map(|g| t.encoded_len(g)).collect();
        assert_eq!(lens, [8, 8, 20, 20]);
    }

    /// One lookup for the whole announce: `announce_listed` says where the
    /// announcer's entry is (listed, or left as it was for another socket
    /// of its IP), sets its flags, and counts and samples leave it out by
    /// that index as they do by its key.
    #[test]
    fn an_announce_says_where_its_entry_is() {
        let now = Instant::now();
        let mut t = PeerTable::new(3, 100);
        for n in 0..2 {
            announce(&mut t, n, PeerState::Complete, now);
        }
        let (update, at) =
            t.announce_listed(src(5), key(5).1, PeerState::Downloading, (true, false), now);
        assert_eq!(update, Update::Listed);
        let g = at.unwrap();
        assert_eq!(t.entry(g).addr, SocketAddr::new(key(5).0, key(5).1));
        assert_eq!(t.relayed_mapped(g), (true, false));
        assert_eq!(t.counts_without(at), t.counts(Some(key(5))));
        assert_eq!(t.counts_without(at), (2, 0));
        let mut out = Vec::new();
        t.sample_without(at, 10, &mut rand::thread_rng(), &mut out, |_| true);
        assert_eq!(out.len(), 2);
        assert!(!out.contains(&g));
        // A plain announce clears the flags; another socket of the same IP
        // leaves the entry as it was, and it is still left out.
        let (_, at) = t.announce_listed(
            src(5),
            key(5).1,
            PeerState::Downloading,
            (false, false),
            now,
        );
        assert_eq!(t.relayed_mapped(at.unwrap()), (false, false));
        let other = SocketAddr::new(key(5).0, 6000);
        let (update, at2) =
            t.announce_listed(other, key(5).1, PeerState::Leaving, (false, true), now);
        assert_eq!((update, at2), (Update::NotOwner, at));
        assert_eq!(t.relayed_mapped(at.unwrap()), (false, false));
        // Full, and leaving: nowhere.
        assert_eq!(
            t.announce_listed(src(9), key(9).1, PeerState::Complete, (false, false), now),
            (Update::Full, None)
        );
        assert_eq!(
            t.announce_listed(src(5), key(5).1, PeerState::Leaving, (false, false), now),
            (Update::NotListed, None)
        );
        assert_eq!(t.counts_without(None), (2, 0));
        // An index past the end (a stale one) excludes nothing.
        assert_eq!(t.counts_without(Some(7)), (2, 0));
    }

    fn unmarked(t: &PeerTable) -> bool {
        t.v4.entries.iter().all(|e| e.flags & TAKEN == 0)
            && t.v6.entries.iter().all(|e| e.flags & TAKEN == 0)
    }

    /// A sample that `fits` stops among the longest listed, or after them,
    /// leaves none of them marked, and a later sample still takes them.
    #[test]
    fn a_sample_cut_short_leaves_no_mark() {
        let now = Instant::now();
        let mut t = PeerTable::new(100, 100);
        for n in 0..40 {
            announce(&mut t, n, PeerState::Complete, now);
        }
        for stop_after in [0usize, 3, 12, 30] {
            let mut out = Vec::new();
            let mut left = stop_after;
            t.sample(None, 20, &mut rand::thread_rng(), &mut out, |_| {
                let fits = left > 0;
                left = left.saturating_sub(1);
                fits
            });
            assert_eq!(out.len(), stop_after.min(20));
            assert!(unmarked(&t), "after a sample cut at {stop_after}");
        }
        let got = sampled(&mut t, None, 20);
        let seniors: HashSet<_> = (0..10).map(|n| SocketAddr::new(key(n).0, 1000)).collect();
        assert!(seniors.iter().all(|a| got.iter().any(|e| e.addr == *a)));
        assert!(unmarked(&t));
    }

    /// `put_sample` marks the longest listed it takes by generation: past
    /// 255 samples of one table the count wraps and every mark is cleared.
    /// Its samples stay `sample_without`'s throughout, requester among the
    /// longest listed or not.
    #[test]
    fn a_sample_written_in_place_stays_right_when_its_marks_wrap() {
        use rand::SeedableRng;
        let now = Instant::now();
        let mut t = PeerTable::new(200, 200);
        for i in 0..100u32 {
            let state = [PeerState::Complete, PeerState::Downloading][i as usize % 2];
            t.announce(src(i), 1000, state, now);
        }
        let mut a = rand::rngs::SmallRng::seed_from_u64(7);
        let mut b = a.clone();
        let mut wrapped = 0;
        for i in 0..600usize {
            let excluded = Some(i * 37 % 100);
            let (mut picked, mut left) = (Vec::new(), 1200usize);
            t.sample_without(excluded, 50, &mut a, &mut picked, |len| {
                let fits = len <= left;
                left = left.saturating_sub(len);
                fits
            });
            let mut want = Vec::new();
            for g in picked {
                t.put_entry(g, &mut want);
            }
            let before = t.generation;
            let mut got = Vec::new();
            assert!(t.put_sample(excluded, 50, &mut b, 1200, &mut got));
            assert_eq!(got, want, "sample {i}");
            wrapped += usize::from(t.generation < before);
        }
        assert_eq!(wrapped, 2, "600 samples wrap the count twice");
    }

    #[test]
    fn a_sample_written_in_place_is_the_sample() {
        use rand::SeedableRng;
        let now = Instant::now();
        for n in [0u32, 1, 2, 3, 7, 40, 99, 100, 120] {
            // Some from a dual-stack socket (IPv4-mapped: the longer form).
            for mapped_every in [0u32, 1, 5] {
                let mut t = PeerTable::new(200, 200);
                for i in 0..n {
                    let src = match src(i) {
                        SocketAddr::V4(a) if mapped_every != 0 && i % mapped_every == 0 => {
                            SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
                        }
                        a => a,
                    };
                    let state = [PeerState::Complete, PeerState::Downloading][i as usize % 2];
                    t.announce(src, 1000, state, now);
                }
                let some = (n > 0).then_some(n as usize / 2);
                for (max, room, excluded) in [
                    (50, 1200, None),
                    (50, 1200, some),
                    (10, 1200, Some(0)),
                    (200, 10_000, some),
                    (50, 100, some),
                    (50, 0, None),
                    (0, 1200, None),
                ] {
                    for seed in 0..20 {
                        let mut a = rand::rngs::SmallRng::seed_from_u64(seed);
                        let mut b = a.clone();
                        let (mut picked, mut left) = (Vec::new(), room);
                        t.sample_without(excluded, max, &mut a, &mut picked, |len| {
                            let fits = len <= left;
                            left = left.saturating_sub(len);
                            fits
                        });
                        let mut want = vec![0xAA];
                        for g in picked {
                            t.put_entry(g, &mut want);
                        }
                        let mut got = vec![0xAA];
                        assert!(t.put_sample(excluded, max, &mut b, room, &mut got));
                        assert_eq!(
                            got, want,
                            "{n} peers, mapped every {mapped_every}, max {max}, room {room}, \
                             excluded {excluded:?}, seed {seed}"
                        );
                        assert!(unmarked(&t));
                    }
                }
            }
        }
        // IPv6 entries: not for it, and nothing is written.
        let mut t = PeerTable::new(10, 10);
        t.announce(
            "[2001:db8::1]:5000".parse().unwrap(),
            1000,
            PeerState::Complete,
            now,
        );
        let mut out = vec![1, 2];
        assert!(!t.put_sample(None, 5, &mut rand::thread_rng(), 1200, &mut out));
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn gcd_is_the_greatest_common_divisor() {
        fn slow(a: usize, b: usize) -> usize {
            (1..=a.max(b))
                .rev()
                .find(|&d| a.is_multiple_of(d) && b.is_multiple_of(d))
                .unwrap_or(0)
        }
        for a in 0..70 {
            for b in 0..70 {
                assert_eq!(gcd(a, b), slow(a, b), "gcd({a}, {b})");
            }
        }
        assert_eq!(gcd(1 << 40, 3 << 38), 1 << 38);
        assert_eq!(gcd(usize::MAX, usize::MAX - 1), 1);
    }

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

    fn sampled(t: &mut PeerTable, exclude: Option<PeerKey>, max: usize) -> Vec<PeerEntry> {
        let mut out = Vec::new();
        t.sample(exclude, max, &mut rand::thread_rng(), &mut out, |_| true);
        out.into_iter().map(|g| t.entry(g)).collect()
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
        assert_eq!(t.len(), 1);
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
            let out = sampled(&mut t, Some(getter), 50);
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
        let out = sampled(&mut t, Some((sharer.ip(), 4000)), 50);
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
        let out = sampled(&mut t, None, 10);
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
            let out = sampled(&mut t, Some(key(0)), 10);
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
            // Mostly IPv4, some IPv6 (one /64): global indices span both.
            let ip = if rng.gen_range(0..4) == 0 {
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, rng.gen_range(0..6)])
            } else {
                IpAddr::from([10, 0, 0, rng.gen_range(0..20)])
            };
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
            assert!(t.v4.entries.windows(2).all(|w| w[0].key() < w[1].key()));
            assert!(t.v6.entries.windows(2).all(|w| w[0].key() < w[1].key()));
            assert_eq!(t.v4.tenures.len(), t.v4.entries.len());
            assert_eq!(t.v6.tenures.len(), t.v6.entries.len());
            assert!(t.v6.len() <= 4, "one /64, capped per source");
            let mut seqs: Vec<u32> = (0..t.len()).map(|g| t.seq(g)).collect();
            seqs.sort_unstable();
            seqs.dedup();
            assert_eq!(seqs.len(), t.len(), "tenures are distinct");
            let mut per = HashMap::<u32, u32>::new();
            for e in &t.v4.entries {
                *per.entry(e.ip).or_default() += 1;
            }
            assert!(per.values().all(|n| *n <= 4));
            for e in &t.v4.entries {
                assert_eq!(t.v4.count_source(e.ip), per[&e.ip] as usize);
            }
            let seeders = t.v4.entries.iter().filter(|e| e.is_complete()).count()
                + t.v6.entries.iter().filter(|e| e.is_complete()).count();
            // The seniors' cache counts what it says, and a sample is
            // distinct and leaves the requester out.
            let excluded = (ip, 3);
            let out = sampled(&mut t, Some(excluded), 5);
            let tenures = (0..t.len()).map(|g| t.seq(g));
            let mut by_tenure: Vec<(u32, usize)> =
                tenures.enumerate().map(|(g, seq)| (seq, g)).collect();
            by_tenure.sort_unstable();
            let seniors: Vec<usize> = t.seniors.iter().map(|&g| g as usize).collect();
            let longest: Vec<usize> = by_tenure
                .iter()
                .map(|&(_, g)| g)
                .take(seniors.len())
                .collect();
            assert_eq!(
                seniors, longest,
                "the seniors are the longest listed, in order"
            );
            assert!(unmarked(&t), "a sample leaves no entry marked taken");
            let distinct: HashSet<_> = out.iter().map(|e| e.addr).collect();
            assert_eq!(distinct.len(), out.len());
            assert!(out
                .iter()
                .all(|e| e.addr != SocketAddr::new(excluded.0, excluded.1)));
            assert_eq!(t.seeders, seeders);
        }
    }
}
