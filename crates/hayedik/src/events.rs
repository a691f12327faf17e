//! What the user sees, as a stream: every event of DESIGN.md is one variant
//! of [`Event`]. Library code (the tracker's loops, `get`, `share`) sends
//! events into an [`EventSink`] and never prints; a face (the CLI's
//! [`crate::output::write_events`], a web UI, a test) takes them from the
//! [`EventStream`] and renders them (JSON lines with `--json`, human lines
//! otherwise).
//!
//! The queue between them is bounded ([`channel`]'s `capacity`, the CLI uses
//! [`QUEUE_EVENTS`]) and [`EventSink::emit`] never blocks, so a face that is
//! slow or stalled (a `--json` reader that stopped reading) never stalls a
//! tracker or a transfer. When the face lags:
//!
//! - `progress` coalesces: a newer one replaces the one still waiting (and
//!   goes to the back of the queue); with the queue full and none waiting,
//!   the new one is dropped (the next one says more). Never counted: a
//!   progress event is a sample, superseded by the next.
//! - Every other event is kept until the queue holds `capacity` events.
//!   Past that it is dropped and counted, and the stream yields one
//!   [`Event::Dropped`] with the count where the gap is (before the next
//!   event accepted, or once the queue drained): nothing is lost silently.
//! - Once the face is gone ([`EventStream`] dropped, e.g. stdout was
//!   closed), events are discarded: nobody is left to tell.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The CLI's queue bound: events waiting for stdout. About 2 MiB of lines
/// at worst; a tracker creating 1,000 swarms (2,000 events) with stdout
/// stalled fits many times.
pub const QUEUE_EVENTS: usize = 16_384;

/// One event; serialized with an `"event"` field naming the variant.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Error {
        message: String,
        /// A short machine-readable word: see [`ErrorKind`] (README lists
        /// them).
        kind: ErrorKind,
    },
    Listening {
        addr: String,
        /// `tracker --http`: the bound address of the status page.
        #[serde(skip_serializing_if = "Option::is_none")]
        http: Option<String>,
        /// `ui`: the page's address, with its token.
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    SwarmCreated {
        port: u16,
    },
    SwarmConfirmed {
        port: u16,
    },
    SwarmReclaimed {
        port: u16,
    },
    SwarmRestored {
        port: u16,
    },
    SwarmRetired {
        port: u16,
    },
    Ticket {
        ticket: String,
        root: String,
        bytes: u64,
        pieces: u64,
        /// The shared file's or folder's name.
        name: String,
        /// Regular files shared (1 for a file).
        files: u64,
        /// True when a folder is shared.
        folder: bool,
    },
    Manifest {
        name: String,
        bytes: u64,
        pieces: u64,
        /// Entries (files and empty folders) in the share.
        files: u64,
        /// Where it is written (the folder or file under DIR).
        path: String,
        /// Bytes selected by `--only` (all of them without it).
        selected: u64,
    },
    Progress {
        bytes_done: u64,
        bytes_total: u64,
        peers: usize,
        rate: u64,
    },
    Done {
        path: String,
        bytes: u64,
        seconds: f64,
        reused: u64,
        from: BTreeMap<String, u64>,
        /// The same keys as `from` -> `direct`, `mapped`, `relay` or `punched`.
        via: BTreeMap<String, String>,
    },
    Seeding,
    /// share, get: whether others can reach our TCP port, and how.
    Reachability {
        reachable: bool,
        /// The address others use (as the tracker lists us).
        addr: String,
        /// `direct`, `mapped`, `relay` or `none`.
        how: String,
    },
    /// share, get with `--port-mapping`: the router forwards a port to us
    /// (until the command ends).
    PortMapped {
        /// `tcp` or `udp`.
        protocol: String,
        /// Our port.
        port: u16,
        /// The router's external address and port.
        addr: String,
        /// `pcp`, `nat-pmp` or `upnp`.
        method: String,
        /// The router asked.
        gateway: String,
    },
    /// tracker --relay: the relay's address and counters (at start, then
    /// every 15 s when they changed).
    Relay {
        addr: String,
        /// Peers registered (reachable through the relay) now.
        peers: usize,
        /// Sessions pending or spliced now.
        sessions: usize,
        /// Sessions admitted since start.
        sessions_total: u64,
        /// Connections, registrations and sessions refused (caps, rate).
        refused: u64,
        /// Bytes carried by ended sessions.
        bytes: u64,
    },
    /// `share`/`get` with the DHT on: our DHT node's UDP address, as bound.
    Dht {
        addr: String,
    },
    /// `dht-node`: its figures (at start, then every 10 s when they changed;
    /// docs/dht.md).
    DhtNode {
        addr: String,
        /// Nodes in its routing table now.
        routing_table: usize,
        /// announce_peer requests accepted since start (peers are stored
        /// within the bounds docs/dht.md gives).
        announces: u64,
        /// Requests answered since start.
        served: u64,
        /// Requests dropped since start (rate per IP, kinds not served).
        dropped: u64,
        /// Source addresses the rate limiter remembers now.
        addresses: usize,
    },
    Stopped {
        #[serde(skip_serializing_if = "Option::is_none")]
        uploaded: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        downloaded: Option<u64>,
        /// `get` only: whether the download was complete when it stopped.
        #[serde(skip_serializing_if = "Option::is_none")]
        complete: Option<bool>,
        /// `get` only: verified bytes of the content in DIR when it
        /// stopped (what a rerun resumes from).
        #[serde(skip_serializing_if = "Option::is_none")]
        kept: Option<u64>,
    },
    /// `get`: an earlier run's verified data is reused.
    Resuming {
        /// Verified bytes already on disk.
        bytes: u64,
        bytes_total: u64,
    },
    /// Something the user should know that does not stop the work (a file
    /// left out of a share, a shared file that changed).
    Warning {
        message: String,
    },
    /// `share`: another peer now holds a verified copy.
    PeerDone {
        addr: String,
        /// Other peers known to hold a verified copy.
        copies: u64,
    },
    /// `ls`: one entry of the share's manifest.
    Entry {
        path: String,
        bytes: u64,
        folder: bool,
    },
    /// Not emitted by library code: the queue's record that `events`
    /// events were dropped here because the face did not keep up.
    Dropped {
        events: u64,
    },
}

/// What an `error` event's `kind` says (README lists them): scripts act on
/// it without parsing the message.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A command line that does not parse (exit 2).
    Usage,
    /// The tracker did not answer.
    TrackerUnreachable,
    /// The tracker answered that it serves no such swarm: the ticket is
    /// wrong or its swarm is gone.
    UnknownSwarm,
    /// The tracker refused (full, rate limited, another protocol).
    TrackerRefused,
    /// No peer with the content could be reached in time.
    NoPeers,
    /// Peers were connected but nothing arrived in time.
    Stalled,
    /// The destination cannot take the download (not a folder, a
    /// different file in the way, not writable).
    Destination,
    /// Another hayedik downloads the same content into the same folder.
    Locked,
    /// Reading or writing the disk failed.
    Disk,
    /// What was given to share or select cannot be used (a missing path,
    /// a pattern that matches nothing).
    Input,
    /// A network address cannot be used (bind failed, unresolvable host).
    Network,
    /// Anything else.
    Other,
}

/// An error that says its [`ErrorKind`]: library code returns it (inside
/// an `anyhow::Error`) where the kind is not clear from the error's type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            kind,
            message: message.into(),
        })
    }
}

/// The kind of `e`: the first [`Failure`] in its chain, else what its
/// type says.
pub fn kind_of(e: &anyhow::Error) -> ErrorKind {
    use crate::peer::announce::{AnnounceError, CreateError};
    use crate::storage::StorageError;
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.kind;
        }
        let announce = cause.downcast_ref::<AnnounceError>().or_else(|| {
            match cause.downcast_ref::<CreateError>() {
                Some(CreateError::Tracker(a)) => Some(a),
                _ => None,
            }
        });
        if let Some(a) = announce {
            return match a {
                AnnounceError::Unreachable { .. } => ErrorKind::TrackerUnreachable,
                AnnounceError::WrongSwarm { .. } | AnnounceError::NotConfirmed { .. } => {
                    ErrorKind::UnknownSwarm
                }
                _ => ErrorKind::TrackerRefused,
            };
        }
        if let Some(s) = cause.downcast_ref::<StorageError>() {
            return match s {
                StorageError::DestinationExists { .. } | StorageError::NotWritable { .. } => {
                    ErrorKind::Destination
                }
                _ => ErrorKind::Disk,
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return ErrorKind::Disk;
        }
    }
    ErrorKind::Other
}

/// `n` bytes for people: `512 B`, `1.5 KiB`, `40.0 MiB`, `1.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `n` and `word`, plural when `n` is not 1: `1 peer`, `3 peers`.
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `1 entry`, `3 entries`: for words whose plural is not `word` + `s`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A rate for people: `12.5 MiB/s`.
pub fn human_rate(bytes_per_sec: f64) -> String {
    let b = if bytes_per_sec.is_finite() && bytes_per_sec > 0.0 {
        bytes_per_sec as u64
    } else {
        0
    };
    format!("{}/s", human_bytes(b))
}

impl Event {
    /// `stopped` of a command that moves no content (tracker, ui,
    /// dht-node).
    pub fn stopped_serving() -> Event {
        Event::Stopped {
            uploaded: None,
            downloaded: None,
            complete: None,
            kept: None,
        }
    }

    /// The `error` event for `message`, of `kind`.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Event {
        Event::Error {
            message: message.into(),
            kind,
        }
    }

    /// The human rendering (one line, two for a ticket).
    pub fn human(&self) -> String {
        match self {
            Event::Error { message, .. } => format!("error: {message}"),
            Event::Listening {
                url: Some(url), ..
            } => format!("open {url} in a browser (the link holds the page's key: keep it to yourself)"),
            Event::Listening {
                addr,
                http: Some(http),
                ..
            } => format!("listening on {addr}; status page and /metrics on http://{http}"),
            Event::Listening { addr, .. } => format!("listening on {addr}"),
            Event::SwarmCreated { port } => format!("swarm created on port {port}"),
            Event::SwarmConfirmed { port } => format!("swarm confirmed on port {port}"),
            Event::SwarmReclaimed { port } => {
                format!("swarm on port {port} reclaimed (not confirmed in time)")
            }
            Event::SwarmRestored { port } => format!("swarm restored on port {port}"),
            Event::SwarmRetired { port } => {
                format!("swarm on port {port} retired (no announce for too long)")
            }
            Event::Ticket {
                ticket,
                bytes,
                name,
                files,
                folder,
                ..
            } => {
                let what = if *folder {
                    format!(
                        "{name}/ ({}, {})",
                        plural(*files, "file"),
                        human_bytes(*bytes)
                    )
                } else {
                    format!("{name} ({})", human_bytes(*bytes))
                };
                format!(
                    "sharing {what}\nticket: {ticket}\non the other machine, run:\n  hayedik get {ticket}"
                )
            }
            Event::Manifest {
                path,
                bytes,
                files,
                selected,
                ..
            } => {
                let what = if *selected < *bytes {
                    format!(
                        "{} of {} selected",
                        human_bytes(*selected),
                        human_bytes(*bytes)
                    )
                } else {
                    human_bytes(*bytes)
                };
                if *files > 1 {
                    format!(
                        "writing {path} ({}, {what})",
                        count(*files, "entry", "entries")
                    )
                } else {
                    format!("writing {path} ({what})")
                }
            }
            Event::Progress {
                bytes_done,
                bytes_total,
                peers,
                rate,
            } => format!(
                "{}/{} from {} at {}",
                human_bytes(*bytes_done),
                human_bytes(*bytes_total),
                plural(*peers as u64, "peer"),
                human_rate(*rate as f64)
            ),
            Event::Done {
                path,
                bytes,
                seconds,
                reused,
                from,
                via,
            } => {
                let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
                for v in via.values() {
                    *paths.entry(v.as_str()).or_insert(0) += 1;
                }
                let paths = if paths.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> =
                        paths.iter().map(|(v, n)| format!("{n} {v}")).collect();
                    format!(": {}", list.join(", "))
                };
                let received = bytes.saturating_sub(*reused);
                if received == 0 {
                    format!(
                        "done: {path} ({}, already here and verified)",
                        human_bytes(*bytes)
                    )
                } else {
                    let rate = if *seconds > 0.0 {
                        received as f64 / seconds
                    } else {
                        0.0
                    };
                    let kept = if *reused > 0 {
                        format!(", {} was already here", human_bytes(*reused))
                    } else {
                        String::new()
                    };
                    format!(
                        "done: {path} ({} received in {seconds:.1} s at {} from {}{paths}{kept})",
                        human_bytes(received),
                        human_rate(rate),
                        plural(from.len() as u64, "peer")
                    )
                }
            }
            Event::Reachability {
                reachable: _,
                addr,
                how,
            } => match how.as_str() {
                "direct" => format!("reachable at {addr}: others connect to you directly"),
                "mapped" => format!(
                    "reachable at {addr} through a port mapped on your router: others connect to you directly"
                ),
                "relay" => format!(
                    "not reachable directly: others reach you at {addr} through the tracker's relay"
                ),
                _ => format!(
                    "others cannot connect to you at {addr}: you can download from peers others can reach, but nobody can download from you; forward that TCP port on your router to this machine, or use a tracker run with --relay"
                ),
            },
            Event::Relay {
                addr,
                peers,
                sessions,
                sessions_total,
                refused,
                bytes,
            } => format!(
                "relay on {addr}: {} registered, {} now ({sessions_total} in all), {refused} refused, {} carried",
                plural(*peers as u64, "peer"),
                plural(*sessions as u64, "session"),
                human_bytes(*bytes)
            ),
            Event::Dht { addr } => format!("DHT node on {addr}"),
            Event::DhtNode {
                addr,
                routing_table,
                announces,
                served,
                dropped,
                ..
            } => format!(
                "DHT node on {addr}: {} in the routing table, {announces} announces, {served} requests served, {dropped} dropped",
                plural(*routing_table as u64, "node")
            ),
            Event::Seeding => {
                "seeding: others can download from this machine; press Ctrl-C to stop".to_string()
            }
            Event::Stopped {
                uploaded,
                downloaded,
                complete,
                kept,
            } => {
                let counts = match (uploaded, downloaded) {
                    (Some(u), Some(d)) if *d > 0 => {
                        format!(
                            " ({} uploaded, {} downloaded)",
                            human_bytes(*u),
                            human_bytes(*d)
                        )
                    }
                    (Some(u), Some(_)) => format!(" ({} uploaded)", human_bytes(*u)),
                    _ => String::new(),
                };
                if *complete == Some(false) {
                    let kept = kept
                        .map(|k| format!(" ({} verified)", human_bytes(k)))
                        .unwrap_or_default();
                    format!(
                        "stopped before the download was complete{counts}: what arrived is kept{kept}; run the same command again to resume"
                    )
                } else {
                    format!("stopped{counts}")
                }
            }
            Event::Resuming { bytes, bytes_total } => format!(
                "resuming: {} of {} already here and verified",
                human_bytes(*bytes),
                human_bytes(*bytes_total)
            ),
            Event::Warning { message } => format!("warning: {message}"),
            Event::PortMapped {
                protocol,
                port,
                addr,
                method,
                gateway,
            } => format!(
                "port mapping: your router {gateway} forwards {addr} to {} port {port} on this machine ({}); removed when this command ends",
                protocol.to_uppercase(),
                match method.as_str() {
                    "upnp" => "UPnP-IGD",
                    "nat-pmp" => "NAT-PMP",
                    _ => "PCP",
                }
            ),
            Event::PeerDone { addr, copies } => format!(
                "{addr} has the whole share ({} {} a verified copy)",
                plural(*copies, "peer"),
                if *copies == 1 { "has" } else { "have" }
            ),
            Event::Entry {
                path,
                bytes,
                folder,
            } => {
                if *folder {
                    format!("{:>10}  {path}/", "")
                } else {
                    format!("{:>10}  {path}", human_bytes(*bytes))
                }
            }
            Event::Dropped { events } => {
                format!("{events} events dropped: they were not read in time")
            }
        }
    }
}

/// Creates a queue of at most `capacity` events (plus one [`Event::Dropped`]
/// record): the sink for library code, the stream for the face. `bars` says
/// whether the face is a terminal that wants progress bars drawn (on stderr,
/// by `get` and `share` themselves for now).
pub fn channel(capacity: usize, bars: bool) -> (EventSink, EventStream) {
    let queue = Arc::new(Queue {
        state: Mutex::new(State {
            events: VecDeque::new(),
            dropped: 0,
            senders: 1,
            gone: false,
            busy: false,
        }),
        changed: Condvar::new(),
        notify: tokio::sync::Notify::new(),
        capacity: capacity.max(1),
    });
    (
        EventSink {
            queue: Some(queue.clone()),
            bars,
        },
        EventStream { queue },
    )
}

/// Where library code sends events. Cheap to clone; [`emit`](Self::emit)
/// never blocks.
#[derive(Debug)]
pub struct EventSink {
    /// `None`: events go to the debug log only (an embedded tracker).
    queue: Option<Arc<Queue>>,
    bars: bool,
}

/// The name call sites used before events became a stream.
pub type Events = EventSink;

impl EventSink {
    /// A sink whose events go to the debug log only (an embedded tracker
    /// inside `share`, the demo's peers, tests).
    pub fn discard() -> Self {
        Self {
            queue: None,
            bars: false,
        }
    }

    /// Same as [`discard`](Self::discard), kept for old call sites: a sink
    /// that printed when `json` is now made by [`channel`] and a face.
    pub fn new(_json: bool) -> Self {
        Self::discard()
    }

    /// Same as [`discard`](Self::discard).
    pub fn quiet() -> Self {
        Self::discard()
    }

    /// Whether the face wants terminal progress bars drawn.
    pub fn draws_bars(&self) -> bool {
        self.bars
    }

    /// Queues `event` for the face, or drops it as the module doc says.
    pub fn emit(&self, event: Event) {
        let Some(queue) = &self.queue else {
            tracing::debug!("{}", event.human());
            return;
        };
        let mut s = queue.lock();
        if s.gone {
            return;
        }
        if matches!(event, Event::Progress { .. }) {
            if let Some(i) = s
                .events
                .iter()
                .rposition(|e| matches!(e, Event::Progress { .. }))
            {
                s.events.remove(i);
            }
            if s.events.len() < queue.capacity {
                s.events.push_back(event);
            }
        } else if s.events.len() < queue.capacity {
            s.put_drop_record();
            s.events.push_back(event);
        } else {
            s.dropped += 1;
            return;
        }
        drop(s);
        queue.wake();
    }
}

impl Clone for EventSink {
    fn clone(&self) -> Self {
        if let Some(q) = &self.queue {
            q.lock().senders += 1;
        }
        Self {
            queue: self.queue.clone(),
            bars: self.bars,
        }
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        if let Some(q) = &self.queue {
            q.lock().senders -= 1;
            q.wake();
        }
    }
}

/// Where a face takes events from, in order. Dropping it tells the sinks
/// nobody reads any more.
#[derive(Debug)]
pub struct EventStream {
    queue: Arc<Queue>,
}

impl EventStream {
    /// The next event; `None` once every sink is gone and the queue is
    /// empty.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.queue.take() {
                Taken::Event(e) => return Some(e),
                Taken::End => return None,
                Taken::Empty => self.queue.notify.notified().await,
            }
        }
    }

    /// The next event, waiting at most `limit` (`Err` when none came): for
    /// a face on its own thread. The previous event counts as handled from
    /// this call on (see [`wait_handled`](Self::wait_handled)).
    pub fn recv_blocking(&self, limit: Duration) -> Result<Option<Event>, Timeout> {
        let deadline = Instant::now() + limit;
        let mut s = self.queue.lock();
        s.busy = false;
        self.queue.changed.notify_all();
        loop {
            match s.take() {
                Taken::Event(e) => {
                    s.busy = true;
                    return Ok(Some(e));
                }
                Taken::End => return Ok(None),
                Taken::Empty => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Timeout);
            }
            s = self
                .queue
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until every queued event was taken and handled by a
    /// [`recv_blocking`](Self::recv_blocking) face, at most `limit`; true
    /// if so.
    pub fn wait_handled(&self, limit: Duration) -> bool {
        wait_handled(&self.queue, limit)
    }

    /// A handle to [`wait_handled`](Self::wait_handled) from another thread.
    pub fn handled_waiter(&self) -> HandledWaiter {
        HandledWaiter {
            queue: self.queue.clone(),
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let mut s = self.queue.lock();
        s.gone = true;
        s.busy = false;
        s.events.clear();
        drop(s);
        self.queue.changed.notify_all();
    }
}

/// Waits for an [`EventStream`]'s face to catch up, from another thread.
#[derive(Debug, Clone)]
pub struct HandledWaiter {
    queue: Arc<Queue>,
}

impl HandledWaiter {
    /// See [`EventStream::wait_handled`]; true at once if the face is gone.
    pub fn wait(&self, limit: Duration) -> bool {
        wait_handled(&self.queue, limit)
    }
}

fn wait_handled(queue: &Queue, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut s = queue.lock();
    while !s.gone && (s.busy || !s.events.is_empty() || s.dropped > 0) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s = queue
            .changed
            .wait_timeout(s, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

/// No event came in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout;

#[derive(Debug)]
struct Queue {
    state: Mutex<State>,
    /// For blocking faces and [`wait_handled`]: signalled on every change.
    changed: Condvar,
    /// For async faces: one permit per wake.
    notify: tokio::sync::Notify,
    capacity: usize,
}

#[derive(Debug)]
struct State {
    events: VecDeque<Event>,
    /// Events dropped since the last [`Event::Dropped`] record.
    dropped: u64,
    /// Live [`EventSink`]s.
    senders: usize,
    /// The [`EventStream`] was dropped.
    gone: bool,
    /// A blocking face is handling the last event it took.
    busy: bool,
}

enum Taken {
    Event(Event),
    Empty,
    End,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        self.changed.notify_all();
        self.notify.notify_one();
    }

    fn take(&self) -> Taken {
        self.lock().take()
    }
}

impl State {
    /// Queues the record of what was dropped, if anything was.
    fn put_drop_record(&mut self) {
        if self.dropped > 0 {
            let events = std::mem::take(&mut self.dropped);
            self.events.push_back(Event::Dropped { events });
        }
    }

    fn take(&mut self) -> Taken {
        if self.events.is_empty() {
            self.put_drop_record();
        }
        match self.events.pop_front() {
            Some(e) => Taken::Event(e),
            None if self.senders == 0 => Taken::End,
            None => Taken::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_shapes_match_design() {
        let j = |e: Event| serde_json::to_value(e).unwrap();
        assert_eq!(
            j(Event::SwarmCreated { port: 9 }),
            serde_json::json!({"event": "swarm_created", "port": 9})
        );
        assert_eq!(
            j(Event::Stopped {
                uploaded: None,
                downloaded: None,
                complete: None,
                kept: None,
            }),
            serde_json::json!({"event": "stopped"})
        );
        assert_eq!(j(Event::Seeding), serde_json::json!({"event": "seeding"}));
        let done = j(Event::Done {
            path: "x".into(),
            bytes: 1,
            seconds: 0.5,
            reused: 0,
            from: [("127.0.0.1:5".to_string(), 1)].into(),
            via: [("127.0.0.1:5".to_string(), "relay".to_string())].into(),
        });
        assert_eq!(done["from"]["127.0.0.1:5"], 1);
        assert_eq!(done["via"]["127.0.0.1:5"], "relay");
        assert_eq!(done["event"], "done");
        assert_eq!(
            j(Event::Reachability {
                reachable: true,
                addr: "192.0.2.1:5".into(),
                how: "relay".into(),
            }),
            serde_json::json!({"event": "reachability", "reachable": true, "addr": "192.0.2.1:5", "how": "relay"})
        );
        assert_eq!(
            j(Event::Dropped { events: 3 }),
            serde_json::json!({"event": "dropped", "events": 3})
        );
    }

    fn created(port: u16) -> Event {
        Event::SwarmCreated { port }
    }

    fn progress(bytes_done: u64) -> Event {
        Event::Progress {
            bytes_done,
            bytes_total: 100,
            peers: 1,
            rate: 0,
        }
    }

    fn drain(stream: &EventStream) -> Vec<Event> {
        let mut got = Vec::new();
        while let Ok(Some(e)) = stream.recv_blocking(Duration::ZERO) {
            got.push(e);
        }
        got
    }

    #[test]
    fn a_full_queue_drops_and_says_how_many_where() {
        let (sink, stream) = channel(3, false);
        for port in 1..=5 {
            sink.emit(created(port));
        }
        assert_eq!(
            stream.recv_blocking(Duration::ZERO).unwrap(),
            Some(created(1))
        );
        sink.emit(created(6));
        assert_eq!(
            drain(&stream),
            [
                created(2),
                created(3),
                Event::Dropped { events: 2 },
                created(6)
            ]
        );
        // Dropped at the end, with nothing after: still said.
        for port in 7..=11 {
            sink.emit(created(port));
        }
        let got = drain(&stream);
        assert_eq!(got.last(), Some(&Event::Dropped { events: 2 }), "{got:?}");
        drop(sink);
        assert_eq!(stream.recv_blocking(Duration::ZERO), Ok(None));
    }

    #[test]
    fn progress_coalesces_to_the_newest_and_never_crowds_out() {
        let (sink, stream) = channel(3, false);
        sink.emit(created(1));
        sink.emit(progress(1));
        sink.emit(created(2));
        sink.emit(progress(2));
        sink.emit(progress(3));
        sink.emit(created(3));
        assert_eq!(
            drain(&stream),
            [
                created(1),
                created(2),
                progress(3),
                Event::Dropped { events: 1 }
            ]
        );
    }

    #[test]
    fn a_gone_face_discards_and_wait_handled_returns() {
        let (sink, stream) = channel(3, false);
        sink.emit(created(1));
        let waiter = stream.handled_waiter();
        assert!(!waiter.wait(Duration::from_millis(10)));
        drop(stream);
        sink.emit(created(2));
        assert!(waiter.wait(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn an_async_face_gets_every_event_then_the_end() {
        let (sink, mut stream) = channel(8, false);
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = stream.recv().await {
                got.push(e);
            }
            got
        });
        for port in 1..=4 {
            sink.clone().emit(created(port));
            tokio::task::yield_now().await;
        }
        drop(sink);
        let got = task.await.unwrap();
        assert_eq!(got, (1..=4).map(created).collect::<Vec<_>>());
    }
}
