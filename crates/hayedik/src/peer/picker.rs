//! The piece picker: which piece a peer should fetch next.
//!
//! Rarest first (fewest connected peers hold it), ties broken by a random
//! starting point so that peers spread over different pieces. A piece is
//! normally assigned to one peer at a time, so a bad piece is attributable to
//! the one peer that sent it. When every missing piece is assigned (endgame),
//! a piece may be assigned to up to [`ENDGAME_DUPLICATES`] peers at once; the
//! first to deliver a verified copy wins and the others are cancelled.
//!
//! Invariants:
//! - `missing` lists exactly the pieces with `wanted && !have` (in any
//!   order) and `slot[i]` is piece `i`'s index in it, so a pick looks at
//!   missing pieces only and completing one is O(1);
//! - `assigned[i] > 0` only while some session holds piece `i`; every
//!   [`Picker::pick`] is matched by exactly one [`Picker::release`] or
//!   [`Picker::complete`] from that session;
//! - `availability[i]` is the number of connected peers announcing piece `i`.

use rand::Rng;

/// Peers that may fetch the same piece at once in endgame.
pub const ENDGAME_DUPLICATES: u8 = 3;

#[derive(Debug, Clone)]
pub struct Picker {
    have: Vec<bool>,
    wanted: Vec<bool>,
    availability: Vec<u32>,
    assigned: Vec<u8>,
    missing: Vec<usize>,
    /// Per piece, its index in `missing`, or `NOT_MISSING`.
    slot: Vec<usize>,
}

const NOT_MISSING: usize = usize::MAX;

impl Picker {
    /// A picker for `have.len()` pieces, of which `have` are already verified
    /// and `wanted` are to be fetched (`None`: all).
    pub fn new(have: Vec<bool>, wanted: Option<Vec<bool>>) -> Self {
        let n = have.len();
        let wanted = wanted
            .filter(|w| w.len() == n)
            .unwrap_or_else(|| vec![true; n]);
        let missing: Vec<usize> = (0..n).filter(|&i| wanted[i] && !have[i]).collect();
        let mut slot = vec![NOT_MISSING; n];
        for (k, &i) in missing.iter().enumerate() {
            slot[i] = k;
        }
        Self {
            have,
            wanted,
            availability: vec![0; n],
            assigned: vec![0; n],
            missing,
            slot,
        }
    }

    pub fn piece_count(&self) -> usize {
        self.have.len()
    }

    /// Pieces still to verify.
    pub fn remaining(&self) -> usize {
        self.missing.len()
    }

    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    pub fn has(&self, piece: usize) -> bool {
        self.have.get(piece).copied().unwrap_or(false)
    }

    /// A peer announced it holds `piece`.
    pub fn add_availability(&mut self, piece: usize) {
        if let Some(a) = self.availability.get_mut(piece) {
            *a = a.saturating_add(1);
        }
    }

    /// A peer that held `piece` went away.
    pub fn remove_availability(&mut self, piece: usize) {
        if let Some(a) = self.availability.get_mut(piece) {
            *a = a.saturating_sub(1);
        }
    }

    /// The next piece for a peer holding `peer_has(i)`, or `None` when the
    /// peer has nothing we want that is not already being fetched enough.
    /// `excluded(i)` skips pieces this peer is already fetching.
    pub fn pick(
        &mut self,
        peer_has: impl Fn(usize) -> bool,
        excluded: impl Fn(usize) -> bool,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        let n = self.missing.len();
        if n == 0 {
            return None;
        }
        let start = rng.gen_range(0..n);
        let mut best: Option<(u32, usize)> = None;
        let mut endgame: Option<(u8, u32, usize)> = None;
        for k in 0..n {
            let i = self.missing[(start + k) % n];
            if !peer_has(i) || excluded(i) {
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
            // Endgame only when nothing unassigned is left anywhere: avoids
            // duplicating work while other pieces wait for a peer.
            None if self.all_missing_assigned() => endgame?.2,
            None => return None,
        };
        self.assigned[piece] += 1;
        Some(piece)
    }

    fn all_missing_assigned(&self) -> bool {
        self.missing.iter().all(|&i| self.assigned[i] > 0)
    }

    fn add_missing(&mut self, piece: usize) {
        if self.slot[piece] == NOT_MISSING {
            self.slot[piece] = self.missing.len();
            self.missing.push(piece);
        }
    }

    fn remove_missing(&mut self, piece: usize) {
        let k = std::mem::replace(&mut self.slot[piece], NOT_MISSING);
        if k == NOT_MISSING {
            return;
        }
        self.missing.swap_remove(k);
        if let Some(&moved) = self.missing.get(k) {
            self.slot[moved] = k;
        }
    }

    /// A session gave `piece` up (peer gone, stalled, refused, bad data).
    pub fn release(&mut self, piece: usize) {
        if let Some(a) = self.assigned.get_mut(piece) {
            *a = a.saturating_sub(1);
        }
    }

    /// `piece` verified and written: returns false if it already was.
    /// Releases the assignment of the session that completed it.
    pub fn complete(&mut self, piece: usize) -> bool {
        self.release(piece);
        match self.have.get_mut(piece) {
            Some(h) if !*h => {
                *h = true;
                self.remove_missing(piece);
                true
            }
            _ => false,
        }
    }

    /// A verified piece turned out bad on disk (e.g. altered): fetch again.
    pub fn lost(&mut self, piece: usize) {
        if let Some(h) = self.have.get_mut(piece) {
            if *h {
                *h = false;
                if self.wanted[piece] {
                    self.add_missing(piece);
                }
            }
        }
    }

    /// How many sessions are fetching `piece`.
    pub fn assigned(&self, piece: usize) -> u8 {
        self.assigned.get(piece).copied().unwrap_or(0)
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

    #[test]
    fn rarest_first() {
        let mut p = Picker::new(vec![false; 4], None);
        for piece in [0, 0, 1, 2, 2, 2, 3, 3] {
            p.add_availability(piece);
        }
        let mut r = rng();
        assert_eq!(p.pick(|_| true, |_| false, &mut r), Some(1));
        assert_eq!(
            p.pick(|_| true, |_| false, &mut r)
                .map(|i| i == 0 || i == 3),
            Some(true)
        );
    }

    #[test]
    fn only_pieces_the_peer_has_and_we_miss() {
        let mut p = Picker::new(vec![true, false, false], None);
        let mut r = rng();
        assert_eq!(p.pick(|i| i == 0, |_| false, &mut r), None);
        assert_eq!(p.pick(|i| i <= 1, |_| false, &mut r), Some(1));
        assert_eq!(p.remaining(), 2);
        assert!(p.complete(1));
        assert!(!p.complete(1));
        assert_eq!(p.remaining(), 1);
    }

    #[test]
    fn peers_spread_then_endgame_duplicates() {
        let mut p = Picker::new(vec![false; 3], None);
        let mut r = rng();
        let a = p.pick(|_| true, |_| false, &mut r).unwrap();
        let b = p.pick(|_| true, |_| false, &mut r).unwrap();
        let c = p.pick(|_| true, |_| false, &mut r).unwrap();
        let mut all = vec![a, b, c];
        all.sort();
        assert_eq!(all, vec![0, 1, 2], "no duplicates while pieces are free");
        // Endgame: every piece assigned; a fourth peer gets a duplicate,
        // but never one it is already fetching.
        let d = p.pick(|_| true, |i| i == 0, &mut r).unwrap();
        assert_ne!(d, 0);
        assert_eq!(p.assigned(d), 2);
        p.complete(d);
        p.release(d);
        assert_eq!(p.assigned(d), 0);
    }

    #[test]
    fn no_endgame_while_free_pieces_wait_for_other_peers() {
        let mut p = Picker::new(vec![false; 2], None);
        let mut r = rng();
        assert_eq!(p.pick(|i| i == 0, |_| false, &mut r), Some(0));
        // Piece 1 is free but this peer lacks it: no duplicate of 0 yet.
        assert_eq!(p.pick(|i| i == 0, |_| false, &mut r), None);
    }

    #[test]
    fn release_makes_a_piece_available_again() {
        let mut p = Picker::new(vec![false; 1], None);
        let mut r = rng();
        assert_eq!(p.pick(|_| true, |_| false, &mut r), Some(0));
        p.release(0);
        assert_eq!(p.assigned(0), 0);
        assert_eq!(p.pick(|_| true, |_| false, &mut r), Some(0));
    }

    #[test]
    fn wanted_subset_and_lost_pieces() {
        let mut p = Picker::new(vec![false; 3], Some(vec![false, true, false]));
        assert_eq!(p.remaining(), 1);
        let mut r = rng();
        assert_eq!(p.pick(|_| true, |_| false, &mut r), Some(1));
        p.complete(1);
        assert!(p.is_complete());
        p.lost(1);
        assert_eq!(p.remaining(), 1);
    }

    proptest::proptest! {
        /// Whatever happens, the picker's list of missing pieces is exactly
        /// the wanted pieces not held, and a pick is always one of them.
        #[test]
        fn missing_pieces_stay_exact(
            n in 1usize..40,
            wanted_bits in proptest::collection::vec(proptest::bool::weighted(0.7), 40),
            ops in proptest::collection::vec((0u8..4, 0usize..40), 0..200),
        ) {
            let wanted: Vec<bool> = wanted_bits[..n].to_vec();
            let mut p = Picker::new(vec![false; n], Some(wanted.clone()));
            let mut have = vec![false; n];
            let mut r = rng();
            for (op, i) in ops {
                let i = i % n;
                match op {
                    0 => {
                        if let Some(x) = p.pick(|_| true, |_| false, &mut r) {
                            proptest::prop_assert!(wanted[x] && !have[x]);
                        }
                    }
                    1 => {
                        p.complete(i);
                        have[i] = true;
                    }
                    2 => {
                        p.lost(i);
                        have[i] = false;
                    }
                    _ => p.release(i),
                }
                let expect = (0..n).filter(|&k| wanted[k] && !have[k]).count();
                proptest::prop_assert_eq!(p.remaining(), expect);
            }
        }
    }
}
