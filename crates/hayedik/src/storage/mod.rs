//! Storage of a peer: positional piece I/O behind a small trait, and the
//! lifecycle of a download in a directory (resume, reuse, no clobbering).
//!
//! * [`Storage`]: read and write bytes at an offset of the content's
//!   (virtual) byte space, from many threads at once. [`TreeStorage`] maps it
//!   onto the files of a tree (one file is a tree of one): the only backend
//!   of the product. Unit tests also have `MemoryStorage`, a buffer.
//! * [`Download`]: a download of a file or a folder tree into `DIR/TOP`.
//!   Each file's data goes to `.NAME.hayedik-part` beside its final name, the
//!   set of verified pieces to `DIR/.TOP.hayedik-resume`; each file takes
//!   its final name once complete, without ever replacing a file there.
//!   [`Download::open`] reuses complete files already in place, resumes
//!   from part files (verifying what the resume file claims rather than
//!   trusting it), or starts afresh. Where each file goes, and the checks
//!   made before anything is written, are its [`Target`]'s plan (`plan.rs`).
//!
//! Invariant: the resume file claims a piece only if that piece was written,
//! verified and synced to disk before the resume file was written. See
//! `docs/storage.md` for the file formats and the reasoning.

use std::io;

mod download;
mod error;
mod fsutil;
mod layout;
#[cfg(test)]
mod memory;
mod plan;
mod resume;
mod tree;
mod verify;

#[cfg(test)]
mod tests;

pub use download::{CompleteFile, Download, Opened};
pub use error::{Op, StorageError};
pub use fsutil::is_side_name;
pub use layout::{Bitfield, PieceLayout, MAX_PIECE_SIZE};
#[cfg(test)]
pub use memory::MemoryStorage;
pub use plan::Target;
pub use resume::{ResumeError, ResumeState};
pub use tree::{raw_os_error, FileState, TreeFile, TreeStorage};
pub use verify::verify_pieces;

/// Positional I/O over a content's byte space `0..len()`. Storage has a fixed
/// length: reads and writes past it fail with `InvalidInput`, so no peer can
/// make a file grow. All methods take `&self`: implementations are safe to use
/// from many threads at once.
pub trait Storage: Send + Sync {
    /// Length of the content in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Fills `buf` as [`Storage::read_at`] does, but only if that needs no
    /// disk I/O: the bytes are all in memory (the page cache) and the file
    /// is open. Returns whether `buf` was filled; `false` (never an error:
    /// the caller then reads with `read_at`, off the async runtime, and gets
    /// the real error there) also wherever the platform cannot tell. Never
    /// waits for a disk, so it may run on an async runtime's thread.
    fn read_at_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        let _ = (offset, buf);
        false
    }

    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Makes the written data durable (fdatasync for a file).
    fn sync(&self) -> io::Result<()>;
}

/// Checks that `offset..offset + n` lies within `0..len`.
pub(crate) fn check_range(offset: u64, n: usize, len: u64) -> io::Result<()> {
    let end = u64::try_from(n).ok().and_then(|n| offset.checked_add(n));
    match end {
        Some(end) if end <= len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{n} is outside the content's {len} bytes"),
        )),
    }
}
