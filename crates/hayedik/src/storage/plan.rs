//! Where a download's files go, checked before anything is written: the
//! [`Target`] (what to download, under which directory), its [`Plan`] (the
//! final and part name of every entry), what [`Plan::inspect`] finds on disk
//! at those names, the case-folding check, and the creation of the folders.
//!
//! This is the last line of defence against writing outside the download
//! directory: every path is validated again here, no folder on the way may
//! be a symbolic link or a file, no name may be taken by something that is
//! not this content, and two names that differ only in case are refused on
//! a file system that ignores case. [`super::Download`] uses it to open a
//! download and owns everything after.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hayedik_proto::manifest::{find_case_collision, validate_path, FileEntry};

use super::fsutil::{self, Paths};
use super::tree::TreeFile;
use super::{Op, PieceLayout, StorageError};

/// What to download and where: the entries of a manifest (every path starts
/// with the same first component, TOP), written under `dir`.
#[derive(Clone, Debug)]
pub struct Target {
    pub dir: PathBuf,
    /// Relative `/`-separated paths, each checked again here.
    pub files: Vec<FileEntry>,
    /// The pieces of `files`, in order (see [`PieceLayout::from_sizes`]).
    pub layout: PieceLayout,
    pub root: [u8; 32],
    /// Per entry, whether to download it; empty means all.
    pub wanted: Vec<bool>,
}

impl Target {
    /// One file `dir/name`, all of it.
    pub fn single(dir: PathBuf, name: &str, layout: PieceLayout, root: [u8; 32]) -> Target {
        let size = layout.content_len();
        Target {
            dir,
            files: vec![FileEntry::file(name, size, false)],
            layout,
            root,
            wanted: Vec::new(),
        }
    }

    /// The first component of every path.
    pub fn top(&self) -> &str {
        self.files
            .first()
            .map_or("", |f| f.path.split('/').next().unwrap_or(""))
    }

    pub fn wants(&self, entry: usize) -> bool {
        self.wanted.get(entry).copied().unwrap_or(true)
    }
}

/// What is on disk at an entry's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Nothing,
    /// A part file, last modified then, of that length (which may not be
    /// the file's: an older version of the same name, a file cut short).
    Part {
        modified: Option<SystemTime>,
        len: u64,
    },
    /// A part file with that many hard links: another file's data, maybe
    /// outside the download directory. Never read nor written: its name is
    /// removed and the file started afresh.
    Linked(u64),
    /// A regular file of the right size under the final name.
    Final,
    /// A folder entry whose folder exists.
    Folder,
}

/// The names of every entry under the download directory.
pub(super) struct Plan {
    /// `DIR/TOP`.
    pub(super) top_path: PathBuf,
    /// Per entry: its final path.
    pub(super) finals: Vec<PathBuf>,
    /// Per entry: its part path (unused for folders).
    pub(super) parts: Vec<PathBuf>,
}

impl Plan {
    /// Checks every path again (the caller validated the manifest; this is
    /// the last line of defence against writing outside `dir`).
    pub(super) fn new(target: &Target) -> Result<Plan, StorageError> {
        let top = target.top();
        let unsafe_paths = |reason: String| StorageError::UnsafePaths {
            dir: target.dir.clone(),
            reason,
        };
        if target.files.is_empty() || target.files.len() != target.layout.file_count() {
            return Err(StorageError::Layout(
                "the files do not match the piece layout".to_string(),
            ));
        }
        let mut finals = Vec::with_capacity(target.files.len());
        let mut parts = Vec::with_capacity(target.files.len());
        for (i, f) in target.files.iter().enumerate() {
            if validate_path(&f.path).is_err() || f.path.split('/').next() != Some(top) {
                return Err(unsafe_paths(format!(
                    "{:?} is not a safe relative path",
                    f.path
                )));
            }
            if f.path.split('/').any(fsutil::is_side_name) {
                return Err(unsafe_paths(format!(
                    "{:?} has a name hayedik keeps for its own side files",
                    f.path
                )));
            }
            if f.size != target.layout.file_size(i) || (f.directory && f.size != 0) {
                return Err(StorageError::Layout(format!(
                    "{:?} does not match the piece layout",
                    f.path
                )));
            }
            let mut path = target.dir.clone();
            path.extend(f.path.split('/'));
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            let parent = path.parent().unwrap_or(&target.dir);
            parts.push(Paths::new(parent, name)?.part);
            finals.push(path);
        }
        let mut top_path = target.dir.clone();
        top_path.push(top);
        Ok(Plan {
            top_path,
            finals,
            parts,
        })
    }

    /// The folders under `dir` that the entries `pick` selects lie in (and,
    /// `with_entries`, the folder entries themselves), in component order: a
    /// folder before the folders inside it.
    fn folders(
        &self,
        target: &Target,
        pick: impl Fn(usize) -> bool,
        with_entries: bool,
    ) -> BTreeSet<PathBuf> {
        let mut folders = BTreeSet::new();
        for (i, (f, path)) in target.files.iter().zip(&self.finals).enumerate() {
            if !pick(i) {
                continue;
            }
            let first = if f.directory && with_entries { 0 } else { 1 };
            for a in path.ancestors().skip(first) {
                if a == target.dir {
                    break;
                }
                folders.insert(a.to_path_buf());
            }
        }
        folders
    }

    pub(super) fn tree_files(&self, target: &Target) -> Vec<TreeFile> {
        target
            .files
            .iter()
            .zip(self.finals.iter().zip(&self.parts))
            .map(|(f, (path, part))| TreeFile {
                path: path.clone(),
                part: Some(part.clone()),
                executable: f.executable,
            })
            .collect()
    }

    /// Looks at what is on disk at every name, writing nothing: each folder
    /// on the way must be a real folder (not a symbolic link, not a file),
    /// each final name absent or a regular file of the right size (or, for a
    /// folder entry, a folder), each part name absent or a regular file.
    pub(super) fn inspect(&self, target: &Target) -> Result<Vec<Found>, StorageError> {
        let taken = |path: &Path, reason: &str| StorageError::DestinationExists {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let io_err = |path: &Path, e: io::Error| StorageError::Io {
            op: Op::Opening,
            path: path.to_path_buf(),
            err: e,
        };
        let lstat = |path: &Path| match fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path, e)),
        };
        // Folders on the way, each looked at once; below a missing folder
        // everything is missing.
        let folders = self.folders(target, |_| true, false);
        let mut missing_folders: BTreeSet<PathBuf> = BTreeSet::new();
        for folder in &folders {
            if folder
                .ancestors()
                .skip(1)
                .any(|a| missing_folders.contains(a))
            {
                missing_folders.insert(folder.clone());
                continue;
            }
            match lstat(folder)? {
                None => {
                    missing_folders.insert(folder.clone());
                }
                Some(m) if m.file_type().is_symlink() => {
                    return Err(StorageError::UnsafePaths {
                        dir: target.dir.clone(),
                        reason: format!(
                            "{} is a symbolic link where the content has a folder",
                            folder.display()
                        ),
                    })
                }
                Some(m) if !m.is_dir() => {
                    return Err(taken(folder, "the content has a folder there"))
                }
                Some(_) => {}
            }
        }
        let mut found = Vec::with_capacity(target.files.len());
        for (i, f) in target.files.iter().enumerate() {
            let (path, part) = (&self.finals[i], &self.parts[i]);
            if path.parent().is_some_and(|p| missing_folders.contains(p)) {
                found.push(Found::Nothing);
                continue;
            }
            let here = lstat(path)?;
            let entry = match here {
                Some(m) if f.directory => {
                    if m.is_dir() {
                        Found::Folder
                    } else {
                        return Err(taken(path, "the content has an empty folder there"));
                    }
                }
                Some(m) if m.file_type().is_symlink() => {
                    return Err(taken(path, "it is a symbolic link"))
                }
                Some(m) if !m.is_file() => return Err(taken(path, "it is not a regular file")),
                Some(m) if m.len() != f.size => {
                    return Err(taken(
                        path,
                        &format!("{} bytes, expected {}", m.len(), f.size),
                    ))
                }
                Some(_) => Found::Final,
                None if f.directory || f.size == 0 => Found::Nothing,
                None => match lstat(part)? {
                    None => Found::Nothing,
                    Some(m) if m.is_file() && fsutil::links(part, &m) > 1 => {
                        Found::Linked(fsutil::links(part, &m))
                    }
                    Some(m) if m.is_file() => Found::Part {
                        modified: m.modified().ok(),
                        len: m.len(),
                    },
                    Some(_) => {
                        return Err(StorageError::UnsafePaths {
                            dir: target.dir.clone(),
                            reason: format!("{} is not a regular file", part.display()),
                        })
                    }
                },
            };
            found.push(entry);
        }
        Ok(found)
    }

    /// On a file system that ignores case, two names that differ only in
    /// case would be one file: refused before anything is written.
    pub(super) fn check_case(&self, target: &Target, folds: bool) -> Result<(), StorageError> {
        if !folds {
            return Ok(());
        }
        match find_case_collision(&target.files) {
            Some((a, b)) => Err(StorageError::UnsafePaths {
                dir: target.dir.clone(),
                reason: format!(
                    "{a:?} and {b:?} would be the same file here (this file system ignores case)"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Creates the download directory, the folders of the wanted entries
    /// (refusing to go through a symbolic link that appeared since
    /// `inspect`), and the wanted empty files; removes part files left
    /// beside files already complete.
    pub(super) fn create_folders(
        &self,
        target: &Target,
        found: &[Found],
        warnings: &mut Vec<String>,
    ) -> Result<(), StorageError> {
        fs::create_dir_all(&target.dir)
            .map_err(|e| StorageError::io(Op::Creating, &target.dir, e))?;
        let folders = self.folders(target, |i| target.wants(i), true);
        // Component order: a folder comes before the folders inside it.
        for folder in &folders {
            match fs::create_dir(folder) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let real = fs::symlink_metadata(folder).is_ok_and(|m| m.is_dir());
                    if !real {
                        return Err(StorageError::UnsafePaths {
                            dir: target.dir.clone(),
                            reason: format!(
                                "{} is not a folder (it appeared during the download)",
                                folder.display()
                            ),
                        });
                    }
                }
                Err(e) => return Err(StorageError::io(Op::Creating, folder, e)),
            }
        }
        let mut synced: BTreeSet<&Path> = BTreeSet::new();
        for (i, f) in target.files.iter().enumerate() {
            let path = &self.finals[i];
            if target.wants(i) && !f.directory && f.size == 0 && found[i] == Found::Nothing {
                create_empty(path, f.executable)?;
                if let Some(parent) = path.parent() {
                    synced.insert(parent);
                }
            }
            if found[i] == Found::Final && f.size > 0 {
                if let Err(e) = fsutil::remove_if_exists(&self.parts[i]) {
                    warnings.push(format!("could not remove {}: {e}", self.parts[i].display()));
                }
            }
            if let Found::Linked(links) = found[i] {
                // Only this name goes: the data stays under its other names.
                let part = &self.parts[i];
                fsutil::remove_if_exists(part)
                    .map_err(|e| StorageError::io(Op::Removing, part, e))?;
                warnings.push(format!(
                    "{} has {links} hard links (another file's data, maybe outside {}): \
                     not writing to it; removed that name and starting the file afresh",
                    part.display(),
                    target.dir.display()
                ));
            }
        }
        for dir in synced {
            fsutil::sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Creates an empty file, never replacing anything.
fn create_empty(path: &Path, executable: bool) -> Result<(), StorageError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if executable { 0o777 } else { 0o666 });
    }
    #[cfg(not(unix))]
    let _ = executable;
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(StorageError::DestinationExists {
                path: path.to_path_buf(),
                reason: "a file appeared there during the download and was left as it is"
                    .to_string(),
            })
        }
        Err(e) => Err(StorageError::io(Op::Creating, path, e)),
    }
}

/// Whether the file system holding `dir` (or its nearest existing
/// ancestor) treats names that differ in case as the same: true when the
/// same folder is found under its name with the case of a letter flipped.
/// macOS and Windows are assumed to fold case when no name tells.
pub(crate) fn folds_case(dir: &Path) -> bool {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for p in dir.ancestors() {
        let (Some(name), Some(parent)) = (p.file_name().and_then(|n| n.to_str()), p.parent())
        else {
            continue;
        };
        let Ok(here) = fs::metadata(p) else {
            continue;
        };
        let flipped: String = name
            .chars()
            .map(|c| {
                if c.is_lowercase() {
                    c.to_uppercase().next().unwrap_or(c)
                } else {
                    c.to_lowercase().next().unwrap_or(c)
                }
            })
            .collect();
        if flipped == name {
            continue;
        }
        return match fs::metadata(parent.join(&flipped)) {
            Ok(other) => same_file(&here, &other),
            Err(_) => false,
        };
    }
    cfg!(any(windows, target_os = "macos"))
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_collisions_are_refused_where_case_folds() {
        let layout = PieceLayout::from_sizes(&[0, 0], 1024).expect("layout");
        let target = Target {
            dir: PathBuf::from("/nowhere"),
            files: vec![
                FileEntry::file("t/Read", 0, false),
                FileEntry::file("t/READ", 0, false),
            ],
            layout,
            root: [0; 32],
            wanted: Vec::new(),
        };
        let plan = Plan::new(&target).expect("plan");
        assert!(plan.check_case(&target, false).is_ok());
        let err = plan.check_case(&target, true).expect_err("collision");
        assert!(err.to_string().contains("would be the same file"), "{err}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
    }

    #[test]
    fn this_file_system_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let probe = dir.path().join("probe");
        fs::create_dir(&probe).expect("mkdir");
        let folds = fs::metadata(dir.path().join("PROBE")).is_ok();
        assert_eq!(folds_case(&probe), folds);
        assert_eq!(folds_case(&probe.join("not/yet")), folds);
    }
}
