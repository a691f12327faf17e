//! A storage backend over one file, with positional I/O: many threads read
//! and write at once without a shared cursor, and nothing is buffered.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{check_range, Storage};

/// Content stored in one file of fixed length.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    len: u64,
    path: PathBuf,
    /// Where there is no positional I/O, a seek and a read must not interleave
    /// with another thread's.
    #[cfg(not(unix))]
    cursor: std::sync::Mutex<()>,
}

impl FileStorage {
    /// Opens an existing file read-only (to verify or serve it); its length is
    /// the content length. Writes to it fail.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self::from_file(file, len, path))
    }

    /// Opens `path` read-write, creating it when missing, and sets its length
    /// to `len` (bytes beyond are cut, missing ones read as zeros and take no
    /// disk space until written where the file system supports sparse files).
    /// A symbolic link at `path` is not followed.
    pub fn create(path: &Path, len: u64) -> io::Result<Self> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW);
        }
        let file = options.open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        if meta.len() != len {
            file.set_len(len)?;
        }
        Ok(Self::from_file(file, len, path))
    }

    fn from_file(file: File, len: u64, path: &Path) -> Self {
        FileStorage {
            file,
            len,
            path: path.to_path_buf(),
            #[cfg(not(unix))]
            cursor: std::sync::Mutex::new(()),
        }
    }

    /// The path the file was opened at (it may have been renamed since: the
    /// storage keeps using the same file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes data and metadata (`fsync`), as before a rename.
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.read_exact_at(buf, offset)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let _guard = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
            let mut file = &self.file;
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(buf)
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_range(offset, data.len(), self.len)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(data, offset)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Seek, SeekFrom, Write};
            let _guard = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
            let mut file = &self.file;
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(data)
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemoryStorage;
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Action {
        Write(u64, Vec<u8>),
        Read(u64, usize),
    }

    fn action(len: u64) -> impl Strategy<Value = Action> {
        // Offsets and sizes reach a little past the end, to test the bounds.
        prop_oneof![
            (0..len + 8, proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(o, d)| Action::Write(o, d)),
            (0..len + 8, 0usize..64).prop_map(|(o, n)| Action::Read(o, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn file_and_memory_behave_alike(
            (len, actions) in (0u64..300).prop_flat_map(|len| {
                (Just(len), proptest::collection::vec(action(len), 0..40))
            })
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = FileStorage::create(&dir.path().join("f"), len).expect("create");
            let mem = MemoryStorage::new(len).expect("memory");
            let backends: [&dyn Storage; 2] = [&file, &mem];
            for a in &actions {
                match a {
                    Action::Write(o, d) => {
                        let r: Vec<bool> = backends.iter().map(|s| s.write_at(*o, d).is_ok()).collect();
                        prop_assert_eq!(r[0], r[1]);
                    }
                    Action::Read(o, n) => {
                        let mut bufs = [vec![0u8; *n], vec![0u8; *n]];
                        let r0 = backends[0].read_at(*o, &mut bufs[0]).is_ok();
                        let r1 = backends[1].read_at(*o, &mut bufs[1]).is_ok();
                        prop_assert_eq!(r0, r1);
                        prop_assert_eq!(&bufs[0], &bufs[1]);
                    }
                }
            }
            prop_assert_eq!(file.len(), mem.len());
            file.sync().expect("sync");
            prop_assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), mem.to_vec());
        }
    }

    #[test]
    fn many_threads_write_disjoint_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let storage = FileStorage::create(&path, 8 * 4096).expect("create");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let storage = &storage;
                s.spawn(move || {
                    let offset = u64::from(t) * 4096;
                    storage.write_at(offset, &[t; 4096]).expect("write");
                });
            }
        });
        let data = std::fs::read(&path).expect("read");
        for (i, chunk) in data.chunks(4096).enumerate() {
            assert!(chunk.iter().all(|&b| usize::from(b) == i));
        }
    }

    #[cfg(unix)]
    #[test]
    fn create_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(FileStorage::create(&link, 100).is_err());
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    }
}
