//! The peer's side of the tracker protocol (PROTOCOL.md): creating a swarm,
//! announcing to it, and the announce loop.
//!
//! - [`create_swarm`] runs the handshake with the central tracker on a socket
//!   the caller owns: JOIN, CHALLENGE, JOIN with the cookie, OFFER (from the
//!   swarm port or from the central port, whichever arrives first), CONFIRM to
//!   the swarm port, CONFIRMED. The caller then hands the same socket to
//!   [`TrackerClient::from_socket`]: until the swarm key is bound, only the
//!   address that confirmed may announce.
//! - [`TrackerClient`] owns one UDP socket, the swarm tracker's address, the
//!   swarm key and the TCP port it announces, and a cached connection id;
//!   [`TrackerClient::announce`] does CONNECT when needed, then ANNOUNCE.
//! - [`spawn_announcer`] runs a [`TrackerClient`] on its own task: it announces
//!   at once, then every interval the tracker gives, publishes every reply on
//!   a `watch` channel, and says "leaving" (state 3) when it stops.
//!
//! Retry policy. UDP loses datagrams, so every request is retransmitted when
//! no answer came within a retransmission timeout that starts at 250 ms and
//! doubles up to 4 s, each with ±20 % jitter, until a per-call deadline
//! (the handshake's `deadline`, [`TrackerClient::set_deadline`]); then the
//! call fails with [`AnnounceError::Unreachable`]. A retransmission keeps its
//! transaction id (and for a JOIN its cookie), so a late answer to an earlier
//! copy is accepted and a retransmitted JOIN gets the same OFFER instead of a
//! second swarm. A datagram from an unexpected source, with another
//! transaction id, of an unexpected type, or that does not decode is ignored:
//! it neither ends a wait nor derails a handshake. A connection id is reused
//! for [`CONN_ID_MAX_AGE`] (the tracker honours it for at least two minutes)
//! and renewed at once when the tracker answers ERROR 3. ERROR 6 is retried a
//! few times ([`NOT_CONFIRMED_TRIES`]); ERRORs 1, 2, 4 and 5 end the call with
//! a clear error. The announce loop retries a failed call after 1 s, doubling
//! up to 60 s, and shows the latest failure to its owner; when a listed state
//! gets ERROR 5 (the swarm, or our address's share of it, is full) it asks
//! again with state 0 at once, so it still gets peers, and shows the ERROR.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hayedik_proto::tracker::{Announce, Datagram, ErrorCode, Message, PeerEntry, PeerState, Peers};
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First retransmission timeout.
pub const FIRST_RTO: Duration = Duration::from_millis(250);
/// Largest retransmission timeout.
pub const MAX_RTO: Duration = Duration::from_secs(4);
/// Default deadline of one [`TrackerClient::announce`] call.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(5);
/// A connection id older than this is renewed before use (the tracker
/// accepts it for at least 120 s).
pub const CONN_ID_MAX_AGE: Duration = Duration::from_secs(100);
/// ANNOUNCEs answered with ERROR 6 before giving up.
pub const NOT_CONFIRMED_TRIES: u32 = 3;
/// ERROR 3 answers to a fresh connection id before giving up.
const BAD_ID_TRIES: u32 = 3;
/// ERROR 5 answers to a JOIN before giving up: a rate limit passes within
/// a retransmission or two, a full tracker does not.
pub const JOIN_REFUSED_TRIES: u32 = 3;
/// Deadline of the best-effort "leaving" announce.
pub const LEAVE_DEADLINE: Duration = Duration::from_secs(2);
/// The announce loop never announces more often than this, whatever the
/// tracker says.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// First and largest pause of the announce loop after a failed call.
const LOOP_RETRY_FIRST: Duration = Duration::from_secs(1);
const LOOP_RETRY_MAX: Duration = Duration::from_secs(60);
/// Receive buffer: a PEERS datagram is at most 1,200 bytes.
const RECV_BUF: usize = 2048;
/// Longest tracker message kept in an error.
const MAX_MESSAGE: usize = 200;

/// Why talking to a tracker failed. Every message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error(
        "no answer from the tracker at {tracker} within {:.1} s: is the tracker running? \
         check the tracker's HOST:PORT and the network (UDP must get through)",
        waited.as_secs_f64()
    )]
    Unreachable {
        tracker: SocketAddr,
        waited: Duration,
    },
    /// ERROR 4.
    #[error("the tracker at {tracker} serves another swarm on that port: check the ticket")]
    WrongSwarm { tracker: SocketAddr },
    /// ERROR 6, again and again.
    #[error(
        "swarm not confirmed yet at {tracker} (or being retired): check the ticket, \
         or retry in a moment"
    )]
    NotConfirmed { tracker: SocketAddr },
    /// ERROR 5.
    #[error("swarm is full at {tracker} (or the tracker is over capacity): retry later")]
    SwarmFull { tracker: SocketAddr },
    /// ERROR 5 to a JOIN, again and again: the central tracker refuses to
    /// create a swarm.
    #[error(
        "the tracker at {tracker} is full and creates no swarm for us now{}{message}{}: \
         try again later, or use another tracker",
        if message.is_empty() { "" } else { " (it says: " },
        if message.is_empty() { "" } else { ")" }
    )]
    TrackerFull {
        tracker: SocketAddr,
        /// The tracker's message, control characters replaced.
        message: String,
    },
    /// ERROR 1, 2, an unknown code, or ERROR 3 for a fresh connection id.
    #[error(
        "protocol error with the tracker at {tracker}: {} (error {code}{}{message})",
        reason(*code),
        if message.is_empty() { "" } else { ": " }
    )]
    Protocol {
        tracker: SocketAddr,
        code: u16,
        /// The tracker's message, control characters replaced.
        message: String,
    },
}

fn reason(code: u16) -> &'static str {
    match code {
        1 => "it speaks another protocol version; update hayedik or the tracker",
        2 => "it found our request malformed",
        3 => "it keeps refusing fresh connection ids",
        _ => "unexpected error code",
    }
}

fn error_for(tracker: SocketAddr, code: ErrorCode, message: &str) -> AnnounceError {
    match code {
        ErrorCode::WrongSwarmKey => AnnounceError::WrongSwarm { tracker },
        ErrorCode::NotConfirmed => AnnounceError::NotConfirmed { tracker },
        ErrorCode::RateLimited => AnnounceError::SwarmFull { tracker },
        code => AnnounceError::Protocol {
            tracker,
            code: code.to_u16(),
            message: sanitize(message),
        },
    }
}

/// Keeps a remote message printable on one line and short.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The same address, IPv4-mapped IPv6 folded to IPv4 (a dual-stack socket
/// reports IPv4 sources that way).
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Retransmission timeouts: doubling, capped, jittered.
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first,
            first,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = self.first;
    }

    fn next(&mut self) -> Duration {
        let d = jitter(self.next);
        self.next = (self.next * 2).min(self.max);
        d
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// Waits until `until` for a datagram that decodes; skips garbage and
/// receive errors (on Linux, ICMP errors of earlier sends surface here).
async fn recv_datagram(
    socket: &UdpSocket,
    buf: &mut [u8],
    until: Instant,
) -> Option<(SocketAddr, Datagram)> {
    let mut errors = 0u32;
    loop {
        let received = tokio::time::timeout_at(until, socket.recv_from(buf))
            .await
            .ok()?;
        match received {
            Ok((n, src)) => match buf.get(..n).map(Datagram::decode) {
                Some(Ok(d)) => return Some((src, d)),
                _ => tracing::trace!(%src, "ignored a datagram that does not decode"),
            },
            Err(e) => {
                tracing::debug!("tracker socket: {e}");
                errors += 1;
                // A socket that fails every time must not spin: wait the
                // attempt out instead.
                if errors >= 16 {
                    tokio::time::sleep_until(until).await;
                    return None;
                }
            }
        }
    }
}

/// Where the handshake stands; [`Handshake::on_reply`] is its transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Sending JOIN with this cookie (0: none yet) to the central tracker.
    Join { cookie: u64 },
    /// Sending CONFIRM with the OFFER's token to the swarm tracker.
    Confirm { swarm: SocketAddr, token: u64 },
    /// CONFIRMED came back: the swarm is ours.
    Done { port: u16 },
}

impl Handshake {
    /// The next step after `message` (carrying our transaction id) from
    /// `src`, or `None` to ignore it.
    fn on_reply(self, central: SocketAddr, src: SocketAddr, message: Message) -> Option<Self> {
        let from_central = canonical(src) == canonical(central);
        match (self, message) {
            (Handshake::Join { cookie }, Message::Challenge { cookie: fresh })
                if from_central && fresh != 0 && fresh != cookie =>
            {
                // The first cookie, or a fresh one because ours expired.
                Some(Handshake::Join { cookie: fresh })
            }
            (
                Handshake::Join { .. },
                Message::Offer {
                    token,
                    port: Some(port),
                },
            ) if from_central && port != 0 => Some(Handshake::Confirm {
                swarm: SocketAddr::new(central.ip(), port),
                token,
            }),
            (Handshake::Join { .. }, Message::Offer { token, port: None })
                if !from_central && same_ip(src.ip(), central.ip()) && src.port() != 0 =>
            {
                // From the new swarm tracker's own socket: its source port is
                // the swarm port.
                Some(Handshake::Confirm {
                    swarm: SocketAddr::new(central.ip(), src.port()),
                    token,
                })
            }
            (Handshake::Confirm { swarm, .. }, Message::Confirmed)
                if canonical(src) == canonical(swarm) =>
            {
                Some(Handshake::Done { port: swarm.port() })
            }
            _ => None,
        }
    }
}

/// Creates a swarm: runs the handshake of PROTOCOL.md with the central
/// tracker at `central` on `socket` (not connected), and returns the swarm
/// tracker's port once it is confirmed.
///
/// An ERROR from the central tracker to our JOIN ends the handshake with
/// that error; ERROR 5 (a limit or a cap refused the swarm) only after
/// [`JOIN_REFUSED_TRIES`] of them, as [`AnnounceError::TrackerFull`].
///
/// Announce on the same socket afterwards ([`TrackerClient::from_socket`]):
/// the first ANNOUNCE must come from the address that confirmed.
pub async fn create_swarm(
    socket: &UdpSocket,
    central: SocketAddr,
    deadline: Duration,
) -> Result<u16, AnnounceError> {
    let start = Instant::now();
    let end = start + deadline;
    // One transaction id for the whole handshake: every copy of every step.
    let tid: u32 = rand::random();
    let mut step = Handshake::Join { cookie: 0 };
    let mut refused = 0u32;
    let mut backoff = Backoff::new(FIRST_RTO, MAX_RTO);
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::with_capacity(32);
    loop {
        let (to, message) = match step {
            Handshake::Join { cookie } => (central, Message::Join { cookie }),
            Handshake::Confirm { swarm, token } => (swarm, Message::Confirm { token }),
            Handshake::Done { port } => return Ok(port),
        };
        let now = Instant::now();
        if now >= end {
            return Err(AnnounceError::Unreachable {
                tracker: central,
                waited: now - start,
            });
        }
        out.clear();
        Datagram::new(tid, message).encode(&mut out);
        if let Err(e) = socket.send_to(&out, to).await {
            tracing::debug!("sending to the tracker at {to}: {e}");
        }
        let until = (now + backoff.next()).min(end);
        while let Some((src, d)) = recv_datagram(socket, &mut buf, until).await {
            if d.tid != tid {
                continue;
            }
            if let (Handshake::Join { cookie }, Message::Error { code, message }) =
                (step, &d.message)
            {
                // Only an answer to a JOIN with a cookie can be an ERROR.
                if cookie == 0 || canonical(src) != canonical(central) {
                    continue;
                }
                if *code != ErrorCode::RateLimited {
                    return Err(error_for(central, *code, message));
                }
                refused += 1;
                tracing::debug!("the tracker refused our JOIN ({refused}): {message}");
                if refused >= JOIN_REFUSED_TRIES {
                    return Err(AnnounceError::TrackerFull {
                        tracker: central,
                        message: sanitize(message),
                    });
                }
                // Ask again after this attempt's timeout.
                tokio::time::sleep_until(until).await;
                break;
            }
            if let Some(next) = step.on_reply(central, src, d.message) {
                tracing::debug!(?next, "swarm handshake");
                step = next;
                backoff.reset();
                break;
            }
        }
    }
}

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
}

impl From<Peers> for AnnounceReply {
    fn from(p: Peers) -> Self {
        let mut peers = p.peers;
        peers.retain(|e| e.addr.port() != 0 && !e.addr.ip().is_unspecified());
        Self {
            interval: Duration::from_secs(u64::from(p.interval)).max(MIN_INTERVAL),
            seeders: p.seeders,
            partials: p.partials,
            peers,
        }
    }
}

/// A connection id and when it was handed out.
#[derive(Debug, Clone, Copy)]
struct ConnId {
    id: u64,
    at: Instant,
}

/// Talks to one swarm tracker: owns the socket, the swarm key, the TCP port
/// it announces, and the connection id.
pub struct TrackerClient {
    socket: UdpSocket,
    /// Whether `socket` is connected (to `swarm`): then it must use `send`.
    connected: bool,
    swarm: SocketAddr,
    key: [u8; 32],
    tcp_port: u16,
    conn: Option<ConnId>,
    deadline: Duration,
    /// An ANNOUNCE with a listed state was sent: leaving is worth saying.
    maybe_listed: bool,
    /// CONNECTs answered so far (diagnostics and tests).
    connects: u64,
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
            if d.tid != tid || canonical(src) != swarm {
                continue;
            }
            match d.message {
                Message::Connected { .. } if connecting => return Some(d.message),
                Message::Peers(_) if !connecting => return Some(d.message),
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
                    (
                        announce_tid,
                        Message::Announce {
                            connection_id,
                            announce,
                        },
                    )
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
                Some(Message::Peers(p)) => return Ok(AnnounceReply::from(p)),
                Some(Message::Error { code, message }) => match code {
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
                    code => return Err(error_for(tracker, code, &message)),
                },
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

/// The unspecified address of `to`'s family, any port.
fn any_port_for(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Why [`TrackerClient::create`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("cannot open a UDP socket to talk to the tracker: {0}")]
    Bind(#[source] std::io::Error),
    #[error(transparent)]
    Tracker(#[from] AnnounceError),
}

/// What the owner of an [`Announcer`] wants announced.
#[derive(Debug, Clone, Copy)]
struct Wish {
    state: PeerState,
    wanted: u16,
}

/// Handle to an announce loop started by [`spawn_announcer`].
///
/// Dropping it stops the loop too (saying "leaving" in the background);
/// [`Announcer::leave`] does the same and waits for it.
#[derive(Debug)]
pub struct Announcer {
    wish: watch::Sender<Wish>,
    replies: watch::Receiver<Option<AnnounceReply>>,
    errors: watch::Receiver<Option<AnnounceError>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Announces `initial_state` at once with `client`, then again every interval
/// the tracker gives or as soon as the owner changes the state; on
/// [`Announcer::leave`], on drop or when `cancel` fires, announces state 3
/// (best effort, [`LEAVE_DEADLINE`]) and stops.
pub fn spawn_announcer(
    client: TrackerClient,
    initial_state: PeerState,
    cancel: CancellationToken,
) -> Announcer {
    let (wish_tx, wish_rx) = watch::channel(Wish {
        state: initial_state,
        wanted: 0,
    });
    let (replies_tx, replies) = watch::channel(None);
    let (errors_tx, errors) = watch::channel(None);
    let stop = cancel.child_token();
    let name = format!("announce {}", client.swarm_addr());
    let task = crate::spawn::spawn(
        &name,
        announce_loop(client, wish_rx, replies_tx, errors_tx, stop.clone()),
    );
    Announcer {
        wish: wish_tx,
        replies,
        errors,
        stop,
        task: Some(task),
    }
}

impl Announcer {
    /// Announces `state` at once, and from then on (`Complete`: "finished,
    /// free to share"; `Leaving` stops the loop like [`Announcer::leave`]).
    pub fn set_state(&self, state: PeerState) {
        self.wish.send_modify(|w| w.state = state);
    }

    /// The state announced.
    pub fn state(&self) -> PeerState {
        self.wish.borrow().state
    }

    /// Peers asked for from now on (0: the tracker's default); announces at once.
    pub fn set_wanted(&self, wanted: u16) {
        self.wish.send_modify(|w| w.wanted = wanted);
    }

    /// Announces at once (e.g. when short of peers), without waiting for the
    /// interval.
    pub fn announce_now(&self) {
        self.wish.send_modify(|_| {});
    }

    /// Announces every `every` while `lonely()` says we have no peer, so a
    /// peer that nobody can reach (behind a firewall or NAT) learns of new
    /// peers it can dial without waiting for the tracker's interval.
    pub fn spawn_lonely_reannounce(
        &self,
        every: Duration,
        lonely: impl Fn() -> bool + Send + 'static,
    ) {
        let (wish, stop) = (self.wish.clone(), self.stop.clone());
        crate::spawn::spawn("reannounce", async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        if lonely() {
                            wish.send_modify(|_| {});
                        }
                    }
                }
            }
        });
    }

    /// Every reply, latest first: `None` until the first one.
    pub fn replies(&self) -> watch::Receiver<Option<AnnounceReply>> {
        self.replies.clone()
    }

    /// The latest reply.
    pub fn latest(&self) -> Option<AnnounceReply> {
        self.replies.borrow().clone()
    }

    /// The failure of the latest call, cleared by the next success.
    pub fn last_error(&self) -> Option<AnnounceError> {
        self.errors.borrow().clone()
    }

    /// The latest failure, as a channel (`None` after a success).
    pub fn errors(&self) -> watch::Receiver<Option<AnnounceError>> {
        self.errors.clone()
    }

    /// Says "leaving" to the tracker (best effort) and waits for the loop to
    /// end.
    pub async fn leave(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!("announce task: {e}");
            }
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn announce_loop(
    mut client: TrackerClient,
    mut wish: watch::Receiver<Wish>,
    replies: watch::Sender<Option<AnnounceReply>>,
    errors: watch::Sender<Option<AnnounceError>>,
    stop: CancellationToken,
) {
    let mut next = Instant::now();
    let mut retry = Backoff::new(LOOP_RETRY_FIRST, LOOP_RETRY_MAX);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            changed = wish.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let w = *wish.borrow_and_update();
        if w.state == PeerState::Leaving {
            break;
        }
        let mut result = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = client.announce(w.state, w.wanted) => r,
        };
        let mut not_listed = None;
        if let Err(e @ AnnounceError::SwarmFull { .. }) = &result {
            if w.state.is_listed() {
                // We cannot be listed (the swarm, or our address's share of
                // it, is full), but the list of peers is still ours to ask
                // for: a getter downloads anyway.
                not_listed = Some(e.clone());
                result = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    r = client.announce(PeerState::Asking, w.wanted) => r,
                };
            }
        }
        match result {
            Ok(reply) => {
                retry.reset();
                tracing::debug!(
                    seeders = reply.seeders,
                    partials = reply.partials,
                    peers = reply.peers.len(),
                    "announced {:?}",
                    w.state
                );
                next = Instant::now() + reply.interval;
                if let Some(e) = &not_listed {
                    tracing::warn!("{e}; not listed, asking for peers only");
                }
                errors.send_replace(not_listed);
                replies.send_replace(Some(reply));
            }
            Err(e) => {
                tracing::warn!("{e}");
                next = Instant::now() + retry.next();
                errors.send_replace(Some(e));
            }
        }
    }
    if client.maybe_listed {
        client.deadline = client.deadline.min(LEAVE_DEADLINE);
        match client.announce(PeerState::Leaving, 0).await {
            Ok(_) => tracing::debug!("told the tracker at {} we leave", client.swarm),
            Err(e) => tracing::debug!("leaving: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::events::Events;
    use crate::tracker::TrackerConfig;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const KEY: [u8; 32] = [7; 32];

    /// A tracker on 127.0.0.1:0; cancel the token to stop it.
    async fn tracker(config: TrackerConfig) -> (SocketAddr, CancellationToken) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            crate::tracker::run(socket, config, Events::new(false), c)
                .await
                .unwrap();
        });
        (addr, cancel)
    }

    async fn seeder(central: SocketAddr) -> TrackerClient {
        let mut c = TrackerClient::create(central, KEY, 4001, Duration::from_secs(5))
            .await
            .unwrap();
        c.set_deadline(Duration::from_secs(5));
        let r = c.announce(PeerState::Complete, 0).await.unwrap();
        assert!(r.peers.is_empty());
        c
    }

    async fn client(swarm: SocketAddr, port: u16) -> TrackerClient {
        let mut c = TrackerClient::bind(swarm, KEY, port).await.unwrap();
        c.set_deadline(Duration::from_secs(5));
        c
    }

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn create_announce_see_and_leave() {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let mut a = seeder(central).await;
        assert_eq!(a.swarm_addr().ip(), central.ip());
        assert_ne!(a.swarm_addr().port(), central.port());

        let mut b = client(a.swarm_addr(), 4002).await;
        let r = b.announce(PeerState::Downloading, 0).await.unwrap();
        assert_eq!(r.interval, Duration::from_secs(60));
        assert_eq!((r.seeders, r.partials), (1, 0));
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, local(4001));
        assert_eq!(r.peers[0].state, PeerState::Complete);

        let r = a.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!((r.seeders, r.partials), (0, 1));
        assert_eq!(r.peers[0].addr, local(4002));

        let r = a.announce(PeerState::Leaving, 0).await.unwrap();
        assert!(r.peers.is_empty());
        let r = b.announce(PeerState::Downloading, 0).await.unwrap();
        assert_eq!((r.seeders, r.partials), (0, 0));
        assert!(r.peers.is_empty());
        stop.cancel();
    }

    #[tokio::test]
    async fn wrong_key_is_a_clear_error() {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let a = seeder(central).await;
        let mut other = TrackerClient::bind(a.swarm_addr(), [8; 32], 4003)
            .await
            .unwrap();
        let e = other.announce(PeerState::Downloading, 0).await.unwrap_err();
        assert_eq!(
            e,
            AnnounceError::WrongSwarm {
                tracker: a.swarm_addr()
            }
        );
        assert!(e.to_string().contains("check the ticket"), "{e}");
        stop.cancel();
    }

    #[tokio::test]
    async fn bad_connection_id_reconnects() {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let mut a = seeder(central).await;
        assert_eq!(a.connects, 1);
        let good = a.conn.unwrap().id;
        a.conn = Some(ConnId {
            id: good ^ 1,
            at: Instant::now(),
        });
        a.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(a.connects, 2, "reconnected once");
        assert_ne!(a.conn.unwrap().id, good ^ 1);
        // An old id is renewed before use, without an ERROR 3 round trip.
        a.conn = Some(ConnId {
            id: good ^ 1,
            at: Instant::now() - CONN_ID_MAX_AGE,
        });
        a.announce(PeerState::Complete, 0).await.unwrap();
        assert_eq!(a.connects, 3);
        stop.cancel();
    }

    #[tokio::test]
    async fn unreachable_tracker_fails_within_the_deadline() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t0 = std::time::Instant::now();
        let e = create_swarm(&socket, addr, Duration::from_millis(600))
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(matches!(e, AnnounceError::Unreachable { tracker, .. } if tracker == addr));
        assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(2));
        assert!(e.to_string().contains("is the tracker running?"), "{e}");

        let mut c = client(addr, 4004).await;
        c.set_deadline(Duration::from_millis(400));
        let t0 = std::time::Instant::now();
        let e = c.announce(PeerState::Downloading, 0).await.unwrap_err();
        assert!(matches!(e, AnnounceError::Unreachable { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        // The silent socket saw retransmissions of the same CONNECT.
        let mut buf = [0u8; 64];
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        let first = Datagram::decode(&buf[..n]).unwrap();
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        assert_eq!(Datagram::decode(&buf[..n]).unwrap(), first);
    }

    #[tokio::test]
    async fn hostile_datagrams_do_not_derail_the_handshake() {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = socket.local_addr().unwrap();
        let hostile = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let junk = |tid: u32| {
            vec![
                Vec::new(),
                b"HYDK".to_vec(),
                vec![0xff; 40],
                Datagram::new(
                    tid,
                    Message::Offer {
                        token: 1,
                        port: Some(9),
                    },
                )
                .to_vec(),
                Datagram::new(
                    tid,
                    Message::Offer {
                        token: 1,
                        port: None,
                    },
                )
                .to_vec(),
                Datagram::new(tid, Message::Challenge { cookie: 5 }).to_vec(),
                Datagram::new(tid, Message::Confirmed).to_vec(),
            ]
        };
        // Queued before the handshake starts...
        for d in junk(0) {
            hostile.send_to(&d, me).await.unwrap();
        }
        // ...and sent while it runs.
        let flood = tokio::spawn(async move {
            for tid in 0u32.. {
                for d in junk(tid) {
                    let _ = hostile.send_to(&d, me).await;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let port = create_swarm(&socket, central, Duration::from_secs(5))
            .await
            .unwrap();
        flood.abort();
        assert_ne!(port, 9);
        let mut a = TrackerClient::from_socket(socket, local(port), KEY, 4005);
        a.set_deadline(Duration::from_secs(5));
        a.announce(PeerState::Complete, 0).await.unwrap();
        stop.cancel();
    }

    /// Drops the first JOIN with a cookie, then pretends the cookie expired,
    /// then offers from the central port only (as behind a NAT that drops
    /// the swarm port's OFFER).
    #[tokio::test]
    async fn handshake_retransmits_and_follows_a_fresh_cookie() {
        let central = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let central_addr = central.local_addr().unwrap();
        let swarm = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let swarm_port = swarm.local_addr().unwrap().port();
        let fake = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut joins = Vec::new();
            loop {
                let (n, src) = central.recv_from(&mut buf).await.unwrap();
                let d = Datagram::decode(&buf[..n]).unwrap();
                let Message::Join { cookie } = d.message else {
                    panic!("{d:?}")
                };
                joins.push((d.tid, cookie));
                let reply = match cookie {
                    0 => Some(Message::Challenge { cookie: 77 }),
                    77 if joins.iter().filter(|j| j.1 == 77).count() == 1 => None,
                    77 => Some(Message::Challenge { cookie: 78 }),
                    78 => Some(Message::Offer {
                        token: 5,
                        port: Some(swarm_port),
                    }),
                    _ => panic!("{joins:?}"),
                };
                if let Some(m) = reply {
                    central
                        .send_to(&Datagram::new(d.tid, m).to_vec(), src)
                        .await
                        .unwrap();
                }
                if cookie == 78 {
                    break;
                }
            }
            let (n, src) = swarm.recv_from(&mut buf).await.unwrap();
            let d = Datagram::decode(&buf[..n]).unwrap();
            assert_eq!(d.message, Message::Confirm { token: 5 });
            swarm
                .send_to(&Datagram::new(d.tid, Message::Confirmed).to_vec(), src)
                .await
                .unwrap();
            joins
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = create_swarm(&socket, central_addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(port, swarm_port);
        let joins = fake.await.unwrap();
        let cookies: Vec<u64> = joins.iter().map(|j| j.1).collect();
        assert_eq!(cookies, [0, 77, 77, 78]);
        assert!(
            joins.iter().all(|j| j.0 == joins[0].0),
            "one tid: {joins:?}"
        );
    }

    /// A fake swarm tracker that answers CONNECT, then `error` to every
    /// ANNOUNCE; counts the ANNOUNCEs.
    async fn fake_swarm(error: u16) -> (SocketAddr, Arc<AtomicU32>, JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let announces = Arc::new(AtomicU32::new(0));
        let count = announces.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 128];
            loop {
                let (n, src) = s.recv_from(&mut buf).await.unwrap();
                let d = Datagram::decode(&buf[..n]).unwrap();
                let m = match d.message {
                    Message::Connect => Message::Connected { connection_id: 42 },
                    Message::Announce { connection_id, .. } => {
                        assert_eq!(connection_id, 42);
                        count.fetch_add(1, Ordering::SeqCst);
                        Message::Error {
                            code: ErrorCode::from_u16(error),
                            message: "x\u{1b}[31m".into(),
                        }
                    }
                    m => panic!("{m:?}"),
                };
                s.send_to(&Datagram::new(d.tid, m).to_vec(), src)
                    .await
                    .unwrap();
            }
        });
        (addr, announces, task)
    }

    #[tokio::test]
    async fn error_codes_map_to_clear_errors() {
        for (code, expect) in [
            (6, "not confirmed yet"),
            (5, "swarm is full"),
            (4, "serves another swarm on that port: check the ticket"),
            (1, "protocol version"),
            (2, "malformed"),
        ] {
            let (addr, announces, task) = fake_swarm(code).await;
            let e = client(addr, 4006)
                .await
                .announce(PeerState::Downloading, 0)
                .await
                .unwrap_err();
            let text = e.to_string();
            assert!(text.contains(expect), "{text}");
            assert!(!text.contains('\u{1b}'), "control characters: {text}");
            let tries = if code == 6 { NOT_CONFIRMED_TRIES } else { 1 };
            assert_eq!(announces.load(Ordering::SeqCst), tries, "{text}");
            task.abort();
        }
    }

    #[tokio::test]
    async fn announce_loop_publishes_peers_and_leaves() {
        let (central, stop) = tracker(TrackerConfig::default()).await;
        let a = seeder(central).await;
        let swarm = a.swarm_addr();
        let cancel = CancellationToken::new();
        let seed = spawn_announcer(a, PeerState::Complete, cancel.clone());

        let b = client(swarm, 4007).await;
        let getter = spawn_announcer(b, PeerState::Downloading, cancel.clone());
        let mut replies = getter.replies();
        let r = replies
            .wait_for(|r| r.is_some())
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, local(4001));
        assert!(getter.last_error().is_none());

        // "Finished, free to share": announced at once, seen by a newcomer.
        getter.set_state(PeerState::Complete);
        let mut probe = client(swarm, 4008).await;
        let seen = loop {
            let r = probe.announce(PeerState::Asking, 0).await.unwrap();
            if r.seeders == 2 {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(seen.peers.iter().all(|p| p.state == PeerState::Complete));

        // Leaving removes the seeder from the list at once.
        seed.leave().await;
        let r = probe.announce(PeerState::Asking, 0).await.unwrap();
        assert_eq!(r.seeders, 1);
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, local(4007));

        // Cancelling the parent token stops the other loop the same way.
        cancel.cancel();
        getter.leave().await;
        let r = probe.announce(PeerState::Asking, 0).await.unwrap();
        assert_eq!((r.seeders, r.partials), (0, 0));
        stop.cancel();
    }

    #[tokio::test]
    async fn announce_loop_reports_an_unreachable_tracker() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut c = client(silent.local_addr().unwrap(), 4009).await;
        c.set_deadline(Duration::from_millis(300));
        let announcer = spawn_announcer(c, PeerState::Downloading, CancellationToken::new());
        let mut errors = announcer.errors();
        let e = errors
            .wait_for(|e| e.is_some())
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert!(matches!(e, AnnounceError::Unreachable { .. }));
        assert!(announcer.latest().is_none());
        // Nothing was ever listed: leaving is immediate.
        tokio::time::timeout(Duration::from_millis(200), announcer.leave())
            .await
            .unwrap();
    }

    /// Issue 11, item 5: a tracker full of swarms did not answer a JOIN,
    /// and creating a swarm failed after its whole deadline with "is the
    /// tracker running?". The tracker now answers ERROR 5 and the client
    /// says the tracker is full, in about a second.
    #[tokio::test]
    async fn a_full_tracker_is_a_clear_error_at_once() {
        let config = TrackerConfig {
            limits: crate::tracker::limits::Limits {
                max_swarms: 1,
                ..Default::default()
            },
            ..TrackerConfig::default()
        };
        let (central, stop) = tracker(config).await;
        let _a = seeder(central).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t0 = std::time::Instant::now();
        let e = create_swarm(&socket, central, Duration::from_secs(10))
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(
            matches!(e, AnnounceError::TrackerFull { tracker, .. } if tracker == central),
            "{e}"
        );
        assert!(took < Duration::from_secs(4), "took {took:?}");
        let text = e.to_string();
        assert!(
            text.contains("is full") && text.contains("it holds as many swarms"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        stop.cancel();
    }

    /// Issue 11, item 4: a getter that the tracker does not list (ERROR 5)
    /// got no peers at all. It now asks with state 0 and gets them.
    #[tokio::test]
    async fn announce_loop_asks_only_when_it_cannot_be_listed() {
        let config = TrackerConfig {
            limits: crate::tracker::limits::Limits {
                max_peers_per_ip: 1,
                ..Default::default()
            },
            ..TrackerConfig::default()
        };
        let (central, stop) = tracker(config).await;
        let a = seeder(central).await;
        // Same IP as the seeder, whose one slot it holds.
        let b = client(a.swarm_addr(), 4010).await;
        let getter = spawn_announcer(b, PeerState::Downloading, CancellationToken::new());
        let mut replies = getter.replies();
        let r = tokio::time::timeout(Duration::from_secs(5), replies.wait_for(|r| r.is_some()))
            .await
            .expect("no peers for a getter the tracker does not list")
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].addr, local(4001));
        assert!(matches!(
            getter.last_error(),
            Some(AnnounceError::SwarmFull { .. })
        ));
        getter.leave().await;
        stop.cancel();
    }

    #[test]
    fn handshake_transitions_ignore_the_unexpected() {
        let central = local(7410);
        let join = Handshake::Join { cookie: 0 };
        let offer_from = |src, port| join.on_reply(central, src, Message::Offer { token: 3, port });
        // OFFER from the swarm port, or from the central port with the port.
        let swarm = local(9000);
        let confirm = Handshake::Confirm { swarm, token: 3 };
        assert_eq!(offer_from(swarm, None), Some(confirm));
        assert_eq!(offer_from(central, Some(9000)), Some(confirm));
        // From another IP, or a central OFFER without a port: ignored.
        let elsewhere: SocketAddr = "127.0.0.2:9000".parse().unwrap();
        assert_eq!(offer_from(elsewhere, None), None);
        assert_eq!(offer_from(central, None), None);
        assert_eq!(offer_from(swarm, Some(9001)), None);
        assert_eq!(offer_from(central, Some(0)), None);
        // CHALLENGE: only from the central port, only a new cookie.
        let ch =
            |s: Handshake, src, cookie| s.on_reply(central, src, Message::Challenge { cookie });
        assert_eq!(ch(join, central, 9), Some(Handshake::Join { cookie: 9 }));
        assert_eq!(ch(Handshake::Join { cookie: 9 }, central, 9), None);
        assert_eq!(ch(join, swarm, 9), None);
        assert_eq!(ch(confirm, central, 9), None);
        // CONFIRMED only from the swarm being confirmed; a v4-mapped source
        // is the same address.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:9000".parse().unwrap();
        assert_eq!(
            confirm.on_reply(central, mapped, Message::Confirmed),
            Some(Handshake::Done { port: 9000 })
        );
        assert_eq!(confirm.on_reply(central, central, Message::Confirmed), None);
        assert_eq!(join.on_reply(central, swarm, Message::Confirmed), None);
    }
}
