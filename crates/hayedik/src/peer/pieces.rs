//! The one owner of a download's piece state: which pieces we hold and
//! want, which peers announce them, which session fetches and which writes
//! each one, the strikes and bans of peers that sent bad data, and the
//! verified count. A plain synchronous struct with time passed in; sessions
//! and the disk thread reach it through [`SharedPieces`], which adds only a
//! lock and the notifications (a piece verified, the download complete).
//!
//! Choosing a piece: rarest first (fewest connected peers announce it),
//! ties broken by a random starting point so that peers spread over
//! different pieces. A piece is normally fetched by one session at a time,
//! so a bad piece is attributable to the one peer that sent it. When every
//! missing piece is being fetched (endgame), a piece may be fetched by up to
//! [`ENDGAME_DUPLICATES`] sessions at once; the first verified copy wins.
//!
//! Invariants (checked by the property test below):
//! - `missing` lists exactly the pieces with `wanted && !have` (in any
//!   order) and `slot[i]` is piece `i`'s index in it;
//! - `writer[i] == FINAL` exactly when piece `i` is held (`have`): a held
//!   piece is never written again; otherwise it is [`NO_WRITER`] or the id of
//!   the one session whose blocks may be written for it;
//! - `bytes_verified` is the sum of the lengths of the held pieces;
//! - `assigned[i]` counts the sessions fetching piece `i`: every
//!   [`Pieces::pick`] is matched by exactly one [`Pieces::release`], or by
//!   the [`Pieces::verified`] or [`Pieces::bad_piece`] of that fetch;
//! - `availability[i]` is the number of connected peers announcing piece `i`;
//! - a banned address stays banned for the life of the download.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::Rng;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

use crate::storage::{Bitfield, PieceLayout};

/// Endgame duplicates (whole pieces kept in memory until they verify) one
/// download holds at once, across all its sessions: this bounds the
/// endgame's memory (a piece of up to `MAX_DUPLICATE_PIECE` each) whatever
/// the number of peers. The duplicates go one after another when more
/// pieces wait on a slow peer; each comes from a fast one.
pub const MAX_DUPLICATES: usize = 2;

/// Sessions that may fetch the same piece at once in endgame.
pub const ENDGAME_DUPLICATES: u8 = 3;
/// Bad pieces (or protocol errors) a peer may commit before it is banned.
pub const MAX_STRIKES: u32 = 2;
/// Addresses with strikes remembered at once; when full, the strikes of
/// peers not banned are forgotten (a ban itself is never forgotten).
pub const MAX_STRUCK: usize = 16_384;
/// No session writes this piece.
pub const NO_WRITER: u64 = 0;
/// The piece is held: nobody writes it any more.
pub const FINAL: u64 = u64::MAX;

const NOT_MISSING: usize = usize::MAX;

/// What [`Pieces::verified`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// A new piece: announce it.
    New,
    /// Someone else's copy came first (endgame): nothing changed.
    Duplicate,
}

/// The piece state of one download (empty until [`Pieces::start`]).
#[derive(Debug)]
pub struct Pieces {
    layout: Option<PieceLayout>,
    have: Bitfield,
    wanted: Vec<bool>,
    availability: Vec<u32>,
    assigned: Vec<u8>,
    missing: Vec<usize>,
    /// Per piece, its index in `missing`, or `NOT_MISSING`.
    slot: Vec<usize>,
    writer: Vec<u64>,
    bytes_verified: u64,
    /// Verified bytes received, by the peer's listed address (bounded by
    /// the piece count: only peers that delivered a piece are here).
    from: BTreeMap<SocketAddr, u64>,
    strikes: HashMap<SocketAddr, u32>,
    banned: HashSet<SocketAddr>,
    last_progress: Instant,
}

impl Pieces {
    /// No content yet: nothing held, nothing to fetch; strikes and bans
    /// already count (a lying manifest costs a strike).
    pub fn new(now: Instant) -> Self {
        Self {
            layout: None,
            have: Bitfield::new(0),
            wanted: Vec::new(),
            availability: Vec::new(),
            assigned: Vec::new(),
            missing: Vec::new(),
            slot: Vec::new(),
            writer: Vec::new(),
            bytes_verified: 0,
            from: BTreeMap::new(),
            strikes: HashMap::new(),
            banned: HashSet::new(),
            last_progress: now,
        }
    }

    /// The content is known: `have` is verified already, `wanted` is what
    /// to fetch (all pieces when `None` or of the wrong length). Strikes and
    /// bans are kept; a second call is ignored.
    pub fn start(
        &mut self,
        layout: PieceLayout,
        have: Bitfield,
        wanted: Option<Vec<bool>>,
        now: Instant,
    ) {
        if self.layout.is_some() {
            return;
        }
        let n = layout.piece_count() as usize;
        let have = if have.len() as usize == n {
            have
        } else {
            Bitfield::new(n as u32)
        };
        let wanted = wanted
            .filter(|w| w.len() == n)
            .unwrap_or_else(|| vec![true; n]);
        let missing: Vec<usize> = (0..n)
            .filter(|&i| wanted[i] && !have.get(i as u32))
            .collect();
        let mut slot = vec![NOT_MISSING; n];
        for (k, &i) in missing.iter().enumerate() {
            slot[i] = k;
        }
        self.writer = (0..n)
            .map(|i| if have.get(i as u32) { FINAL } else { NO_WRITER })
            .collect();
        self.bytes_verified = have.ones().map(|i| layout.piece_len(i)).sum();
        self.have = have;
        self.wanted = wanted;
        self.availability = vec![0; n];
        self.assigned = vec![0; n];
        self.missing = missing;
        self.slot = slot;
        self.layout = Some(layout);
        self.last_progress = now;
    }

    pub fn is_started(&self) -> bool {
        self.layout.is_some()
    }

    pub fn piece_count(&self) -> u32 {
        self.have.len()
    }

    /// Our held (verified) pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn has(&self, piece: u32) -> bool {
        piece < self.have.len() && self.have.get(piece)
    }

    pub fn bytes_verified(&self) -> u64 {
        self.bytes_verified
    }

    /// Wanted pieces not held yet.
    pub fn remaining(&self) -> usize {
        self.missing.len()
    }

    /// Started, and every wanted piece held.
    pub fn is_complete(&self) -> bool {
        self.is_started() && self.missing.is_empty()
    }

    pub fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// Something useful happened (the manifest arrived...).
    pub fn touch(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// Verified bytes received from each listed peer.
    pub fn from_counts(&self) -> &BTreeMap<SocketAddr, u64> {
        &self.from
    }

    /// Per piece, the connected peers announcing it (for the ui's map).
    pub fn availability(&self) -> &[u32] {
        &self.availability
    }

    /// A peer announced it holds `piece`.
    pub fn add_availability(&mut self, piece: u32) {
        if let Some(a) = self.availability.get_mut(piece as usize) {
            *a = a.saturating_add(1);
        }
    }

    /// A peer that announced `piece` went away.
    pub fn remove_availability(&mut self, piece: u32) {
        if let Some(a) = self.availability.get_mut(piece as usize) {
            *a = a.saturating_sub(1);
        }
    }

    /// The next piece for a session whose peer holds `peer_has(i)`, or
    /// `None` when the peer has nothing we want that is not fetched enough
    /// already; `excluded(i)` skips pieces this session is busy with. The
    /// piece is assigned to the caller until it releases or concludes it.
    pub fn pick(
        &mut self,
        peer_has: impl Fn(u32) -> bool,
        excluded: impl Fn(u32) -> bool,
        rng: &mut impl Rng,
    ) -> Option<u32> {
        let n = self.missing.len();
        if n == 0 {
            return None;
        }
        let start = rng.gen_range(0..n);
        let mut best: Option<(u32, usize)> = None;
        let mut endgame: Option<(u8, u32, usize)> = None;
        for k in 0..n {
            let i = self.missing[(start + k) % n];
            if !peer_has(i as u32) || excluded(i as u32) {
                continue;
            }
            let avail = self.availability[i];
            if self.assigned[i] == 0 {
                if best.is_none_or(|(a, _)| avail < a) {
                    best = Some((avail, i));
                }
                // Held by this one peer only: none can be rarer.
                if avail <= 1 {
                    break;
                }
            } else if self.assigned[i] < ENDGAME_DUPLICATES
                && endgame.is_none_or(|(d, a, _)| (self.assigned[i], avail) < (d, a))
            {
                endgame = Some((self.assigned[i], avail, i));
            }
        }
        let piece = match best {
            Some((_, i)) => i,
            // Endgame only when nothing unassigned is left anywhere: no
            // duplicated work while other pieces wait for a peer.
            None if self.missing.iter().all(|&i| self.assigned[i] > 0) => endgame?.2,
            None => return None,
        };
        self.assigned[piece] += 1;
        Some(piece as u32)
    }

    /// A session gave up fetching `piece` (peer gone, stalled, refused).
    pub fn release(&mut self, piece: u32) {
        if let Some(a) = self.assigned.get_mut(piece as usize) {
            *a = a.saturating_sub(1);
        }
    }

    /// How many sessions fetch `piece`.
    pub fn assigned(&self, piece: u32) -> u8 {
        self.assigned.get(piece as usize).copied().unwrap_or(0)
    }

    /// Makes session `id` the one whose blocks are written for `piece`, if
    /// nobody's are. Returns whether it is.
    pub fn claim_writer(&mut self, piece: u32, id: u64) -> bool {
        match self.writer.get_mut(piece as usize) {
            Some(w) if *w == NO_WRITER || *w == id => {
                *w = id;
                true
            }
            _ => false,
        }
    }

    /// Session `id` stops writing `piece` (nothing changes if it did not).
    pub fn release_writer(&mut self, piece: u32, id: u64) {
        if let Some(w) = self.writer.get_mut(piece as usize) {
            if *w == id {
                *w = NO_WRITER;
            }
        }
    }

    /// Whether a block of session `id` may be written for `piece` now. With
    /// `take_over` (a whole verified copy), `id` becomes the writer unless
    /// the piece is held.
    pub fn may_write(&mut self, piece: u32, id: u64, take_over: bool) -> bool {
        match self.writer.get_mut(piece as usize) {
            Some(w) if *w == id => true,
            Some(w) if take_over && *w != FINAL => {
                *w = id;
                true
            }
            _ => false,
        }
    }

    /// Session `id`'s fetch of `piece` (from `peer`) hashed right. The
    /// piece becomes held if `id` is its writer (what is on disk is what
    /// was hashed); otherwise another copy took it over and nothing
    /// changes. Either way the fetch's assignment ends.
    pub fn verified(
        &mut self,
        piece: u32,
        id: u64,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Verified {
        self.release(piece);
        let i = piece as usize;
        if self.writer.get(i) != Some(&id) {
            return Verified::Duplicate;
        }
        self.writer[i] = FINAL;
        self.have.set(piece);
        self.remove_missing(i);
        let len = self.piece_len(piece);
        self.bytes_verified += len;
        self.last_progress = now;
        if let Some(p) = peer {
            *self.from.entry(p).or_default() += len;
        }
        Verified::New
    }

    /// Session `id`'s fetch of `piece` from `peer` did not hash right: the
    /// piece is free again and the peer gets a strike. Returns true when
    /// the peer is now banned.
    pub fn bad_piece(&mut self, piece: u32, id: u64, peer: SocketAddr) -> bool {
        self.release(piece);
        self.release_writer(piece, id);
        self.strike(peer)
    }

    /// A held piece no longer matches on disk: not held any more, and
    /// fetched again when `refetch` (a download in progress). Returns
    /// whether it was held.
    pub fn lost(&mut self, piece: u32, refetch: bool) -> bool {
        let i = piece as usize;
        if !self.has(piece) {
            return false;
        }
        self.have.clear(piece);
        self.writer[i] = NO_WRITER;
        self.bytes_verified = self.bytes_verified.saturating_sub(self.piece_len(piece));
        if refetch && self.wanted[i] && self.slot[i] == NOT_MISSING {
            self.slot[i] = self.missing.len();
            self.missing.push(i);
        }
        true
    }

    /// Counts a misdeed of `peer` (bad data, a lying manifest, a protocol
    /// error); returns true when the peer is now banned.
    pub fn strike(&mut self, peer: SocketAddr) -> bool {
        if self.banned.contains(&peer) {
            return true;
        }
        if self.strikes.len() >= MAX_STRUCK && !self.strikes.contains_key(&peer) {
            self.strikes.clear();
        }
        let strikes = self.strikes.entry(peer).or_default();
        *strikes += 1;
        if *strikes >= MAX_STRIKES {
            self.strikes.remove(&peer);
            self.banned.insert(peer);
            return true;
        }
        false
    }

    pub fn is_banned(&self, peer: &SocketAddr) -> bool {
        self.banned.contains(peer)
    }

    fn piece_len(&self, piece: u32) -> u64 {
        self.layout.as_ref().map_or(0, |l| l.piece_len(piece))
    }

    fn remove_missing(&mut self, piece: usize) {
        let Some(k) = self
            .slot
            .get_mut(piece)
            .map(|s| std::mem::replace(s, NOT_MISSING))
        else {
            return;
        };
        if k == NOT_MISSING {
            return;
        }
        self.missing.swap_remove(k);
        if let Some(&moved) = self.missing.get(k) {
            self.slot[moved] = k;
        }
    }
}

/// [`Pieces`] shared by a download's sessions and its disk thread, with the
/// notifications its changes cause: a piece newly held (sessions send
/// HAVE), the download complete.
#[derive(Debug)]
pub struct SharedPieces {
    pieces: Mutex<Pieces>,
    have_tx: broadcast::Sender<u32>,
    complete_tx: watch::Sender<bool>,
    /// Endgame duplicates held in memory, across the download's sessions.
    duplicates: Arc<Semaphore>,
    /// Listed addresses of the peers seen holding every piece (at most
    /// [`MAX_COMPLETE_PEERS`]), in the order seen.
    complete_peers: watch::Sender<Vec<SocketAddr>>,
}

/// Peers with a whole copy remembered by [`SharedPieces::peer_complete`].
pub const MAX_COMPLETE_PEERS: usize = 4096;

impl SharedPieces {
    pub fn new(now: Instant) -> Self {
        Self {
            pieces: Mutex::new(Pieces::new(now)),
            have_tx: broadcast::channel(1024).0,
            complete_tx: watch::channel(false).0,
            duplicates: Arc::new(Semaphore::new(MAX_DUPLICATES)),
            complete_peers: watch::channel(Vec::new()).0,
        }
    }

    /// The state, locked. Keep the guard short: sessions and the disk
    /// thread all wait on it.
    pub fn lock(&self) -> MutexGuard<'_, Pieces> {
        // A panic elsewhere must not take every session down with it.
        self.pieces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Pieces::start`], then tells whoever waits if nothing is missing.
    pub fn start(
        &self,
        layout: PieceLayout,
        have: Bitfield,
        wanted: Option<Vec<bool>>,
        now: Instant,
    ) {
        let complete = {
            let mut p = self.lock();
            p.start(layout, have, wanted, now);
            p.is_complete()
        };
        if complete {
            self.complete_tx.send_replace(true);
        }
    }

    /// [`Pieces::verified`]; for a new piece, `on_new` (recording it in
    /// the resume state...) then the announcements: whoever learns that the
    /// download is complete finds every piece recorded.
    pub fn verified(
        &self,
        piece: u32,
        id: u64,
        peer: Option<SocketAddr>,
        now: Instant,
        on_new: impl FnOnce(),
    ) -> Verified {
        let (v, complete) = {
            let mut p = self.lock();
            let v = p.verified(piece, id, peer, now);
            (v, p.is_complete())
        };
        if v == Verified::New {
            on_new();
            let _ = self.have_tx.send(piece);
            if complete {
                self.complete_tx.send_replace(true);
            }
        }
        v
    }

    /// [`Pieces::bad_piece`], logged (with the ban it may cause).
    pub fn bad_piece(&self, piece: u32, id: u64, peer: SocketAddr) -> bool {
        tracing::warn!(%peer, piece, "piece failed verification");
        let (was, banned) = {
            let mut p = self.lock();
            (p.is_banned(&peer), p.bad_piece(piece, id, peer))
        };
        if banned && !was {
            tracing::warn!(%peer, "peer banned after {MAX_STRIKES} bad pieces or protocol errors");
        }
        banned
    }

    /// Leave to hold one more endgame duplicate in memory, if fewer than
    /// [`MAX_DUPLICATES`] are held across the download; the duplicate's
    /// buffer is held as long as the permit is.
    pub fn duplicate_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.duplicates.clone().try_acquire_owned().ok()
    }

    /// [`Pieces::strike`], logged when it bans.
    pub fn strike(&self, peer: SocketAddr) -> bool {
        let (was, banned) = {
            let mut p = self.lock();
            (p.is_banned(&peer), p.strike(peer))
        };
        if banned && !was {
            tracing::warn!(%peer, "peer banned after {MAX_STRIKES} bad pieces or protocol errors");
        }
        banned
    }

    /// Pieces newly held, for sessions to send HAVE.
    pub fn have_rx(&self) -> broadcast::Receiver<u32> {
        self.have_tx.subscribe()
    }

    /// Becomes true when every wanted piece is held.
    pub fn complete_rx(&self) -> watch::Receiver<bool> {
        self.complete_tx.subscribe()
    }

    /// A session's peer (by its listed address) says it holds every piece.
    pub fn peer_complete(&self, peer: SocketAddr) {
        self.complete_peers.send_if_modified(|v| {
            if v.len() >= MAX_COMPLETE_PEERS || v.contains(&peer) {
                return false;
            }
            v.push(peer);
            true
        });
    }

    /// The peers seen holding every piece, in the order seen.
    pub fn complete_peers_rx(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.complete_peers.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::SmallRng {
        rand::rngs::SmallRng::seed_from_u64(7)
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 7000))
    }

    /// `n` pieces of 1000 bytes (the last `last` bytes), none held.
    fn pieces(n: u32, wanted: Option<Vec<bool>>) -> Pieces {
        let mut p = Pieces::new(Instant::now());
        let layout = PieceLayout::new(u64::from(n) * 1000, 1000).unwrap();
        p.start(layout, Bitfield::new(n), wanted, Instant::now());
        p
    }

    #[test]
    fn rarest_first() {
        let mut p = pieces(4, None);
        for piece in [0, 0, 1, 2, 2, 2, 3, 3] {
            p.add_availability(piece);
        }
        let mut r = rng();
        assert_eq!(p.pick(|_| true, |_| false, &mut r), Some(1));
        let second = p.pick(|_| true, |_| false, &mut r).unwrap();
        assert!(second == 0 || second == 3);
    }

    #[test]
    fn only_pieces_the_peer_has_and_we_miss() {
        let mut p = pieces(3, None);
        let mut r = rng();
        assert!(p.claim_writer(0, 1));
        assert_eq!(p.verified(0, 1, None, Instant::now()), Verified::New);
        assert_eq!(p.pick(|i| i == 0, |_| false, &mut r), None);
        assert_eq!(p.pick(|i| i <= 1, |_| false, &mut r), Some(1));
        assert_eq!(p.remaining(), 2);
        assert!(p.claim_writer(1, 1));
        assert_eq!(p.verified(1, 1, None, Instant::now()), Verified::New);
        assert_eq!(p.verified(1, 1, None, Instant::now()), Verified::Duplicate);
        assert_eq!(p.remaining(), 1);
        assert_eq!(p.bytes_verified(), 2000);
    }

    #[test]
    fn peers_spread_then_endgame_duplicates() {
        let mut p = pieces(3, None);
        let mut r = rng();
        let mut all: Vec<u32> = (0..3)
            .map(|_| p.pick(|_| true, |_| false, &mut r).unwrap())
            .collect();
        all.sort();
        assert_eq!(all, vec![0, 1, 2], "no duplicates while pieces are free");
        // Endgame: a fourth session gets a duplicate, never one it fetches.
        let d = p.pick(|_| true, |i| i == 0, &mut r).unwrap();
        assert_ne!(d, 0);
        assert_eq!(p.assigned(d), 2);
    }

    #[test]
    fn no_endgame_while_free_pieces_wait_for_other_peers() {
        let mut p = pieces(2, None);
        let mut r = rng();
        assert_eq!(p.pick(|i| i == 0, |_| false, &mut r), Some(0));
        assert_eq!(p.pick(|i| i == 0, |_| false, &mut r), None);
    }

    #[test]
    fn one_writer_per_piece_and_the_first_verified_copy_wins() {
        let mut p = pieces(1, None);
        assert!(p.claim_writer(0, 1));
        assert!(!p.claim_writer(0, 2), "session 1 writes it");
        assert!(p.may_write(0, 1, false));
        assert!(!p.may_write(0, 2, false));
        // An endgame duplicate that verified first takes the piece over.
        assert!(p.may_write(0, 2, true));
        assert!(!p.may_write(0, 1, false), "session 1's blocks stop");
        assert_eq!(p.verified(0, 1, None, Instant::now()), Verified::Duplicate);
        assert_eq!(
            p.verified(0, 2, Some(addr(2)), Instant::now()),
            Verified::New
        );
        assert!(!p.may_write(0, 3, true), "a held piece is never written");
        assert_eq!(p.from_counts().get(&addr(2)), Some(&1000));
    }

    #[test]
    fn bad_pieces_strike_and_bans_stick() {
        let mut p = pieces(2, None);
        let mut r = rng();
        let piece = p.pick(|_| true, |_| false, &mut r).unwrap();
        assert!(p.claim_writer(piece, 1));
        assert!(!p.bad_piece(piece, 1, addr(1)));
        assert_eq!(p.assigned(piece), 0);
        assert!(p.claim_writer(piece, 2), "the piece is free again");
        assert!(p.strike(addr(1)));
        assert!(p.is_banned(&addr(1)));
        assert!(p.strike(addr(1)));
        // Forgetting strikes when full never forgets a ban.
        for i in 0..MAX_STRUCK + 1 {
            p.strike(SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1)));
        }
        assert!(p.is_banned(&addr(1)));
    }

    #[test]
    fn lost_pieces_are_fetched_again_only_when_downloading() {
        let mut p = pieces(3, Some(vec![false, true, true]));
        assert_eq!(p.remaining(), 2);
        assert!(p.claim_writer(1, 1));
        p.verified(1, 1, None, Instant::now());
        assert!(p.lost(1, true));
        assert!(!p.lost(1, true));
        assert_eq!((p.remaining(), p.bytes_verified()), (2, 0));
        assert!(p.claim_writer(1, 4), "writable again");
        p.verified(1, 4, None, Instant::now());
        assert!(p.lost(1, false));
        assert_eq!(p.remaining(), 1, "a seeder does not fetch it again");
    }

    #[test]
    fn out_of_range_pieces_change_nothing() {
        let mut p = Pieces::new(Instant::now());
        assert!(!p.claim_writer(5, 1));
        assert!(!p.may_write(5, 1, true));
        assert_eq!(p.verified(5, 1, None, Instant::now()), Verified::Duplicate);
        assert!(!p.lost(5, true));
        p.add_availability(5);
        p.release(5);
        assert!(!p.is_complete(), "not started");
        let mut p = pieces(1, None);
        assert!(!p.claim_writer(1, 1));
        assert!(!p.has(1));
    }

    proptest::proptest! {
        /// Whatever sessions do, in any order: no piece is both missing and
        /// held, a held piece has no writer but FINAL, the verified count
        /// is the held pieces' bytes, assignments are exactly the fetches
        /// sessions hold, and a pick is always a wanted piece not held.
        #[test]
        fn invariants_hold(
            n in 1u32..24,
            wanted_bits in proptest::collection::vec(proptest::bool::weighted(0.7), 24),
            ops in proptest::collection::vec((0u8..7, 1u64..5, 0u32..24), 0..300),
        ) {
            let wanted: Vec<bool> = wanted_bits[..n as usize].to_vec();
            let mut p = pieces(n, Some(wanted.clone()));
            let mut r = rng();
            // Per session id, the pieces it fetches.
            let mut fetching: HashMap<u64, Vec<u32>> = HashMap::new();
            for (op, id, i) in ops {
                let i = i % n;
                let mine = fetching.entry(id).or_default();
                match op {
                    0 => {
                        let busy = mine.clone();
                        if let Some(x) = p.pick(|_| true, |k| busy.contains(&k), &mut r) {
                            proptest::prop_assert!(wanted[x as usize] && !p.has(x));
                            mine.push(x);
                            p.claim_writer(x, id);
                        }
                    }
                    1 => if let Some(k) = mine.iter().position(|&x| x == i) {
                        mine.swap_remove(k);
                        p.verified(i, id, None, Instant::now());
                    },
                    2 => if let Some(k) = mine.iter().position(|&x| x == i) {
                        mine.swap_remove(k);
                        p.bad_piece(i, id, addr(id as u8));
                    },
                    3 => if let Some(k) = mine.iter().position(|&x| x == i) {
                        mine.swap_remove(k);
                        p.release(i);
                        p.release_writer(i, id);
                    },
                    4 => { p.lost(i, true); }
                    5 => { p.may_write(i, id, true); }
                    _ => {
                        // The session ends: gives everything back.
                        for x in mine.drain(..) {
                            p.release(x);
                            p.release_writer(x, id);
                        }
                    }
                }
                let held: Vec<u32> = (0..n).filter(|&k| p.has(k)).collect();
                let expect_missing = (0..n).filter(|&k| wanted[k as usize] && !p.has(k)).count();
                proptest::prop_assert_eq!(p.remaining(), expect_missing);
                proptest::prop_assert_eq!(p.bytes_verified(), held.len() as u64 * 1000);
                for k in 0..n {
                    proptest::prop_assert_eq!(p.writer[k as usize] == FINAL, p.has(k));
                    let fetches = fetching.values().flatten().filter(|&&x| x == k).count();
                    proptest::prop_assert_eq!(usize::from(p.assigned(k)), fetches);
                }
            }
        }
    }
}
