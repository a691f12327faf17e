//! Verification of pieces already on disk (a complete copy to reuse, a part
//! file to resume), on several threads.
//!
//! Threads take the next candidate from a shared counter, so a slow piece
//! does not hold back a fixed share of the work. Each thread reads its
//! piece in chunks of [`READ_CHUNK`] into one buffer and hashes them as
//! they come (BLAKE3, the manifest's piece hash): memory is `threads *
//! READ_CHUNK` whatever the piece size. (A whole-piece buffer per thread
//! was most of a sharer's peak RSS: 2 MiB of its 8.)

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use super::{Bitfield, PieceLayout, Storage};

const MAX_THREADS: usize = 8;
/// Bytes read and hashed at once by one thread.
const READ_CHUNK: u64 = 256 << 10;

/// What a verification found.
#[derive(Debug)]
pub(crate) struct Checked {
    /// The candidates that verified.
    pub good: Bitfield,
    /// How many candidates did not verify.
    pub bad: u64,
}

/// Reads each piece in `candidates` from `storage` and keeps those for which
/// `verify(index, hash)` is true, `hash` being the BLAKE3 hash of the
/// piece's bytes (`hayedik_proto::manifest::hash_piece`). `progress(bytes_done, bytes_total)` is
/// called after each piece, from the hashing threads. An I/O error stops the
/// work and is returned.
pub fn verify_pieces<S, V, P>(
    storage: &S,
    layout: &PieceLayout,
    candidates: &Bitfield,
    verify: &V,
    progress: &P,
) -> io::Result<Bitfield>
where
    S: Storage + ?Sized,
    V: Fn(u32, &[u8; 32]) -> bool + Sync,
    P: Fn(u64, u64) + Sync,
{
    check(storage, layout, candidates, verify, progress, false).map(|c| c.good)
}

/// As [`verify_pieces`]; with `stop_on_bad`, stops at the first piece that
/// does not verify (the set found so far is then incomplete).
pub(crate) fn check<S, V, P>(
    storage: &S,
    layout: &PieceLayout,
    candidates: &Bitfield,
    verify: &V,
    progress: &P,
    stop_on_bad: bool,
) -> io::Result<Checked>
where
    S: Storage + ?Sized,
    V: Fn(u32, &[u8; 32]) -> bool + Sync,
    P: Fn(u64, u64) + Sync,
{
    let total: u64 = candidates.ones().map(|i| layout.piece_len(i)).sum();
    let work = Work {
        storage,
        layout,
        candidates,
        verify,
        progress,
        stop_on_bad,
        total,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let threads = thread_count(candidates.count());
    let results = if threads <= 1 {
        vec![work.run()]
    } else {
        thread::scope(|s| {
            let mut handles = Vec::with_capacity(threads);
            for _ in 0..threads {
                let spawned = thread::Builder::new()
                    .name("hayedik-verify".to_string())
                    .spawn_scoped(s, || work.run());
                match spawned {
                    Ok(h) => handles.push(h),
                    // Fewer threads than hoped still finish the work.
                    Err(e) if handles.is_empty() => return vec![Err(e)],
                    Err(_) => break,
                }
            }
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a verification thread panicked")))
                })
                .collect()
        })
    };
    let mut checked = Checked {
        good: Bitfield::new(layout.piece_count()),
        bad: 0,
    };
    for result in results {
        let (good, bad) = result?;
        for i in good {
            checked.good.set(i);
        }
        checked.bad += bad;
    }
    Ok(checked)
}

fn thread_count(candidates: u32) -> usize {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let candidates = usize::try_from(candidates).unwrap_or(usize::MAX);
    cores.min(MAX_THREADS).min(candidates).max(1)
}

struct Work<'a, S: ?Sized, V, P> {
    storage: &'a S,
    layout: &'a PieceLayout,
    candidates: &'a Bitfield,
    verify: &'a V,
    progress: &'a P,
    stop_on_bad: bool,
    total: u64,
    /// The next piece index to consider (those not in `candidates` are skipped).
    next: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

impl<S, V, P> Work<'_, S, V, P>
where
    S: Storage + ?Sized,
    V: Fn(u32, &[u8; 32]) -> bool + Sync,
    P: Fn(u64, u64) + Sync,
{
    /// One thread's loop: the pieces it verified and how many failed.
    fn run(&self) -> io::Result<(Vec<u32>, u64)> {
        let mut good = Vec::new();
        let mut bad = 0;
        let mut buf = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            // A u64 counter cannot wrap back to 0, however many threads
            // step past the end.
            let next = self.next.fetch_add(1, Ordering::Relaxed);
            let Ok(index) = u32::try_from(next) else {
                break;
            };
            if index >= self.candidates.len() || index >= self.layout.piece_count() {
                break;
            }
            if !self.candidates.get(index) {
                continue;
            }
            let len = self.layout.piece_len(index);
            let base = self.layout.piece_offset(index);
            let mut hasher = blake3::Hasher::new();
            let mut at = 0;
            while at < len {
                let n = (len - at).min(READ_CHUNK) as usize;
                buf.resize(n, 0);
                if let Err(e) = self.storage.read_at(base + at, &mut buf) {
                    self.stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                hasher.update(&buf);
                at += n as u64;
            }
            if (self.verify)(index, hasher.finalize().as_bytes()) {
                good.push(index);
            } else {
                bad += 1;
                if self.stop_on_bad {
                    self.stop.store(true, Ordering::Relaxed);
                }
            }
            let done = self.done.fetch_add(len, Ordering::Relaxed) + len;
            (self.progress)(done, self.total);
        }
        Ok((good, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemoryStorage;
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn keeps_what_verifies_and_reports_progress() {
        let layout = PieceLayout::new(1000, 64).expect("layout");
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let storage = MemoryStorage::from_vec(data.clone());
        // Piece i verifies when its hash is that of its bytes, except 3.
        let verify = |i: u32, hash: &[u8; 32]| {
            let (at, len) = (
                layout.piece_offset(i) as usize,
                layout.piece_len(i) as usize,
            );
            i != 3 && *hash == hayedik_proto::manifest::hash_piece(&data[at..at + len])
        };
        let seen = Mutex::new(Vec::new());
        let progress = |done, total| seen.lock().expect("lock").push((done, total));
        let all = Bitfield::full(layout.piece_count());
        let c = check(&storage, &layout, &all, &verify, &progress, false).expect("check");
        assert_eq!(c.good.count(), layout.piece_count() - 1);
        assert!(!c.good.get(3));
        assert_eq!(c.bad, 1);
        let seen = seen.into_inner().expect("lock");
        assert_eq!(seen.len(), layout.piece_count() as usize);
        assert!(seen.iter().all(|&(_, t)| t == 1000));
        assert_eq!(seen.iter().map(|&(d, _)| d).max(), Some(1000));

        let mut some = Bitfield::new(layout.piece_count());
        some.set(2);
        some.set(3);
        let c = check(&storage, &layout, &some, &verify, &|_, _| {}, false).expect("check");
        assert_eq!((c.good.ones().collect::<Vec<_>>(), c.bad), (vec![2], 1));

        let none = Bitfield::new(layout.piece_count());
        let c = check(&storage, &layout, &none, &verify, &|_, _| {}, false).expect("check");
        assert_eq!(c.good.count(), 0);
    }

    #[test]
    fn pieces_larger_than_a_read_are_hashed_whole() {
        let size = 3 * READ_CHUNK + 1000;
        let layout = PieceLayout::new(2 * size, size).expect("layout");
        let data: Vec<u8> = (0..2 * size).map(|i| (i % 253) as u8).collect();
        let storage = MemoryStorage::from_vec(data.clone());
        let verify = |i: u32, hash: &[u8; 32]| {
            let at = layout.piece_offset(i) as usize;
            *hash == hayedik_proto::manifest::hash_piece(&data[at..at + size as usize])
        };
        let all = Bitfield::full(layout.piece_count());
        let good = verify_pieces(&storage, &layout, &all, &verify, &|_, _| {}).expect("verify");
        assert_eq!(good.count(), 2);
    }

    #[test]
    fn read_errors_are_returned() {
        let layout = PieceLayout::new(1000, 64).expect("layout");
        let short = MemoryStorage::from_vec(vec![0; 500]);
        let all = Bitfield::full(layout.piece_count());
        assert!(verify_pieces(&short, &layout, &all, &|_, _| true, &|_, _| {}).is_err());
    }
}
