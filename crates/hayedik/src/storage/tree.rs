//! Storage over a tree of files: the content's virtual byte space (see
//! [`PieceLayout`]) mapped onto one file per entry.
//!
//! Each file is in one of three states: *missing* (nothing on disk yet; the
//! first write creates its part file), *part* (data goes to the part file
//! beside its final name) or *final* (complete under its final name, read
//! only). A download renames part files to their final names one by one as
//! they complete ([`TreeStorage::mark_final`]); the same storage keeps
//! serving them.
//!
//! At most [`OPEN_FILES`] files are open at once (least recently used are
//! closed), so a tree of any number of files fits the descriptor limit.
//! Files are opened without following a symbolic link at their own name;
//! the folders above them were checked by the caller.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{check_range, PieceLayout, Storage};

/// Files kept open at once.
pub const OPEN_FILES: usize = 64;
/// With more dirty files than this, `sync` flushes the whole file system
/// once (Linux `syncfs`) instead of each file.
const SYNCFS_ABOVE: usize = 16;

const MISSING: u8 = 0;
const PART: u8 = 1;
const FINAL: u8 = 2;

/// Where one file of the tree lives.
#[derive(Debug, Clone)]
pub struct TreeFile {
    /// Its final name.
    pub path: PathBuf,
    /// Where it is written while incomplete; `None` for read-only content.
    pub part: Option<PathBuf>,
    /// Created with the executable bit (Unix).
    pub executable: bool,
}

/// The state of a file, as [`TreeStorage::state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Missing,
    Part,
    Final,
}

/// Positional I/O over the files of a tree. Safe to use from many threads.
#[derive(Debug)]
pub struct TreeStorage {
    layout: PieceLayout,
    files: Vec<TreeFile>,
    states: Vec<AtomicU8>,
    open: Mutex<OpenFiles>,
    /// Files written since the last `sync`.
    dirty: Mutex<BTreeSet<usize>>,
    /// Whether reads that must not wait for the disk are still tried
    /// ([`Storage::read_at_cached`]): off for good once the kernel or the
    /// file system says it cannot do them.
    nowait: AtomicBool,
}

#[derive(Debug, Default)]
struct OpenFiles {
    files: HashMap<usize, (Arc<File>, u64)>,
    clock: u64,
}

impl TreeStorage {
    /// Complete content, read only: every file final (a share, or a
    /// verified copy).
    pub fn read_only(layout: PieceLayout, paths: Vec<PathBuf>) -> Self {
        let files = paths
            .into_iter()
            .map(|path| TreeFile {
                path,
                part: None,
                executable: false,
            })
            .collect();
        let states = vec![FileState::Final; layout.file_count()];
        Self::new(layout, files, &states)
    }

    /// A tree whose file `i` is at `files[i]` in state `states[i]`.
    pub fn new(layout: PieceLayout, files: Vec<TreeFile>, states: &[FileState]) -> Self {
        let states = (0..files.len())
            .map(|i| {
                AtomicU8::new(match states.get(i) {
                    Some(FileState::Part) => PART,
                    Some(FileState::Final) => FINAL,
                    _ => MISSING,
                })
            })
            .collect();
        TreeStorage {
            layout,
            files,
            states,
            open: Mutex::new(OpenFiles::default()),
            dirty: Mutex::new(BTreeSet::new()),
            nowait: AtomicBool::new(cfg!(target_os = "linux")),
        }
    }

    pub fn layout(&self) -> &PieceLayout {
        &self.layout
    }

    pub fn file(&self, index: usize) -> Option<&TreeFile> {
        self.files.get(index)
    }

    pub fn state(&self, index: usize) -> FileState {
        match self.states.get(index).map(|s| s.load(Ordering::Acquire)) {
            Some(PART) => FileState::Part,
            Some(FINAL) => FileState::Final,
            _ => FileState::Missing,
        }
    }

    /// Records that file `index` now has its final name (its part file was
    /// renamed): later opens use that name, read only.
    pub fn mark_final(&self, index: usize) {
        if let Some(s) = self.states.get(index) {
            s.store(FINAL, Ordering::Release);
        }
    }

    /// Where file `index` is now on disk.
    pub fn current_path(&self, index: usize) -> Option<&Path> {
        let f = self.files.get(index)?;
        match (self.state(index), &f.part) {
            (FileState::Final, _) | (_, None) => Some(&f.path),
            (_, Some(part)) => Some(part),
        }
    }

    fn lock_open(&self) -> MutexGuard<'_, OpenFiles> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open file `index`, opening it (and creating its part file when
    /// `create`) if needed.
    fn handle(&self, index: usize, create: bool) -> io::Result<Arc<File>> {
        let mut open = self.lock_open();
        open.clock += 1;
        let now = open.clock;
        if let Some((file, used)) = open.files.get_mut(&index) {
            *used = now;
            return Ok(file.clone());
        }
        let file = Arc::new(self.open_file(index, create)?);
        if open.files.len() >= OPEN_FILES {
            let oldest = open
                .files
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&i, _)| i);
            if let Some(i) = oldest {
                open.files.remove(&i);
            }
        }
        open.files.insert(index, (file.clone(), now));
        Ok(file)
    }

    /// The file `index` if it is open already (nothing is opened).
    fn open_handle(&self, index: usize) -> Option<Arc<File>> {
        let mut open = self.lock_open();
        open.clock += 1;
        let now = open.clock;
        let (file, used) = open.files.get_mut(&index)?;
        *used = now;
        Some(file.clone())
    }

    fn open_file(&self, index: usize, create: bool) -> io::Result<File> {
        let entry = self
            .files
            .get(index)
            .ok_or_else(|| invalid("no such file"))?;
        let state = &self.states[index];
        match (state.load(Ordering::Acquire), &entry.part) {
            (FINAL, _) | (_, None) => File::open(&entry.path).map_err(|e| at(&entry.path, e)),
            (PART, Some(part)) => open_part(part, false, entry.executable).map(|(f, _)| f),
            (_, Some(part)) if create => {
                let (file, len) = open_part(part, true, entry.executable)?;
                let size = self.layout.file_size(index);
                if len != size {
                    file.set_len(size).map_err(|e| at(part, e))?;
                }
                state.store(PART, Ordering::Release);
                Ok(file)
            }
            (_, Some(part)) => Err(at(
                part,
                io::Error::new(io::ErrorKind::NotFound, "not downloaded yet"),
            )),
        }
    }

    /// The file and in-file offset of `offset..offset + n`, which must lie
    /// within one file.
    fn place(&self, offset: u64, n: usize) -> io::Result<(usize, u64)> {
        check_range(offset, n, self.layout.virtual_len())?;
        let (file, within) = self
            .layout
            .locate(offset)
            .ok_or_else(|| invalid("range is not inside a file"))?;
        check_range(within, n, self.layout.file_size(file))?;
        Ok((file, within))
    }

    /// Forgets the open descriptor of `index` (after a failed I/O, so that
    /// the next call opens the file afresh).
    fn forget(&self, index: usize) {
        self.lock_open().files.remove(&index);
    }

    /// Gives the part file of `index` the file's size when it has another
    /// (an older version of the same name, or a file cut short): bytes past
    /// the size go, and the bytes added are zeros, i.e. missing pieces.
    /// Returns the length it had when it was changed.
    pub fn fit_part(&self, index: usize) -> io::Result<Option<u64>> {
        if self.state(index) != FileState::Part {
            return Ok(None);
        }
        let file = self.handle(index, false)?;
        let len = file.metadata().map_err(|e| self.context(index, e))?.len();
        let size = self.layout.file_size(index);
        if len == size {
            return Ok(None);
        }
        file.set_len(size).map_err(|e| self.context(index, e))?;
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index);
        Ok(Some(len))
    }

    fn context(&self, index: usize, e: io::Error) -> io::Error {
        match self.current_path(index) {
            Some(p) => at(p, e),
            None => e,
        }
    }
}

impl Storage for TreeStorage {
    fn len(&self) -> u64 {
        self.layout.virtual_len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return check_range(offset, 0, self.len());
        }
        let (index, within) = self.place(offset, buf.len())?;
        let file = self.handle(index, false)?;
        read_exact_at(&file, buf, within).map_err(|e| {
            self.forget(index);
            self.context(index, e)
        })
    }

    /// With `preadv2(RWF_NOWAIT)` on Linux: the kernel copies what its
    /// page cache holds and answers `EAGAIN` instead of reading the disk
    /// (having started its read-ahead). Elsewhere, never.
    fn read_at_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() || !self.nowait.load(Ordering::Relaxed) {
            return false;
        }
        let Ok((index, within)) = self.place(offset, buf.len()) else {
            return false;
        };
        let Some(file) = self.open_handle(index) else {
            return false;
        };
        match read_nowait(&file, buf, within) {
            Ok(filled) => filled,
            Err(e) => {
                if nowait_unsupported(&e) {
                    tracing::debug!(
                        "reads that do not wait for the disk are unsupported here: {e}"
                    );
                    self.nowait.store(false, Ordering::Relaxed);
                }
                false
            }
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return check_range(offset, 0, self.len());
        }
        let (index, within) = self.place(offset, data.len())?;
        if self.state(index) == FileState::Final {
            return Err(self.context(
                index,
                io::Error::new(io::ErrorKind::PermissionDenied, "the file is complete"),
            ));
        }
        let file = self.handle(index, true)?;
        write_all_at(&file, data, within).map_err(|e| {
            self.forget(index);
            self.context(index, e)
        })?;
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index);
        Ok(())
    }

    /// Flushes every file written since the last call: each with
    /// `fdatasync`, or, with many of them on Linux, the file system at once.
    fn sync(&self) -> io::Result<()> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        let result = sync_files(self, &dirty);
        if result.is_err() {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(dirty);
        }
        result
    }
}

fn sync_files(tree: &TreeStorage, dirty: &BTreeSet<usize>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if dirty.len() > SYNCFS_ABOVE {
        if let Some(&first) = dirty.iter().next() {
            let file = tree.handle(first, false)?;
            return rustix::fs::syncfs(&*file).map_err(|e| tree.context(first, io::Error::from(e)));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = SYNCFS_ABOVE;
    for &index in dirty {
        let file = tree.handle(index, false)?;
        file.sync_data().map_err(|e| tree.context(index, e))?;
    }
    Ok(())
}

/// Opens a part file read-write without following a symbolic link at its
/// name, and gives its length; `create` makes it when missing (mode 0o755
/// when `executable`, on Unix, before the umask). A file with other hard
/// links is refused: its data belongs to another name, maybe outside the
/// download directory, and must never be written (on Unix only: Windows'
/// link count has no stable API in std).
fn open_part(path: &Path, create: bool, executable: bool) -> io::Result<(File, u64)> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
        options.mode(if executable { 0o777 } else { 0o666 });
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        // FILE_FLAG_OPEN_REPARSE_POINT, O_NOFOLLOW's counterpart: a symbolic
        // link or junction at the name is opened itself, never its target,
        // and is then refused below as not a regular file.
        const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
    }
    #[cfg(not(unix))]
    let _ = executable;
    let file = options.open(path).map_err(|e| at(path, e))?;
    let meta = file.metadata().map_err(|e| at(path, e))?;
    if !meta.is_file() {
        return Err(at(path, invalid("not a regular file")));
    }
    let links = super::fsutil::file_links(&file).map_err(|e| at(path, e))?;
    if links > 1 {
        return Err(at(
            path,
            io::Error::other(format!(
                "it has {links} hard links (another file's data); refusing to write to it"
            )),
        ));
    }
    Ok((file, meta.len()))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

/// `e`, its message prefixed with `path` (kind kept).
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        AtPath {
            path: path.to_path_buf(),
            error: e,
        },
    )
}

/// An I/O error with the path it happened on (`PATH: ERROR`). The original
/// error is kept for [`raw_os_error`], not as a source: a chain would then
/// print it twice.
#[derive(Debug)]
struct AtPath {
    path: PathBuf,
    error: io::Error,
}

impl std::fmt::Display for AtPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

impl std::error::Error for AtPath {}

/// The system's error code of `e`, also when a path was added to it here.
pub fn raw_os_error(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
        .or_else(|| e.get_ref()?.downcast_ref::<AtPath>()?.error.raw_os_error())
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

/// Fills `buf` from `offset` of `file` from the page cache only: `Ok(false)`
/// as soon as the kernel would have to wait for the disk, or at the end of
/// the file (the caller's own read reports that).
#[cfg(target_os = "linux")]
fn read_nowait(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        let at = offset + done as u64;
        match preadv2(
            file,
            &mut [io::IoSliceMut::new(rest)],
            at,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(Errno::AGAIN) => return Ok(false),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
fn read_nowait(_: &File, _: &mut [u8], _: u64) -> io::Result<bool> {
    Ok(false)
}

/// The kernel (before 4.14) or the file system cannot read without
/// waiting: asking again is pointless.
fn nowait_unsupported(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        true
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(data, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_all_at(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !data.is_empty() {
        match file.seek_write(data, offset)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                data = &data[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tree(dir: &Path, sizes: &[u64], ps: u64) -> TreeStorage {
        let layout = PieceLayout::from_sizes(sizes, ps).unwrap();
        let files = (0..sizes.len())
            .map(|i| TreeFile {
                path: dir.join(format!("f{i}")),
                part: Some(dir.join(format!(".f{i}.part"))),
                executable: i == 0,
            })
            .collect();
        TreeStorage::new(layout, files, &[])
    }

    #[test]
    fn writes_land_in_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let t = tree(dir.path(), &[10, 0, 4, 1], 4);
        assert_eq!(t.len(), 17);
        t.write_at(12, b"abcd").unwrap();
        t.write_at(8, b"xy").unwrap();
        t.write_at(16, b"z").unwrap();
        assert_eq!(t.state(0), FileState::Part);
        assert_eq!(t.state(1), FileState::Missing);
        let read = |p: &str| std::fs::read(dir.path().join(p)).unwrap();
        assert_eq!(read(".f0.part"), b"\0\0\0\0\0\0\0\0xy");
        assert_eq!(read(".f2.part"), b"abcd");
        assert_eq!(read(".f3.part"), b"z");
        // Across a file's end, into the gap, past the end: refused.
        assert!(t.write_at(8, b"xyz").is_err());
        assert!(t.write_at(10, b"q").is_err());
        assert!(t.write_at(17, b"q").is_err());
        let mut buf = [0u8; 4];
        t.read_at(12, &mut buf).unwrap();
        assert_eq!(&buf, b"abcd");
        t.sync().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| {
                std::fs::metadata(dir.path().join(p))
                    .unwrap()
                    .permissions()
                    .mode()
            };
            assert_ne!(mode(".f0.part") & 0o100, 0, "executable");
            assert_eq!(mode(".f2.part") & 0o111, 0);
        }
        // Renamed: the open descriptor keeps working, writes are refused.
        std::fs::rename(dir.path().join(".f2.part"), dir.path().join("f2")).unwrap();
        t.mark_final(2);
        t.read_at(12, &mut buf).unwrap();
        assert!(t.write_at(12, b"abcd").is_err());
    }

    /// Bytes in memory are read without waiting; anything else is left to
    /// `read_at`: a file not open yet (opening may wait), a range outside
    /// the content, pages the kernel would have to fetch from the disk.
    #[test]
    fn reads_without_waiting_only_what_is_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let t = tree(dir.path(), &[data.len() as u64], 1 << 20);
        let mut buf = vec![0u8; 64 << 10];
        assert!(
            !t.read_at_cached(0, &mut buf),
            "not open yet: left to read_at"
        );
        t.write_at(0, &data).unwrap();
        t.sync().unwrap();
        assert!(
            !t.read_at_cached(data.len() as u64 - 10, &mut buf),
            "past the end"
        );
        assert!(!t.read_at_cached(0, &mut []), "nothing to read");
        if !cfg!(target_os = "linux") {
            assert!(!t.read_at_cached(1000, &mut buf), "only Linux can tell");
            return;
        }
        // Just written: in the page cache.
        assert!(t.read_at_cached(1000, &mut buf), "pages just written");
        assert_eq!(buf, data[1000..1000 + buf.len()]);
        // Dropped from the page cache (clean after the sync): the kernel
        // starts reading them and answers at once that it would wait.
        #[cfg(target_os = "linux")]
        {
            let part = File::open(dir.path().join(".f0.part")).unwrap();
            rustix::fs::fadvise(&part, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        }
        let mut all = vec![0u8; data.len()];
        assert!(!t.read_at_cached(0, &mut all), "pages on the disk only");
        t.read_at(0, &mut all).unwrap();
        assert_eq!(all, data);
    }

    #[test]
    fn many_files_few_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let n = OPEN_FILES * 3;
        let t = tree(dir.path(), &vec![3; n], 4);
        for i in 0..n {
            t.write_at(i as u64 * 4, &[i as u8; 3]).unwrap();
        }
        assert!(t.lock_open().files.len() <= OPEN_FILES);
        t.sync().unwrap();
        for i in (0..n).rev() {
            let mut buf = [0u8; 3];
            t.read_at(i as u64 * 4, &mut buf).unwrap();
            assert_eq!(buf, [i as u8; 3]);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_a_part_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".f0.part")).unwrap();
        let t = tree(dir.path(), &[4], 4);
        assert!(t.write_at(0, b"evil").is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    /// A path added to an error keeps the system's code under it.
    #[test]
    fn errors_with_a_path_keep_their_code() {
        let e = at(Path::new("dir/f"), io::Error::from_raw_os_error(2));
        assert_eq!(raw_os_error(&e), Some(2));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("dir/f: "), "{e}");
        assert_eq!(raw_os_error(&io::Error::other("no code")), None);
    }

    /// A part file with another name elsewhere (a hard link) is another
    /// file's data: neither written (whatever its state) nor read.
    #[cfg(unix)]
    #[test]
    fn a_hard_link_at_a_part_name_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::fs::hard_link(&target, dir.path().join(".f0.part")).unwrap();
        let t = tree(dir.path(), &[4], 4);
        let e = t.write_at(0, b"evil").unwrap_err();
        assert!(e.to_string().contains("hard link"), "{e}");
        let t = TreeStorage::new(t.layout.clone(), t.files.clone(), &[FileState::Part]);
        assert!(t.write_at(0, b"evil").is_err());
        assert!(t.read_at(0, &mut [0u8; 4]).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
