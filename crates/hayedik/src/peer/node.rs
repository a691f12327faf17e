//! The peer as a server and as a client: the TCP listener that accepts
//! sessions, and the connector that dials the peers the tracker lists.
//!
//! Both bound what a crowd can cost: accepted sessions are capped (extra
//! connections are closed at once), an accept error such as running out of
//! descriptors backs off instead of spinning, and dialing is capped too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::announce::AnnounceReply;
use super::session;
use super::slots::{Activity, Slots};
use super::swarm::Swarm;

fn lock(slots: &Mutex<Slots>) -> MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sessions accepted at once.
pub const MAX_INCOMING: usize = 128;
/// Sessions dialed at once.
pub const MAX_OUTGOING: usize = 48;
/// Time allowed to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that failed is dialed again after this, doubling up to a minute.
pub const REDIAL_AFTER: Duration = Duration::from_secs(2);
/// Listed addresses the connector remembers (with their backoff); beyond
/// this, those absent from the tracker's latest list are forgotten.
pub const MAX_KNOWN: usize = 1024;

/// A listed peer that the tracker marks as reachable only through the
/// relay is still tried directly, for this long (peers prefer direct
/// paths: a NAT that allows it, or a LAN, costs nobody the relay)...
pub const RELAYED_DIRECT_TIMEOUT: Duration = Duration::from_secs(2);
/// ... and alone for this long before the relay is tried alongside.
pub const RELAY_HEAD_START: Duration = Duration::from_millis(250);
/// With hole punching possible, the punched path is tried after
/// [`RELAY_HEAD_START`], and the relay only this much later.
pub const PUNCH_HEAD_START: Duration = Duration::from_millis(1500);

/// How a session with a listed peer was reached (`done`'s `via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct,
    /// Directly, at a port the peer's router forwards to it.
    Mapped,
    Relay,
    /// Directly, through a hole punched in both NATs (QUIC).
    Punched,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Mapped => "mapped",
            Via::Relay => "relay",
            Via::Punched => "punched",
        }
    }
}

/// The path of the latest session we dialed to each listed peer, and the
/// IPs of peers that reached us through the relay (we learn their port
/// only in the session's handshake); any other peer was reached directly.
/// Both bounded like the connector's list ([`MAX_KNOWN`]).
#[derive(Debug, Default)]
pub struct Paths {
    dialed: Mutex<HashMap<SocketAddr, Via>>,
    relayed_ips: Mutex<std::collections::HashSet<std::net::IpAddr>>,
    /// Listed peers the tracker marked as reachable at a mapped port.
    mapped: Mutex<std::collections::HashSet<SocketAddr>>,
    /// What the tracker's probe said about us: 0 not known yet, 1 others
    /// reach us directly, 2 they do not.
    reachable: std::sync::atomic::AtomicU8,
}

impl Paths {
    /// Records the probe's verdict (see [`Paths::may_relay_to_downloader`]).
    pub fn set_reachable(&self, direct: bool) {
        self.reachable.store(
            if direct { 1 } else { 2 },
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Whether we dial a relayed *downloader* through the relay: only once
    /// we know others cannot reach us directly. A downloader dials the
    /// peers it needs itself, so a peer others reach directly lets it (the
    /// path then is direct); a relayed seeder is always dialed through the
    /// relay, since it has nothing to fetch from us.
    fn may_relay_to_downloader(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed) == 2
    }

    /// A session from `ip` came through the relay.
    pub fn relayed_from(&self, ip: std::net::IpAddr) {
        let mut set = self.relayed_ips.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() < MAX_KNOWN {
            set.insert(ip);
        }
    }

    /// The tracker lists `addr` at a port its router forwards.
    fn listed_mapped(&self, addr: SocketAddr) {
        let mut set = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() < MAX_KNOWN {
            set.insert(addr);
        }
    }

    /// A direct session with `addr` is `mapped` when it was listed so.
    fn direct(&self, addr: SocketAddr) -> Via {
        let set = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        if set.contains(&addr) {
            Via::Mapped
        } else {
            Via::Direct
        }
    }

    fn set(&self, addr: SocketAddr, via: Via) {
        let mut map = self.dialed.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KNOWN && !map.contains_key(&addr) {
            // Forget direct paths first: they are the default.
            map.retain(|_, v| *v != Via::Direct);
            if map.len() >= MAX_KNOWN {
                return;
            }
        }
        map.insert(addr, via);
    }

    /// How `addr` was reached.
    pub fn via(&self, addr: &SocketAddr) -> Via {
        let map = self.dialed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get(addr) {
            return *v;
        }
        let relayed = self.relayed_ips.lock().unwrap_or_else(|e| e.into_inner());
        if relayed.contains(&addr.ip()) {
            Via::Relay
        } else {
            // A listed mapped peer that dialed us came from its router.
            self.direct(*addr)
        }
    }
}

/// Binds the TCP address pieces are served on and reports it (`listening`).
pub async fn bind_listener(
    addr: SocketAddr,
    events: &crate::events::EventSink,
) -> anyhow::Result<(TcpListener, SocketAddr)> {
    use anyhow::Context;
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}: choose another address with --listen")
    })?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    events.emit(crate::events::Event::Listening {
        addr: local.to_string(),
        http: None,
        url: None,
    });
    Ok((listener, local))
}

/// Accepts sessions until the swarm is cancelled, at most
/// [`MAX_INCOMING`] at once and `per_address` from one address (see
/// [`Slots`]).
pub fn spawn_listener(listener: TcpListener, swarm: Arc<Swarm>, per_address: usize) {
    crate::spawn::spawn("listener", async move {
        let slots = Arc::new(Mutex::new(Slots::new(MAX_INCOMING, per_address)));
        let cancel = swarm.cancel.clone();
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait for sessions to end.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let admitted = lock(&slots).admit(addr.ip(), Instant::now(), &cancel);
            let slot = match admitted {
                Ok(slot) => slot,
                Err(why) => {
                    tracing::debug!(%addr, "{why}: closing");
                    drop(stream);
                    continue;
                }
            };
            let (swarm, slots) = (swarm.clone(), slots.clone());
            crate::spawn::spawn(&format!("session {addr}"), async move {
                let id = slot.id;
                if let Err(e) = session::run(swarm, stream, None, slot.cancel, slot.activity).await
                {
                    tracing::debug!("session with {addr} ended: {e}");
                }
                lock(&slots).release(id);
            });
        }
    });
}

#[derive(Debug, Clone, Copy)]
struct DialState {
    next_try: Instant,
    backoff: Duration,
}

/// Dials listed peers until the swarm is cancelled: every peer list
/// published on `peers`, and every few seconds for peers whose session
/// ended (with backoff per address).
///
/// A peer listed as relayed is tried directly, and after
/// [`RELAY_HEAD_START`] through the relay the tracker named too.
/// The returned [`Paths`] say which path each dialed session took.
pub fn spawn_connector(
    swarm: Arc<Swarm>,
    mut peers: watch::Receiver<Option<AnnounceReply>>,
) -> Arc<Paths> {
    let paths = Arc::new(Paths::default());
    let out = paths.clone();
    let relay_key = crate::relay::relay_key(&swarm.root);
    crate::spawn::spawn("connector", async move {
        // Listed peers reachable only through a relay, and that relay.
        // (relay, whether the peer is a seeder).
        let mut relayed: HashMap<SocketAddr, (SocketAddr, bool)> = HashMap::new();
        // Listed peers we open a punched path to, when direct fails.
        let mut punchable: std::collections::HashSet<SocketAddr> = Default::default();
        let slots = Arc::new(Semaphore::new(MAX_OUTGOING));
        let cancel = swarm.cancel.clone();
        let mut known: HashMap<SocketAddr, DialState> = HashMap::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(SocketAddr, bool)>();
        let mut dialing: std::collections::HashSet<SocketAddr> = Default::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut offers = swarm.take_offers();
        // The announcer gone (it stops before the swarm does), peers from
        // the DHT and peer exchange are still dialed.
        let mut listed_open = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some((addr, found)) = async { offers.as_mut()?.recv().await } => {
                    // A peer from the DHT or peer exchange: dialed like a
                    // listed one, within the same bound.
                    if known.len() < MAX_KNOWN && !known.contains_key(&addr) {
                        tracing::debug!(%addr, ?found, "offered a peer");
                        known.insert(addr, DialState { next_try: Instant::now(), backoff: REDIAL_AFTER });
                    }
                }
                r = peers.changed(), if listed_open => {
                    if r.is_err() {
                        listed_open = false;
                        continue;
                    }
                    let (list, relay) = {
                        let latest = peers.borrow_and_update();
                        if let Some(ext) = latest.as_ref().and_then(|r| r.ext.as_ref()) {
                            swarm.pex.note_own_ip(ext.observed.ip());
                        }
                        let list = latest.as_ref().map(|r| r.peers.clone()).unwrap_or_default();
                        for a in latest.iter().flat_map(|r| r.mapped.iter()) {
                            paths.listed_mapped(*a);
                        }
                        let relay = latest.as_ref().and_then(|r| {
                            let relay = r.ext?.relay?;
                            Some((relay, r.relayed.clone()))
                        });
                        (list, relay)
                    };
                    {
                        let latest = peers.borrow();
                        if let Some(r) = latest.as_ref() {
                            let me = r.ext.map(|e| e.observed);
                            let complete = swarm.have().is_some_and(|h| h.is_full());
                            for e in &r.peers {
                                let theirs = e.state == hayedik_proto::tracker::PeerState::Complete;
                                if r.punchable.contains(&e.addr)
                                    && super::punch::we_dial(me, complete, e.addr, theirs)
                                {
                                    if punchable.len() < MAX_KNOWN {
                                        punchable.insert(e.addr);
                                    }
                                } else {
                                    punchable.remove(&e.addr);
                                }
                            }
                        }
                    }
                    if let Some((relay, addrs)) = relay {
                        for a in addrs {
                            if relayed.len() < MAX_KNOWN || relayed.contains_key(&a) {
                                let seeder = list.iter().any(|e| {
                                    e.addr == a && e.state == hayedik_proto::tracker::PeerState::Complete
                                });
                                relayed.insert(a, (relay, seeder));
                            }
                        }
                    }
                    for e in &list {
                        known.entry(e.addr).or_insert(DialState { next_try: Instant::now(), backoff: REDIAL_AFTER });
                    }
                    if known.len() > MAX_KNOWN {
                        let listed: std::collections::HashSet<SocketAddr> =
                            list.iter().map(|e| e.addr).collect();
                        known.retain(|a, _| {
                            listed.contains(a) || dialing.contains(a) || swarm.is_connected(a)
                        });
                        relayed.retain(|a, _| known.contains_key(a));
                        punchable.retain(|a| known.contains_key(a));
                    }
                }
                Some((addr, ok)) = done_rx.recv() => {
                    dialing.remove(&addr);
                    if let Some(st) = known.get_mut(&addr) {
                        if ok {
                            st.backoff = REDIAL_AFTER;
                        } else {
                            st.backoff = (st.backoff * 2).min(Duration::from_secs(60));
                        }
                        st.next_try = Instant::now() + st.backoff;
                    }
                }
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            for (addr, st) in known.iter() {
                if st.next_try > now
                    || dialing.contains(addr)
                    || swarm.is_connected(addr)
                    || swarm.is_banned(addr)
                    || is_self(&swarm, addr)
                {
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                dialing.insert(*addr);
                let (swarm, addr, done) = (swarm.clone(), *addr, done_tx.clone());
                let relay = relayed
                    .get(&addr)
                    .filter(|(_, seeder)| *seeder || paths.may_relay_to_downloader())
                    .map(|(r, _)| (*r, relay_key));
                let paths = paths.clone();
                let punch = swarm
                    .punch
                    .get()
                    .filter(|_| punchable.contains(&addr))
                    .cloned();
                crate::spawn::spawn(&format!("dial {addr}"), async move {
                    let ok = dial(swarm, addr, relay, punch, &paths).await;
                    drop(permit);
                    let _ = done.send((addr, ok));
                });
            }
        }
    });
    out
}

/// Whether `addr` is our own listening address (the tracker excludes us,
/// but a list may still name us under another of our IPs).
fn is_self(swarm: &Swarm, addr: &SocketAddr) -> bool {
    addr.port() == swarm.listen_port && (addr.ip().is_loopback() || addr.ip().is_unspecified())
}

/// A connection to a listed peer, and how it was made.
enum Reached {
    Direct(TcpStream),
    Relayed(TcpStream),
    Punched(quinn::Connection, super::punch::quic::Stream),
}

/// Connects to `addr`: directly; or, for a peer listed as relayed or one
/// we may punch to, directly with a head start of [`RELAY_HEAD_START`],
/// then punched alongside, then (after [`PUNCH_HEAD_START`] more when
/// punching, at once otherwise) through the relay if there is one. The
/// first that connects wins and the others are dropped (one session per
/// pair); a refusal or a success on a LAN comes within the head start, so
/// a direct path wins where there is one.
async fn connect(
    addr: SocketAddr,
    relay: Option<(SocketAddr, [u8; 32])>,
    punch: Option<Arc<super::punch::Punch>>,
) -> Option<Reached> {
    if relay.is_none() && punch.is_none() {
        return match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Some(Reached::Direct(s)),
            Ok(Err(e)) => {
                tracing::debug!("connecting to {addr}: {e}");
                None
            }
            Err(_) => {
                tracing::debug!("connecting to {addr}: timed out");
                None
            }
        };
    }
    let direct = tokio::time::timeout(RELAYED_DIRECT_TIMEOUT, TcpStream::connect(addr));
    tokio::pin!(direct);
    let mut direct_over = false;
    tokio::select! {
        r = &mut direct => match r {
            Ok(Ok(s)) => return Some(Reached::Direct(s)),
            _ => direct_over = true,
        },
        _ = tokio::time::sleep(RELAY_HEAD_START) => {}
    }
    let mut punch_over = punch.is_none();
    let relay_wait = if punch_over {
        Duration::ZERO
    } else {
        PUNCH_HEAD_START
    };
    let punched = async {
        match &punch {
            Some(p) => p.connect(addr).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(punched);
    let relayed = async {
        match relay {
            Some((relay, key)) => {
                tokio::time::sleep(relay_wait).await;
                crate::relay::client::dial(relay, key, addr).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(relayed);
    let mut relay_over = relay.is_none();
    while !(direct_over && punch_over && relay_over) {
        tokio::select! {
            r = &mut direct, if !direct_over => match r {
                Ok(Ok(s)) => return Some(Reached::Direct(s)),
                _ => direct_over = true,
            },
            r = &mut punched, if !punch_over => match r {
                Some((conn, stream)) => {
                    tracing::debug!("reached {addr} through a punched hole");
                    return Some(Reached::Punched(conn, stream));
                }
                None => punch_over = true,
            },
            r = &mut relayed, if !relay_over => match r {
                Ok(s) => {
                    tracing::debug!("reaching {addr} through the relay");
                    return Some(Reached::Relayed(s));
                }
                Err(e) => {
                    tracing::debug!("reaching {addr} through the relay: {e}");
                    relay_over = true;
                }
            },
        }
    }
    None
}

/// Connects (see [`connect`]) and runs a session; true if the session got
/// going.
async fn dial(
    swarm: Arc<Swarm>,
    addr: SocketAddr,
    relay: Option<(SocketAddr, [u8; 32])>,
    punch: Option<Arc<super::punch::Punch>>,
    paths: &Paths,
) -> bool {
    let Some(reached) = connect(addr, relay, punch).await else {
        return false;
    };
    let (cancel, activity) = (
        swarm.cancel.child_token(),
        Arc::new(Activity::new(Instant::now())),
    );
    let result = match reached {
        Reached::Direct(stream) => {
            paths.set(addr, paths.direct(addr));
            session::run(swarm, stream, Some(addr), cancel, activity).await
        }
        Reached::Relayed(stream) => {
            paths.set(addr, Via::Relay);
            session::run_over(swarm, stream, addr, Some(addr), cancel, activity).await
        }
        Reached::Punched(conn, stream) => {
            paths.set(addr, Via::Punched);
            let r = session::run_over(swarm, stream, addr, Some(addr), cancel, activity).await;
            conn.close(0u32.into(), b"done");
            r
        }
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("session with {addr} ended: {e}");
            !matches!(
                e,
                session::SessionError::HandshakeTimeout { .. }
                    | session::SessionError::OtherSwarm { .. }
                    | session::SessionError::BadProof { .. }
            )
        }
    }
}
