//! The serving guard: a piece is served only while it still matches the
//! manifest. Each piece is re-hashed from disk before it is served when the
//! file changed on disk (its size or modification time moved) or when its
//! last check is over a minute old (a change that kept both), so a file
//! altered under a seeder is detected and its bad pieces are refused instead
//! of being served as good.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use hayedik_proto::manifest::Manifest;

use crate::storage::Storage;

/// How often the file's size and modification time are looked at.
const STAT_EVERY: Duration = Duration::from_millis(100);
/// A piece is hashed again before serving once its last check is this old,
/// so even a change that kept the file's size and modification time is
/// caught; the cost is at most one hash per piece served per interval.
const RECHECK_AFTER: Duration = Duration::from_secs(60);
/// Bytes hashed per read when checking a piece (memory stays bounded
/// whatever the piece size).
const CHUNK: usize = 1 << 20;

#[derive(Debug)]
struct State {
    /// The file watched for changes; `None` watches nothing.
    path: Option<PathBuf>,
    /// When each piece was last verified on disk.
    checked: Vec<Option<Instant>>,
    stamp: Option<(SystemTime, u64)>,
    last_stat: Option<Instant>,
}

/// Which pieces were verified on disk since the file last changed.
#[derive(Debug)]
pub struct ServeGuard {
    state: Mutex<State>,
}

/// What [`ServeGuard::check`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Good,
    /// The piece no longer matches: it must not be served.
    Bad,
    /// The piece could not be read.
    Unreadable,
}

impl ServeGuard {
    pub fn new(path: Option<PathBuf>, pieces: u32) -> Self {
        let stamp = path.as_ref().and_then(|p| stamp(p));
        Self {
            state: Mutex::new(State {
                path,
                checked: vec![None; pieces as usize],
                stamp,
                last_stat: Some(Instant::now()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A guard for content just verified in full (hashed to build the
    /// manifest, or checked for reuse): nothing to re-hash until it changes.
    pub fn verified(path: PathBuf, pieces: u32) -> Self {
        let g = Self::new(Some(path), pieces);
        let now = Some(Instant::now());
        g.lock().checked.iter_mut().for_each(|c| *c = now);
        g
    }

    /// Starts watching `path` (a download renamed into place).
    pub fn watch(&self, path: PathBuf) {
        let now = stamp(&path);
        let mut s = self.lock();
        s.path = Some(path);
        s.stamp = now;
        s.last_stat = Some(Instant::now());
    }

    /// Records that `piece` was just verified (we wrote it ourselves).
    pub fn mark(&self, piece: u32) {
        if let Some(c) = self.lock().checked.get_mut(piece as usize) {
            *c = Some(Instant::now());
        }
    }

    /// True when `piece` is known good and no stat is due: serving it needs
    /// no blocking work.
    pub fn is_fresh(&self, piece: u32) -> bool {
        let s = self.lock();
        is_recent(s.checked.get(piece as usize).copied().flatten())
            && s.last_stat.is_some_and(|t| t.elapsed() < STAT_EVERY)
    }

    /// Whether `piece` (at `base` in `storage`) may be served. Blocking: it
    /// may stat the file and hash the piece; call it off the reactor.
    pub fn check(
        &self,
        piece: u32,
        manifest: &Manifest,
        storage: &dyn Storage,
        base: u64,
    ) -> Check {
        self.restat();
        if is_recent(self.lock().checked.get(piece as usize).copied().flatten()) {
            return Check::Good;
        }
        let (Some(len), Some(expected)) = (manifest.piece_len(piece), manifest.piece_hash(piece))
        else {
            return Check::Bad;
        };
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < u64::from(len) {
            let n = (u64::from(len) - done).min(buf.len() as u64) as usize;
            if storage.read_at(base + done, &mut buf[..n]).is_err() {
                return Check::Unreadable;
            }
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        if hasher.finalize().as_bytes() == expected {
            self.mark(piece);
            Check::Good
        } else {
            Check::Bad
        }
    }

    /// Forgets every check when the file changed on disk.
    fn restat(&self) {
        let path = {
            let s = self.lock();
            if s.last_stat.is_some_and(|t| t.elapsed() < STAT_EVERY) {
                return;
            }
            match &s.path {
                Some(p) => p.clone(),
                None => return,
            }
        };
        let now = stamp(&path);
        let mut s = self.lock();
        s.last_stat = Some(Instant::now());
        if now != s.stamp {
            tracing::warn!(
                "{} changed on disk: re-verifying pieces before serving them",
                path.display()
            );
            s.stamp = now;
            s.checked.iter_mut().for_each(|c| *c = None);
        }
    }
}

/// Whether a piece verified at `at` may be served without hashing it again.
fn is_recent(at: Option<Instant>) -> bool {
    at.is_some_and(|t| t.elapsed() < RECHECK_AFTER)
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::MemoryStorage;
    use hayedik_proto::manifest::{hash_piece, FileEntry};

    #[test]
    fn detects_altered_pieces() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let manifest = Manifest {
            files: vec![FileEntry {
                path: "f".into(),
                size: 5000,
                executable: false,
            }],
            piece_size: 2048,
            pieces: data.chunks(2048).map(hash_piece).collect(),
        };
        let storage = MemoryStorage::from_vec(data.clone());
        let guard = ServeGuard::new(None, 3);
        assert!(!guard.is_fresh(0));
        assert_eq!(guard.check(0, &manifest, &storage, 0), Check::Good);
        assert!(guard.is_fresh(0));
        storage.write_at(4096, &[9, 9, 9]).unwrap();
        assert_eq!(guard.check(2, &manifest, &storage, 4096), Check::Bad);
        assert!(!guard.is_fresh(2));
    }

    #[test]
    fn a_changed_file_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let guard = ServeGuard::new(Some(path.clone()), 1);
        guard.mark(0);
        assert!(guard.is_fresh(0));
        std::fs::write(&path, [2u8; 101]).unwrap();
        guard.lock().last_stat = None;
        guard.restat();
        assert!(!guard.is_fresh(0));
    }
}
