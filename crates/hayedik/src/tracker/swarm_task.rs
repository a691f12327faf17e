//! The task that serves one swarm tracker on its own socket: receive, let
//! [`SwarmTracker`] decide, persist what must survive, reply.
//!
//! It reclaims the swarm when no CONFIRM arrives in time, expires silent
//! peers, and retires the swarm when nobody announced for too long, or when
//! nobody announced at all soon after its confirmation ([`SwarmTracker::retire_due`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::probe::PROBE_TIMEOUT;
use super::swarm::{Effect, SwarmRecord, SwarmTracker};
use super::Shared;
use crate::events::Event;

/// What a swarm task tells the central tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    Confirmed {
        port: u16,
        creator: Option<IpAddr>,
    },
    /// The first ANNOUNCE bound the swarm's key.
    KeyBound {
        port: u16,
        key: [u8; 32],
    },
    /// The swarm task has dropped its socket (reclaimed when it was
    /// pending, retired otherwise); the central tracker drops its copy and
    /// then reports the port free.
    Gone {
        port: u16,
        creator: Option<IpAddr>,
        was_pending: bool,
    },
}

/// What a swarm task needs besides its state and socket.
pub struct SwarmCtx {
    pub shared: Arc<Shared>,
    pub notes: mpsc::UnboundedSender<Note>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves `swarm` until it is reclaimed, retired, or the tracker stops.
pub async fn serve(mut swarm: SwarmTracker, socket: Arc<UdpSocket>, ctx: SwarmCtx) {
    let shared = &ctx.shared;
    let port = swarm.record.port;
    let gauge = shared.stats.swarm(port, swarm.is_confirmed());
    let show = |swarm: &SwarmTracker| {
        let (seeders, partials) = swarm.peer_counts();
        gauge.gauge.set_peers(swarm.peer_count(), seeders, partials);
    };
    let creator = swarm.record.creator;
    let confirm_deadline = tokio::time::Instant::now() + shared.confirm_timeout;
    let retire = shared.retire;
    let tick_every = (shared
        .swarm_settings
        .interval
        .min(retire.after)
        .min(retire.unannounced)
        / 2)
    .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let persist_every =
        (retire.after / 20).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut persisted_announce = swarm.record.last_announce_unix;
    // Probe results; bounded by the probes a swarm runs at once. Made at
    // the first probe: an idle swarm holds no channel.
    let mut probes: Option<ProbeChannel> = None;
    // Made once, not at every datagram: each `cancelled()` future registers
    // with the token (a lock) when polled and unregisters when dropped.
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);
    // Only a pending swarm holds a timer for its confirmation.
    let mut confirm_timer =
        (!swarm.is_confirmed()).then(|| Box::pin(tokio::time::sleep_until(confirm_deadline)));
    loop {
        tokio::select! {
            Some((addr, reached)) = recv_probe(&mut probes) => {
                swarm.probe_finished(addr, reached, Instant::now());
            }
            _ = &mut cancelled => break,
            _ = expiry(&mut confirm_timer), if !swarm.is_confirmed() => {
                // The central tracker reports it once the port is free.
                drop(socket);
                let _ = ctx.notes.send(Note::Gone { port, creator, was_pending: true });
                return;
            }
            _ = tick.tick() => {
                let now = Instant::now();
                swarm.expire(now);
                show(&swarm);
                if !swarm.is_confirmed() {
                    continue;
                }
                let now_unix = unix_now();
                if swarm.retire_due(now, now_unix, retire) {
                    swarm.set_retiring();
                    if let Some(store) = &shared.store {
                        let store = store.clone();
                        if let Err(e) = blocking(move || store.remove(port)).await {
                            tracing::error!("retiring swarm {port}: {e}");
                        }
                    }
                    drop(socket);
                    let _ = ctx.notes.send(Note::Gone { port, creator, was_pending: false });
                    return;
                }
                let age = Duration::from_secs(now_unix.saturating_sub(persisted_announce));
                if swarm.record.last_announce_unix != persisted_announce
                    && age >= persist_every
                    && persist(shared, &swarm.record).await
                {
                    persisted_announce = swarm.record.last_announce_unix;
                }
            }
            r = socket.readable() => {
                if let Err(e) = r {
                    tracing::trace!("swarm {port} readable: {e}");
                    continue;
                }
                let Some((src, effect, held)) = receive(&socket, &mut swarm) else {
                    continue;
                };
                if matches!(effect, Effect::Announced | Effect::KeyBound) {
                    gauge.gauge.announces.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    show(&swarm);
                }
                match effect {
                    Effect::Nothing => {}
                    Effect::Announced => swarm.record.last_announce_unix = unix_now(),
                    Effect::Confirmed => {
                        confirm_timer = None;
                        gauge.gauge.confirmed.store(true, std::sync::atomic::Ordering::Relaxed);
                        shared.stats.confirmed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        swarm.record.last_announce_unix = unix_now();
                        // Durable before CONFIRMED leaves: a confirmed swarm
                        // survives a crash right after.
                        if persist(shared, &swarm.record).await {
                            persisted_announce = swarm.record.last_announce_unix;
                        }
                        shared.events.emit(Event::SwarmConfirmed { port });
                        let _ = ctx.notes.send(Note::Confirmed { port, creator });
                    }
                    Effect::KeyBound => {
                        swarm.record.last_announce_unix = unix_now();
                        if let Some(key) = swarm.record.key {
                            let _ = ctx.notes.send(Note::KeyBound { port, key });
                        }
                        if persist(shared, &swarm.record).await {
                            persisted_announce = swarm.record.last_announce_unix;
                        }
                    }
                }
                if let Some(reply) = held {
                    let _ = socket.send_to(&reply, src).await;
                }
                if let Some((to, second)) = swarm.take_second() {
                    let _ = socket.send_to(&second, to).await;
                }
                if let Some(addr) = swarm.take_probe() {
                    let tx = probes.get_or_insert_with(mpsc::unbounded_channel).0.clone();
                    start_probe(shared, addr, tx);
                }
            }
        }
    }
}

type ProbeChannel = (
    mpsc::UnboundedSender<(SocketAddr, Option<bool>)>,
    mpsc::UnboundedReceiver<(SocketAddr, Option<bool>)>,
);

/// When `timer` fires; never without one.
async fn expiry(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The next probe result, or never when no probe was ever started.
async fn recv_probe(probes: &mut Option<ProbeChannel>) -> Option<(SocketAddr, Option<bool>)> {
    match probes {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

thread_local! {
    /// The receive buffer and the reply of the datagram being handled on
    /// this thread: shared by every swarm the thread serves, so that an idle
    /// swarm holds no buffer (issue 16, point 7).
    static BUFFERS: std::cell::RefCell<(Box<[u8; 512]>, Vec<u8>)> =
        std::cell::RefCell::new((Box::new([0u8; 512]), Vec::new()));
}

/// Takes one datagram off `socket` (which was readable), lets `swarm`
/// handle it, and sends the reply at once when nothing must happen first
/// and the socket takes it. Returns the source, the effect, and the reply
/// still to send after the effect is acted upon (a CONFIRMED or a reply
/// that did not fit in the socket's buffer), if any.
fn receive(
    socket: &UdpSocket,
    swarm: &mut SwarmTracker,
) -> Option<(SocketAddr, Effect, Option<Vec<u8>>)> {
    BUFFERS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (buf, out) = &mut *cell;
        // Every valid datagram is under 64 bytes; a longer one is cut, and
        // still refused as malformed (a reply is never larger than this).
        let (n, src) = match socket.try_recv_from(&mut buf[..]) {
            Ok(x) => x,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::trace!("swarm {} recv: {e}", swarm.record.port);
                }
                return None;
            }
        };
        let effect = swarm.handle(src, &buf[..n], Instant::now(), out);
        if out.is_empty() {
            return Some((src, effect, None));
        }
        let now_ok = matches!(effect, Effect::Nothing | Effect::Announced);
        if now_ok {
            match socket.try_send_to(out, src) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => return Some((src, effect, None)),
            }
        }
        Some((src, effect, Some(out.clone())))
    })
}

/// Runs one reachability probe on its own task, if a tracker-wide slot is
/// free: a TCP connection to `addr`, closed at once with a reset and
/// without a byte sent, given up after [`PROBE_TIMEOUT`] (one SYN).
fn start_probe(
    shared: &Shared,
    addr: SocketAddr,
    done: mpsc::UnboundedSender<(SocketAddr, Option<bool>)>,
) {
    let Ok(permit) = shared.probes.clone().try_acquire_owned() else {
        let _ = done.send((addr, None));
        return;
    };
    let cancel = shared.cancel.clone();
    crate::spawn::spawn(&format!("probe {addr}"), async move {
        let reached = tokio::select! {
            _ = cancel.cancelled() => None,
            r = probe(addr) => Some(r),
        };
        drop(permit);
        let _ = done.send((addr, reached));
    });
}

async fn probe(addr: SocketAddr) -> bool {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    let Ok(socket) = socket else { return false };
    // Close with a RST: no FIN exchange, nothing but SYN, ACK and RST.
    let _ = socket.set_zero_linger();
    match tokio::time::timeout(PROBE_TIMEOUT, socket.connect(addr)).await {
        Ok(Ok(stream)) => {
            drop(stream);
            true
        }
        _ => false,
    }
}

/// Writes the record if a store is configured; false if that failed.
async fn persist(shared: &Shared, record: &SwarmRecord) -> bool {
    let Some(store) = &shared.store else {
        return true;
    };
    let (store, record) = (store.clone(), record.clone());
    let port = record.port;
    match blocking(move || store.put(&record)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("saving swarm {port}: {e}");
            false
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::state::StateError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}
