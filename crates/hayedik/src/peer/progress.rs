//! What the user sees while a download runs: on a terminal, one status line
//! while waiting (for the tracker, for peers, for the file list), then a
//! bar that fits the terminal's width (bytes, rate of what arrives, ETA,
//! peers, or "stalled"); with `--json`, `progress` events a few times a
//! second; and the watchdog that gives up at once on a final answer from
//! the tracker, or when nothing moves for `--timeout`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::announce::{AnnounceError, Announcer};
use super::swarm::Swarm;
use crate::events::{human_bytes, human_rate, plural, ErrorKind, Event, Events, Failure};

/// Minimum time between two `progress` events.
const EVENT_EVERY: Duration = Duration::from_millis(500);
/// Nothing verified for this long: the bar says "stalled".
const STALLED_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct State {
    bar: Option<ProgressBar>,
    /// The status line shown while waiting.
    status: Option<ProgressBar>,
    name: String,
    total: u64,
    last_event: Option<Instant>,
    /// (time, bytes) samples for the rate, oldest first.
    samples: Vec<(Instant, u64)>,
    /// `--dht`: a tracker that refuses or is gone does not end the
    /// download; whether that was said yet.
    dht: Option<bool>,
}

/// Progress display and watchdog; cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress {
    events: Events,
    timeout: Option<Duration>,
    started: Instant,
    /// The tracker, as the ticket names it.
    tracker: String,
    state: Arc<Mutex<State>>,
}

impl Progress {
    pub fn new(events: Events, timeout: Option<Duration>, tracker: String) -> Self {
        Self {
            events,
            timeout,
            started: Instant::now(),
            tracker,
            state: Arc::new(Mutex::new(State {
                bar: None,
                status: None,
                name: String::new(),
                total: 0,
                last_event: None,
                samples: Vec::new(),
                dht: None,
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
        Some(crate::output::show_bar(bar))
    }

    /// Shows `text` on the status line (a terminal only).
    pub fn status(&self, text: String) {
        if !self.events.draws_bars() {
            return;
        }
        self.with(|s| {
            if s.bar.is_some() {
                return;
            }
            let line = s.status.get_or_insert_with(|| {
                let b = ProgressBar::new_spinner();
                if let Ok(style) = ProgressStyle::with_template("{spinner} {wide_msg}") {
                    b.set_style(style);
                }
                let b = crate::output::show_bar(b);
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            line.set_message(fit(&text, width().saturating_sub(3)));
        });
    }

    /// Takes the status line away.
    pub fn clear_status(&self) {
        self.with(|s| {
            if let Some(b) = s.status.take() {
                b.finish_and_clear();
            }
        });
    }

    /// Verifying data already on disk (resume or reuse).
    pub fn checking(&self, done: u64, total: u64) {
        let new_bar = self
            .with(|s| s.bar.is_none())
            .then(|| self.bar(total, "checking {wide_bar:.cyan/blue} {percent:>3}%"));
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
        self.clear_status();
        let bar = self.bar(total, "{prefix} {wide_bar:.green/blue} {msg}");
        self.with(|s| {
            if let Some(old) = s.bar.take() {
                old.finish_and_clear();
            }
            if let Some(b) = &bar {
                b.set_position(done);
            }
            s.bar = bar;
            s.name = name;
            s.total = total;
            s.samples = vec![(Instant::now(), done)];
        });
    }

    /// Refreshes the bar, or emits a `progress` event if one is due.
    pub fn update(&self, swarm: &Swarm) {
        let done = swarm.bytes_verified();
        let peers = swarm.peer_count();
        let now = Instant::now();
        let stalled = swarm.last_progress().elapsed() >= STALLED_AFTER;
        let event = self.with(|s| {
            s.samples.push((now, done));
            // Rate over the last few seconds: only what arrived (reused
            // bytes are in the first sample).
            while s.samples.len() > 2 && now.duration_since(s.samples[0].0) > Duration::from_secs(3)
            {
                s.samples.remove(0);
            }
            let (t0, b0) = s.samples[0];
            let secs = now.duration_since(t0).as_secs_f64();
            let rate = if secs > 0.0 && !stalled {
                (done.saturating_sub(b0) as f64 / secs) as u64
            } else {
                0
            };
            if let Some(b) = &s.bar {
                b.set_position(done);
                let width = width();
                b.set_prefix(fit(&s.name, width / 4));
                b.set_message(bar_message(done, s.total, rate, peers, stalled, width));
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

    /// Says what is awaited on the status line while there is no bar, and
    /// fails at once on a final answer from the tracker (with no peer to go
    /// on with), or when nothing progressed for the timeout, saying what is
    /// wrong.
    pub fn check_stalled(&self, swarm: &Swarm, announcer: &Announcer) -> anyhow::Result<()> {
        let error = announcer.last_error();
        let dht = self.with(|s| s.dht.is_some());
        if let Some(e) = &error {
            if dht && swarm.peer_count() == 0 {
                self.dht_instead(e);
            } else if is_final(e) && swarm.peer_count() == 0 {
                return Err(Failure::error(ErrorKind::UnknownSwarm, e.to_string()));
            }
        }
        if self.with(|s| s.bar.is_none()) {
            self.status(self.waiting(swarm, announcer, error.as_ref()));
        }
        let Some(timeout) = self.timeout else {
            return Ok(());
        };
        let last = swarm.last_progress().max(self.started);
        if last.elapsed() < timeout {
            return Ok(());
        }
        let secs = timeout.as_secs();
        if let (Some(err), true) = (&error, dht) {
            if swarm.peer_count() == 0 {
                return Err(Failure::error(
                    ErrorKind::NoPeers,
                    format!(
                    "no progress for {secs} s: {err}, and no peer found in the DHT could be reached"
                ),
                ));
            }
        }
        if let Some(err) = error.filter(|_| !dht) {
            let kind = match err {
                AnnounceError::Unreachable { .. } => ErrorKind::TrackerUnreachable,
                _ => ErrorKind::TrackerRefused,
            };
            return Err(Failure::error(
                kind,
                format!("no progress for {secs} s: {err}"),
            ));
        }
        if swarm.peer_count() == 0 {
            if let Some(why) = swarm.last_peer_error() {
                return Err(Failure::error(ErrorKind::NoPeers, format!(
                    "no progress for {secs} s: the peers reached were dropped for breaking the protocol (last: {why})"
                )));
            }
            return Err(Failure::error(ErrorKind::NoPeers, format!(
                "no progress for {secs} s: no peer with this content could be reached (is the sharer still running?)"
            )));
        }
        Err(Failure::error(ErrorKind::Stalled, format!(
            "no progress for {secs} s from {}: they lack the missing pieces or stalled; try again later or raise --timeout",
            plural(swarm.peer_count() as u64, "connected peer")
        )))
    }

    /// `--dht` is on: a tracker that refuses or is gone does not end the
    /// download.
    pub fn dht_on(&self) {
        self.with(|s| s.dht = Some(false));
    }

    /// Says once that the tracker failed and the DHT is searched instead.
    fn dht_instead(&self, e: &AnnounceError) {
        let first = self.with(|s| s.dht.replace(true) == Some(false));
        if first {
            self.events.emit(Event::Warning {
                message: format!(
                    "the tracker {}: {e}; looking for peers in the DHT instead",
                    self.tracker
                ),
            });
        }
    }

    /// The status line's text while waiting.
    fn waiting(
        &self,
        swarm: &Swarm,
        announcer: &Announcer,
        error: Option<&AnnounceError>,
    ) -> String {
        let waited = self.started.elapsed().as_secs();
        let peers = swarm.peer_count();
        if peers > 0 {
            return format!(
                "getting the list of files from {} ({waited} s)",
                plural(peers as u64, "peer")
            );
        }
        match (announcer.latest(), error) {
            (None, Some(AnnounceError::Unreachable { .. })) => format!(
                "no answer from the tracker {} yet, still trying ({waited} s)",
                self.tracker
            ),
            (None, Some(e)) => format!("the tracker {} refused: {e}", self.tracker),
            (None, None) => format!("contacting tracker {} ... ({waited} s)", self.tracker),
            (Some(reply), _) => format!(
                "waiting for peers: {} listed by the tracker, 0 connected ({waited} s)",
                reply.peers.len()
            ),
        }
    }

    pub fn finish(&self) {
        self.clear_status();
        self.with(|s| {
            if let Some(b) = s.bar.take() {
                b.finish_and_clear();
            }
        });
    }
}

/// A final answer: asking again gets the same one.
fn is_final(e: &AnnounceError) -> bool {
    matches!(
        e,
        AnnounceError::WrongSwarm { .. } | AnnounceError::Protocol { .. }
    )
}

/// The terminal's width (80 when unknown).
fn width() -> usize {
    crate::output::term_width().unwrap_or(80).max(20)
}

/// `s` cut to `max` characters, with an ellipsis when cut.
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let mut out: String = s.chars().take(keep).collect();
    out.push('…');
    out
}

/// The text right of the bar, as much as `width` leaves room for (the
/// name takes a quarter, the bar at least a tenth).
fn bar_message(
    done: u64,
    total: u64,
    rate: u64,
    peers: usize,
    stalled: bool,
    width: usize,
) -> String {
    let pct = (done as f64 * 100.0 / total.max(1) as f64).floor() as u64;
    let speed = if stalled {
        "stalled".to_string()
    } else {
        human_rate(rate as f64)
    };
    let eta = if stalled || rate == 0 {
        String::new()
    } else {
        format!(
            " ETA {}",
            human_secs(total.saturating_sub(done) / rate.max(1))
        )
    };
    let room = width.saturating_sub(width / 4 + width / 10 + 3);
    let candidates = [
        format!(
            "{}/{} {speed}{eta} {}",
            human_bytes(done),
            human_bytes(total),
            plural(peers as u64, "peer")
        ),
        format!("{pct}% {speed}{eta} {}", plural(peers as u64, "peer")),
        format!("{pct}% {speed}{eta}"),
        format!("{pct}% {speed}"),
    ];
    let last = candidates[candidates.len() - 1].clone();
    candidates
        .into_iter()
        .find(|c| c.chars().count() <= room)
        .unwrap_or_else(|| fit(&last, room))
}

/// Seconds for people: `42 s`, `3 min 5 s`, `2 h 10 min`.
fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_fits_narrow_terminals() {
        for width in [20, 40, 50, 80, 120, 200] {
            for stalled in [false, true] {
                let m = bar_message(41 << 20, 100 << 20, 12 << 20, 3, stalled, width);
                let line = width / 4 + 1 + width / 10 + 1 + m.chars().count();
                assert!(line <= width, "{width}: {m}");
                if width >= 40 {
                    assert_eq!(m.contains("stalled"), stalled, "{m}");
                }
            }
        }
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(human_secs(185), "3 min 5 s");
    }
}
