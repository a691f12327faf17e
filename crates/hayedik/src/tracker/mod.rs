//! The tracker: a central tracker on one well-known UDP port that launches a
//! swarm tracker per shared content, each on its own port; one task serves
//! every swarm's socket ([`swarm_task`]).
//!
//! - [`central`]: JOIN, cookies, launching swarms, the budget ([`limits`]).
//! - [`swarm`]: one swarm's state (confirmation, key, peers); [`swarm_task`]
//!   serves it on its socket.
//! - [`peers`]: a swarm's peer table.
//! - [`state`]: confirmed swarms kept across restarts (`--state`).
//! - [`cookie`]: stateless cookies and connection ids.

pub mod central;
pub mod cookie;
pub mod http;
pub mod introduce;
pub mod limits;
pub mod peers;
pub mod probe;
pub mod state;
pub mod stats;
pub mod swarm;
pub mod swarm_task;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hayedik_proto::tracker::RelayAddr;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Events};
use central::CentralTracker;
use limits::Limits;
use state::Store;
use swarm::{SwarmSettings, SwarmTracker};
use swarm_task::Swarms;

/// Everything `hayedik tracker` can be told.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Swarm ports are taken from this inclusive range, or are ephemeral.
    pub swarm_ports: Option<(u16, u16)>,
    pub confirm_timeout: Duration,
    pub announce_interval: Duration,
    /// A confirmed swarm nobody announced to for this long is retired.
    pub retire_after: Duration,
    /// A confirmed swarm that no ANNOUNCE bound within this long after its
    /// confirmation (or restoration) is retired: nobody can use it.
    pub retire_unannounced: Duration,
    pub state_dir: Option<PathBuf>,
    pub limits: Limits,
    /// `--relay`: serve a relay on TCP too.
    pub relay: Option<RelayConfig>,
    /// `--http`: serve the status page and `/metrics` there.
    pub http: Option<SocketAddr>,
    /// An embedded tracker's external address for its own sharer
    /// (`share --port-mapping`, see [`swarm::ExternalAddress`]).
    pub external: Option<Arc<swarm::ExternalAddress>>,
    /// `--max-listed`: peers listed in one answer at most, whatever an
    /// ANNOUNCE asks for (the 1,200-byte datagram bounds it anyway).
    pub max_listed: u16,
}

/// Where and how the relay runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// TCP address; `None`: the central tracker's IP and port number.
    pub listen: Option<SocketAddr>,
    pub limits: crate::relay::RelayLimits,
}

/// Reachability probes running at once, over all swarms of a tracker.
pub const MAX_PROBES: usize = 64;

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            swarm_ports: None,
            confirm_timeout: Duration::from_secs(5),
            announce_interval: Duration::from_secs(60),
            retire_after: Duration::from_secs(30 * 24 * 3600),
            retire_unannounced: Duration::from_secs(600),
            state_dir: None,
            limits: Limits::default(),
            relay: None,
            http: None,
            external: None,
            max_listed: u16::MAX,
        }
    }
}

/// What every task of one tracker shares.
pub struct Shared {
    pub events: Events,
    pub store: Option<Arc<Store>>,
    pub cancel: CancellationToken,
    pub confirm_timeout: Duration,
    pub retire: swarm::Retire,
    pub swarm_settings: SwarmSettings,
    /// Probe slots shared by every swarm ([`MAX_PROBES`]).
    pub probes: Arc<tokio::sync::Semaphore>,
    /// What the status page shows (`--http`).
    pub stats: Arc<stats::Stats>,
}

/// Binds swarm sockets: on the central tracker's IP, from a port range or an
/// ephemeral port, never on a port reserved for a stored swarm (one waiting to
/// be restored must get its port back, so its tickets keep working).
#[derive(Debug, Clone)]
pub struct Binder {
    pub ip: IpAddr,
    pub range: Option<(u16, u16)>,
    reserved: Arc<std::sync::Mutex<HashSet<u16>>>,
}

impl Binder {
    pub fn new(ip: IpAddr, range: Option<(u16, u16)>) -> Self {
        Self {
            ip,
            range,
            reserved: Arc::default(),
        }
    }

    /// Keeps `port` for a stored swarm.
    pub fn reserve(&self, port: u16) {
        if let Ok(mut r) = self.reserved.lock() {
            r.insert(port);
        }
    }

    /// `port` no longer belongs to a stored swarm.
    pub fn release(&self, port: u16) {
        if let Ok(mut r) = self.reserved.lock() {
            r.remove(&port);
        }
    }

    fn is_reserved(&self, port: u16) -> bool {
        self.reserved.lock().is_ok_and(|r| r.contains(&port))
    }

    /// A socket on a free port.
    pub fn bind_any(&self) -> std::io::Result<std::net::UdpSocket> {
        let Some((low, high)) = self.range else {
            // Hold refused sockets until the end so the system offers others.
            let mut refused = Vec::new();
            for _ in 0..16 {
                let s = std::net::UdpSocket::bind(SocketAddr::new(self.ip, 0))?;
                if !self.is_reserved(s.local_addr()?.port()) {
                    return Ok(s);
                }
                refused.push(s);
            }
            return Err(std::io::Error::other("only reserved ports were offered"));
        };
        let size = u32::from(high - low) + 1;
        let start = rand::random::<u32>() % size;
        // Bounded: a full range fails fast instead of scanning 64k ports.
        let tries = size.min(4096);
        let mut last = None;
        for i in 0..tries {
            let offset = (start + i) % size;
            let port = low + u16::try_from(offset).unwrap_or(0);
            if self.is_reserved(port) {
                continue;
            }
            match std::net::UdpSocket::bind(SocketAddr::new(self.ip, port)) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("empty swarm port range")))
    }

    /// A socket on exactly `port`, for a CLAIM: never a port reserved for a
    /// stored swarm, nor one outside the range.
    pub fn bind_exact(&self, port: u16) -> std::io::Result<std::net::UdpSocket> {
        if self.is_reserved(port) {
            return Err(std::io::Error::other("port reserved for a stored swarm"));
        }
        if let Some((low, high)) = self.range {
            if port < low || port > high {
                return Err(std::io::Error::other("port outside --swarm-ports"));
            }
        }
        std::net::UdpSocket::bind(SocketAddr::new(self.ip, port))
    }

    /// A nonblocking socket on exactly `port` (to restore a swarm).
    pub fn bind_port(&self, port: u16) -> std::io::Result<std::net::UdpSocket> {
        let s = std::net::UdpSocket::bind(SocketAddr::new(self.ip, port))?;
        s.set_nonblocking(true)?;
        Ok(s)
    }
}

/// Runs a tracker on `socket` until `cancel` fires; when it returns, every
/// task it started (the central tracker's, every swarm's) has ended.
///
/// Opening the state store and restoring swarms happens before this returns
/// its first error, so a bad state directory is reported at start.
pub async fn run(
    socket: UdpSocket,
    config: TrackerConfig,
    events: Events,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let scope = crate::spawn::Scope::new("tracker");
    let cancel = cancel.child_token();
    let result = scope
        .run(run_scoped(socket, config, events, cancel.clone()))
        .await;
    cancel.cancel();
    scope.shutdown(crate::spawn::SHUTDOWN_WAIT).await;
    result
}

async fn run_scoped(
    socket: UdpSocket,
    config: TrackerConfig,
    events: Events,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let local = socket
        .local_addr()
        .context("reading the tracker's address")?;
    let store = match &config.state_dir {
        Some(dir) => {
            let dir = dir.clone();
            let store = tokio::task::spawn_blocking(move || Store::open(&dir)).await??;
            Some(Arc::new(store))
        }
        None => None,
    };
    let stats = Arc::new(stats::Stats::default());
    let http = match config.http {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await.map_err(|e| {
                crate::events::Failure::error(
                    crate::events::ErrorKind::Network,
                    format!("cannot serve the status page on {at}: {e}: choose another address with --http"),
                )
            })?;
            let bound = listener
                .local_addr()
                .context("reading the status page's address")?;
            crate::spawn::spawn(
                "status page",
                http::serve(listener, stats.clone(), cancel.clone()),
            );
            Some(bound.to_string())
        }
        None => None,
    };
    let relay = match &config.relay {
        Some(relay) => {
            let at = relay.listen.unwrap_or(local);
            let listener = tokio::net::TcpListener::bind(at).await.with_context(|| {
                format!("cannot serve the relay on TCP {at}: choose another address with --relay-listen")
            })?;
            let bound = listener
                .local_addr()
                .context("reading the relay's address")?;
            let s = stats.clone();
            crate::spawn::spawn(
                "relay",
                crate::relay::server::serve_observed(
                    listener,
                    relay.limits.clone(),
                    events.clone(),
                    cancel.clone(),
                    move |book| s.set_relay(book),
                ),
            );
            if bound.ip().is_unspecified() {
                RelayAddr::SameHost(bound.port())
            } else {
                RelayAddr::At(bound)
            }
        }
        None => RelayAddr::None,
    };
    let shared = Arc::new(Shared {
        events,
        store,
        cancel: cancel.clone(),
        confirm_timeout: config.confirm_timeout,
        retire: swarm::Retire {
            after: config.retire_after,
            unannounced: config.retire_unannounced,
        },
        swarm_settings: SwarmSettings {
            interval: config.announce_interval,
            max_peers: config.limits.max_peers_per_swarm,
            max_peers_per_source: config.limits.max_peers_per_ip,
            relay,
            external: config.external.clone(),
            max_listed: usize::from(config.max_listed.max(1)),
        },
        probes: Arc::new(tokio::sync::Semaphore::new(MAX_PROBES)),
        stats,
    });
    let binder = Binder::new(local.ip(), config.swarm_ports);
    let epoch = Instant::now();
    let mut central = CentralTracker::new(config.limits.clone(), epoch);
    if let Some(range) = config.swarm_ports {
        central.set_claimable(range);
    }
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let records = match &shared.store {
        Some(store) => {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.load()).await??
        }
        None => Vec::new(),
    };
    let swarms = swarm_task::start(shared.clone(), notes_tx)?;
    // Listening only once the state loaded: a bad state directory is an
    // error before anything claims the tracker started.
    shared.events.emit(Event::Listening {
        addr: local.to_string(),
        http,
        url: None,
    });
    for record in &records {
        binder.reserve(record.port);
    }
    for record in records {
        central.budget_mut().restored(record.creator);
        central.holds(record.port, record.key);
        restore(record, &binder, &shared, &swarms);
    }
    // On a worker thread like the swarm task: no cross-thread hop per
    // handshake when run from a multi-thread runtime's main thread.
    crate::spawn::spawn(
        "central tracker",
        central::serve(socket, central, binder, shared.clone(), notes_rx, swarms),
    )
    .await
    .map_err(|e| anyhow::anyhow!("central tracker task: {e}"))?;
    Ok(())
}

/// Brings a stored swarm back on its port, retrying while another process
/// holds the port.
fn restore(record: swarm::SwarmRecord, binder: &Binder, shared: &Arc<Shared>, swarms: &Swarms) {
    let port = record.port;
    let (binder, shared, swarms) = (binder.clone(), shared.clone(), swarms.clone());
    crate::spawn::spawn(&format!("swarm {port}"), async move {
        let mut warned = false;
        let socket = loop {
            match binder.bind_port(port) {
                Ok(s) => break Arc::new(s),
                Err(e) => {
                    if !warned {
                        tracing::error!(
                            "cannot restore swarm on port {port}: {e}; another process holds it? retrying every 5 s"
                        );
                        shared.events.emit(Event::error(
                            crate::events::ErrorKind::Network,
                            format!("cannot restore swarm on port {port}: {e}; retrying every 5 s"),
                        ));
                        warned = true;
                    }
                    tokio::select! {
                        _ = shared.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        };
        shared.events.emit(Event::SwarmRestored { port });
        shared
            .stats
            .restored
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Restored now: a swarm never announced to gets the whole
        // --retire-unannounced from here, as if just confirmed.
        let swarm = SwarmTracker::new(record, true, shared.swarm_settings.clone(), Instant::now());
        swarms.adopt(swarm, socket);
    });
}
