//! Block buffers handed back after use, so that receiving a block costs
//! neither an allocation nor page faults. One pool per download: session
//! readers take buffers, the disk thread gives them back once written.

use std::sync::{Arc, Mutex};

/// Idle buffers kept (4 MiB of 256 KiB blocks... whatever they hold).
const POOL_MAX: usize = 8;

/// A bounded stack of spare buffers; clones share it.
#[derive(Debug, Clone, Default)]
pub struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    /// A spare buffer (empty, maybe with capacity), or a new one.
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default()
    }

    /// Keeps `buf` for reuse, unless the pool is full.
    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut p) = self.0.lock() {
            if p.len() < POOL_MAX {
                p.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_the_pool_is_bounded() {
        let pool = BufPool::default();
        let mut b = pool.take();
        b.extend_from_slice(&[1; 100]);
        let cap = b.capacity();
        pool.give(b);
        let again = pool.take();
        assert!(again.is_empty() && again.capacity() == cap);
        for _ in 0..3 * POOL_MAX {
            pool.give(Vec::with_capacity(8));
        }
        assert_eq!(pool.0.lock().map(|p| p.len()).unwrap_or(0), POOL_MAX);
    }
}
