//! The transfers a `hayedik ui` runs: each is a `share` or a `get` of the
//! library, run on its own task with its own event queue, exactly as the
//! CLI runs them. [`Transfers`] owns their state: it applies each event to
//! the transfer it came from (so a reloaded page sees the same state) and
//! passes it on, tagged with the transfer's id, to the page's event
//! streams.
//!
//! Bounds: [`MAX_TRANSFERS`] transfers (stopped ones included, until
//! removed), [`TRANSFER_QUEUE`] events waiting per transfer (the library's
//! queue: `progress` coalesces, the rest is counted when dropped), and
//! [`BROADCAST`] events per event-stream subscriber (a lagging page is
//! told to reload its state).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::events::{self, Event, EventStream};
use crate::peer::get::GetOptions;
use crate::peer::share::ShareOptions;
use crate::peer::swarm::Swarm;

/// Transfers kept at once (running or not).
pub const MAX_TRANSFERS: usize = 64;
/// Events waiting in one transfer's queue for the pump.
pub const TRANSFER_QUEUE: usize = 1024;
/// Events waiting for each event-stream subscriber.
pub const BROADCAST: usize = 1024;
/// Warnings kept per transfer (the oldest go first).
pub const KEPT_WARNINGS: usize = 16;
/// Cells of a piece map (pieces are grouped when there are more).
pub const MAP_CELLS: u32 = 256;
/// How long a `get` started from the page waits without progress.
pub const GET_TIMEOUT: Duration = Duration::from_secs(120);

/// What a transfer was asked to do.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    Share {
        path: PathBuf,
        /// `HOST:PORT` of a central tracker; `None`: one in this process.
        #[serde(skip_serializing_if = "Option::is_none")]
        tracker: Option<String>,
    },
    Get {
        ticket: String,
        dir: PathBuf,
    },
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Hashing, creating the swarm, looking for peers or the manifest.
    Starting,
    /// `share`: the ticket is out, serving.
    Sharing,
    /// `get`: pieces arriving.
    Downloading,
    /// `get`: complete and verified, serving others.
    Seeding,
    /// Stopped by the user; resume starts it again.
    Stopped,
    /// Ended with an error (see `error`); resume starts it again.
    Failed,
}

impl Status {
    fn is_running(self) -> bool {
        !matches!(self, Status::Stopped | Status::Failed)
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefusedError {
    #[error("too many transfers ({MAX_TRANSFERS}): remove a stopped one first")]
    Full,
    #[error("no transfer {0}")]
    Unknown(u64),
    #[error("transfer {0} is running: stop it first")]
    Running(u64),
    #[error("transfer {0} is already running")]
    AlreadyRunning(u64),
}

/// What a `get`'s `done` event said: `from`, `via` and seconds.
#[derive(Debug)]
struct Finished {
    from: BTreeMap<String, u64>,
    via: BTreeMap<String, String>,
    seconds: f64,
}

/// One transfer's state, as the page shows it.
#[derive(Debug)]
struct Transfer {
    request: Request,
    status: Status,
    /// Runs so far (a resume is a new run): events of an older run that
    /// trail in are not applied.
    run: u64,
    cancel: Option<CancellationToken>,
    swarm: Option<Arc<Swarm>>,
    error: Option<String>,
    ticket: Option<String>,
    name: Option<String>,
    path: Option<String>,
    bytes_total: u64,
    pieces: u64,
    /// The last `progress` event: bytes_done, peers, rate.
    progress: Option<(u64, usize, u64)>,
    done: Option<Finished>,
    reachability: Option<(bool, String, String)>,
    copies: u64,
    listening: Option<String>,
    warnings: VecDeque<String>,
    started: Instant,
}

/// The state of every transfer, and the fan-out of their events.
pub struct Transfers {
    inner: Mutex<Inner>,
    broadcast: broadcast::Sender<Arc<str>>,
    /// Stops every transfer (`ui` shutting down).
    cancel: CancellationToken,
    public_host: Option<String>,
}

struct Inner {
    next_id: u64,
    list: BTreeMap<u64, Transfer>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transfers {
    pub fn new(cancel: CancellationToken, public_host: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                next_id: 1,
                list: BTreeMap::new(),
            }),
            broadcast: broadcast::channel(BROADCAST).0,
            cancel,
            public_host,
        })
    }

    /// A new subscriber to every transfer's events (JSON lines).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.broadcast.subscribe()
    }

    /// Adds and starts a transfer; its id.
    pub fn add(self: &Arc<Self>, request: Request) -> Result<u64, RefusedError> {
        let id = {
            let mut inner = lock(&self.inner);
            if inner.list.len() >= MAX_TRANSFERS {
                return Err(RefusedError::Full);
            }
            let id = inner.next_id;
            inner.next_id += 1;
            inner.list.insert(id, Transfer::new(request));
            id
        };
        self.start(id)?;
        Ok(id)
    }

    /// Stops a running transfer (what it did is kept: a get resumes).
    pub fn stop(&self, id: u64) -> Result<(), RefusedError> {
        let inner = lock(&self.inner);
        let t = inner.list.get(&id).ok_or(RefusedError::Unknown(id))?;
        if let Some(c) = &t.cancel {
            c.cancel();
        }
        Ok(())
    }

    /// Starts a stopped or failed transfer again.
    pub fn resume(self: &Arc<Self>, id: u64) -> Result<(), RefusedError> {
        self.start(id)
    }

    /// Forgets a transfer that is not running.
    pub fn remove(&self, id: u64) -> Result<(), RefusedError> {
        let mut inner = lock(&self.inner);
        let t = inner.list.get(&id).ok_or(RefusedError::Unknown(id))?;
        if t.cancel.is_some() {
            return Err(RefusedError::Running(id));
        }
        inner.list.remove(&id);
        drop(inner);
        self.send(id, &serde_json::json!({"event": "removed"}));
        Ok(())
    }

    /// A transfer's ticket, if it has one.
    pub fn ticket(&self, id: u64) -> Option<String> {
        lock(&self.inner).list.get(&id)?.ticket.clone()
    }

    /// Every transfer's state, for the page.
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        let inner = lock(&self.inner);
        inner.list.iter().map(|(id, t)| t.snapshot(*id)).collect()
    }

    fn start(self: &Arc<Self>, id: u64) -> Result<(), RefusedError> {
        let (request, run, cancel) = {
            let mut inner = lock(&self.inner);
            let t = inner.list.get_mut(&id).ok_or(RefusedError::Unknown(id))?;
            if t.cancel.is_some() {
                return Err(RefusedError::AlreadyRunning(id));
            }
            let cancel = self.cancel.child_token();
            t.run += 1;
            t.cancel = Some(cancel.clone());
            t.status = Status::Starting;
            t.error = None;
            t.progress = None;
            t.done = None;
            t.swarm = None;
            t.started = Instant::now();
            (t.request.clone(), t.run, cancel)
        };
        self.send(id, &serde_json::json!({"event": "started", "run": run}));
        let (sink, stream) = events::channel(TRANSFER_QUEUE, false);
        let pump = crate::spawn::spawn(
            &format!("ui transfer {id} events"),
            self.clone().pump(id, run, stream),
        );
        let me = self.clone();
        crate::spawn::spawn(&format!("ui transfer {id}"), async move {
            let result = match request {
                Request::Share { path, tracker } => {
                    let opts = ShareOptions {
                        path,
                        tracker,
                        public_host: me.public_host.clone(),
                        listen: SocketAddr::from(([0, 0, 0, 0], 0)),
                        max_upload: None,
                        max_peers_per_ip: crate::peer::slots::DEFAULT_PER_ADDRESS,
                        until_replicated: None,
                        skip_unportable: false,
                        // Changing the user's router is opt-in; the page
                        // does not offer it (yet).
                        port_mapping: false,
                        dht: None,
                    };
                    let m = me.clone();
                    crate::peer::share::share(opts, sink.clone(), cancel.clone(), move |s| {
                        m.observe(id, run, s.swarm)
                    })
                    .await
                    .map(|_| ())
                }
                Request::Get { ticket, dir } => match crate::cli::parse_ticket(&ticket) {
                    Err(e) => Err(anyhow::anyhow!("{e}")),
                    Ok(ticket) => {
                        let opts = GetOptions {
                            ticket,
                            out_dir: dir,
                            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
                            seed: true,
                            timeout: Some(GET_TIMEOUT),
                            max_upload: None,
                            max_download: None,
                            only: Vec::new(),
                            max_peers_per_ip: crate::peer::slots::DEFAULT_PER_ADDRESS,
                            port_mapping: false,
                            dht: None,
                        };
                        let m = me.clone();
                        crate::peer::get::get_observed(opts, sink.clone(), cancel.clone(), |s| {
                            m.observe(id, run, s)
                        })
                        .await
                        .map(|_| ())
                    }
                },
            };
            if let Err(e) = &result {
                // As the CLI's face does: the error is an event too.
                sink.emit(Event::error(events::kind_of(e), format!("{e:#}")));
            }
            drop(sink);
            // Every event is applied before the transfer counts as ended.
            let _ = pump.await;
            me.ended(id, run, result.err().map(|e| format!("{e:#}")));
        });
        Ok(())
    }

    fn observe(&self, id: u64, run: u64, swarm: Arc<Swarm>) {
        let mut inner = lock(&self.inner);
        if let Some(t) = inner.list.get_mut(&id).filter(|t| t.run == run) {
            t.swarm = Some(swarm);
        }
    }

    /// Applies and forwards one transfer's events until its queue ends.
    async fn pump(self: Arc<Self>, id: u64, run: u64, mut stream: EventStream) {
        while let Some(event) = stream.recv().await {
            let value = {
                let mut inner = lock(&self.inner);
                match inner.list.get_mut(&id).filter(|t| t.run == run) {
                    Some(t) => t.apply(&event),
                    None => continue,
                }
                serde_json::to_value(&event).unwrap_or_default()
            };
            self.send(id, &value);
        }
    }

    fn ended(&self, id: u64, run: u64, error: Option<String>) {
        let status = {
            let mut inner = lock(&self.inner);
            let Some(t) = inner.list.get_mut(&id).filter(|t| t.run == run) else {
                return;
            };
            t.cancel = None;
            t.swarm = None;
            t.status = if error.is_some() {
                Status::Failed
            } else {
                Status::Stopped
            };
            t.error = error;
            t.status
        };
        self.send(id, &serde_json::json!({"event": "ended", "status": status}));
    }

    /// Sends `value` with `"transfer": id` to every subscriber.
    fn send(&self, id: u64, value: &serde_json::Value) {
        let mut value = value.clone();
        if let Some(map) = value.as_object_mut() {
            map.insert("transfer".into(), id.into());
        }
        // No subscriber: nothing to do.
        let _ = self.broadcast.send(Arc::from(value.to_string()));
    }
}

impl Transfer {
    fn new(request: Request) -> Self {
        let ticket = match &request {
            Request::Get { ticket, .. } => Some(ticket.clone()),
            Request::Share { .. } => None,
        };
        Self {
            request,
            status: Status::Starting,
            run: 0,
            cancel: None,
            swarm: None,
            error: None,
            ticket,
            name: None,
            path: None,
            bytes_total: 0,
            pieces: 0,
            progress: None,
            done: None,
            reachability: None,
            copies: 0,
            listening: None,
            warnings: VecDeque::new(),
            started: Instant::now(),
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Listening { addr, .. } => self.listening = Some(addr.clone()),
            Event::Ticket {
                ticket,
                bytes,
                pieces,
                name,
                ..
            } => {
                self.ticket = Some(ticket.clone());
                self.bytes_total = *bytes;
                self.pieces = *pieces;
                self.name = Some(name.clone());
                self.status = Status::Sharing;
            }
            Event::Manifest {
                name,
                bytes,
                pieces,
                path,
                ..
            } => {
                self.name = Some(name.clone());
                self.bytes_total = *bytes;
                self.pieces = *pieces;
                self.path = Some(path.clone());
                self.status = Status::Downloading;
            }
            Event::Progress {
                bytes_done,
                peers,
                rate,
                ..
            } => self.progress = Some((*bytes_done, *peers, *rate)),
            Event::Done {
                path,
                seconds,
                from,
                via,
                ..
            } => {
                self.path = Some(path.clone());
                self.done = Some(Finished {
                    from: from.clone(),
                    via: via.clone(),
                    seconds: *seconds,
                });
            }
            Event::Seeding => self.status = Status::Seeding,
            Event::Reachability {
                reachable,
                addr,
                how,
            } => self.reachability = Some((*reachable, addr.clone(), how.clone())),
            Event::PeerDone { copies, .. } => self.copies = *copies,
            Event::Warning { message } => {
                if self.warnings.len() >= KEPT_WARNINGS {
                    self.warnings.pop_front();
                }
                self.warnings.push_back(message.clone());
            }
            Event::Error { message, .. } => self.error = Some(message.clone()),
            _ => {}
        }
    }

    fn snapshot(&self, id: u64) -> serde_json::Value {
        let live = self.swarm.as_ref();
        let (bytes_done, from) = match live {
            Some(s) if s.have().is_some() => (
                s.bytes_verified(),
                s.from_counts()
                    .into_iter()
                    .map(|(a, n)| (a.to_string(), n))
                    .collect(),
            ),
            _ => match &self.done {
                Some(f) => (self.bytes_total, f.from.clone()),
                None => (self.progress.map_or(0, |p| p.0), BTreeMap::new()),
            },
        };
        let via = self
            .done
            .as_ref()
            .map(|d| d.via.clone())
            .unwrap_or_default();
        let (uploaded, downloaded) = live.map_or((0, 0), |s| {
            (s.uploaded.load(Relaxed), s.downloaded.load(Relaxed))
        });
        let peers = match live {
            Some(s) => s.peer_count(),
            None => 0,
        };
        let (map, rarest) = live.map(piece_map).unwrap_or_default();
        serde_json::json!({
            "id": id,
            "request": self.request,
            "status": self.status,
            "running": self.status.is_running() && self.cancel.is_some(),
            "error": self.error,
            "ticket": self.ticket,
            "name": self.name,
            "path": self.path,
            "bytes_total": self.bytes_total,
            "bytes_done": bytes_done,
            "pieces": self.pieces,
            "rate": self.progress.map_or(0, |p| p.2),
            "peers": peers,
            "from": from,
            "via": via,
            "seconds": self.done.as_ref().map(|d| d.seconds),
            "uploaded": uploaded,
            "downloaded": downloaded,
            "copies": self.copies,
            "listening": self.listening,
            "reachability": self.reachability.as_ref().map(|(r, a, h)| {
                serde_json::json!({"reachable": r, "addr": a, "how": h})
            }),
            "warnings": self.warnings,
            "map": map,
            "rarest": rarest,
            "elapsed": self.started.elapsed().as_secs_f64(),
        })
    }
}

/// The piece map of `swarm`: per cell (a run of pieces), the percentage of
/// its pieces held here, and the fewest connected peers holding any of
/// them. Empty before the content is known.
fn piece_map(swarm: &Arc<Swarm>) -> (Vec<u8>, Vec<u32>) {
    let pieces = swarm.pieces.lock();
    if !pieces.is_started() {
        return (Vec::new(), Vec::new());
    }
    let have = pieces.have();
    let availability = pieces.availability();
    cells(
        have.len(),
        |i| have.get(i),
        |i| availability.get(i as usize).copied().unwrap_or(0),
    )
}

/// Groups `n` pieces into at most [`MAP_CELLS`] cells.
fn cells(n: u32, held: impl Fn(u32) -> bool, avail: impl Fn(u32) -> u32) -> (Vec<u8>, Vec<u32>) {
    let count = n.min(MAP_CELLS);
    let mut map = Vec::with_capacity(count as usize);
    let mut rarest = Vec::with_capacity(count as usize);
    for c in 0..count {
        let start = u64::from(c) * u64::from(n) / u64::from(count);
        let end = (u64::from(c) + 1) * u64::from(n) / u64::from(count);
        let (start, end) = (start as u32, end as u32);
        let len = (end - start).max(1);
        let got = (start..end).filter(|&i| held(i)).count() as u32;
        map.push(u8::try_from(got * 100 / len).unwrap_or(100));
        rarest.push((start..end).map(&avail).min().unwrap_or(0));
    }
    (map, rarest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_group_pieces() {
        let (map, rarest) = cells(4, |i| i < 2, |i| i);
        assert_eq!(map, [100, 100, 0, 0]);
        assert_eq!(rarest, [0, 1, 2, 3]);
        let (map, _) = cells(1000, |i| i % 2 == 0, |_| 1);
        assert_eq!(map.len(), MAP_CELLS as usize);
        assert!(map.iter().all(|&p| (25..=75).contains(&p)), "{map:?}");
        let (map, rarest) = cells(0, |_| true, |_| 0);
        assert!(map.is_empty() && rarest.is_empty());
        let (map, _) = cells(MAP_CELLS + 1, |_| true, |_| 0);
        assert!(map.iter().all(|&p| p == 100));
    }
}
