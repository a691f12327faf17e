//! The lifecycle of one download in its directory: open (reuse, resume or
//! start), write and mark pieces, save the resume state, finish.
//!
//! Invariants:
//! * NAME is never written: data goes to the part file, which becomes NAME by
//!   a rename that refuses to replace anything ([`fsutil::rename_no_clobber`]).
//! * The resume file claims a piece only if its bytes were written before the
//!   part file was last synced: `save` snapshots the marked pieces, then
//!   fdatasyncs the part file, then replaces the resume file. A piece must be
//!   marked only after `write_piece` for it returned.
//! * What the resume file claims is re-verified on open, never trusted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fsutil::{self, Paths};
use super::verify::check;
use super::{Bitfield, FileStorage, Op, PieceLayout, ResumeState, Storage, StorageError};

/// What to download and where: `dir/name`, cut as `layout`, whose content
/// root is `root`. `name` must be a single plain name (the caller validates
/// it; this layer refuses separators and `..` all the same).
#[derive(Clone, Debug)]
pub struct Target {
    pub dir: PathBuf,
    pub name: String,
    pub layout: PieceLayout,
    pub root: [u8; 32],
}

/// What [`Download::open`] found.
// Returned once per download and matched at once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Opened {
    /// NAME already holds this content, verified: nothing to download.
    Complete(CompleteFile),
    /// A download to carry on; some pieces may already be there (it may even
    /// be complete, in which case only [`Download::finish`] is left).
    Partial(Download),
}

/// The content, complete and verified under its final name.
#[derive(Debug)]
pub struct CompleteFile {
    pub path: PathBuf,
    /// The file opened read-only, to serve pieces from.
    pub storage: Arc<FileStorage>,
    /// Bytes that were already on disk and verified, not downloaded.
    pub reused_bytes: u64,
    /// Things the user may want to know (side files that could not be
    /// removed...), one sentence each.
    pub warnings: Vec<String>,
}

/// A download in progress. All methods take `&self` except `finish`: it can
/// be shared (`Arc<Download>`) between the tasks that write pieces.
#[derive(Debug)]
pub struct Download {
    paths: Paths,
    layout: PieceLayout,
    root: [u8; 32],
    storage: Arc<FileStorage>,
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
}

impl Download {
    /// Opens the download of `target`, deciding among:
    /// * NAME exists: when it is this content (same length, every piece
    ///   verifies) it is reused untouched ([`Opened::Complete`]); anything
    ///   else is refused with [`StorageError::DestinationExists`].
    /// * a part file exists: the pieces the resume file claims are
    ///   re-verified (every piece, when the resume file is missing, damaged or
    ///   for other content); those that verify are kept.
    /// * nothing: the part file is created at full length.
    ///
    /// `verify(index, bytes)` says whether a piece is right; hashing runs on
    /// several threads and reports `progress(bytes_done, bytes_total)`. The
    /// directory is created when missing. A resume file reflecting what was
    /// found is saved before returning.
    pub fn open<V, P>(target: &Target, verify: &V, progress: &P) -> Result<Opened, StorageError>
    where
        V: Fn(u32, &[u8]) -> bool + Sync,
        P: Fn(u64, u64) + Sync,
    {
        let paths = Paths::new(&target.dir, &target.name)?;
        fs::create_dir_all(&paths.dir)
            .map_err(|e| StorageError::io(Op::Creating, &paths.dir, e))?;
        match fs::symlink_metadata(&paths.final_path) {
            Ok(_) => reuse(&paths, target, verify, progress).map(Opened::Complete),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                start(paths, target, verify, progress).map(Opened::Partial)
            }
            Err(e) => Err(StorageError::io(Op::Opening, &paths.final_path, e)),
        }
    }

    pub fn layout(&self) -> &PieceLayout {
        &self.layout
    }

    pub fn root(&self) -> &[u8; 32] {
        &self.root
    }

    /// Where the content will be once finished.
    pub fn final_path(&self) -> &Path {
        &self.paths.final_path
    }

    pub fn part_path(&self) -> &Path {
        &self.paths.part
    }

    pub fn resume_path(&self) -> &Path {
        &self.paths.resume
    }

    /// The part file, for positional I/O from other threads (it stays valid
    /// after `finish`: the same file under its final name).
    pub fn storage(&self) -> Arc<FileStorage> {
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

    pub fn has_piece(&self, index: u32) -> bool {
        self.lock_state().have.get(index)
    }

    /// The pieces still to download, ascending.
    pub fn missing(&self) -> Vec<u32> {
        self.lock_state().have.zeros().collect()
    }

    pub fn is_complete(&self) -> bool {
        self.lock_state().have.is_full()
    }

    /// Writes piece `index` (exactly `layout.piece_len(index)` bytes) to the
    /// part file. The caller verifies `data` first, then calls
    /// [`Download::mark_verified`].
    pub fn write_piece(&self, index: u32, data: &[u8]) -> Result<(), StorageError> {
        self.layout.check_index(index)?;
        if data.len() as u64 != self.layout.piece_len(index) {
            return Err(StorageError::Layout(format!(
                "piece {index} has {} bytes, expected {}",
                data.len(),
                self.layout.piece_len(index)
            )));
        }
        self.storage
            .write_at(self.layout.piece_offset(index), data)
            .map_err(|e| StorageError::io(Op::Writing, &self.paths.part, e))
    }

    /// Reads piece `index` from the part file (to serve it; check
    /// [`Download::has_piece`] first).
    pub fn read_piece(&self, index: u32) -> Result<Vec<u8>, StorageError> {
        self.layout.check_index(index)?;
        let mut buf = vec![0; self.layout.piece_len_usize(index)];
        self.storage
            .read_at(self.layout.piece_offset(index), &mut buf)
            .map_err(|e| StorageError::io(Op::Reading, &self.paths.part, e))?;
        Ok(buf)
    }

    /// Records that piece `index` was verified and its `write_piece`
    /// returned; the next `save` makes that durable. Returns false when the
    /// piece was already marked or is out of range.
    pub fn mark_verified(&self, index: u32) -> bool {
        let mut state = self.lock_state();
        let new = state.have.set(index);
        state.dirty |= new;
        new
    }

    /// Makes the marked pieces durable: fdatasync the part file, then
    /// replace the resume file crash-safely. Does nothing when no piece was
    /// marked since the last save. Call it about every 500 ms while pieces
    /// arrive, and on shutdown: a crash loses at most the pieces of the last
    /// interval. It blocks on fsync: call it off the async reactor. On
    /// failure (a full disk...) the previous resume file is left intact and
    /// the next call tries again.
    pub fn save(&self) -> Result<(), StorageError> {
        let _saving = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        let have = {
            let mut state = self.lock_state();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            state.have.clone()
        };
        let result = self.write_resume(have);
        if result.is_err() {
            self.lock_state().dirty = true;
        }
        result
    }

    fn write_resume(&self, have: Bitfield) -> Result<(), StorageError> {
        self.storage
            .sync()
            .map_err(|e| StorageError::io(Op::Syncing, &self.paths.part, e))?;
        let state = ResumeState {
            root: self.root,
            content_len: self.layout.content_len(),
            piece_size: self.layout.piece_size(),
            have,
        };
        fsutil::write_atomic(
            &self.paths.dir,
            &self.paths.resume,
            &self.paths.resume_tmp,
            &state.encode(),
        )
    }

    /// Completes the download: fsync the part file, rename it to NAME (never
    /// replacing a file there: [`StorageError::DestinationExists`] if one
    /// appeared meanwhile, and the download stays resumable), sync the
    /// directory, remove the resume file. Fails with
    /// [`StorageError::Incomplete`] while pieces are missing.
    pub fn finish(&self) -> Result<CompleteFile, StorageError> {
        let missing = {
            let state = self.lock_state();
            state.have.len() - state.have.count()
        };
        if missing > 0 {
            return Err(StorageError::Incomplete {
                path: self.paths.final_path.clone(),
                missing: u64::from(missing),
            });
        }
        let paths = &self.paths;
        self.storage
            .sync_all()
            .map_err(|e| StorageError::io(Op::Syncing, &paths.part, e))?;
        fsutil::rename_no_clobber(&paths.dir, &paths.part, &paths.final_path)?;
        let mut warnings = Vec::new();
        remove_side_files(paths, false, &mut warnings);
        let storage = FileStorage::open(&paths.final_path)
            .map_err(|e| StorageError::io(Op::Opening, &paths.final_path, e))?;
        Ok(CompleteFile {
            path: paths.final_path.clone(),
            storage: Arc::new(storage),
            reused_bytes: self.reused_bytes,
            warnings,
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// NAME exists: reuse it when it is this content, refuse otherwise.
fn reuse<V, P>(
    paths: &Paths,
    target: &Target,
    verify: &V,
    progress: &P,
) -> Result<CompleteFile, StorageError>
where
    V: Fn(u32, &[u8]) -> bool + Sync,
    P: Fn(u64, u64) + Sync,
{
    let path = &paths.final_path;
    let refuse = |reason: String| StorageError::DestinationExists {
        path: path.clone(),
        reason,
    };
    // Only reads here: a permission error is not "cannot write".
    let read_error = |op, err| StorageError::Io {
        op,
        path: path.clone(),
        err,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(refuse("it is a dangling symbolic link".to_string()))
        }
        Err(e) => return Err(read_error(Op::Opening, e)),
    };
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".to_string()));
    }
    let expected = target.layout.content_len();
    if meta.len() != expected {
        return Err(refuse(format!("{} bytes, expected {expected}", meta.len())));
    }
    let storage = FileStorage::open(path).map_err(|e| read_error(Op::Opening, e))?;
    let all = Bitfield::full(target.layout.piece_count());
    let checked = check(&storage, &target.layout, &all, verify, progress, true)
        .map_err(|e| read_error(Op::Reading, e))?;
    if checked.bad > 0 || !checked.good.is_full() {
        return Err(refuse("its bytes differ".to_string()));
    }
    // Side files left by a crash between finish's rename and its cleanup.
    let mut warnings = Vec::new();
    let ours = load_resume(paths, target).0.is_some();
    if ours {
        remove_side_files(paths, true, &mut warnings);
    }
    Ok(CompleteFile {
        path: path.clone(),
        storage: Arc::new(storage),
        reused_bytes: expected,
        warnings,
    })
}

/// Removes the resume file (and the part file when `with_part`), noting
/// failures as warnings: the download itself is complete.
fn remove_side_files(paths: &Paths, with_part: bool, warnings: &mut Vec<String>) {
    let mut files = vec![&paths.resume, &paths.resume_tmp];
    if with_part {
        files.push(&paths.part);
    }
    for file in files {
        if let Err(e) = fsutil::remove_if_exists(file) {
            warnings.push(format!("could not remove {}: {e}", file.display()));
        }
    }
    if let Err(e) = fsutil::sync_dir(&paths.dir) {
        warnings.push(e.to_string());
    }
}

/// The pieces the resume file claims, when it is a valid one for this
/// target; else `None` and, when a file was there, why it is discarded.
fn load_resume(paths: &Paths, target: &Target) -> (Option<Bitfield>, Option<String>) {
    let max = ResumeState::encoded_len(target.layout.piece_count());
    let discard = |why: String| {
        Some(format!(
            "discarding resume file {}: {why}; rechecking the part file",
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

/// No file at NAME: resume from the part file, or start one.
/// Whether `a` was modified after `b` (false when either time is unknown).
fn modified_after(a: &Path, b: &Path) -> bool {
    let time = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((time(a), time(b)), (Some(ta), Some(tb)) if ta > tb)
}

fn start<V, P>(
    paths: Paths,
    target: &Target,
    verify: &V,
    progress: &P,
) -> Result<Download, StorageError>
where
    V: Fn(u32, &[u8]) -> bool + Sync,
    P: Fn(u64, u64) + Sync,
{
    let layout = target.layout;
    let mut warnings = Vec::new();
    let part_exists = match fs::symlink_metadata(&paths.part) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(StorageError::io(Op::Opening, &paths.part, e)),
    };
    let (claimed, why) = load_resume(&paths, target);
    let op = if part_exists {
        Op::Opening
    } else {
        Op::Creating
    };
    let storage = FileStorage::create(&paths.part, layout.content_len())
        .map_err(|e| StorageError::io(op, &paths.part, e))?;

    let have = if part_exists {
        let candidates = match (&claimed, why) {
            // Pieces written after the last save (a crash, or a full disk
            // that kept the resume file from being rewritten) are in the part
            // file but not claimed: when the part file is newer, check all.
            (Some(_), _) if modified_after(&paths.part, &paths.resume) => {
                warnings.push(format!(
                    "{} changed after its resume file was saved; rechecking all of it",
                    paths.part.display()
                ));
                Bitfield::full(layout.piece_count())
            }
            (Some(claimed), _) => claimed.clone(),
            (None, Some(why)) => {
                warnings.push(why);
                Bitfield::full(layout.piece_count())
            }
            (None, None) => {
                warnings.push(format!(
                    "no resume file beside {}; rechecking it",
                    paths.part.display()
                ));
                Bitfield::full(layout.piece_count())
            }
        };
        let checked = check(&storage, &layout, &candidates, verify, progress, false)
            .map_err(|e| StorageError::io(Op::Reading, &paths.part, e))?;
        // Only claimed pieces that fail are news: unclaimed ones were
        // checked in case they had been written after the last save.
        let lied = claimed
            .as_ref()
            .map(|c| c.ones().filter(|&i| !checked.good.get(i)).count())
            .unwrap_or(0);
        if lied > 0 {
            warnings.push(format!(
                "{} pieces that {} claimed did not verify; downloading them again",
                lied,
                paths.resume.display()
            ));
        }
        checked.good
    } else {
        // A resume file without its part file describes nothing.
        Bitfield::new(layout.piece_count())
    };

    let reused_bytes = have.ones().map(|i| layout.piece_len(i)).sum();
    let download = Download {
        paths,
        layout,
        root: target.root,
        storage: Arc::new(storage),
        reused_bytes,
        warnings,
        state: Mutex::new(State { have, dirty: true }),
        save_lock: Mutex::new(()),
    };
    download.save()?;
    Ok(download)
}
