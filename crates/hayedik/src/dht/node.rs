//! `hayedik dht-node`: a Mainline DHT node in server mode, for private
//! networks and tests, bounded (docs/dht.md):
//!
//! * requests per second per source IP: a token bucket per IP
//!   ([`crate::ratelimit::RateTable`]) in the crate's request filter,
//!   remembering at most [`NodeLimits::max_addresses`] addresses;
//! * only BEP 5 is served (ping, find_node, get_peers, announce_peer,
//!   and BEP 44's read-only `get`, which the crate's announce uses to
//!   collect tokens): BEP 44 `put` requests are dropped, so nothing but
//!   peers is stored;
//! * stored peers: at most [`NodeLimits::max_info_hashes`] hashes of
//!   [`NodeLimits::max_peers_per_hash`] peers each (the crate's LRU stores);
//! * the routing table is the crate's (160 buckets of 8 nodes at most).
//!
//! Its figures are `dht_node` events: at start, then every
//! [`REPORT_EVERY`] when they changed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mainline::{RequestFilter, RequestSpecific, ServerSettings};
use tokio_util::sync::CancellationToken;

use super::Bootstrap;
use crate::events::{Event, Events};
use crate::ratelimit::RateTable;

/// How often figures are reported (when they changed).
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping node's socket is waited for.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// What `dht-node` bounds.
#[derive(Debug, Clone)]
pub struct NodeLimits {
    pub requests_per_ip_per_sec: f64,
    pub request_burst: u32,
    pub max_addresses: usize,
    pub max_info_hashes: usize,
    pub max_peers_per_hash: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            requests_per_ip_per_sec: 20.0,
            request_burst: 100,
            max_addresses: 16_384,
            max_info_hashes: 2_000,
            max_peers_per_hash: 100,
        }
    }
}

/// What `dht-node` was asked to do.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub listen: SocketAddrV4,
    /// Nodes to join; none: this node starts a network of its own.
    pub bootstrap: Vec<Bootstrap>,
    pub limits: NodeLimits,
}

#[derive(Debug, Default)]
struct Counters {
    served: AtomicU64,
    dropped: AtomicU64,
    announces: AtomicU64,
}

/// The crate's request filter: rate per IP and BEP 5 (plus BEP 44's
/// read-only get), counted.
#[derive(Debug, Clone)]
struct Filter {
    buckets: Arc<Mutex<RateTable<std::net::IpAddr>>>,
    counters: Arc<Counters>,
}

impl RequestFilter for Filter {
    fn allow_request(&self, request: &RequestSpecific, from: SocketAddrV4) -> bool {
        let admitted = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(IpAddr::V4(*from.ip()), Instant::now());
        let kind = if admitted {
            Kind::of(request)
        } else {
            Kind::Other
        };
        let c = &self.counters;
        let allowed = kind != Kind::Other;
        match allowed {
            true => c.served.fetch_add(1, Relaxed),
            false => c.dropped.fetch_add(1, Relaxed),
        };
        if kind == Kind::Announce {
            c.announces.fetch_add(1, Relaxed);
        }
        allowed
    }
}

/// The kinds of request served (BEP 5); anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Query,
    Announce,
    Other,
}

impl Kind {
    /// The crate does not export the type of a request's kind, only its
    /// `Debug` form: that is read (at most [`DEBUG_MAX`] bytes, after the
    /// rate limit) to tell the kinds apart.
    fn of(request: &RequestSpecific) -> Kind {
        use std::fmt::Write;
        let mut text = Capped(String::new());
        let _ = write!(text, "{:?}", request.request_type);
        let t = text.0.as_str();
        // GetValue (BEP 44's get) is answered too: the crate's own
        // announce asks it for the storing nodes' tokens. Nothing is ever
        // stored for it to return (its puts are dropped).
        if ["Ping", "FindNode", "GetPeers", "GetValue"]
            .iter()
            .any(|k| t.starts_with(k))
        {
            Kind::Query
        } else if t.starts_with("Put") && t.contains("put_request_type: AnnouncePeer") {
            Kind::Announce
        } else {
            Kind::Other
        }
    }
}

/// Longest `Debug` text of a request read by [`Kind::of`].
const DEBUG_MAX: usize = 8 * 1024;

/// A `String` that refuses to grow past [`DEBUG_MAX`].
struct Capped(String);

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.len() + s.len() > DEBUG_MAX {
            return Err(std::fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

/// Runs the node until `cancel`.
pub async fn run(
    opts: NodeOptions,
    events: Events,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let limits = opts.limits.clone();
    let filter = Filter {
        buckets: Arc::new(Mutex::new(RateTable::new(
            limits.requests_per_ip_per_sec,
            limits.request_burst,
            limits.max_addresses,
        ))),
        counters: Arc::default(),
    };
    let settings = ServerSettings {
        max_info_hashes: limits.max_info_hashes,
        max_peers_per_info_hash: limits.max_peers_per_hash,
        // BEP 44 is not served (the filter drops it); the crate wants at
        // least one slot.
        max_immutable_values: 1,
        max_mutable_values: 1,
        filter: Box::new(filter.clone()),
    };
    let listen = opts.listen;
    let nodes: Vec<SocketAddrV4> = opts.bootstrap.iter().flat_map(|b| b.0.clone()).collect();
    let dht = tokio::task::spawn_blocking(move || {
        let mut b = mainline::Dht::builder();
        b.server_mode()
            .server_settings(settings)
            .bind_address(*listen.ip())
            .port(listen.port());
        if nodes.is_empty() {
            b.no_bootstrap();
        } else {
            b.bootstrap(&nodes);
        }
        b.build()
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting the DHT node: {e}"))?
    .map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen}: {e}; choose another address with --listen")
    })?
    .as_async();
    let local = dht.info().await.local_addr();
    events.emit(Event::Listening {
        addr: local.to_string(),
        http: None,
        url: None,
    });
    let figures = |table: usize| Event::DhtNode {
        addr: local.to_string(),
        routing_table: table,
        announces: filter.counters.announces.load(Relaxed),
        served: filter.counters.served.load(Relaxed),
        dropped: filter.counters.dropped.load(Relaxed),
        addresses: filter
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len(),
    };
    let mut last = None;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let table = dht.to_bootstrap().await.len();
        let now = figures(table);
        if last.as_ref() != Some(&now) {
            events.emit(now.clone());
            last = Some(now);
        }
    }
    drop(dht);
    wait_closed(local).await;
    Ok(())
}

/// Waits until the node's UDP socket is closed, at most [`CLOSE_WAIT`].
pub(super) async fn wait_closed(local: SocketAddrV4) {
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    let addr = SocketAddr::V4(local);
    while tokio::time::Instant::now() < deadline {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!("the DHT node on {local} is still open; leaving it");
}

/// `--listen` for `dht-node`: IPv4 only.
pub fn parse_listen(s: &str) -> Result<SocketAddrV4, String> {
    match crate::cli::parse_listen(s)? {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            Ok(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port()))
        }
        SocketAddr::V6(_) => Err(format!(
            "'{s}' is an IPv6 address: the DHT is IPv4-only (the mainline crate)"
        )),
    }
}
