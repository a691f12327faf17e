//! Hashing content into piece hashes, on every core, off the async reactor.
//!
//! The verification workers of the storage layer do the reading: pieces are
//! handed out from an atomic counter to one worker per core, each reading
//! its piece with positional reads into its own buffer, so memory stays at
//! one piece per core whatever the content's size.

use std::io;
use std::sync::Mutex;

use crate::storage::{verify_pieces, Bitfield, PieceLayout, Storage};

/// The hash of every piece of `layout` read from `storage`, calling
/// `progress(bytes_hashed_so_far)` from the workers as pieces complete.
pub fn hash_pieces(
    storage: &dyn Storage,
    layout: &PieceLayout,
    progress: &(dyn Fn(u64) + Sync),
) -> io::Result<Vec<[u8; 32]>> {
    let count = layout.piece_count() as usize;
    let hashes = Mutex::new(vec![[0u8; 32]; count]);
    let all = Bitfield::full(layout.piece_count());
    let record = |i: u32, h: &[u8; 32]| {
        if let Some(slot) = hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i as usize)
        {
            *slot = *h;
        }
        true
    };
    verify_pieces(storage, layout, &all, &record, &|done, _| progress(done))?;
    Ok(hashes.into_inner().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::{MemoryStorage, TreeStorage};
    use hayedik_proto::manifest::hash_piece;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn matches_sequential_hashing() {
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let layout = PieceLayout::new(data.len() as u64, 4096).unwrap();
        let seen = AtomicU64::new(0);
        let storage = MemoryStorage::from_vec(data.clone());
        let hashes = hash_pieces(&storage, &layout, &|n| {
            seen.fetch_max(n, Ordering::Relaxed);
        })
        .unwrap();
        let expect: Vec<_> = data.chunks(4096).map(hash_piece).collect();
        assert_eq!(hashes, expect);
        assert_eq!(seen.load(Ordering::Relaxed), data.len() as u64);
    }

    #[test]
    fn a_tree_is_hashed_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (vec![1u8; 5000], vec![2u8; 10]);
        std::fs::write(dir.path().join("a"), &a).unwrap();
        std::fs::write(dir.path().join("b"), &b).unwrap();
        let layout = PieceLayout::from_sizes(&[5000, 0, 10], 4096).unwrap();
        let paths = ["a", "empty", "b"].map(|n| dir.path().join(n)).to_vec();
        let tree = TreeStorage::read_only(layout.clone(), paths);
        let hashes = hash_pieces(&tree, &layout, &|_| {}).unwrap();
        let expect = vec![
            hash_piece(&a[..4096]),
            hash_piece(&a[4096..]),
            hash_piece(&b),
        ];
        assert_eq!(hashes, expect);
    }

    #[test]
    fn a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), [1u8; 10]).unwrap();
        let layout = PieceLayout::new(20, 4).unwrap();
        let tree = TreeStorage::read_only(layout.clone(), vec![dir.path().join("f")]);
        assert!(hash_pieces(&tree, &layout, &|_| {}).is_err());
    }
}
