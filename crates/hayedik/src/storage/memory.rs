//! A storage backend in memory, for unit tests (compiled only for them):
//! the product stores content in files ([`super::TreeStorage`]).

use std::io;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{check_range, Storage};

/// Content held in a `Vec<u8>` of fixed length behind a lock.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    data: RwLock<Vec<u8>>,
}

impl MemoryStorage {
    /// Storage holding `data`; its length is fixed from now on.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemoryStorage {
            data: RwLock::new(data),
        }
    }

    // The bytes stay meaningful after a panic elsewhere: ignore poisoning.
    fn read(&self) -> RwLockReadGuard<'_, Vec<u8>> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<u8>> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn len(&self) -> u64 {
        self.read().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let data = self.read();
        check_range(offset, buf.len(), data.len() as u64)?;
        // In range, so offset fits a usize.
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = data
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut dst = self.write();
        check_range(offset, data.len(), dst.len() as u64)?;
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        dst.get_mut(start..start + data.len())
            .ok_or(io::ErrorKind::InvalidInput)?
            .copy_from_slice(data);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}
