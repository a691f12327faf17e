//! What the user sees while a download runs: an indicatif bar on a terminal
//! (bytes, rate, ETA, peers), or `progress` JSON events a few times a
//! second; and the `--timeout` watchdog that gives up when nothing moves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::announce::Announcer;
use super::swarm::Swarm;
use crate::events::{Event, Events};

/// Minimum time between two `progress` events.
const EVENT_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct State {
    bar: Option<ProgressBar>,
    total: u64,
    last_event: Option<Instant>,
    /// (time, bytes) samples for the rate, oldest first.
    samples: Vec<(Instant, u64)>,
}

/// Progress display and watchdog; cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress {
    events: Events,
    timeout: Option<Duration>,
    started: Instant,
    state: Arc<Mutex<State>>,
}

impl Progress {
    pub fn new(events: Events, timeout: Option<Duration>) -> Self {
        Self {
            events,
            timeout,
            started: Instant::now(),
            state: Arc::new(Mutex::new(State {
                bar: None,
                total: 0,
                last_event: None,
                samples: Vec::new(),
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    fn bar(&self, total: u64, template: &str) -> Option<ProgressBar> {
        if !self.events.draws_bars() {
            return None;
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Some(bar)
    }

    /// Verifying data already on disk (resume or reuse).
    pub fn checking(&self, done: u64, total: u64) {
        let new_bar = self.with(|s| s.bar.is_none()).then(|| {
            self.bar(
                total,
                "checking {bar:40.cyan/blue} {bytes}/{total_bytes} ({binary_bytes_per_sec})",
            )
        });
        self.with(|s| {
            if let Some(b) = new_bar.flatten() {
                s.bar = Some(b);
            }
            if let Some(b) = &s.bar {
                b.set_position(done);
            }
        });
    }

    /// The download proper starts with `done` of `total` bytes verified.
    pub fn start(&self, name: String, total: u64, done: u64) {
        let bar = self.bar(
            total,
            "{msg} {bar:40.green/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        );
        self.with(|s| {
            if let Some(old) = s.bar.take() {
                old.finish_and_clear();
            }
            if let Some(b) = &bar {
                b.set_position(done);
                b.set_message(name);
                b.reset_eta();
            }
            s.bar = bar;
            s.total = total;
            s.samples = vec![(Instant::now(), done)];
        });
    }

    /// Refreshes the bar, or emits a `progress` event if one is due.
    pub fn update(&self, swarm: &Swarm) {
        let done = swarm.bytes_verified();
        let peers = swarm.peer_count();
        let now = Instant::now();
        let event = self.with(|s| {
            s.samples.push((now, done));
            // Rate over the last few seconds.
            while s.samples.len() > 2 && now.duration_since(s.samples[0].0) > Duration::from_secs(3)
            {
                s.samples.remove(0);
            }
            let (t0, b0) = s.samples[0];
            let secs = now.duration_since(t0).as_secs_f64();
            let rate = if secs > 0.0 {
                (done.saturating_sub(b0) as f64 / secs) as u64
            } else {
                0
            };
            if let Some(b) = &s.bar {
                b.set_position(done);
                let name = b.message();
                let base = name.split(" [").next().unwrap_or("").to_string();
                b.set_message(format!("{base} [{peers} peers]"));
                return None;
            }
            let due = s
                .last_event
                .is_none_or(|t| now.duration_since(t) >= EVENT_EVERY);
            if !due {
                return None;
            }
            s.last_event = Some(now);
            Some(Event::Progress {
                bytes_done: done,
                bytes_total: s.total,
                peers,
                rate,
            })
        });
        if let Some(e) = event {
            self.events.emit(e);
        }
    }

    /// Fails when nothing progressed for the timeout, saying what is wrong.
    pub fn check_stalled(&self, swarm: &Swarm, announcer: &Announcer) -> anyhow::Result<()> {
        let Some(timeout) = self.timeout else {
            return Ok(());
        };
        let last = swarm.last_progress().max(self.started);
        if last.elapsed() < timeout {
            return Ok(());
        }
        let secs = timeout.as_secs();
        if let Some(err) = announcer.last_error() {
            anyhow::bail!("no progress for {secs} s: {err}");
        }
        if swarm.peer_count() == 0 {
            if let Some(why) = swarm.last_peer_error() {
                anyhow::bail!(
                    "no progress for {secs} s: the peers reached were dropped for breaking the protocol (last: {why})"
                );
            }
            anyhow::bail!(
                "no progress for {secs} s: no peer with this content could be reached (is the sharer still running?)"
            );
        }
        anyhow::bail!(
            "no progress for {secs} s from {} connected peer(s): they lack the missing pieces or stalled; try again later or raise --timeout",
            swarm.peer_count()
        )
    }

    pub fn finish(&self) {
        self.with(|s| {
            if let Some(b) = s.bar.take() {
                b.finish_and_clear();
            }
        });
    }
}
