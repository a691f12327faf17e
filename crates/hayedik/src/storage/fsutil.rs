//! File system steps that must be done in the right order: the side file
//! names, crash-safe replacement of a small file, a rename that never
//! replaces, and syncing a directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{Op, StorageError};

/// The paths of one download in its directory.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    pub part: PathBuf,
    pub resume: PathBuf,
    pub resume_tmp: PathBuf,
}

/// Longest file name most file systems take, in bytes.
const NAME_MAX: usize = 255;
const PART_SUFFIX: &str = ".hayedik-part";
const RESUME_SUFFIX: &str = ".hayedik-resume";
const LONGEST_SUFFIX: &str = ".hayedik-resume.tmp";

impl Paths {
    /// `DIR/.NAME.hayedik-part`, `DIR/.NAME.hayedik-resume` and its
    /// temporary. When NAME is so long that a side name would pass 255 bytes,
    /// the side names use a shortened NAME followed by `~` and a hash of NAME.
    pub fn new(dir: &Path, name: &str) -> Result<Self, StorageError> {
        check_name(name)?;
        let base = if 1 + name.len() + LONGEST_SUFFIX.len() <= NAME_MAX {
            name.to_string()
        } else {
            let mut cut = 200;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            let hash = blake3::hash(name.as_bytes());
            let hash = hayedik_proto::hex::encode(&hash.as_bytes()[..8]);
            format!("{}~{hash}", &name[..cut])
        };
        Ok(Paths {
            part: dir.join(format!(".{base}{PART_SUFFIX}")),
            resume: dir.join(format!(".{base}{RESUME_SUFFIX}")),
            resume_tmp: dir.join(format!(".{base}{LONGEST_SUFFIX}")),
        })
    }
}

/// Whether `name` has the form of a side file (`.NAME.hayedik-part`,
/// `.NAME.hayedik-resume`, `.NAME.hayedik-resume.tmp`): content may not use
/// such names, or its files could be taken for another file's side files.
pub fn is_side_name(name: &str) -> bool {
    name.starts_with('.')
        && [PART_SUFFIX, RESUME_SUFFIX, LONGEST_SUFFIX]
            .iter()
            .any(|s| name.ends_with(s))
}

/// The caller validates names; this is a last line of defence against
/// writing outside the directory.
fn check_name(name: &str) -> Result<(), StorageError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || (cfg!(windows) && name.contains(['\\', ':']));
    if bad {
        Err(StorageError::InvalidName(name.to_string()))
    } else {
        Ok(())
    }
}

/// Makes renames and removals in `dir` durable. File systems that cannot
/// sync a directory (EINVAL) are tolerated; elsewhere this is a no-op.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        let result = File::open(dir).and_then(|d| d.sync_all());
        match result {
            Err(e) if e.kind() != io::ErrorKind::InvalidInput => {
                return Err(StorageError::io(Op::Syncing, dir, e))
            }
            _ => {}
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Syncs each of `dirs`; with many of them on Linux, the file system holding
/// them at once (`syncfs`), which costs one flush instead of one per folder.
pub(crate) fn sync_dirs(dirs: &[&Path]) -> Result<(), StorageError> {
    #[cfg(target_os = "linux")]
    if let [first, _, _, _, _, ..] = dirs {
        let dir = File::open(first).map_err(|e| StorageError::io(Op::Syncing, first, e))?;
        return rustix::fs::syncfs(&dir)
            .map_err(|e| StorageError::io(Op::Syncing, first, io::Error::from(e)));
    }
    for dir in dirs {
        sync_dir(dir)?;
    }
    Ok(())
}

/// How many names (hard links) the open `file` has; 1 where the platform
/// does not tell.
pub(crate) fn file_links(file: &File) -> io::Result<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(file.metadata()?.nlink())
    }
    #[cfg(windows)]
    {
        Ok(winapi_util::file::information(file)?.number_of_links())
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = file;
        Ok(1)
    }
}

/// How many names (hard links) the regular file at `path` has, `meta`
/// being what `symlink_metadata` said of it. Windows tells only through a
/// handle: the file is opened for its attributes alone, sharing everything,
/// without following a link at the name; one it cannot open counts as 1
/// (opening it to write then says what is wrong).
pub(crate) fn links(path: &Path, meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let _ = path;
        meta.nlink()
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_READ_ATTRIBUTES: u32 = 0x80;
        const FILE_SHARE_ALL: u32 = 0x7;
        const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        let _ = meta;
        OpenOptions::new()
            .access_mode(FILE_READ_ATTRIBUTES)
            .share_mode(FILE_SHARE_ALL)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
            .open(path)
            .and_then(|f| file_links(&f))
            .unwrap_or(1)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (path, meta);
        1
    }
}

/// Removes `path`; a missing file is not an error.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Reads `path` when it exists and holds at most `max` bytes: `Ok(None)`
/// when missing, an `InvalidData` error when longer.
pub(crate) fn read_small(path: &Path, max: usize) -> io::Result<Option<Vec<u8>>> {
    // Opening a FIFO planted at `path` would block: look before opening.
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ))
        }
        Ok(_) => {}
    }
    let file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file too long"));
    }
    Ok(Some(bytes))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or
/// the new content: write `tmp`, fsync it, rename it over `path`, fsync the
/// directory. On failure `path` is untouched and `tmp` removed.
pub(crate) fn write_atomic(
    dir: &Path,
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let result = write_tmp(tmp, bytes)
        .and_then(|()| fs::rename(tmp, path).map_err(|e| StorageError::io(Op::Renaming, tmp, e)));
    if result.is_err() {
        let _ = remove_if_exists(tmp);
    }
    result?;
    sync_dir(dir)
}

fn write_tmp(tmp: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    remove_if_exists(tmp).map_err(|e| StorageError::io(Op::Removing, tmp, e))?;
    // create_new: never through a symbolic link, never someone else's file.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| StorageError::io(Op::Creating, tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| StorageError::io(Op::Writing, tmp, e))?;
    file.sync_all()
        .map_err(|e| StorageError::io(Op::Syncing, tmp, e))
}

/// What [`link_no_clobber`] did.
#[derive(Debug)]
pub(crate) struct Linked {
    /// How many of the pairs, from the first, now have their new name.
    pub moved: usize,
    /// The first failure, which stopped the work.
    pub result: Result<(), StorageError>,
}

/// Gives each `from` the name `to` unless `to` exists, in order, stopping at
/// the first failure; then syncs the folders involved, once each.
///
/// On Linux, `renameat2` with `RENAME_NOREPLACE` does it in one atomic
/// step. Elsewhere, or on a file system without it, `hard_link` fails when
/// `to` exists, atomically, so linking then removing `from` never replaces
/// a file; the new names are made durable before the old ones go. Where hard
/// links are not supported either (FAT, some network file systems) it falls
/// back to checking then renaming, which leaves a short window in which a
/// file created by another process at `to` could be replaced.
pub(crate) fn link_no_clobber(pairs: &[(&Path, &Path)]) -> Linked {
    let exists = |to: &Path| StorageError::DestinationExists {
        path: to.to_path_buf(),
        reason: "a file appeared there during the download and was left as it is".to_string(),
    };
    let mut moved = 0;
    let mut linked = Vec::new();
    let mut result = Ok(());
    for (from, to) in pairs {
        match rename_noreplace(from, to) {
            Some(Ok(())) => {
                moved += 1;
                continue;
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                result = Err(exists(to));
                break;
            }
            Some(Err(e)) => {
                result = Err(StorageError::io(Op::Renaming, from, e));
                break;
            }
            None => {}
        }
        match fs::hard_link(from, to) {
            Ok(()) => linked.push(*from),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                result = Err(exists(to));
                break;
            }
            Err(_) => {
                if fs::symlink_metadata(to).is_ok() {
                    result = Err(exists(to));
                    break;
                }
                if let Err(e) = fs::rename(from, to) {
                    result = Err(StorageError::io(Op::Renaming, from, e));
                    break;
                }
            }
        }
        moved += 1;
    }
    let dirs: Vec<&Path> = pairs[..moved]
        .iter()
        .filter_map(|(_, to)| to.parent())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if let Err(e) = sync_dirs(&dirs) {
        // The new names may not be durable: keep the old ones.
        return Linked {
            moved: 0,
            result: Err(e),
        };
    }
    // Failing to remove an old name leaves a second link to the same
    // (complete) file, which is harmless: not worth failing for.
    for from in linked {
        let _ = fs::remove_file(from);
    }
    let _ = sync_dirs(&dirs);
    Linked { moved, result }
}

/// `renameat2(RENAME_NOREPLACE)`: one atomic step that never replaces
/// `to`. `None` where the system or the file system does not offer it.
#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> Option<io::Result<()>> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Some(Ok(())),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => None,
        Err(e) => Some(Err(io::Error::from(e))),
    }
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(_from: &Path, _to: &Path) -> Option<io::Result<()>> {
    None
}

/// [`link_no_clobber`] for one file.
#[cfg(test)]
pub(crate) fn rename_no_clobber(from: &Path, to: &Path) -> Result<(), StorageError> {
    link_no_clobber(&[(from, to)]).result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_names() {
        let p = Paths::new(Path::new("/d"), "a b.txt").expect("paths");
        assert_eq!(p.part, Path::new("/d/.a b.txt.hayedik-part"));
        assert_eq!(p.resume, Path::new("/d/.a b.txt.hayedik-resume"));
        assert_eq!(p.resume_tmp, Path::new("/d/.a b.txt.hayedik-resume.tmp"));
        for bad in ["", ".", "..", "a/b", "/a", "a\0b"] {
            assert!(Paths::new(Path::new("/d"), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn long_names_get_short_side_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = "é".repeat(127); // 254 bytes, a legal name
        let p = Paths::new(dir.path(), &name).expect("paths");
        for side in [&p.part, &p.resume, &p.resume_tmp] {
            let len = side.file_name().map_or(0, |n| n.len());
            assert!(len <= NAME_MAX, "{len}");
            fs::write(side, b"x").expect("side file can be created");
        }
        fs::write(dir.path().join(&name), b"x").expect("final name can be created");
        let other = Paths::new(dir.path(), &"é".repeat(126)).expect("paths");
        assert_ne!(other.part, p.part);
    }

    #[test]
    fn rename_never_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"new").expect("write");
        fs::write(&b, b"old").expect("write");
        let err = rename_no_clobber(&a, &b).expect_err("must refuse");
        assert!(matches!(err, StorageError::DestinationExists { .. }));
        assert_eq!(fs::read(&b).expect("read"), b"old");
        assert_eq!(fs::read(&a).expect("read"), b"new");
        fs::remove_file(&b).expect("remove");
        rename_no_clobber(&a, &b).expect("rename");
        assert!(!a.exists());
        assert_eq!(fs::read(&b).expect("read"), b"new");
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, t) = (dir.path().join("r"), dir.path().join("r.tmp"));
        fs::write(&t, b"stale").expect("write");
        write_atomic(dir.path(), &p, &t, b"one").expect("write");
        write_atomic(dir.path(), &p, &t, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert!(!t.exists());
        assert_eq!(read_small(&p, 3).expect("read"), Some(b"two".to_vec()));
        assert!(read_small(&p, 2).is_err());
        assert_eq!(read_small(&dir.path().join("none"), 2).expect("read"), None);
        assert!(read_small(dir.path(), 2).is_err(), "a directory");
    }
}
