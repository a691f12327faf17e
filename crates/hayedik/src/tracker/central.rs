//! The central tracker: answers JOIN with a stateless cookie, and launches a
//! swarm tracker for a JOIN that echoes a valid one.
//!
//! [`CentralTracker`] is the synchronous state (cookies, the budget, the JOINs
//! already answered); [`serve`] is the thin I/O loop that binds swarm sockets,
//! sends both OFFERs and hands new swarms to the swarm task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hayedik_proto::tracker::{
    decode_body, decode_header, encode_error_capped, Datagram, ErrorCode, HeaderError, Kind,
    Message,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::cookie::{Purpose, Stamp};
use super::limits::{Budget, Limits, LogEvery};
use super::swarm::{SwarmRecord, SwarmTracker};
use super::swarm_task::{self, Note, SwarmSocket, Swarms};
use super::{Binder, Shared};
use crate::events::Event;

/// Minimum lifetime of a join cookie (PROTOCOL.md: at least 30 s).
pub const COOKIE_WINDOW_SECS: u64 = 30;
/// How long a JOIN's answer is remembered for retransmissions: the longest a
/// cookie stays valid.
const REMEMBER_JOIN: Duration = Duration::from_secs(2 * COOKIE_WINDOW_SECS);
/// At most one log line per this about refused JOINs (a flood must not
/// flood the log too), with the count of what it stands for.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// The ERROR 5 message when no port can be bound for a new swarm.
pub const NO_PORT: &str = "tracker is full: no free port for a new swarm";

/// A JOIN is identified by its source, cookie and transaction id.
pub type JoinKey = (SocketAddr, u64, u32);

/// The OFFER given to a JOIN, kept to answer its retransmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    pub port: u16,
    pub token: u64,
    pub at: Instant,
}

/// What a CLAIM asks for: a swarm bound to `key`, on `port` (0: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub key: [u8; 32],
    pub port: u16,
}

/// The ERROR 4 message to a CLAIM for a port that a live swarm holds.
pub const PORT_HELD: &str = "that port belongs to another swarm";
/// The ERROR 5 message to a CLAIM for a port no swarm may have here.
pub const PORT_REFUSED: &str = "that port is not available for a swarm on this tracker";

/// What the I/O loop must do after a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send nothing.
    Silence,
    /// Send the bytes left in `out`.
    Reply,
    /// A retransmitted JOIN: send the same two OFFERs again.
    Repeat(Offered),
    /// Launch a swarm tracker (the budget is already charged); for a CLAIM,
    /// bound to its key, on its port when it names one.
    Create {
        tid: u32,
        key: JoinKey,
        claim: Option<Claim>,
    },
}

/// The central tracker's state.
#[derive(Debug)]
pub struct CentralTracker {
    cookies: Stamp,
    budget: Budget,
    offered: HashMap<JoinKey, Offered>,
    epoch: Instant,
    refused: u64,
    refusal_log: LogEvery,
    /// Every live swarm's port (pending, confirmed, or stored and waiting
    /// for its port), with its key once known. Bounded by the swarm caps.
    ports: HashMap<u16, Option<[u8; 32]>>,
    /// Swarm key -> port, for the keys of `ports` (the first swarm of a key
    /// when several share it).
    keys: HashMap<[u8; 32], u16>,
    /// Ports a CLAIM may name: inclusive range.
    claimable: (u16, u16),
}

/// Ports a CLAIM may name when the tracker has no `--swarm-ports` range:
/// never a privileged one.
pub const CLAIMABLE_DEFAULT: (u16, u16) = (1024, u16::MAX);

impl CentralTracker {
    pub fn new(limits: Limits, epoch: Instant) -> Self {
        Self {
            cookies: Stamp::random(Purpose::JoinCookie, COOKIE_WINDOW_SECS),
            budget: Budget::new(limits),
            offered: HashMap::new(),
            epoch,
            refused: 0,
            refusal_log: LogEvery::new(LOG_EVERY),
            ports: HashMap::new(),
            keys: HashMap::new(),
            claimable: CLAIMABLE_DEFAULT,
        }
    }

    /// Limits the ports a CLAIM may name to `range` (`--swarm-ports`).
    pub fn set_claimable(&mut self, range: (u16, u16)) {
        self.claimable = range;
    }

    /// A swarm now holds `port`, bound to `key` if known.
    pub fn holds(&mut self, port: u16, key: Option<[u8; 32]>) {
        self.ports.insert(port, key);
        if let Some(key) = key {
            self.keys.entry(key).or_insert(port);
        }
    }

    /// The port of `key`'s swarm, if one is live.
    pub fn port_of(&self, key: &[u8; 32]) -> Option<u16> {
        self.keys.get(key).copied()
    }

    /// The swarm on `port` is gone: forget it, and let another swarm of
    /// the same key (if any) answer for the key.
    fn released_port(&mut self, port: u16) {
        let Some(Some(key)) = self.ports.remove(&port) else {
            return;
        };
        if self.keys.get(&key) == Some(&port) {
            self.keys.remove(&key);
            if let Some((&other, _)) = self.ports.iter().find(|(_, k)| **k == Some(key)) {
                self.keys.insert(key, other);
            }
        }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn budget_mut(&mut self) -> &mut Budget {
        &mut self.budget
    }

    /// JOINs refused by a limit so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// The cookie `src` gets now.
    pub fn cookie(&self, src: SocketAddr, now: Instant) -> u64 {
        self.cookies.issue(src, 0, self.secs(now))
    }

    /// Applies one datagram received on the central port.
    pub fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Action {
        out.clear();
        let (header, body) = match decode_header(buf) {
            Ok(x) => x,
            Err(HeaderError::Drop) => return Action::Silence,
            Err(HeaderError::UnsupportedVersion { tid, .. }) => {
                return reply_if(encode_error_capped(
                    out,
                    tid,
                    ErrorCode::UnsupportedVersion,
                    "unsupported version: this tracker speaks version 1",
                    buf.len(),
                ));
            }
        };
        if !matches!(header.kind, Kind::Join | Kind::Claim) {
            return Action::Silence;
        }
        let tid = header.tid;
        if header.token == 0 || !self.cookies.check(src, 0, header.token, self.secs(now)) {
            // No cookie, or a bad or expired one: a fresh CHALLENGE, never an
            // ERROR (it would be larger than the JOIN).
            let cookie = self.cookie(src, now);
            Datagram::new(tid, Message::Challenge { cookie }).encode(out);
            return Action::Reply;
        }
        let claim = match decode_body(&header, body) {
            Ok(Message::Claim {
                swarm_key, port, ..
            }) => Some(Claim {
                key: swarm_key,
                port,
            }),
            Ok(_) => None,
            Err(_) => {
                let what = match header.kind {
                    Kind::Claim => "CLAIM is a swarm key and a port",
                    _ => "JOIN has an empty body",
                };
                return reply_if(encode_error_capped(
                    out,
                    tid,
                    ErrorCode::Malformed,
                    what,
                    usize::MAX,
                ));
            }
        };
        let key = (src, header.token, tid);
        if let Some(offered) = self.offered.get(&key) {
            return Action::Repeat(*offered);
        }
        if let Some(claim) = claim {
            // Knowing a key finds its swarm (what every ticket holder
            // knows); it never moves or rebinds one.
            if let Some(port) = self.port_of(&claim.key) {
                Datagram::new(tid, Message::SwarmAt { port }).encode(out);
                return Action::Reply;
            }
            if claim.port != 0 {
                let refusal = if self.ports.contains_key(&claim.port) {
                    Some((ErrorCode::WrongSwarmKey, PORT_HELD))
                } else if claim.port < self.claimable.0 || claim.port > self.claimable.1 {
                    Some((ErrorCode::RateLimited, PORT_REFUSED))
                } else {
                    None
                };
                if let Some((code, message)) = refusal {
                    encode_error_capped(out, tid, code, message, usize::MAX);
                    return Action::Reply;
                }
            }
        }
        match self.budget.try_create(src.ip(), now) {
            Ok(()) => Action::Create { tid, key, claim },
            Err(refusal) => {
                self.refused += 1;
                if let Some(n) = self.refusal_log.hit(now) {
                    tracing::info!("refused {} from {src}: {}", joins(n), refusal.message());
                }
                // The cookie proved the source's address, so the ERROR
                // amplifies nothing, and the peer can tell a full tracker
                // from a dead one (PROTOCOL.md).
                encode_error_capped(
                    out,
                    tid,
                    ErrorCode::RateLimited,
                    refusal.message(),
                    usize::MAX,
                );
                Action::Reply
            }
        }
    }

    /// A swarm was launched for `key` (bound to `swarm_key` for a CLAIM).
    pub fn created(&mut self, key: JoinKey, offered: Offered, swarm_key: Option<[u8; 32]>) {
        self.offered.insert(key, offered);
        self.holds(offered.port, swarm_key);
    }

    /// Launching failed (no port): give the budget back.
    pub fn creation_failed(&mut self, ip: IpAddr) {
        self.budget.released(Some(ip), true);
    }

    /// Applies a swarm task's note.
    pub fn on_note(&mut self, note: &Note) {
        match *note {
            Note::Confirmed { creator, .. } => {
                if let Some(ip) = creator {
                    self.budget.confirmed(ip);
                }
            }
            Note::KeyBound { port, key } => self.holds(port, Some(key)),
            Note::Gone {
                port,
                creator,
                was_pending,
            } => {
                self.budget.released(creator, was_pending);
                self.offered.retain(|_, o| o.port != port);
                self.released_port(port);
            }
        }
    }

    /// Forgets answered JOINs whose cookie has expired, and writes the
    /// summary of refusals that no later refusal wrote.
    pub fn sweep(&mut self, now: Instant) {
        self.offered
            .retain(|_, o| now.saturating_duration_since(o.at) < REMEMBER_JOIN);
        if let Some(n) = self.refusal_log.flush(now) {
            tracing::info!("refused {} more", joins(n));
        }
    }
}

/// "a JOIN", or "N JOINs since the last such line" for a summary.
fn joins(n: u64) -> String {
    if n == 1 {
        "a JOIN".to_string()
    } else {
        format!("{n} JOINs since the last such line")
    }
}

fn reply_if(sent: bool) -> Action {
    if sent {
        Action::Reply
    } else {
        Action::Silence
    }
}

/// The central tracker's I/O loop: runs until `shared.cancel` fires.
pub async fn serve(
    socket: UdpSocket,
    mut central: CentralTracker,
    binder: Binder,
    shared: Arc<Shared>,
    mut notes: mpsc::UnboundedReceiver<Note>,
    swarms: Swarms,
) {
    // Every valid datagram is under 64 bytes; a longer one is cut, and
    // still refused as malformed (a reply is never larger than this).
    let mut buf = vec![0u8; 512];
    let mut out = Vec::with_capacity(64);
    let mut swarm_sockets: HashMap<u16, SwarmSocket> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    // Out of descriptors or ports, every JOIN fails the same way.
    let mut no_port_log = LogEvery::new(LOG_EVERY);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = sweep.tick() => {
                let now = Instant::now();
                central.sweep(now);
                shared.stats.refused.store(central.refused(), std::sync::atomic::Ordering::Relaxed);
                if let Some(n) = no_port_log.flush(now) {
                    tracing::warn!("no port for {} more", new_swarms(n));
                }
            }
            Some(note) = notes.recv() => {
                central.on_note(&note);
                if let Note::Gone { port, was_pending, .. } = note {
                    // Our copy is the last one: the port is free after this.
                    swarm_sockets.remove(&port);
                    binder.release(port);
                    let counted = if was_pending { &shared.stats.reclaimed } else { &shared.stats.retired };
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    shared.events.emit(if was_pending {
                        Event::SwarmReclaimed { port }
                    } else {
                        Event::SwarmRetired { port }
                    });
                }
            }
            r = socket.recv_from(&mut buf) => {
                let (n, src) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on Linux.
                        tracing::trace!("central recv: {e}");
                        continue;
                    }
                };
                let now = Instant::now();
                match central.on_datagram(src, &buf[..n], now, &mut out) {
                    Action::Silence => {}
                    Action::Reply => {
                        let _ = socket.send_to(&out, src).await;
                    }
                    Action::Repeat(offered) => {
                        if let Some(s) = swarm_sockets.get(&offered.port) {
                            send_offers(&socket, s, src, src_tid(&buf[..n]), offered).await;
                        }
                    }
                    Action::Create { tid, key, claim } => {
                        let bound = match claim {
                            Some(Claim { port, .. }) if port != 0 => binder.bind_exact(port),
                            _ => binder.bind_any(),
                        };
                        let bound = bound.and_then(|s| {
                            s.set_nonblocking(true)?;
                            Ok(s)
                        });
                        let bound = bound.and_then(|s| {
                            let port = s.local_addr()?.port();
                            Ok((Arc::new(s), port))
                        });
                        let (swarm_socket, port) = match bound {
                            Ok(x) => x,
                            Err(e) => {
                                if let Some(n) = no_port_log.hit(now) {
                                    tracing::warn!("no port for {}: {e}", new_swarms(n));
                                }
                                central.creation_failed(src.ip());
                                // Its cookie proved the address: ERROR 5.
                                let message = match claim {
                                    Some(c) if c.port != 0 => PORT_REFUSED,
                                    _ => NO_PORT,
                                };
                                out.clear();
                                encode_error_capped(&mut out, tid, ErrorCode::RateLimited, message, usize::MAX);
                                let _ = socket.send_to(&out, src).await;
                                continue;
                            }
                        };
                        let offered = Offered { port, token: nonzero_random(), at: now };
                        let swarm_key = claim.map(|c| c.key);
                        central.created(key, offered, swarm_key);
                        shared.events.emit(Event::SwarmCreated { port });
                        shared.stats.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        send_offers(&socket, &swarm_socket, src, tid, offered).await;
                        swarm_sockets.insert(port, swarm_socket.clone());
                        let record = SwarmRecord {
                            port,
                            creator: Some(src.ip()),
                            token: offered.token,
                            confirmer: None,
                            key: swarm_key,
                            last_announce_unix: swarm_task::unix_now(),
                        };
                        let mut swarm = SwarmTracker::new(record, false, shared.swarm_settings.clone(), now);
                        // Claimed: bound to its key, but retired like any
                        // swarm nobody announces to.
                        swarm.set_announced(false);
                        swarms.adopt(swarm, swarm_socket);
                    }
                }
            }
        }
    }
}

/// "a new swarm", or "N new swarms since the last such line".
fn new_swarms(n: u64) -> String {
    if n == 1 {
        "a new swarm".to_string()
    } else {
        format!("{n} new swarms since the last such line")
    }
}

fn src_tid(buf: &[u8]) -> u32 {
    decode_header(buf).map(|(h, _)| h.tid).unwrap_or(0)
}

/// The two OFFERs: one from the swarm's own port (the original design's
/// reply from the new tracker), one from the central port with the port in
/// its body (for NATs that drop datagrams from ports never sent to).
async fn send_offers(
    central: &UdpSocket,
    swarm: &std::net::UdpSocket,
    to: SocketAddr,
    tid: u32,
    o: Offered,
) {
    let mut out = Vec::with_capacity(24);
    Datagram::new(
        tid,
        Message::Offer {
            token: o.token,
            port: None,
        },
    )
    .encode(&mut out);
    // Nonblocking: a full send buffer drops it, and the peer asks again.
    let _ = swarm.send_to(&out, to);
    out.clear();
    Datagram::new(
        tid,
        Message::Offer {
            token: o.token,
            port: Some(o.port),
        },
    )
    .encode(&mut out);
    let _ = central.send_to(&out, to).await;
}

fn nonzero_random() -> u64 {
    rand::random::<u64>().max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn join(tid: u32, cookie: u64) -> Vec<u8> {
        Datagram::new(tid, Message::Join { cookie }).to_vec()
    }

    #[test]
    fn challenge_then_create_then_repeat() {
        let now = Instant::now();
        let mut c = CentralTracker::new(Limits::default(), now);
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut out = Vec::new();
        assert_eq!(
            c.on_datagram(src, &join(1, 0), now, &mut out),
            Action::Reply
        );
        let cookie = match Datagram::decode(&out).unwrap().message {
            Message::Challenge { cookie } => cookie,
            m => panic!("{m:?}"),
        };
        assert_eq!(out.len(), 20, "no larger than the JOIN");
        let key = (src, cookie, 2);
        assert_eq!(
            c.on_datagram(src, &join(2, cookie), now, &mut out),
            Action::Create {
                tid: 2,
                key,
                claim: None
            }
        );
        let offered = Offered {
            port: 5000,
            token: 9,
            at: now,
        };
        c.created(key, offered, None);
        assert_eq!(
            c.on_datagram(src, &join(2, cookie), now, &mut out),
            Action::Repeat(offered)
        );
        // Another transaction id is another swarm.
        assert!(matches!(
            c.on_datagram(src, &join(3, cookie), now, &mut out),
            Action::Create { .. }
        ));
        // Another source with the same cookie gets a CHALLENGE.
        let other: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        assert_eq!(
            c.on_datagram(other, &join(2, cookie), now, &mut out),
            Action::Reply
        );
        assert!(matches!(
            Datagram::decode(&out).unwrap().message,
            Message::Challenge { .. }
        ));
    }

    #[test]
    fn expired_cookie_gets_a_fresh_challenge() {
        let t0 = Instant::now();
        let mut c = CentralTracker::new(Limits::default(), t0);
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let cookie = c.cookie(src, t0);
        let later = t0 + Duration::from_secs(3 * COOKIE_WINDOW_SECS);
        let mut out = Vec::new();
        assert_eq!(
            c.on_datagram(src, &join(1, cookie), later, &mut out),
            Action::Reply
        );
        assert!(matches!(
            Datagram::decode(&out).unwrap().message,
            Message::Challenge { .. }
        ));
    }

    #[test]
    fn garbage_and_other_types_are_silent() {
        let now = Instant::now();
        let mut c = CentralTracker::new(Limits::default(), now);
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut out = Vec::new();
        for d in [
            vec![],
            b"HYDK".to_vec(),
            vec![0u8; 40],
            Datagram::new(1, Message::Connect).to_vec(),
            Datagram::new(1, Message::Confirm { token: 5 }).to_vec(),
        ] {
            assert_eq!(c.on_datagram(src, &d, now, &mut out), Action::Silence);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn version_error_is_capped() {
        let now = Instant::now();
        let mut c = CentralTracker::new(Limits::default(), now);
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut d = join(1, 0);
        d[4] = 9;
        let mut out = Vec::new();
        // 20 bytes: not even the code fits.
        assert_eq!(c.on_datagram(src, &d, now, &mut out), Action::Silence);
        d.extend_from_slice(&[0; 10]);
        assert_eq!(c.on_datagram(src, &d, now, &mut out), Action::Reply);
        assert_eq!(out.len(), 30);
        assert!(matches!(
            Datagram::decode(&out).unwrap().message,
            Message::Error {
                code: ErrorCode::UnsupportedVersion,
                ..
            }
        ));
    }

    #[test]
    fn join_with_body_and_valid_cookie_is_malformed() {
        let now = Instant::now();
        let mut c = CentralTracker::new(Limits::default(), now);
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut d = join(1, c.cookie(src, now));
        d.push(0);
        let mut out = Vec::new();
        assert_eq!(c.on_datagram(src, &d, now, &mut out), Action::Reply);
        assert!(matches!(
            Datagram::decode(&out).unwrap().message,
            Message::Error {
                code: ErrorCode::Malformed,
                ..
            }
        ));
    }

    /// Issue 11, item 5: a JOIN with a valid cookie refused by a cap got no
    /// reply, and `share` waited 30 s to say "is the tracker running?". It
    /// now gets ERROR 5 saying what is full; a JOIN without a valid cookie
    /// still only gets a CHALLENGE.
    #[test]
    fn caps_refuse_with_error_5() {
        let now = Instant::now();
        let mut c = CentralTracker::new(
            Limits {
                max_pending_per_ip: 2,
                max_swarms_per_24: 3,
                ..Limits::default()
            },
            now,
        );
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let cookie = c.cookie(src, now);
        let mut out = Vec::new();
        for tid in 0..2 {
            assert!(matches!(
                c.on_datagram(src, &join(tid, cookie), now, &mut out),
                Action::Create { .. }
            ));
        }
        let refused = |c: &mut CentralTracker, src, d: &[u8], out: &mut Vec<u8>| {
            assert_eq!(c.on_datagram(src, d, now, out), Action::Reply);
            match Datagram::decode(out).unwrap() {
                Datagram {
                    message: Message::Error { code, message },
                    tid,
                } => {
                    assert_eq!(code, ErrorCode::RateLimited);
                    (tid, message)
                }
                d => panic!("{d:?}"),
            }
        };
        let (tid, message) = refused(&mut c, src, &join(9, cookie), &mut out);
        assert_eq!(tid, 9);
        assert!(message.contains("your address"), "{message}");
        // Without a valid cookie: a CHALLENGE, never an ERROR.
        assert_eq!(
            c.on_datagram(src, &join(10, cookie ^ 1), now, &mut out),
            Action::Reply
        );
        assert!(matches!(
            Datagram::decode(&out).unwrap().message,
            Message::Challenge { .. }
        ));
        // Another address of the /24 gets its swarm, the next one is refused
        // for the network; another /24 is not affected.
        let other: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let cookie2 = c.cookie(other, now);
        assert!(matches!(
            c.on_datagram(other, &join(1, cookie2), now, &mut out),
            Action::Create { .. }
        ));
        let third: SocketAddr = "127.0.0.3:4000".parse().unwrap();
        let cookie3 = c.cookie(third, now);
        let (_, message) = refused(&mut c, third, &join(1, cookie3), &mut out);
        assert!(message.contains("your network"), "{message}");
        let far: SocketAddr = "127.0.1.3:4000".parse().unwrap();
        let cookie4 = c.cookie(far, now);
        assert!(matches!(
            c.on_datagram(far, &join(1, cookie4), now, &mut out),
            Action::Create { .. }
        ));
        assert_eq!(c.refused(), 2);
    }

    fn claim(tid: u32, cookie: u64, key: [u8; 32], port: u16) -> Vec<u8> {
        Datagram::new(
            tid,
            Message::Claim {
                cookie,
                swarm_key: key,
                port,
            },
        )
        .to_vec()
    }

    fn error_of(out: &[u8]) -> (ErrorCode, String) {
        match Datagram::decode(out).unwrap().message {
            Message::Error { code, message } => (code, message),
            m => panic!("{m:?}"),
        }
    }

    /// The stable-swarm extension: a CLAIM without a cookie gets a
    /// CHALLENGE no larger than itself; with one it creates a swarm bound
    /// to its key (on its port if it names one); the key then finds that
    /// swarm, and nobody can take its port for another key.
    #[test]
    fn claim_finds_or_creates_never_takes() {
        let now = Instant::now();
        let mut c = CentralTracker::new(Limits::default(), now);
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut out = Vec::new();
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            c.on_datagram(src, &claim(1, 0, k1, 9000), now, &mut out),
            Action::Reply
        );
        assert!(out.len() <= 54);
        assert!(matches!(
            Datagram::decode(&out).unwrap().message,
            Message::Challenge { .. }
        ));
        let cookie = c.cookie(src, now);
        let key = (src, cookie, 2);
        let want = Claim {
            key: k1,
            port: 9000,
        };
        assert_eq!(
            c.on_datagram(src, &claim(2, cookie, k1, 9000), now, &mut out),
            Action::Create {
                tid: 2,
                key,
                claim: Some(want)
            }
        );
        let offered = Offered {
            port: 9000,
            token: 7,
            at: now,
        };
        c.created(key, offered, Some(k1));
        // Its retransmission gets the same OFFERs.
        assert_eq!(
            c.on_datagram(src, &claim(2, cookie, k1, 9000), now, &mut out),
            Action::Repeat(offered)
        );
        // Anyone else with the key finds the port, whatever port it names.
        let other: SocketAddr = "127.0.0.9:5000".parse().unwrap();
        let cookie2 = c.cookie(other, now);
        for port in [0, 9000, 9001] {
            assert_eq!(
                c.on_datagram(other, &claim(3, cookie2, k1, port), now, &mut out),
                Action::Reply
            );
            assert_eq!(
                Datagram::decode(&out).unwrap(),
                Datagram::new(3, Message::SwarmAt { port: 9000 })
            );
        }
        // Another key cannot have the port.
        assert_eq!(
            c.on_datagram(other, &claim(4, cookie2, k2, 9000), now, &mut out),
            Action::Reply
        );
        assert_eq!(
            error_of(&out),
            (ErrorCode::WrongSwarmKey, PORT_HELD.to_string())
        );
        // Nor a port a JOIN's swarm holds before any key is bound to it.
        c.holds(9100, None);
        assert_eq!(
            c.on_datagram(other, &claim(5, cookie2, k2, 9100), now, &mut out),
            Action::Reply
        );
        assert_eq!(error_of(&out).0, ErrorCode::WrongSwarmKey);
        // A privileged port, or one outside --swarm-ports: ERROR 5.
        assert_eq!(
            c.on_datagram(other, &claim(6, cookie2, k2, 80), now, &mut out),
            Action::Reply
        );
        assert_eq!(
            error_of(&out),
            (ErrorCode::RateLimited, PORT_REFUSED.to_string())
        );
        c.set_claimable((20000, 20010));
        assert_eq!(
            c.on_datagram(other, &claim(7, cookie2, k2, 9200), now, &mut out),
            Action::Reply
        );
        assert_eq!(error_of(&out).0, ErrorCode::RateLimited);
        // Once the swarm is gone its port and key are free again: the
        // first claim binds them (a tracker that lost them knows no key).
        c.on_note(&Note::Gone {
            port: 9000,
            creator: Some(src.ip()),
            was_pending: false,
        });
        assert_eq!(c.port_of(&k1), None);
        c.set_claimable(CLAIMABLE_DEFAULT);
        match c.on_datagram(other, &claim(8, cookie2, k2, 9000), now, &mut out) {
            Action::Create { claim, .. } => assert_eq!(
                claim,
                Some(Claim {
                    key: k2,
                    port: 9000
                })
            ),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn key_bound_by_announce_is_found_and_forgotten_with_its_swarm() {
        let now = Instant::now();
        let mut c = CentralTracker::new(Limits::default(), now);
        c.holds(9300, None);
        c.on_note(&Note::KeyBound {
            port: 9300,
            key: [3; 32],
        });
        // A second swarm of the same key (two JOINs) answers once the
        // first is gone.
        c.holds(9301, Some([3; 32]));
        assert_eq!(c.port_of(&[3; 32]), Some(9300));
        c.on_note(&Note::Gone {
            port: 9300,
            creator: None,
            was_pending: false,
        });
        assert_eq!(c.port_of(&[3; 32]), Some(9301));
        c.on_note(&Note::Gone {
            port: 9301,
            creator: None,
            was_pending: true,
        });
        assert_eq!(c.port_of(&[3; 32]), None);
    }

    #[test]
    fn malformed_claim_with_a_cookie_gets_error_2() {
        let now = Instant::now();
        let mut c = CentralTracker::new(Limits::default(), now);
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut d = claim(1, c.cookie(src, now), [1; 32], 0);
        d.pop();
        let mut out = Vec::new();
        assert_eq!(c.on_datagram(src, &d, now, &mut out), Action::Reply);
        assert_eq!(error_of(&out).0, ErrorCode::Malformed);
        // Without a cookie: only a CHALLENGE.
        let mut d = claim(1, 0, [1; 32], 0);
        d.pop();
        assert_eq!(c.on_datagram(src, &d, now, &mut out), Action::Reply);
        assert!(matches!(
            Datagram::decode(&out).unwrap().message,
            Message::Challenge { .. }
        ));
    }
}
