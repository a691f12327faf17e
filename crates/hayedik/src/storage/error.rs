//! The errors of the storage layer: few variants, each with a message that says
//! what failed, on which path, and what the user can do about it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What the storage layer was doing when an I/O call failed; it starts the
/// message ("writing /x/.f.hayedik-part: ...").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Creating,
    Opening,
    Reading,
    Writing,
    Syncing,
    Renaming,
    Removing,
    Resizing,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Creating => "creating",
            Op::Opening => "opening",
            Op::Reading => "reading",
            Op::Writing => "writing",
            Op::Syncing => "syncing",
            Op::Renaming => "renaming",
            Op::Removing => "removing",
            Op::Resizing => "resizing",
        })
    }
}

/// An error of the storage layer. The I/O variants keep the `io::Error` in
/// their message rather than as `source()`, so that `anyhow`'s `{:#}` prints
/// it once; [`StorageError::io_error`] gives it back to code that wants it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The final name is taken by a file that is not (entirely) this content.
    #[error(
        "{} exists and is not a copy of this content ({reason}); refusing to overwrite it: \
         move it away or choose another -o DIR",
        path.display()
    )]
    DestinationExists { path: PathBuf, reason: String },

    /// ENOSPC or EDQUOT: no verified piece is lost, rerunning resumes.
    #[error(
        "disk full: {op} {}: {err}; free space and rerun the same command to resume",
        path.display()
    )]
    DiskFull {
        op: Op,
        path: PathBuf,
        err: io::Error,
    },

    /// EACCES, EPERM or EROFS.
    #[error(
        "cannot write to {}: {op} {}: {err}; choose a writable -o DIR",
        dir_of(path).display(),
        path.display()
    )]
    NotWritable {
        op: Op,
        path: PathBuf,
        err: io::Error,
    },

    /// Any other I/O failure.
    #[error("{op} {}: {err}", path.display())]
    Io {
        op: Op,
        path: PathBuf,
        err: io::Error,
    },

    /// `finish` was called before every piece was verified.
    #[error("{}: {missing} pieces are still missing; cannot finish the download", path.display())]
    Incomplete { path: PathBuf, missing: u64 },

    /// A content length, piece size or piece index that the layer cannot use.
    #[error("invalid piece layout: {0}")]
    Layout(String),

    /// A file name that is not a single plain name.
    #[error("invalid file name {0:?}: expected a single plain name")]
    InvalidName(String),

    /// The content's paths cannot be written safely here (a folder that is
    /// a symbolic link, names that collide on this file system...).
    #[error("refusing to write this content into {}: {reason}; nothing was written", dir.display())]
    UnsafePaths { dir: PathBuf, reason: String },
}

impl StorageError {
    /// Classifies an I/O error: disk full and not-writable get their own
    /// variants so the caller can tell the user what to do.
    pub fn io(op: Op, path: &Path, err: io::Error) -> Self {
        let path = path.to_path_buf();
        if is_disk_full(&err) {
            StorageError::DiskFull { op, path, err }
        } else if is_not_writable(&err) {
            StorageError::NotWritable { op, path, err }
        } else {
            StorageError::Io { op, path, err }
        }
    }

    /// The underlying I/O error, for the I/O variants.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            StorageError::DiskFull { err, .. }
            | StorageError::NotWritable { err, .. }
            | StorageError::Io { err, .. } => Some(err),
            _ => None,
        }
    }

    /// True for a full disk (or exhausted quota).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::DiskFull { .. })
    }
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

// The kinds cover errors re-wrapped with a path (which lose the raw code).
fn is_disk_full(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || is_disk_full_code(super::tree::raw_os_error(err))
}

#[cfg(unix)]
fn is_disk_full_code(code: Option<i32>) -> bool {
    matches!(code, Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(not(unix))]
fn is_disk_full_code(code: Option<i32>) -> bool {
    // ERROR_HANDLE_DISK_FULL (39) and ERROR_DISK_FULL (112) on Windows.
    matches!(code, Some(39) | Some(112))
}

fn is_not_writable(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Disk full, read-only, and a plain I/O error, as this system numbers
    /// them.
    #[cfg(unix)]
    const CODES: (i32, i32, i32) = (libc::ENOSPC, libc::EROFS, libc::EIO);
    /// ERROR_DISK_FULL, ERROR_ACCESS_DENIED, ERROR_IO_DEVICE.
    #[cfg(windows)]
    const CODES: (i32, i32, i32) = (112, 5, 1117);

    #[test]
    fn messages_name_the_operation_and_path() {
        let e = StorageError::io(
            Op::Writing,
            Path::new("/x/.f.hayedik-part"),
            io::Error::from_raw_os_error(CODES.0),
        );
        assert!(e.is_disk_full());
        let msg = e.to_string();
        assert!(
            msg.starts_with("disk full: writing /x/.f.hayedik-part: "),
            "{msg}"
        );
        assert!(msg.contains(&format!("os error {}", CODES.0)), "{msg}");
        assert!(msg.ends_with("free space and rerun the same command to resume"));

        let e = StorageError::io(
            Op::Creating,
            Path::new("/ro/.f.hayedik-part"),
            io::Error::from_raw_os_error(CODES.1),
        );
        assert!(matches!(e, StorageError::NotWritable { .. }));
        assert!(e
            .to_string()
            .starts_with("cannot write to /ro: creating /ro/.f.hayedik-part"));

        let e = StorageError::io(
            Op::Reading,
            Path::new("/x/f"),
            io::Error::from_raw_os_error(CODES.2),
        );
        assert!(matches!(e, StorageError::Io { .. }));
        assert!(e.io_error().is_some());

        let e = StorageError::DestinationExists {
            path: "/x/f".into(),
            reason: "size 3 bytes, expected 4".into(),
        };
        let msg = e.to_string();
        assert!(msg.contains("/x/f exists and is not a copy of this content"));
        assert!(msg.contains("refusing to overwrite it: move it away or choose another -o DIR"));
    }
}
