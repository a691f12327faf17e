//! The lifecycle of one download in its directory: open (reuse, resume or
//! start), write and mark pieces, save the resume state, finish.
//!
//! The content is one file or one folder tree, under `DIR/TOP`. Each file is
//! written to a part file beside its final name (`.NAME.hayedik-part`) and
//! gets its final name as soon as all its pieces are verified and synced, so
//! the files of a tree appear one by one. One resume file for the whole
//! content, `DIR/.TOP.hayedik-resume`, lists the verified pieces.
//!
//! Invariants:
//! * A final name is never written: data goes to part files, which take
//!   their final names by a link that refuses to replace anything
//!   ([`fsutil::link_no_clobber`]), and only once their data is synced.
//! * The resume file claims a piece only if its bytes were written before
//!   the files were last synced: `save` snapshots the marked pieces, then
//!   syncs, then replaces the resume file. A piece must be marked only after
//!   its bytes were written to the storage.
//! * What the resume file claims is re-verified on open, never trusted; a
//!   file already under its final name is verified before it is used.
//! * A part file is given the file's size before it is used (pieces past
//!   its old end are missing), and takes its final name only at that size.
//!   One with other hard links (another file's data) is never written.
//! * Nothing is written before every path of the content was checked
//!   against what is on disk ([`super::plan`]: no folder on the way is a
//!   symbolic link or a file, no name is taken by something that is not
//!   this content, and no two names collide on a file system that ignores
//!   case).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fsutil::{self, Paths};
use super::plan::{folds_case, Found, Plan, Target};
use super::tree::{FileState, TreeStorage};
use super::verify::check;
use super::{Bitfield, Op, PieceLayout, ResumeState, Storage, StorageError};

/// What [`Download::open`] found.
// Returned once per download and matched at once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Opened {
    /// Every wanted file is already there under its final name, verified:
    /// nothing to download.
    Complete(CompleteFile),
    /// A download to carry on; some pieces may already be there (it may even
    /// be complete, in which case only [`Download::finish`] is left).
    Partial(Download),
}

/// The content (or its wanted files), complete and verified in place.
#[derive(Debug)]
pub struct CompleteFile {
    /// `DIR/TOP`: the file, or the top folder.
    pub path: PathBuf,
    /// The files, read only, to serve pieces from.
    pub storage: Arc<TreeStorage>,
    /// Bytes that were already on disk and verified, not downloaded.
    pub reused_bytes: u64,
    /// The verified pieces (all of them unless only some files were wanted).
    pub have: Bitfield,
    /// Things the user may want to know (side files that could not be
    /// removed...), one sentence each.
    pub warnings: Vec<String>,
}

/// A download in progress. All methods take `&self`: it can be shared
/// (`Arc<Download>`) between the tasks that write pieces.
#[derive(Debug)]
pub struct Download {
    dir: PathBuf,
    top_path: PathBuf,
    resume: Paths,
    layout: PieceLayout,
    root: [u8; 32],
    storage: Arc<TreeStorage>,
    /// Pieces of the wanted files.
    wanted: Bitfield,
    reused_bytes: u64,
    warnings: Vec<String>,
    state: Mutex<State>,
    /// Serialises `save`, so that an older snapshot never replaces a newer one.
    save_lock: Mutex<()>,
}

#[derive(Debug)]
struct State {
    /// Pieces written and verified (not all of them synced yet).
    have: Bitfield,
    /// `have` changed since the resume file was last written.
    dirty: bool,
    /// Per file, its pieces not verified yet.
    left: Vec<u32>,
    /// Files whose pieces are all verified, still under their part names.
    pending: BTreeSet<usize>,
}

impl Download {
    /// Opens the download of `target`, deciding file by file among:
    /// * the final name exists: when it is this file (same length, every
    ///   piece verifies) it is reused untouched; anything else is refused
    ///   with [`StorageError::DestinationExists`] (for a wanted file);
    /// * a part file exists: the pieces the resume file claims are
    ///   re-verified (every piece of it, when the resume file is missing,
    ///   damaged, for other content, or older than the part file);
    /// * nothing: its part file is created when its first piece arrives.
    ///
    /// `verify(index, bytes)` says whether a piece is right; hashing runs on
    /// several threads and reports `progress(bytes_done, bytes_total)`. The
    /// directories are created when missing. A resume file reflecting what
    /// was found is saved before returning.
    pub fn open<V, P>(target: &Target, verify: &V, progress: &P) -> Result<Opened, StorageError>
    where
        V: Fn(u32, &[u8; 32]) -> bool + Sync,
        P: Fn(u64, u64) + Sync,
    {
        let plan = Plan::new(target)?;
        let found = plan.inspect(target)?;
        plan.check_case(target, folds_case(&target.dir))?;
        let resume = Paths::new(&target.dir, target.top())?;
        let layout = &target.layout;
        let mut warnings = Vec::new();

        let states: Vec<FileState> = found
            .iter()
            .map(|f| match f {
                Found::Part { .. } => FileState::Part,
                Found::Final => FileState::Final,
                Found::Nothing | Found::Folder | Found::Linked(_) => FileState::Missing,
            })
            .collect();
        let storage = TreeStorage::new(layout.clone(), plan.tree_files(target), &states);

        // Which pieces to verify: all of a final file; of a part file, what
        // the resume file claims, or all of it when the claim is unusable,
        // and only pieces that lie inside it (a part file of another length
        // is given the file's size once every check passed).
        let any_part = found.iter().any(|f| matches!(f, Found::Part { .. }));
        let (claimed, why) = if any_part {
            load_resume(&resume, target)
        } else {
            (None, None)
        };
        let resume_time = fs::metadata(&resume.resume).and_then(|m| m.modified()).ok();
        let mut candidates = Bitfield::new(layout.piece_count());
        let mut newer = 0;
        for (i, f) in found.iter().enumerate() {
            let pieces = layout.file_pieces(i);
            let inside = |len: u64| {
                let start = layout.file_offset(i);
                move |p: &u32| layout.piece_offset(*p) - start + layout.piece_len(*p) <= len
            };
            match (f, &claimed) {
                (Found::Final, _) => pieces.for_each(|p| {
                    candidates.set(p);
                }),
                (Found::Part { modified, len }, Some(claimed)) => {
                    // Pieces written after the last save (a crash, or a full
                    // disk that kept the resume file from being rewritten)
                    // are in the part file but not claimed.
                    // Equal times count as after: file times are coarse
                    // (a few ms), so a write in the same tick as the save
                    // must not be missed; rechecking costs only time.
                    let after = matches!((modified, resume_time), (Some(m), Some(r)) if *m >= r);
                    newer += usize::from(after);
                    for p in pieces
                        .filter(inside(*len))
                        .filter(|&p| after || claimed.get(p))
                    {
                        candidates.set(p);
                    }
                }
                (Found::Part { len, .. }, None) => pieces.filter(inside(*len)).for_each(|p| {
                    candidates.set(p);
                }),
                _ => {}
            }
        }
        if newer > 0 {
            warnings.push(format!(
                "{newer} part files changed after the resume file {} was saved; rechecking them",
                resume.resume.display()
            ));
        }
        match (why, any_part, &claimed) {
            (Some(why), _, _) => warnings.push(why),
            (None, true, None) => warnings.push(format!(
                "no resume file {}; rechecking the part files",
                resume.resume.display()
            )),
            _ => {}
        }
        let checked = check(&storage, layout, &candidates, verify, progress, false)
            .map_err(|e| StorageError::io(Op::Reading, &plan.top_path, e))?;
        let have = checked.good;

        // A final name holding something else is never overwritten.
        let mut reused_bytes = 0;
        for (i, f) in found.iter().enumerate() {
            let pieces = layout.file_pieces(i);
            let good = pieces.clone().all(|p| have.get(p));
            if *f == Found::Final && !good && target.wants(i) {
                return Err(StorageError::DestinationExists {
                    path: plan.finals[i].clone(),
                    reason: "its bytes differ".to_string(),
                });
            }
            reused_bytes += pieces
                .filter(|&p| have.get(p))
                .map(|p| layout.piece_len(p))
                .sum::<u64>();
        }
        if let Some(claimed) = &claimed {
            let lied = claimed.ones().filter(|&p| !have.get(p)).count();
            if lied > 0 {
                warnings.push(format!(
                    "{lied} pieces that {} claimed did not verify; downloading them again",
                    resume.resume.display()
                ));
            }
        }

        // Every check passed: from here on, things are written.
        plan.create_folders(target, &found, &mut warnings)?;
        for (i, f) in found.iter().enumerate() {
            if !matches!(f, Found::Part { .. }) {
                continue;
            }
            let part = &plan.parts[i];
            let size = layout.file_size(i);
            match storage.fit_part(i) {
                Ok(None) => {}
                Ok(Some(len)) => warnings.push(format!(
                    "{} had {len} bytes, not {size} (left by another version of the file, \
                     or cut short): resized it; pieces that were not in it are downloaded",
                    part.display()
                )),
                Err(e) => return Err(StorageError::io(Op::Resizing, part, e)),
            }
        }

        let mut wanted = Bitfield::new(layout.piece_count());
        let mut left = vec![0u32; found.len()];
        let mut pending = BTreeSet::new();
        for (i, f) in found.iter().enumerate() {
            let pieces = layout.file_pieces(i);
            if target.wants(i) {
                for p in pieces.clone() {
                    wanted.set(p);
                }
            }
            left[i] = pieces.clone().filter(|&p| !have.get(p)).count() as u32;
            if left[i] == 0 && matches!(f, Found::Part { .. }) && !pieces.is_empty() {
                pending.insert(i);
            }
        }
        let download = Download {
            dir: target.dir.clone(),
            top_path: plan.top_path.clone(),
            resume,
            layout: layout.clone(),
            root: target.root,
            storage: Arc::new(storage),
            wanted,
            reused_bytes,
            warnings,
            state: Mutex::new(State {
                have,
                dirty: true,
                left,
                pending,
            }),
            save_lock: Mutex::new(()),
        };
        let nothing_to_do = {
            let s = download.lock_state();
            s.pending.is_empty() && download.wanted_missing(&s.have) == 0
        };
        if nothing_to_do && !any_part {
            // Everything wanted was there already: no resume file needed.
            download.lock_state().dirty = false;
            let file = download.finish()?;
            return Ok(Opened::Complete(file));
        }
        download.save()?;
        Ok(Opened::Partial(download))
    }

    /// Where the content will be once finished: `DIR/TOP`.
    pub fn final_path(&self) -> &Path {
        &self.top_path
    }

    /// The files, for positional I/O from other threads (they stay valid
    /// after `finish`: the same files under their final names).
    pub fn storage(&self) -> Arc<TreeStorage> {
        Arc::clone(&self.storage)
    }

    /// Bytes found on disk and verified by `open`.
    pub fn reused_bytes(&self) -> u64 {
        self.reused_bytes
    }

    /// What `open` found worth telling the user (a resume file discarded,
    /// pieces that failed re-verification), one sentence each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The pieces written and verified so far.
    pub fn have(&self) -> Bitfield {
        self.lock_state().have.clone()
    }

    /// The pieces of the wanted files.
    pub fn wanted(&self) -> &Bitfield {
        &self.wanted
    }

    fn wanted_missing(&self, have: &Bitfield) -> u64 {
        self.wanted.ones().filter(|&p| !have.get(p)).count() as u64
    }

    /// Records that piece `index` was verified and its bytes were written
    /// to [`Download::storage`]; the next `save` makes that durable (and gives the file its
    /// final name when it was its last piece). Returns false when the piece
    /// was already marked or is out of range.
    pub fn mark_verified(&self, index: u32) -> bool {
        let mut state = self.lock_state();
        let new = state.have.set(index);
        state.dirty |= new;
        if new {
            if let Some(file) = self.layout.file_of_piece(index) {
                if let Some(left) = state.left.get_mut(file) {
                    *left = left.saturating_sub(1);
                    if *left == 0 && self.storage.state(file) != FileState::Final {
                        state.pending.insert(file);
                    }
                }
            }
        }
        new
    }

    /// Forgets that piece `index` is verified (it no longer matches on
    /// disk): the next `save` records it, and its file waits for it again.
    /// Returns whether it was marked.
    pub fn mark_lost(&self, index: u32) -> bool {
        let mut state = self.lock_state();
        let was = state.have.clear(index);
        state.dirty |= was;
        if was {
            if let Some(file) = self.layout.file_of_piece(index) {
                if let Some(left) = state.left.get_mut(file) {
                    *left += 1;
                }
                state.pending.remove(&file);
            }
        }
        was
    }

    /// Makes the marked pieces durable: sync the files written, replace the
    /// resume file crash-safely, then give the files whose pieces are all
    /// verified their final names. Does nothing when nothing changed since
    /// the last save. Call it about every 500 ms while pieces arrive, and on
    /// shutdown: a crash loses at most the pieces of the last interval. It
    /// blocks on fsync: call it off the async reactor. On failure (a full
    /// disk...) the previous resume file is left intact and the next call
    /// tries again.
    pub fn save(&self) -> Result<(), StorageError> {
        let _saving = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (have, pending) = {
            let mut state = self.lock_state();
            if !state.dirty && state.pending.is_empty() {
                return Ok(());
            }
            state.dirty = false;
            (state.have.clone(), std::mem::take(&mut state.pending))
        };
        let result = self
            .write_resume(have)
            .and_then(|()| self.rename_complete(&pending));
        if result.is_err() {
            let mut state = self.lock_state();
            state.dirty = true;
            state.pending.extend(
                pending
                    .into_iter()
                    .filter(|&f| self.storage.state(f) != FileState::Final),
            );
        }
        result
    }

    fn write_resume(&self, have: Bitfield) -> Result<(), StorageError> {
        self.storage
            .sync()
            .map_err(|e| StorageError::io(Op::Syncing, &self.top_path, e))?;
        let state = ResumeState {
            root: self.root,
            content_len: self.layout.content_len(),
            piece_size: self.layout.piece_size(),
            have,
        };
        fsutil::write_atomic(
            &self.dir,
            &self.resume.resume,
            &self.resume.resume_tmp,
            &state.encode(),
        )
    }

    /// Links each complete part file (synced by `write_resume`) to its final
    /// name, never replacing anything, then removes the part names. A part
    /// file that does not have the file's size (changed by something else
    /// since `open`) keeps its part name: an error says so, and the next
    /// `open` gives it its size and rechecks it.
    fn rename_complete(&self, files: &BTreeSet<usize>) -> Result<(), StorageError> {
        let mut moves = Vec::with_capacity(files.len());
        let mut wrong_size = None;
        for &f in files {
            if self.storage.state(f) == FileState::Final {
                continue;
            }
            let Some(entry) = self.storage.file(f) else {
                continue;
            };
            let Some(part) = &entry.part else {
                continue;
            };
            let size = self.layout.file_size(f);
            match fs::symlink_metadata(part) {
                Ok(m) if m.len() != size => {
                    wrong_size.get_or_insert_with(|| StorageError::Io {
                        op: Op::Renaming,
                        path: part.clone(),
                        err: io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} bytes, expected {size}; not giving it its final name",
                                m.len()
                            ),
                        ),
                    });
                }
                _ => moves.push((f, part.clone(), entry.path.clone())),
            }
        }
        let pairs: Vec<(&Path, &Path)> = moves
            .iter()
            .map(|(_, from, to)| (from.as_path(), to.as_path()))
            .collect();
        let done = fsutil::link_no_clobber(&pairs);
        for (f, _, _) in moves.iter().take(done.moved) {
            self.storage.mark_final(*f);
        }
        done.result?;
        wrong_size.map_or(Ok(()), Err)
    }

    /// Completes the download: sync, give every wanted file its final name
    /// (never replacing a file there: [`StorageError::DestinationExists`] if
    /// one appeared meanwhile, and the download stays resumable), and remove
    /// the resume file once every file of the content is in place. Fails
    /// with [`StorageError::Incomplete`] while wanted pieces are missing.
    pub fn finish(&self) -> Result<CompleteFile, StorageError> {
        let missing = self.wanted_missing(&self.lock_state().have);
        if missing > 0 {
            return Err(StorageError::Incomplete {
                path: self.top_path.clone(),
                missing,
            });
        }
        self.save()?;
        let mut warnings = Vec::new();
        let all_final = (0..self.layout.file_count()).all(|f| {
            self.layout.file_pieces(f).is_empty() || self.storage.state(f) == FileState::Final
        });
        if all_final {
            for file in [&self.resume.resume, &self.resume.resume_tmp] {
                if let Err(e) = fsutil::remove_if_exists(file) {
                    warnings.push(format!("could not remove {}: {e}", file.display()));
                }
            }
            if let Err(e) = fsutil::sync_dir(&self.dir) {
                warnings.push(e.to_string());
            }
        }
        Ok(CompleteFile {
            path: self.top_path.clone(),
            storage: self.storage(),
            reused_bytes: self.reused_bytes,
            have: self.have(),
            warnings,
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pieces the resume file claims, when it is a valid one for this
/// target; else `None` and, when a file was there, why it is discarded.
fn load_resume(paths: &Paths, target: &Target) -> (Option<Bitfield>, Option<String>) {
    let max = ResumeState::encoded_len(target.layout.piece_count());
    let discard = |why: String| {
        Some(format!(
            "discarding resume file {}: {why}; rechecking the part files",
            paths.resume.display()
        ))
    };
    match fsutil::read_small(&paths.resume, max) {
        Ok(None) => (None, None),
        Err(e) => (None, discard(e.to_string())),
        Ok(Some(bytes)) => match ResumeState::decode(&bytes) {
            Err(e) => (None, discard(e.to_string())),
            Ok(state) => match state.mismatch(&target.root, &target.layout) {
                Some(why) => (None, discard(why.to_string())),
                None => (Some(state.have), None),
            },
        },
    }
}
