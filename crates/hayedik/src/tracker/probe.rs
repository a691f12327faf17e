//! Reachability probes of one swarm: which addresses were asked for, which
//! are under way, and what each found (docs/protocol.md, "ANNOUNCE_X").
//!
//! A probe is a TCP connection from the tracker to the requester's own
//! source IP and announced port, closed at once without a byte sent. The
//! table decides whether one may start; the swarm task runs it and reports
//! back with [`Probes::finished`]. Invariants: at most [`MAX_ENTRIES`]
//! addresses are remembered and at most [`MAX_IN_FLIGHT`] probes run per
//! swarm; an address is probed at most once per [`RESULT_TTL`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hayedik_proto::tracker::Probe;

/// Addresses remembered per swarm (results and probes under way).
pub const MAX_ENTRIES: usize = 256;
/// Probes under way per swarm.
pub const MAX_IN_FLIGHT: usize = 8;
/// How long a result is kept and answered again without a new probe.
pub const RESULT_TTL: Duration = Duration::from_secs(30);
/// A probe gives up after this: under the kernel's first SYN retransmission
/// (1 s), so a probe sends one SYN at most.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

#[derive(Debug, Clone, Copy)]
struct Entry {
    result: Probe,
    at: Instant,
}

/// The probes of one swarm.
#[derive(Debug, Default)]
pub struct Probes {
    entries: HashMap<SocketAddr, Entry>,
    in_flight: usize,
}

impl Probes {
    /// Answers a request to probe `addr` at `now`: a fresh result, or
    /// `Pending` (and `true`: the caller starts the probe), or `Refused`
    /// when too many are remembered or under way.
    pub fn ask(&mut self, addr: SocketAddr, now: Instant) -> (Probe, bool) {
        if let Some(e) = self.entries.get(&addr) {
            if e.result == Probe::Pending || now.saturating_duration_since(e.at) < RESULT_TTL {
                return (e.result, false);
            }
        }
        if self.in_flight >= MAX_IN_FLIGHT {
            return (Probe::Refused, false);
        }
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&addr) {
            self.expire(now);
            if self.entries.len() >= MAX_ENTRIES {
                return (Probe::Refused, false);
            }
        }
        self.entries.insert(
            addr,
            Entry {
                result: Probe::Pending,
                at: now,
            },
        );
        self.in_flight += 1;
        (Probe::Pending, true)
    }

    /// The probe of `addr` ended: `Some(true)` connected, `Some(false)`
    /// failed, `None` not run (no global probe slot).
    pub fn finished(&mut self, addr: SocketAddr, reached: Option<bool>, now: Instant) {
        let Some(e) = self.entries.get_mut(&addr) else {
            return;
        };
        if e.result != Probe::Pending {
            return;
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        match reached {
            Some(ok) => {
                *e = Entry {
                    result: if ok {
                        Probe::Reachable
                    } else {
                        Probe::Unreachable
                    },
                    at: now,
                }
            }
            None => {
                self.entries.remove(&addr);
            }
        }
    }

    /// Forgets results older than [`RESULT_TTL`].
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            e.result == Probe::Pending || now.saturating_duration_since(e.at) < RESULT_TTL
        });
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn one_probe_per_address_until_its_result_expires() {
        let mut p = Probes::default();
        let t0 = Instant::now();
        assert_eq!(p.ask(a(1), t0), (Probe::Pending, true));
        assert_eq!(p.ask(a(1), t0), (Probe::Pending, false));
        p.finished(a(1), Some(true), t0);
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.ask(a(1), t0 + RESULT_TTL / 2), (Probe::Reachable, false));
        assert_eq!(p.ask(a(1), t0 + RESULT_TTL), (Probe::Pending, true));
        p.finished(a(1), Some(false), t0 + RESULT_TTL);
        assert_eq!(p.ask(a(1), t0 + RESULT_TTL), (Probe::Unreachable, false));
    }

    #[test]
    fn bounded_in_flight_and_entries() {
        let mut p = Probes::default();
        let t0 = Instant::now();
        for i in 0..MAX_IN_FLIGHT {
            assert!(p.ask(a(i as u16), t0).1);
        }
        assert_eq!(p.ask(a(999), t0), (Probe::Refused, false));
        for i in 0..MAX_IN_FLIGHT {
            p.finished(a(i as u16), Some(false), t0);
        }
        for i in MAX_IN_FLIGHT..MAX_ENTRIES {
            assert!(p.ask(a(i as u16), t0).1);
            p.finished(a(i as u16), None, t0);
            p.ask(a(i as u16), t0);
            p.finished(a(i as u16), Some(true), t0);
        }
        assert_eq!(p.ask(a(9999), t0), (Probe::Refused, false));
        // Once results expire, room is made.
        assert_eq!(p.ask(a(9999), t0 + RESULT_TTL), (Probe::Pending, true));
    }

    #[test]
    fn a_probe_not_run_leaves_no_result() {
        let mut p = Probes::default();
        let t0 = Instant::now();
        p.ask(a(1), t0);
        p.finished(a(1), None, t0);
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.ask(a(1), t0), (Probe::Pending, true));
        // A stray report for an address never asked changes nothing.
        p.finished(a(2), Some(true), t0);
        assert_eq!(p.in_flight(), 1);
    }
}
