//! [`TrackerClient`]: one swarm tracker's socket, key, announced TCP port
//! and connection id, and one ANNOUNCE call (CONNECT first when needed)
//! with retransmissions until its deadline.

use std::net::SocketAddr;
use std::time::Duration;

use hayedik_proto::tracker::{
    Announce, Datagram, ErrorCode, ExtFlags, Message, PeerEntry, PeerState, Peers, PeersX, Probe,
    RelayAddr,
};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::create::create_swarm;
use super::error::error_for;
use super::transport::{any_port_for, canonical, recv_datagram, Backoff};
use super::{
    AnnounceError, CreateError, BAD_ID_TRIES, CONN_ID_MAX_AGE, DEFAULT_CALL_DEADLINE, FIRST_RTO,
    MAX_RTO, MIN_INTERVAL, NOT_CONFIRMED_TRIES, RECV_BUF,
};

/// A tracker's answer to an ANNOUNCE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceReply {
    /// When to announce again (at least [`MIN_INTERVAL`]).
    pub interval: Duration,
    /// Seeders and partial sources in the swarm, not counting us.
    pub seeders: u32,
    pub partials: u32,
    /// A sample of the swarm's peers (never us); entries that cannot be
    /// connected to (port 0, unspecified address) are left out.
    pub peers: Vec<PeerEntry>,
    /// Of `peers`, those reachable only through the relay.
    pub relayed: Vec<SocketAddr>,
    /// Of `peers`, those at a port their router forwards (port mapping).
    pub mapped: Vec<SocketAddr>,
    /// Of `peers`, those the tracker may introduce us to (hole punching).
    pub punchable: Vec<SocketAddr>,
    /// What the tracker said about the extensions, when it was asked
    /// (ANNOUNCE_X) and answered PEERS_X.
    pub ext: Option<ExtReply>,
}

/// The extension part of a PEERS_X answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtReply {
    pub probe: Probe,
    /// Us, as the tracker lists us: our source IP, our announced port.
    pub observed: SocketAddr,
    /// The relay of this swarm's tracker, if it runs one.
    pub relay: Option<SocketAddr>,
}

impl AnnounceReply {
    fn from_x(p: PeersX, tracker: SocketAddr) -> Self {
        let relay = match p.relay {
            RelayAddr::None => None,
            RelayAddr::SameHost(port) => Some(SocketAddr::new(tracker.ip(), port)),
            RelayAddr::At(a) => Some(a),
        };
        let usable = |a: &SocketAddr| a.port() != 0 && !a.ip().is_unspecified();
        let relayed = p
            .peers
            .iter()
            .filter(|e| e.relayed && usable(&e.entry.addr))
            .map(|e| e.entry.addr)
            .collect();
        let mapped = p
            .peers
            .iter()
            .filter(|e| e.mapped && usable(&e.entry.addr))
            .map(|e| e.entry.addr)
            .collect();
        let punchable = p
            .peers
            .iter()
            .filter(|e| e.punchable && usable(&e.entry.addr))
            .map(|e| e.entry.addr)
            .collect();
        let peers = p
            .peers
            .iter()
            .map(|e| e.entry)
            .filter(|e| usable(&e.addr))
            .collect();
        Self {
            interval: Duration::from_secs(u64::from(p.interval)).max(MIN_INTERVAL),
            seeders: p.seeders,
            partials: p.partials,
            peers,
            relayed,
            mapped,
            punchable,
            ext: Some(ExtReply {
                probe: p.probe,
                observed: p.observed,
                relay,
            }),
        }
    }
}

/// Whether this client asks with ANNOUNCE_X.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExtMode {
    /// Plain ANNOUNCE only.
    Off,
    /// ANNOUNCE_X until the tracker shows it does not know it.
    Try,
    /// The tracker answers ANNOUNCE_X.
    On,
}

/// ANNOUNCE_Xs sent unanswered (with a valid connection id) before the
/// client decides the tracker predates the extension and falls back.
const EXT_TRIES: u32 = 3;

impl From<Peers> for AnnounceReply {
    fn from(p: Peers) -> Self {
        let mut peers = p.peers;
        peers.retain(|e| e.addr.port() != 0 && !e.addr.ip().is_unspecified());
        Self {
            interval: Duration::from_secs(u64::from(p.interval)).max(MIN_INTERVAL),
            seeders: p.seeders,
            partials: p.partials,
            peers,
            relayed: Vec::new(),
            mapped: Vec::new(),
            punchable: Vec::new(),
            ext: None,
        }
    }
}

/// A connection id and when it was handed out.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnId {
    pub(super) id: u64,
    pub(super) at: Instant,
}

/// Talks to one swarm tracker: owns the socket, the swarm key, the TCP port
/// it announces, and the connection id.
pub struct TrackerClient {
    socket: UdpSocket,
    /// Whether `socket` is connected (to `swarm`): then it must use `send`.
    connected: bool,
    pub(super) swarm: SocketAddr,
    key: [u8; 32],
    tcp_port: u16,
    pub(super) conn: Option<ConnId>,
    pub(super) deadline: Duration,
    /// An ANNOUNCE with a listed state was sent: leaving is worth saying.
    pub(super) maybe_listed: bool,
    /// CONNECTs answered so far (diagnostics and tests).
    pub(super) connects: u64,
    pub(super) ext: ExtMode,
    /// ANNOUNCE_Xs sent in a row without an answer (across calls).
    ext_misses: u32,
    /// What ANNOUNCE_X asks for.
    pub(super) flags: ExtFlags,
    /// Our TCP port is a port mapping: every ANNOUNCE_X says so.
    pub(super) mapped: bool,
    /// Hole punching: every ANNOUNCE_X opts in (PUNCH), INTRODUCE requests
    /// come from here and INTRODUCED go there.
    pub(super) punch: Option<crate::peer::punch::AnnounceLink>,
    buf: Vec<u8>,
}

impl TrackerClient {
    /// Uses `socket` (connected to `swarm`, or not connected), e.g. the one
    /// that ran [`create_swarm`], to talk to the swarm tracker at `swarm`.
    pub fn from_socket(socket: UdpSocket, swarm: SocketAddr, key: [u8; 32], tcp_port: u16) -> Self {
        let connected = socket
            .peer_addr()
            .is_ok_and(|peer| canonical(peer) == canonical(swarm));
        Self {
            socket,
            connected,
            swarm,
            key,
            tcp_port,
            conn: None,
            deadline: DEFAULT_CALL_DEADLINE,
            maybe_listed: false,
            connects: 0,
            ext: ExtMode::Off,
            ext_misses: 0,
            flags: ExtFlags::default(),
            mapped: false,
            punch: None,
            buf: vec![0u8; RECV_BUF],
        }
    }

    /// Binds a fresh socket (any port, the family of `swarm`) connected to
    /// the swarm tracker at `swarm`.
    pub async fn bind(swarm: SocketAddr, key: [u8; 32], tcp_port: u16) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(any_port_for(swarm)).await?;
        socket.connect(swarm).await?;
        Ok(Self::from_socket(socket, swarm, key, tcp_port))
    }

    /// Creates a swarm with the central tracker at `central` on a fresh
    /// socket and returns a client for it, on that socket.
    pub async fn create(
        central: SocketAddr,
        key: [u8; 32],
        tcp_port: u16,
        deadline: Duration,
    ) -> Result<Self, CreateError> {
        let socket = UdpSocket::bind(any_port_for(central))
            .await
            .map_err(CreateError::Bind)?;
        let port = create_swarm(&socket, central, deadline).await?;
        let swarm = SocketAddr::new(central.ip(), port);
        Ok(Self::from_socket(socket, swarm, key, tcp_port))
    }

    /// The swarm tracker's address.
    pub fn swarm_addr(&self) -> SocketAddr {
        self.swarm
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The TCP port announced.
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// How long one [`TrackerClient::announce`] call may take.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// Asks with ANNOUNCE_X (docs/protocol.md, "Extensions") from now on,
    /// falling back to ANNOUNCE for good if the tracker never answers it.
    pub fn use_extensions(&mut self) {
        if self.ext == ExtMode::Off {
            self.ext = ExtMode::Try;
        }
    }

    /// Whether the tracker answered ANNOUNCE_X.
    /// Our TCP port is forwarded by our router (`--port-mapping`): asks
    /// with ANNOUNCE_X and sets its MAPPED flag from now on, so that the
    /// tracker lists us as reachable at a mapped port.
    pub fn set_mapped(&mut self) {
        self.use_extensions();
        self.mapped = true;
    }

    /// Opts in to hole punching (ANNOUNCE_X's PUNCH flag) and carries
    /// INTRODUCE and INTRODUCED for `link` (see `peer::punch`).
    pub fn set_punch(&mut self, link: crate::peer::punch::AnnounceLink) {
        self.use_extensions();
        self.punch = Some(link);
    }

    /// Hands an INTRODUCED from the swarm tracker to the punch state.
    fn forward(&self, src: SocketAddr, message: &Message) -> bool {
        let Message::Introduced { peer, udp_port } = message else {
            return false;
        };
        if canonical(src) != canonical(self.swarm) {
            return false;
        }
        if let Some(link) = &self.punch {
            let udp = SocketAddr::new(peer.ip().to_canonical(), *udp_port);
            let listed = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            let _ = link
                .introduced
                .try_send(crate::peer::punch::Introduced { listed, udp });
        }
        true
    }

    /// Between announces: sends the INTRODUCE requests of the punch state
    /// and hands INTRODUCED on. Never returns (cancelled by the loop).
    pub(super) async fn serve_punch(&mut self) {
        if self.punch.is_none() {
            return std::future::pending().await;
        }
        loop {
            let Some(link) = self.punch.as_mut() else {
                return std::future::pending().await;
            };
            tokio::select! {
                target = link.requests.recv() => match target {
                    Some(target) => self.introduce(target).await,
                    None => {
                        self.punch = None;
                        return std::future::pending().await;
                    }
                },
                r = self.socket.recv_from(&mut self.buf) => {
                    if let Ok((n, src)) = r {
                        if let Some(Ok(d)) = self.buf.get(..n).map(Datagram::decode) {
                            self.forward(src, &d.message);
                        }
                    }
                }
            }
        }
    }

    /// Sends INTRODUCE for the listed peer `target` (best effort: when the
    /// connection id has aged, one CONNECT first; without an answer in
    /// time, nothing, and the requester times out).
    async fn introduce(&mut self, target: SocketAddr) {
        let now = Instant::now();
        let fresh = self
            .conn
            .filter(|c| now.saturating_duration_since(c.at) < CONN_ID_MAX_AGE);
        let id = match fresh {
            Some(c) => c.id,
            None => {
                let tid = rand::random();
                self.send(tid, Message::Connect).await;
                let until = now + crate::peer::punch::INTRODUCE_WAIT / 2;
                match self.wait(tid, true, until).await {
                    Some(Message::Connected { connection_id }) => {
                        self.conn = Some(ConnId {
                            id: connection_id,
                            at: Instant::now(),
                        });
                        self.connects += 1;
                        connection_id
                    }
                    _ => {
                        tracing::debug!(%target, "no connection id for INTRODUCE");
                        return;
                    }
                }
            }
        };
        let message = Message::Introduce {
            connection_id: id,
            port: self.tcp_port,
            target,
        };
        self.send(rand::random(), message).await;
    }

    pub fn extensions_on(&self) -> bool {
        self.ext == ExtMode::On
    }

    async fn send(&mut self, tid: u32, message: Message) {
        let bytes = Datagram::new(tid, message).to_vec();
        let sent = if self.connected {
            self.socket.send(&bytes).await
        } else {
            self.socket.send_to(&bytes, self.swarm).await
        };
        if let Err(e) = sent {
            tracing::debug!("sending to the tracker at {}: {e}", self.swarm);
        }
    }

    /// Waits until `until` for the swarm tracker's answer to `tid`: CONNECTED
    /// when `connecting`, PEERS otherwise, or an ERROR.
    async fn wait(&mut self, tid: u32, connecting: bool, until: Instant) -> Option<Message> {
        let swarm = canonical(self.swarm);
        while let Some((src, d)) = recv_datagram(&self.socket, &mut self.buf, until).await {
            if self.forward(src, &d.message) {
                continue;
            }
            if d.tid != tid || canonical(src) != swarm {
                continue;
            }
            match d.message {
                Message::Connected { .. } if connecting => return Some(d.message),
                Message::Peers(_) | Message::PeersX(_) if !connecting => return Some(d.message),
                Message::Error { .. } => return Some(d.message),
                _ => {}
            }
        }
        None
    }

    /// Announces `state` and asks for `wanted` peers (0: the tracker's
    /// default), CONNECTing first when the connection id is missing, old or
    /// refused. Retries with backoff until the deadline.
    ///
    /// A TCP port of 0 may only be announced with states 0 and 3.
    pub async fn announce(
        &mut self,
        state: PeerState,
        wanted: u16,
    ) -> Result<AnnounceReply, AnnounceError> {
        let tracker = self.swarm;
        let start = Instant::now();
        let end = start + self.deadline;
        let mut backoff = Backoff::new(FIRST_RTO, MAX_RTO);
        let (connect_tid, announce_tid): (u32, u32) = (rand::random(), rand::random());
        let (mut not_confirmed, mut bad_ids) = (0u32, 0u32);
        loop {
            let now = Instant::now();
            if now >= end {
                return Err(AnnounceError::Unreachable {
                    tracker,
                    waited: now - start,
                });
            }
            let conn = self
                .conn
                .filter(|c| now.saturating_duration_since(c.at) < CONN_ID_MAX_AGE);
            let (tid, message) = match conn {
                None => (connect_tid, Message::Connect),
                Some(c) => {
                    self.maybe_listed |= state.is_listed();
                    let announce = Announce {
                        swarm_key: self.key,
                        port: self.tcp_port,
                        state,
                        wanted,
                    };
                    let connection_id = c.id;
                    if self.ext != ExtMode::Off && self.ext_misses >= EXT_TRIES {
                        if self.ext == ExtMode::Try {
                            tracing::debug!(
                                "tracker at {tracker} does not answer ANNOUNCE_X: plain ANNOUNCE"
                            );
                        }
                        self.ext = ExtMode::Off;
                    }
                    let message = if self.ext == ExtMode::Off {
                        Message::Announce {
                            connection_id,
                            announce,
                        }
                    } else {
                        self.ext_misses += u32::from(self.ext == ExtMode::Try);
                        // A listed state is needed for a port to probe.
                        let mut flags = self.flags;
                        flags.probe &= announce.port != 0 && state.is_listed();
                        flags.mapped |= self.mapped;
                        flags.punch |= self.punch.is_some();
                        Message::AnnounceX {
                            connection_id,
                            announce,
                            flags,
                        }
                    };
                    (announce_tid, message)
                }
            };
            self.send(tid, message).await;
            let until = (now + backoff.next()).min(end);
            match self.wait(tid, conn.is_none(), until).await {
                None => {}
                Some(Message::Connected { connection_id }) => {
                    self.conn = Some(ConnId {
                        id: connection_id,
                        at: Instant::now(),
                    });
                    self.connects += 1;
                    backoff.reset();
                }
                Some(Message::Peers(p)) => {
                    if conn.is_some() {
                        self.ext_misses = 0;
                    }
                    return Ok(AnnounceReply::from(p));
                }
                Some(Message::PeersX(p)) => {
                    self.ext = ExtMode::On;
                    return Ok(AnnounceReply::from_x(p, tracker));
                }
                Some(Message::Error { code, message }) => {
                    if conn.is_some() {
                        // Any answer to ANNOUNCE_X shows the tracker knows it.
                        self.ext_misses = 0;
                    }
                    match code {
                        ErrorCode::BadConnectionId => {
                            tracing::debug!("tracker at {tracker} refused our connection id");
                            self.conn = None;
                            bad_ids += 1;
                            if bad_ids > BAD_ID_TRIES {
                                return Err(error_for(tracker, code, &message));
                            }
                            backoff.reset();
                        }
                        ErrorCode::NotConfirmed => {
                            not_confirmed += 1;
                            if not_confirmed >= NOT_CONFIRMED_TRIES {
                                return Err(error_for(tracker, code, &message));
                            }
                            // Give the swarm the rest of this attempt's time.
                            tokio::time::sleep_until(until).await;
                        }
                        // A tracker older than the MAPPED flag finds our
                        // ANNOUNCE_X malformed: ask again without it.
                        // ... or the PUNCH flag.
                        ErrorCode::Malformed
                            if self.punch.is_some() && self.ext != ExtMode::Off =>
                        {
                            tracing::info!(
                                "tracker at {tracker} does not know the PUNCH flag: no hole punching"
                            );
                            self.punch = None;
                            backoff.reset();
                        }
                        ErrorCode::Malformed if self.mapped && self.ext != ExtMode::Off => {
                            tracing::info!(
                                "tracker at {tracker} does not know the MAPPED flag: announcing without it"
                            );
                            self.mapped = false;
                            backoff.reset();
                        }
                        code => return Err(error_for(tracker, code, &message)),
                    }
                }
                Some(_) => {}
            }
        }
    }
}

impl std::fmt::Debug for TrackerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerClient")
            .field("swarm", &self.swarm)
            .field("local", &self.socket.local_addr().ok())
            .field("tcp_port", &self.tcp_port)
            .field("connected", &self.connected)
            .field("has_connection_id", &self.conn.is_some())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
