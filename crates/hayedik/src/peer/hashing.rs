//! Hashing a file into piece hashes, on every core, off the async reactor.
//!
//! Pieces are handed out from an atomic counter to one worker per core; each
//! worker reads its piece with positional reads into its own buffer and
//! hashes it, so memory stays at one piece per core whatever the file size.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use hayedik_proto::manifest::hash_piece;

use crate::storage::{FileStorage, Storage};

/// Hashes `len` bytes of `path` in pieces of `piece_size`, calling
/// `progress(bytes_hashed_so_far)` from the workers as pieces complete.
pub fn hash_file(
    path: &Path,
    len: u64,
    piece_size: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> io::Result<Vec<[u8; 32]>> {
    let piece_size = u64::from(piece_size.max(1));
    let count = usize::try_from(len.div_ceil(piece_size))
        .map_err(|_| io::Error::other("file too large"))?;
    let file = FileStorage::open(path)?;
    let hashes = Mutex::new(vec![[0u8; 32]; count]);
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(count.max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let offset = i as u64 * piece_size;
                    let n = usize::try_from(piece_size.min(len - offset)).unwrap_or(0);
                    buf.resize(n, 0);
                    if let Err(e) = file.read_at(offset, &mut buf) {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                    let h = hash_piece(&buf);
                    if let Ok(mut all) = hashes.lock() {
                        all[i] = h;
                    }
                    let total = done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                    progress(total);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    hashes
        .into_inner()
        .map_err(|_| io::Error::other("hashing worker panicked"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn matches_sequential_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let seen = AtomicU64::new(0);
        let hashes = hash_file(&path, data.len() as u64, 4096, &|n| {
            seen.fetch_max(n, Ordering::Relaxed);
        })
        .unwrap();
        let expect: Vec<_> = data.chunks(4096).map(hash_piece).collect();
        assert_eq!(hashes, expect);
        assert_eq!(seen.load(Ordering::Relaxed), data.len() as u64);
        assert!(hash_file(&path, 0, 4096, &|_| {}).unwrap().is_empty());
    }

    #[test]
    fn short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [1u8; 10]).unwrap();
        assert!(hash_file(&path, 20, 4, &|_| {}).is_err());
    }
}
