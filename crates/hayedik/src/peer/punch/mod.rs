//! Hole punching (docs/reach.md, "Hole punching"): QUIC on a UDP socket
//! that shares the port of the announce socket, so that the mapping our NAT
//! made for our announces (the address the tracker saw and tells others)
//! also carries the punched path.
//!
//! Flow: the connector asks for an introduction to a listed peer
//! ([`Punch::connect`]); the announce loop sends INTRODUCE from the announce
//! socket and hands every INTRODUCED it receives to [`spawn`]'s task, which
//! sends a few punch datagrams to the other side (opening our NAT to it) and
//! allows that address to connect for [`ALLOW_FOR`]. The requester then
//! connects with QUIC; the target accepts. The private wire runs unchanged
//! over one bidirectional QUIC stream: QUIC's own TLS (an ephemeral
//! certificate, not checked) is only a transport.
//!
//! Ownership: the `get` or `share` owns the [`Punch`] through its swarm;
//! the punch state holds no swarm and no `Paths` (no `Arc` cycle), and
//! [`Punch::close`] closes the endpoint and waits for it before `get` or
//! `share` returns.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::slots::Activity;
use super::swarm::Swarm;

pub mod quic;

/// `HAYEDIK_PUNCH=off` turns hole punching off (for A/B measurements).
pub const ENV_SWITCH: &str = "HAYEDIK_PUNCH";
/// How long an introduced address may connect to us.
pub const ALLOW_FOR: Duration = Duration::from_secs(30);
/// How long a requester waits for its INTRODUCED.
pub const INTRODUCE_WAIT: Duration = Duration::from_secs(2);
/// How long the QUIC handshake of a punched path may take.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(4);
/// Punch datagrams sent to an introduced peer, and the pause between them.
pub const PUNCHES: usize = 3;
pub const PUNCH_GAP: Duration = Duration::from_millis(60);
/// Introductions waited for, addresses allowed, INTRODUCE requests queued,
/// punched sessions accepted at once.
pub const MAX_WAITING: usize = 64;
pub const MAX_ALLOWED: usize = 256;
pub const MAX_REQUESTS: usize = 16;
pub const MAX_PUNCHED_SESSIONS: usize = 64;
/// The punch datagram: not QUIC (a QUIC endpoint drops it), only there to
/// open our NAT toward the other side.
const PUNCH_BYTES: &[u8] = b"hayedik punch";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether punching is on: not on Windows (no SO_REUSEPORT), and not
/// turned off by `HAYEDIK_PUNCH=off`.
pub fn enabled() -> bool {
    cfg!(unix) && std::env::var(ENV_SWITCH).map_or(true, |v| v != "off" && v != "0")
}

/// A UDP socket bound to `local` with SO_REUSEPORT, for the tracker.
#[cfg(unix)]
pub fn reusable_udp(local: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    tokio::net::UdpSocket::from_std(quic::shared_socket(local)?)
}

/// Turns hole punching on for `swarm` when [`enabled`]: connects the
/// announce `socket` to the swarm tracker at `tracker` (so its datagrams
/// reach that socket only), binds the QUIC endpoint on the same port and
/// starts the punch tasks. The link goes to
/// `TrackerClient::set_punch`; the caller closes the swarm's punch
/// ([`Punch::close`]) once its tasks are over.
pub async fn attach(
    swarm: &Arc<Swarm>,
    socket: &tokio::net::UdpSocket,
    tracker: SocketAddr,
) -> Option<AnnounceLink> {
    if !enabled() {
        return None;
    }
    if let Err(e) = socket.connect(tracker).await {
        tracing::info!("hole punching off: {e}");
        return None;
    }
    let local = socket.local_addr().ok()?;
    let (punch, link, introduced) = Punch::bind(local)?;
    if swarm.punch.set(punch.clone()).is_err() {
        punch.close().await;
        return None;
    }
    spawn(swarm, punch, introduced);
    Some(link)
}

/// An INTRODUCED: the other side as listed (IP, announced TCP port) and
/// the UDP address its announces come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Introduced {
    pub listed: SocketAddr,
    pub udp: SocketAddr,
}

/// The announce loop's end: INTRODUCE requests to send (the target's
/// listed address), and where to hand INTRODUCED.
#[derive(Debug)]
pub struct AnnounceLink {
    pub requests: mpsc::Receiver<SocketAddr>,
    pub introduced: mpsc::Sender<Introduced>,
}

/// The punch state of one `get` or `share`.
#[derive(Debug)]
pub struct Punch {
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// The same socket (a duplicate descriptor) for punch datagrams.
    raw: Mutex<Option<std::net::UdpSocket>>,
    requests: mpsc::Sender<SocketAddr>,
    /// Requesters waiting for their INTRODUCED, by the target's listed
    /// address.
    waiting: Mutex<HashMap<SocketAddr, oneshot::Sender<SocketAddr>>>,
    /// Introduced UDP addresses, allowed to connect until then.
    allowed: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Punch {
    /// Binds the QUIC endpoint on `announce`'s port (the announce socket
    /// must have SO_REUSEPORT and be connected to the tracker, so that the
    /// tracker's datagrams keep reaching it). `None` when it cannot.
    pub fn bind(
        announce: SocketAddr,
    ) -> Option<(Arc<Punch>, AnnounceLink, mpsc::Receiver<Introduced>)> {
        let (endpoint, raw) = match quic::endpoint(announce) {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(
                    "hole punching off: cannot share UDP port {}: {e}",
                    announce.port()
                );
                return None;
            }
        };
        let (req_tx, req_rx) = mpsc::channel(MAX_REQUESTS);
        let (intro_tx, intro_rx) = mpsc::channel(MAX_REQUESTS);
        let punch = Arc::new(Punch {
            endpoint: Mutex::new(Some(endpoint)),
            raw: Mutex::new(Some(raw)),
            requests: req_tx,
            waiting: Mutex::new(HashMap::new()),
            allowed: Mutex::new(HashMap::new()),
        });
        Some((
            punch,
            AnnounceLink {
                requests: req_rx,
                introduced: intro_tx,
            },
            intro_rx,
        ))
    }

    fn endpoint(&self) -> Option<quinn::Endpoint> {
        lock(&self.endpoint).clone()
    }

    /// Opens our NAT toward `udp`: a few datagrams it drops.
    async fn punch_toward(&self, udp: SocketAddr) {
        for i in 0..PUNCHES {
            if i > 0 {
                tokio::time::sleep(PUNCH_GAP).await;
            }
            if let Some(raw) = lock(&self.raw).as_ref() {
                if let Err(e) = raw.send_to(PUNCH_BYTES, udp) {
                    tracing::debug!("punching toward {udp}: {e}");
                }
            }
        }
    }

    fn allow(&self, udp: SocketAddr) {
        let now = Instant::now();
        let mut allowed = lock(&self.allowed);
        if allowed.len() >= MAX_ALLOWED {
            allowed.retain(|_, until| *until > now);
        }
        if allowed.len() < MAX_ALLOWED || allowed.contains_key(&udp) {
            allowed.insert(udp, now + ALLOW_FOR);
        }
    }

    fn is_allowed(&self, udp: SocketAddr) -> bool {
        let udp = SocketAddr::new(udp.ip().to_canonical(), udp.port());
        lock(&self.allowed)
            .get(&udp)
            .is_some_and(|until| *until > Instant::now())
    }

    /// An INTRODUCED arrived: punch toward the other side, allow it in,
    /// and wake the requester that waits for it.
    async fn introduced(&self, i: Introduced) {
        tracing::debug!(listed = %i.listed, udp = %i.udp, "introduced");
        self.allow(i.udp);
        if let Some(tx) = lock(&self.waiting).remove(&i.listed) {
            let _ = tx.send(i.udp);
        }
        self.punch_toward(i.udp).await;
    }

    /// Asks the tracker to introduce us to the listed peer `addr`, punches,
    /// and connects with QUIC: the connection and its stream, or `None`.
    pub async fn connect(&self, addr: SocketAddr) -> Option<(quinn::Connection, quic::Stream)> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = lock(&self.waiting);
            if waiting.len() >= MAX_WAITING && !waiting.contains_key(&addr) {
                return None;
            }
            waiting.insert(addr, tx);
        }
        if self.requests.try_send(addr).is_err() {
            lock(&self.waiting).remove(&addr);
            return None;
        }
        let udp = match tokio::time::timeout(INTRODUCE_WAIT, rx).await {
            Ok(Ok(udp)) => udp,
            _ => {
                lock(&self.waiting).remove(&addr);
                tracing::debug!(%addr, "no introduction from the tracker");
                return None;
            }
        };
        let endpoint = self.endpoint()?;
        // Let the other side's first punch leave before our first Initial
        // reaches its router.
        tokio::time::sleep(PUNCH_GAP / 2).await;
        match tokio::time::timeout(HANDSHAKE_WAIT, quic::dial(&endpoint, udp)).await {
            Ok(Ok(x)) => Some(x),
            Ok(Err(e)) => {
                tracing::debug!(%addr, %udp, "punched QUIC connection: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(%addr, %udp, "punched QUIC connection: timed out");
                None
            }
        }
    }

    /// Closes the endpoint and waits until it has told its peers and let
    /// go of its socket (before `get` or `share` returns).
    pub async fn close(&self) {
        drop(lock(&self.raw).take());
        let endpoint = lock(&self.endpoint).take();
        if let Some(endpoint) = endpoint {
            endpoint.close(0u32.into(), b"bye");
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
            drop(endpoint);
            // The endpoint's driver task ends (closing the socket) once the
            // last handle is gone: give it a turn.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs the punch tasks of `swarm` until it is cancelled: INTRODUCED
/// handling, and accepting punched sessions from introduced addresses.
pub fn spawn(swarm: &Arc<Swarm>, punch: Arc<Punch>, mut introduced: mpsc::Receiver<Introduced>) {
    let cancel = swarm.cancel.clone();
    let p = punch.clone();
    crate::spawn::spawn("punch introductions", async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                i = introduced.recv() => match i {
                    Some(i) => p.introduced(i).await,
                    None => return,
                },
            }
        }
    });
    let Some(endpoint) = punch.endpoint() else {
        return;
    };
    let swarm = swarm.clone();
    crate::spawn::spawn("punch accept", async move {
        let slots = Arc::new(Semaphore::new(MAX_PUNCHED_SESSIONS));
        let cancel = swarm.cancel.clone();
        loop {
            let incoming = tokio::select! {
                _ = cancel.cancelled() => return,
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            let remote = incoming.remote_address();
            if !punch.is_allowed(remote) {
                tracing::debug!(%remote, "QUIC from an address not introduced: ignored");
                incoming.ignore();
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            let swarm = swarm.clone();
            crate::spawn::spawn(&format!("punched session {remote}"), async move {
                let accepted = tokio::time::timeout(HANDSHAKE_WAIT, quic::accept(incoming)).await;
                let (conn, stream) = match accepted {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, "punched QUIC connection: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                let (cancel, activity) = (
                    swarm.cancel.child_token(),
                    Arc::new(Activity::new(Instant::now())),
                );
                let r =
                    super::session::run_over(swarm, stream, remote, None, cancel, activity).await;
                if let Err(e) = r {
                    tracing::debug!(%remote, "punched session ended: {e}");
                }
                conn.close(0u32.into(), b"done");
                drop(permit);
            });
        }
    });
}

/// Whether we, at `me` as the tracker lists us, open the punched path to
/// the listed peer `them`: a downloader dials seeders; between two
/// downloaders, the lower address dials (so only one side does); a seeder
/// never does (downloaders come to it).
pub fn we_dial(
    me: Option<SocketAddr>,
    we_complete: bool,
    them: SocketAddr,
    they_complete: bool,
) -> bool {
    if we_complete {
        return false;
    }
    if they_complete {
        return true;
    }
    me.is_some_and(|me| key(me) < key(them))
}

fn key(a: SocketAddr) -> (IpAddr, u16) {
    (a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_side_dials() {
        let a: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7000".parse().unwrap();
        assert!(we_dial(Some(a), false, b, true));
        assert!(!we_dial(Some(b), true, a, false));
        assert!(we_dial(Some(a), false, b, false) != we_dial(Some(b), false, a, false));
        assert!(!we_dial(None, false, b, false));
    }
}
