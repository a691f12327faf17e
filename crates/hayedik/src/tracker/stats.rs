//! What a tracker counts for its status page and `/metrics` (`tracker
//! --http`): totals since start as atomics, and one [`SwarmGauge`] per live
//! swarm, written by the swarm task with relaxed stores (no lock on the
//! datagram path) and read when a page or a scrape asks.
//!
//! Bounded: one gauge per live swarm, and swarms are bounded by
//! `--max-swarms`; a gauge leaves with its swarm.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use crate::relay::book::{Book, Counters};

/// A tracker's counters.
pub struct Stats {
    pub started: Instant,
    /// JOIN handshakes that launched a swarm tracker.
    pub created: AtomicU64,
    /// Swarms confirmed by their creator.
    pub confirmed: AtomicU64,
    /// Swarms dropped because no CONFIRM came in time.
    pub reclaimed: AtomicU64,
    /// Swarms retired (nobody announced for too long).
    pub retired: AtomicU64,
    /// Swarms brought back from `--state`.
    pub restored: AtomicU64,
    /// JOINs refused by a limit (updated every few seconds).
    pub refused: AtomicU64,
    swarms: Mutex<BTreeMap<u16, Arc<SwarmGauge>>>,
    relay: OnceLock<Arc<Mutex<Book>>>,
}

/// One swarm's figures, kept current by its task.
#[derive(Debug, Default)]
pub struct SwarmGauge {
    pub confirmed: AtomicBool,
    pub peers: AtomicU32,
    pub seeders: AtomicU32,
    pub partials: AtomicU32,
    pub announces: AtomicU64,
}

/// A swarm's figures at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwarmView {
    pub port: u16,
    pub confirmed: bool,
    pub peers: u32,
    pub seeders: u32,
    pub partials: u32,
    pub announces: u64,
}

/// Everything at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct View {
    pub uptime_seconds: f64,
    pub created: u64,
    pub confirmed: u64,
    pub reclaimed: u64,
    pub retired: u64,
    pub restored: u64,
    pub refused: u64,
    pub swarms: Vec<SwarmView>,
    pub relay: Option<RelayView>,
    /// Resident memory, where the system tells it (Linux).
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayView {
    pub peers: usize,
    pub sessions: usize,
    pub sessions_total: u64,
    pub refused: u64,
    pub bytes: u64,
}

/// Removes its swarm's gauge when the swarm is dropped.
pub struct GaugeGuard {
    stats: Arc<Stats>,
    port: u16,
    pub gauge: Arc<SwarmGauge>,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        let mut swarms = self.stats.lock();
        if swarms
            .get(&self.port)
            .is_some_and(|g| Arc::ptr_eq(g, &self.gauge))
        {
            swarms.remove(&self.port);
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            created: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            swarms: Mutex::new(BTreeMap::new()),
            relay: OnceLock::new(),
        }
    }
}

impl Stats {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, Arc<SwarmGauge>>> {
        self.swarms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A gauge for the swarm on `port`, listed until the guard drops.
    pub fn swarm(self: &Arc<Self>, port: u16, confirmed: bool) -> GaugeGuard {
        let gauge = Arc::new(SwarmGauge::default());
        gauge.confirmed.store(confirmed, Relaxed);
        self.lock().insert(port, gauge.clone());
        GaugeGuard {
            stats: self.clone(),
            port,
            gauge,
        }
    }

    /// The relay's book, read at each look.
    pub fn set_relay(&self, book: Arc<Mutex<Book>>) {
        let _ = self.relay.set(book);
    }

    pub fn view(&self) -> View {
        let swarms = self
            .lock()
            .iter()
            .map(|(port, g)| SwarmView {
                port: *port,
                confirmed: g.confirmed.load(Relaxed),
                peers: g.peers.load(Relaxed),
                seeders: g.seeders.load(Relaxed),
                partials: g.partials.load(Relaxed),
                announces: g.announces.load(Relaxed),
            })
            .collect();
        let relay = self.relay.get().map(|book| {
            let c: Counters = book.lock().unwrap_or_else(|e| e.into_inner()).counters;
            RelayView {
                peers: c.peers,
                sessions: c.sessions,
                sessions_total: c.sessions_total,
                refused: c.refused,
                bytes: c.bytes,
            }
        });
        View {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            created: self.created.load(Relaxed),
            confirmed: self.confirmed.load(Relaxed),
            reclaimed: self.reclaimed.load(Relaxed),
            retired: self.retired.load(Relaxed),
            restored: self.restored.load(Relaxed),
            refused: self.refused.load(Relaxed),
            swarms,
            relay,
            memory_bytes: resident_memory(),
        }
    }
}

impl SwarmGauge {
    pub fn set_peers(&self, peers: usize, seeders: u32, partials: u32) {
        self.peers
            .store(u32::try_from(peers).unwrap_or(u32::MAX), Relaxed);
        self.seeders.store(seeders, Relaxed);
        self.partials.store(partials, Relaxed);
    }
}

/// Resident memory of this process (`VmRSS`), on Linux.
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_leave_with_their_swarm() {
        let stats = Arc::new(Stats::default());
        let a = stats.swarm(5, false);
        a.gauge.set_peers(3, 1, 2);
        let b = stats.swarm(6, true);
        let v = stats.view();
        assert_eq!(v.swarms.len(), 2);
        assert_eq!(
            (v.swarms[0].peers, v.swarms[0].seeders, v.swarms[0].partials),
            (3, 1, 2)
        );
        assert!(v.swarms[1].confirmed);
        drop(a);
        assert_eq!(stats.view().swarms.len(), 1);
        // A port taken again by a new swarm keeps the new gauge.
        let c = stats.swarm(6, false);
        drop(b);
        assert_eq!(stats.view().swarms.len(), 1);
        drop(c);
        assert!(stats.view().swarms.is_empty());
    }
}
