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

use crate::storage::{PieceLayout, Storage};

/// How often a file's size and modification time are looked at.
const STAT_EVERY: Duration = Duration::from_millis(100);
/// A piece is hashed again before serving once its last check is this old,
/// so even a change that kept the file's size and modification time is
/// caught; the cost is at most one hash per piece served per interval.
const RECHECK_AFTER: Duration = Duration::from_secs(60);
/// Bytes hashed per read when checking a piece (memory stays bounded
/// whatever the piece size).
const CHUNK: usize = 1 << 20;

/// One watched file.
#[derive(Debug, Default)]
struct Watch {
    /// `None` watches nothing (a file still being written).
    path: Option<PathBuf>,
    stamp: Option<(SystemTime, u64)>,
    last_stat: Option<Instant>,
    /// Its change was told to the user (once per file).
    told: bool,
}

#[derive(Debug)]
struct State {
    /// Per file of the layout.
    files: Vec<Watch>,
    /// When each piece was last verified on disk.
    checked: Vec<Option<Instant>>,
}

/// Which pieces were verified on disk since their file last changed. Each
/// file is looked at on its own, and only when one of its pieces is served,
/// so a tree of many files costs nothing while idle.
#[derive(Debug)]
pub struct ServeGuard {
    layout: PieceLayout,
    state: Mutex<State>,
    /// Where a change is told to the user (`share`), once per file.
    events: Mutex<Option<crate::events::EventSink>>,
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
    /// A guard over `layout`'s pieces watching nothing yet, no piece checked.
    pub fn new(layout: PieceLayout) -> Self {
        let files = (0..layout.file_count()).map(|_| Watch::default()).collect();
        let checked = vec![None; layout.piece_count() as usize];
        Self {
            layout,
            state: Mutex::new(State { files, checked }),
            events: Mutex::new(None),
        }
    }

    /// Tells the user through `events` when a watched file changes.
    pub fn tell(&self, events: crate::events::EventSink) {
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(events);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A guard for content just verified in full (hashed to build the
    /// manifest, or checked for reuse) at `paths` (one per file): nothing to
    /// re-hash until it changes.
    pub fn verified(layout: PieceLayout, paths: Vec<PathBuf>) -> Self {
        let g = Self::new(layout);
        g.watch(paths);
        let now = Some(Instant::now());
        g.lock().checked.iter_mut().for_each(|c| *c = now);
        g
    }

    /// Starts watching the files at `paths`, one per file of the layout (a
    /// download now complete and in place).
    pub fn watch(&self, paths: Vec<PathBuf>) {
        let now = Instant::now();
        let watches: Vec<Watch> = paths
            .into_iter()
            .map(|p| Watch {
                stamp: stamp(&p),
                path: Some(p),
                last_stat: Some(now),
                told: false,
            })
            .collect();
        let mut s = self.lock();
        for (slot, w) in s.files.iter_mut().zip(watches) {
            *slot = w;
        }
    }

    /// Records that `piece` was just verified (we wrote it ourselves).
    pub fn mark(&self, piece: u32) {
        if let Some(c) = self.lock().checked.get_mut(piece as usize) {
            *c = Some(Instant::now());
        }
    }

    /// A read of `piece` failed: forgets that it was checked and when its
    /// file was last looked at, so that the next [`ServeGuard::check`]
    /// stats the file (and says whether it changed) and hashes the piece.
    pub fn suspect(&self, piece: u32) {
        let file = self.layout.file_of_piece(piece);
        let mut s = self.lock();
        if let Some(c) = s.checked.get_mut(piece as usize) {
            *c = None;
        }
        if let Some(w) = file.and_then(|f| s.files.get_mut(f)) {
            w.last_stat = None;
        }
    }

    /// True when `piece` is known good and no stat of its file is due:
    /// serving it needs no blocking work.
    pub fn is_fresh(&self, piece: u32) -> bool {
        let file = self.layout.file_of_piece(piece);
        let s = self.lock();
        let watch = file.and_then(|f| s.files.get(f));
        is_recent(s.checked.get(piece as usize).copied().flatten())
            && watch.is_some_and(|w| {
                w.path.is_none() || w.last_stat.is_some_and(|t| t.elapsed() < STAT_EVERY)
            })
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
        if let Some(file) = self.layout.file_of_piece(piece) {
            self.restat(file);
        }
        if is_recent(self.lock().checked.get(piece as usize).copied().flatten()) {
            return Check::Good;
        }
        let len = self.layout.piece_len(piece);
        let Some(expected) = manifest.piece_hash(piece) else {
            return Check::Bad;
        };
        if len == 0 {
            return Check::Bad;
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
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

    /// Forgets the checks of `file`'s pieces when it changed on disk.
    fn restat(&self, file: usize) {
        let path = {
            let s = self.lock();
            let Some(w) = s.files.get(file) else { return };
            if w.last_stat.is_some_and(|t| t.elapsed() < STAT_EVERY) {
                return;
            }
            match &w.path {
                Some(p) => p.clone(),
                None => return,
            }
        };
        let now = stamp(&path);
        let mut s = self.lock();
        let (changed, first) = match s.files.get_mut(file) {
            Some(w) => {
                w.last_stat = Some(Instant::now());
                let changed = now != w.stamp;
                w.stamp = now;
                let first = changed && !w.told;
                w.told |= changed;
                (changed, first)
            }
            None => (false, false),
        };
        if changed {
            tracing::warn!(
                "{} changed on disk: re-verifying its pieces before serving them",
                path.display()
            );
            let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
            if let (true, Some(events)) = (first, events.as_ref()) {
                events.emit(crate::events::Event::Warning {
                    message: format!(
                        "{} changed on disk while shared: pieces that no longer match are not served (a ticket names fixed content); to share the new version, stop and share it again for a new ticket",
                        path.display()
                    ),
                });
            }
            for p in self.layout.file_pieces(file) {
                if let Some(c) = s.checked.get_mut(p as usize) {
                    *c = None;
                }
            }
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
                directory: false,
            }],
            piece_size: 2048,
            pieces: data.chunks(2048).map(hash_piece).collect(),
        };
        let storage = MemoryStorage::from_vec(data.clone());
        let guard = ServeGuard::new(PieceLayout::new(5000, 2048).unwrap());
        assert!(!guard.is_fresh(0));
        assert_eq!(guard.check(0, &manifest, &storage, 0), Check::Good);
        assert!(guard.is_fresh(0));
        storage.write_at(4096, &[9, 9, 9]).unwrap();
        assert_eq!(guard.check(2, &manifest, &storage, 4096), Check::Bad);
        assert!(!guard.is_fresh(2));
    }

    #[test]
    fn a_suspect_piece_is_stat_and_hashed_again_at_its_next_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let manifest = Manifest {
            files: vec![FileEntry {
                path: "f".into(),
                size: 4096,
                executable: false,
                directory: false,
            }],
            piece_size: 2048,
            pieces: data.chunks(2048).map(hash_piece).collect(),
        };
        let layout = PieceLayout::new(4096, 2048).unwrap();
        let guard = ServeGuard::verified(layout, vec![path.clone()]);
        assert!(guard.is_fresh(0) && guard.is_fresh(1));
        // Cut short under the guard, within the same stat interval.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let storage = MemoryStorage::from_vec(data[..100].to_vec());
        assert!(guard.is_fresh(1), "nothing looked at the file yet");
        guard.suspect(1);
        assert!(
            !guard.is_fresh(1),
            "a suspect piece is not served unchecked"
        );
        assert!(!guard.is_fresh(0), "its file is due for a stat");
        assert_eq!(guard.check(1, &manifest, &storage, 2048), Check::Unreadable);
        assert!(
            !guard.is_fresh(0),
            "the stat found the file changed: its checks are gone"
        );
    }

    #[test]
    fn a_changed_file_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let other = dir.path().join("g");
        std::fs::write(&other, [1u8; 100]).unwrap();
        let layout = PieceLayout::from_sizes(&[100, 100], 1024).unwrap();
        let guard = ServeGuard::verified(layout, vec![path.clone(), other]);
        assert!(guard.is_fresh(0) && guard.is_fresh(1));
        std::fs::write(&path, [2u8; 101]).unwrap();
        guard
            .lock()
            .files
            .iter_mut()
            .for_each(|w| w.last_stat = None);
        guard.restat(0);
        guard.restat(1);
        assert!(!guard.is_fresh(0), "the changed file");
        assert!(guard.is_fresh(1), "the other file keeps its checks");
    }
}
