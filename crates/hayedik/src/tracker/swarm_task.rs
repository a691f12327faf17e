//! The task that serves every swarm tracker of a tracker, each on its own
//! socket: receive, let [`SwarmTracker`] decide, persist what must survive,
//! reply.
//!
//! One task for all swarms, not one per swarm (issue 16, point 7): an idle
//! swarm then costs its state, its socket's registration and a waker, not a
//! task with its own timers and futures. Each swarm's socket wakes a
//! [`SlotWaker`] of its own, which puts the swarm's port on a ready list, so
//! a datagram costs work for its own swarm only, whatever the number of
//! swarms. It runs on every platform: the sockets are tokio's.
//!
//! It reclaims a swarm when no CONFIRM arrives in time, expires silent
//! peers, and retires a swarm when nobody announced for too long, or when
//! nobody announced at all soon after its confirmation
//! ([`SwarmTracker::retire_due`]). Writes to the store run on the blocking
//! pool, never on this task: the periodic ones in one batch per tick, and
//! the ones a reply must wait for (CONFIRMED, the first ANNOUNCE) on a task
//! of their own that sends the reply once the record is durable.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(not(target_os = "linux"))]
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};

use super::probe::PROBE_TIMEOUT;
use super::stats::GaugeGuard;
use super::swarm::{Effect, SwarmTracker};
use super::Shared;
use crate::events::Event;

/// What the swarm task tells the central tracker.
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
    /// The swarm's socket is dropped (reclaimed when it was pending, retired
    /// otherwise); the central tracker drops its copy and then reports the
    /// port free.
    Gone {
        port: u16,
        creator: Option<IpAddr>,
        was_pending: bool,
    },
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Datagrams taken off one swarm's socket before the others get their
/// turn; the rest waits for the next round.
const BATCH: usize = 32;

/// Datagrams handled before the task yields to the runtime in any case: on
/// a multi-thread runtime new readiness arrives while the task runs, and
/// the task would otherwise keep its worker thread for as long as the
/// datagrams keep coming.
const YIELD_EVERY: usize = 1024;

/// A swarm handed to the swarm task: its state and its socket.
pub type Adopt = (SwarmTracker, Arc<UdpSocket>);

/// Where the swarm task takes new swarms; cheap to clone.
#[derive(Clone)]
pub struct Swarms {
    tx: mpsc::UnboundedSender<Adopt>,
}

impl Swarms {
    /// Hands `swarm` to the swarm task, which serves it from now on (a swarm
    /// given after the tracker stopped is dropped with its socket).
    pub fn adopt(&self, swarm: SwarmTracker, socket: Arc<UdpSocket>) {
        let _ = self.tx.send((swarm, socket));
    }
}

/// The ports whose sockets became readable, and a wake-up for the task.
#[derive(Default)]
struct Ready {
    ports: Mutex<Vec<u16>>,
    notify: Notify,
}

/// The waker a swarm's socket holds: puts the swarm on the ready list once.
struct SlotWaker {
    port: u16,
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Relaxed) {
            self.ready
                .ports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.port);
            self.ready.notify.notify_one();
        }
    }
}

/// One served swarm.
struct Slot {
    swarm: SwarmTracker,
    socket: Arc<UdpSocket>,
    waker: Arc<SlotWaker>,
    gauge: GaugeGuard,
    /// When a pending swarm is reclaimed; `None` once confirmed.
    confirm_deadline: Option<tokio::time::Instant>,
    /// `last_announce_unix` as last written to the store.
    persisted_announce: u64,
}

/// What the tasks the swarm task starts report back.
enum Done {
    /// A probe ended (`None`: not run, or cancelled).
    Probe {
        port: u16,
        addr: SocketAddr,
        reached: Option<bool>,
    },
    /// Records written: `(port, last_announce_unix)`.
    Persisted(Vec<(u16, u64)>),
    /// The periodic batch is written (or failed): the next may start.
    BatchOver,
}

/// Starts the swarm task; it runs until `shared.cancel` fires.
pub fn start(shared: Arc<Shared>, notes: mpsc::UnboundedSender<Note>) -> std::io::Result<Swarms> {
    #[cfg(target_os = "linux")]
    let batch = RecvBatch::new()?;
    let (tx, rx) = mpsc::unbounded_channel();
    // Outside tokio's cooperative budget: the task yields by itself (when
    // no socket has anything left, and after a round in which a busy socket
    // used up its batch). Under the budget, a socket polled after the
    // budget ran out waits for the task's next turn without being
    // registered, and measured at 10,000 swarms that left about 1% of the
    // announces unanswered for over 100 ms.
    let task = run(
        shared,
        rx,
        notes,
        #[cfg(target_os = "linux")]
        batch,
    );
    crate::spawn::spawn("swarms", tokio::task::unconstrained(task));
    Ok(Swarms { tx })
}

struct Reactor {
    shared: Arc<Shared>,
    notes: mpsc::UnboundedSender<Note>,
    /// Boxed: growing the map moves pointers, not whole swarms (at 10,000
    /// swarms a growth of unboxed slots stalled every swarm for 200 ms,
    /// most of it page faults on the new table).
    slots: HashMap<u16, Box<Slot>>,
    ready: Arc<Ready>,
    /// Pending swarms by deadline; the deadline is the same for all, so
    /// creation order is deadline order.
    pending: VecDeque<(tokio::time::Instant, u16)>,
    done_tx: mpsc::UnboundedSender<Done>,
    /// A periodic batch is being written.
    batch_running: bool,
    /// A socket used up its batch this round: yield before the next, so
    /// that the runtime polls the other sockets and runs the other tasks.
    must_yield: bool,
    /// Datagrams handled since the task last yielded.
    since_yield: usize,
    #[cfg(not(target_os = "linux"))]
    buf: Box<[u8; 512]>,
    #[cfg(target_os = "linux")]
    batch: RecvBatch,
    out: Vec<u8>,
}

async fn run(
    shared: Arc<Shared>,
    mut adopt: mpsc::UnboundedReceiver<Adopt>,
    notes: mpsc::UnboundedSender<Note>,
    #[cfg(target_os = "linux")] batch: RecvBatch,
) {
    let retire = shared.retire;
    let tick_every = (shared
        .swarm_settings
        .interval
        .min(retire.after)
        .min(retire.unannounced)
        / 2)
    .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut r = Reactor {
        shared: shared.clone(),
        notes,
        slots: HashMap::new(),
        ready: Arc::new(Ready::default()),
        pending: VecDeque::new(),
        done_tx,
        batch_running: false,
        must_yield: false,
        since_yield: 0,
        #[cfg(not(target_os = "linux"))]
        buf: Box::new([0u8; 512]),
        #[cfg(target_os = "linux")]
        batch,
        out: Vec::new(),
    };
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);
    let mut ports = Vec::new();
    // One timer for the earliest confirmation deadline, moved as it changes
    // (not a new timer at every turn of the loop).
    let reclaim = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(reclaim);
    loop {
        let next_reclaim = r.pending.front().map(|(at, _)| *at);
        if let Some(at) = next_reclaim {
            if reclaim.deadline() != at {
                reclaim.as_mut().reset(at);
            }
        }
        // Unbiased: a flood on the sockets never starves the timers.
        tokio::select! {
            _ = &mut cancelled => break,
            Some(done) = done_rx.recv() => r.on_done(done),
            _ = r.ready.notify.notified() => {
                std::mem::swap(&mut ports, &mut *r.ready.ports.lock().unwrap_or_else(|e| e.into_inner()));
                for port in ports.drain(..) {
                    r.serve(port);
                }
                if std::mem::take(&mut r.must_yield) || r.since_yield >= YIELD_EVERY {
                    r.since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
            Some((swarm, socket)) = adopt.recv() => r.adopt(swarm, socket),
            _ = &mut reclaim, if next_reclaim.is_some() => r.reclaim(tokio::time::Instant::now()),
            _ = tick.tick() => r.tick(),
        }
    }
}

impl Reactor {
    fn adopt(&mut self, swarm: SwarmTracker, socket: Arc<UdpSocket>) {
        let port = swarm.record.port;
        dont_fragment(&socket);
        let confirm_deadline = (!swarm.is_confirmed()).then(|| {
            let at = tokio::time::Instant::now() + self.shared.confirm_timeout;
            self.pending.push_back((at, port));
            at
        });
        let slot = Box::new(Slot {
            gauge: self.shared.stats.swarm(port, swarm.is_confirmed()),
            persisted_announce: swarm.record.last_announce_unix,
            swarm,
            socket,
            waker: Arc::new(SlotWaker {
                port,
                queued: AtomicBool::new(false),
                ready: self.ready.clone(),
            }),
            confirm_deadline,
        });
        show(&slot);
        if let Some(old) = self.slots.insert(port, slot) {
            // Cannot happen: a port's socket is bound once at a time.
            tracing::error!("swarm {port} adopted twice");
            drop(old);
        }
        // Reads what already waits, and registers the waker.
        self.serve(port);
    }

    /// Takes what waits on `port`'s socket, up to [`BATCH`] datagrams.
    #[cfg(not(target_os = "linux"))]
    fn serve(&mut self, port: u16) {
        let Some((slot, waker)) = take_ready(&mut self.slots, port) else {
            return;
        };
        let mut cx = Context::from_waker(&waker);
        for _ in 0..BATCH {
            // Every valid datagram is under 64 bytes; a longer one is cut,
            // and still refused as malformed.
            let mut buf = ReadBuf::new(&mut self.buf[..]);
            let src = match slot.socket.poll_recv_from(&mut cx, &mut buf) {
                Poll::Pending => return,
                Poll::Ready(Ok(src)) => src,
                Poll::Ready(Err(e)) => {
                    // ICMP errors from earlier sends surface here.
                    tracing::trace!("swarm {port} recv: {e}");
                    continue;
                }
            };
            let n = buf.filled().len();
            self.since_yield += 1;
            let on = Serving {
                shared: &self.shared,
                notes: &self.notes,
                done: &self.done_tx,
            };
            on.datagram(slot, src, &self.buf[..n], &mut self.out);
        }
        // More may wait: after the others, and after the runtime's turn.
        slot.waker.wake_by_ref();
        self.must_yield = true;
    }

    /// Takes what waits on `port`'s socket, up to [`BATCH`] datagrams, in
    /// one `recvmmsg`. Fewer than asked for means the socket is empty, so
    /// no second call is made to find out (a `recvfrom` per socket per
    /// wake-up that returns `EAGAIN`: about one system call in three).
    #[cfg(target_os = "linux")]
    fn serve(&mut self, port: u16) {
        let Some((slot, waker)) = take_ready(&mut self.slots, port) else {
            return;
        };
        let mut cx = Context::from_waker(&waker);
        // Bounded: an error (an ICMP error from an earlier send surfaces
        // on the next receive) is tried past a few times at most.
        for _ in 0..4 {
            match slot.socket.poll_recv_ready(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    tracing::trace!("swarm {port} readiness: {e}");
                    return;
                }
            }
            let (got, drained) = match self.batch.recv(&slot.socket) {
                Ok(r) => r,
                Err(e) => {
                    tracing::trace!("swarm {port} recv: {e}");
                    continue;
                }
            };
            self.since_yield += got;
            let on = Serving {
                shared: &self.shared,
                notes: &self.notes,
                done: &self.done_tx,
            };
            for (buf, meta) in self.batch.bufs.iter().zip(&self.batch.meta).take(got) {
                let data = &buf[..meta.len.min(buf.len())];
                // One buffer holds one datagram: the sockets do not ask
                // for GRO. Cut at `stride` anyway, as the crate documents.
                for one in data.chunks(meta.stride.max(1)) {
                    on.datagram(slot, meta.addr, one, &mut self.out);
                }
            }
            if !drained {
                // More may wait: after the others, and after the runtime's
                // turn.
                slot.waker.wake_by_ref();
                self.must_yield = true;
                return;
            }
            // Empty: the next turn registers the waker (and returns), or
            // finds what arrived meanwhile.
        }
        slot.waker.wake_by_ref();
        self.must_yield = true;
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Probe {
                port,
                addr,
                reached,
            } => {
                if let Some(slot) = self.slots.get_mut(&port) {
                    slot.swarm.probe_finished(addr, reached, Instant::now());
                }
            }
            Done::Persisted(written) => {
                for (port, announce) in written {
                    if let Some(slot) = self.slots.get_mut(&port) {
                        slot.persisted_announce = slot.persisted_announce.max(announce);
                    }
                }
            }
            Done::BatchOver => self.batch_running = false,
        }
    }

    /// Reclaims the pending swarms whose confirmation time is over.
    fn reclaim(&mut self, now: tokio::time::Instant) {
        while let Some(&(at, port)) = self.pending.front() {
            if at > now {
                break;
            }
            self.pending.pop_front();
            let due = self
                .slots
                .get(&port)
                .is_some_and(|s| s.confirm_deadline == Some(at) && !s.swarm.is_confirmed());
            if !due {
                continue;
            }
            if let Some(slot) = self.slots.remove(&port) {
                let creator = slot.swarm.record.creator;
                // The central tracker reports the port free once told.
                drop(slot);
                let _ = self.notes.send(Note::Gone {
                    port,
                    creator,
                    was_pending: true,
                });
            }
        }
    }

    /// Every swarm's periodic work: expiry, retirement, persistence.
    fn tick(&mut self) {
        let now = Instant::now();
        let now_unix = unix_now();
        let retire = self.shared.retire;
        let persist_every =
            (retire.after / 20).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut retiring = Vec::new();
        let mut batch = Vec::new();
        for (port, slot) in self.slots.iter_mut() {
            slot.swarm.expire(now);
            show(slot);
            if !slot.swarm.is_confirmed() {
                continue;
            }
            if slot.swarm.retire_due(now, now_unix, retire) {
                retiring.push(*port);
                continue;
            }
            let record = &slot.swarm.record;
            let age = Duration::from_secs(now_unix.saturating_sub(slot.persisted_announce));
            if record.last_announce_unix != slot.persisted_announce && age >= persist_every {
                batch.push(record.clone());
            }
        }
        for port in retiring {
            if let Some(mut slot) = self.slots.remove(&port) {
                slot.swarm.set_retiring();
                self.retire(slot);
            }
        }
        if !batch.is_empty() && !self.batch_running {
            let written: Vec<(u16, u64)> = batch
                .iter()
                .map(|r| (r.port, r.last_announce_unix))
                .collect();
            let Some(store) = self.shared.store.clone() else {
                // Nothing to write to: as if written.
                self.on_done(Done::Persisted(written));
                return;
            };
            self.batch_running = true;
            let done = self.done_tx.clone();
            crate::spawn::spawn("saving swarms", async move {
                match blocking(move || store.put_all(&batch)).await {
                    Ok(()) => {
                        let _ = done.send(Done::Persisted(written));
                    }
                    Err(e) => tracing::error!("saving swarms: {e}"),
                }
                let _ = done.send(Done::BatchOver);
            });
        }
    }

    /// Forgets `slot`'s record, then drops its socket and tells the
    /// central tracker, on a task of its own.
    fn retire(&mut self, slot: Box<Slot>) {
        let port = slot.swarm.record.port;
        let creator = slot.swarm.record.creator;
        let notes = self.notes.clone();
        let store = self.shared.store.clone();
        crate::spawn::spawn(&format!("retiring swarm {port}"), async move {
            if let Some(store) = store {
                if let Err(e) = blocking(move || store.remove(port)).await {
                    tracing::error!("retiring swarm {port}: {e}");
                }
            }
            drop(slot);
            let _ = notes.send(Note::Gone {
                port,
                creator,
                was_pending: false,
            });
        });
    }
}

/// The slot of `port`, taken off the ready list (its socket's next
/// readiness puts it back), and a waker for its socket.
fn take_ready(slots: &mut HashMap<u16, Box<Slot>>, port: u16) -> Option<(&mut Slot, Waker)> {
    let slot = slots.get_mut(&port)?;
    slot.waker.queued.store(false, Relaxed);
    let waker = Waker::from(slot.waker.clone());
    Some((slot, waker))
}

/// What handling a datagram needs besides its swarm.
struct Serving<'a> {
    shared: &'a Arc<Shared>,
    notes: &'a mpsc::UnboundedSender<Note>,
    done: &'a mpsc::UnboundedSender<Done>,
}

impl Serving<'_> {
    /// Applies one datagram from `src` to `slot`'s swarm and sends what it
    /// calls for (`out` is scratch).
    fn datagram(&self, slot: &mut Slot, src: SocketAddr, data: &[u8], out: &mut Vec<u8>) {
        let effect = slot.swarm.handle(src, data, Instant::now(), out);
        act(self.shared, self.notes, self.done, slot, effect, src, out);
        if let Some((to, second)) = slot.swarm.take_second() {
            send_now(&slot.socket, &second, to);
        }
        if let Some(addr) = slot.swarm.take_probe() {
            let port = slot.swarm.record.port;
            if !start_probe(self.shared, port, addr, self.done) {
                slot.swarm.probe_finished(addr, None, Instant::now());
            }
        }
    }
}

/// Receives many datagrams in one system call (`recvmmsg` through
/// quinn-udp, already here for QUIC: no unsafe code of ours).
#[cfg(target_os = "linux")]
struct RecvBatch {
    /// Used for its `recv` only, which reads the socket it is given. It was
    /// made on a socket of its own, never bound: making it on a swarm's
    /// socket would turn on GRO, packet info and TOS there, a control
    /// message or two per datagram that nothing here reads.
    state: quinn_udp::UdpSocketState,
    /// Every valid datagram is under 64 bytes; a longer one is cut, and
    /// still refused as malformed.
    bufs: Box<[[u8; 512]; BATCH]>,
    meta: [quinn_udp::RecvMeta; BATCH],
}

#[cfg(target_os = "linux")]
impl RecvBatch {
    fn new() -> std::io::Result<Self> {
        let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        Ok(Self {
            state: quinn_udp::UdpSocketState::new((&probe).into())?,
            bufs: Box::new([[0u8; 512]; BATCH]),
            meta: [quinn_udp::RecvMeta::default(); BATCH],
        })
    }

    /// Takes up to [`BATCH`] datagrams from `socket`: how many, and
    /// whether that emptied it (then its readiness is cleared, so it is
    /// not tried again before it has something).
    fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<(usize, bool)> {
        let mut got = 0;
        let (state, bufs, meta) = (&self.state, &mut self.bufs, &mut self.meta);
        let res = socket.try_io(tokio::io::Interest::READABLE, || {
            let mut slices = bufs.each_mut().map(|b| std::io::IoSliceMut::new(b));
            got = state.recv(socket.into(), &mut slices, meta)?;
            if got < BATCH {
                // Fewer than asked for: the queue ran dry. Told as
                // "would block" so that tokio clears the readiness.
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match res {
            Ok(()) => Ok((got, false)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok((got, true)),
            Err(e) => Err(e),
        }
    }
}

fn show(slot: &Slot) {
    let (seeders, partials) = slot.swarm.peer_counts();
    slot.gauge
        .gauge
        .set_peers(slot.swarm.peer_count(), seeders, partials);
}

/// Acts on what a datagram changed, and sends its reply (in `out`): at
/// once, or, when the record must be durable first, from a task that
/// writes it and then replies.
fn act(
    shared: &Arc<Shared>,
    notes: &mpsc::UnboundedSender<Note>,
    done: &mpsc::UnboundedSender<Done>,
    slot: &mut Slot,
    effect: Effect,
    src: SocketAddr,
    out: &[u8],
) {
    let port = slot.swarm.record.port;
    if matches!(effect, Effect::Announced | Effect::KeyBound) {
        slot.gauge.gauge.announces.fetch_add(1, Relaxed);
        show(slot);
    }
    match effect {
        Effect::Nothing => {}
        Effect::Announced => slot.swarm.record.last_announce_unix = unix_now(),
        Effect::Confirmed => {
            slot.confirm_deadline = None;
            slot.gauge.gauge.confirmed.store(true, Relaxed);
            shared.stats.confirmed.fetch_add(1, Relaxed);
            slot.swarm.record.last_announce_unix = unix_now();
        }
        Effect::KeyBound => {
            slot.swarm.record.last_announce_unix = unix_now();
            if let Some(key) = slot.swarm.record.key {
                let _ = notes.send(Note::KeyBound { port, key });
            }
        }
    }
    let durable_first = matches!(effect, Effect::Confirmed | Effect::KeyBound);
    if !durable_first {
        if !out.is_empty() {
            send_now(&slot.socket, out, src);
        }
        return;
    }
    // Durable before the reply leaves: a confirmed swarm survives a crash
    // right after its CONFIRMED, and a bound key its first answer.
    let confirmed = effect == Effect::Confirmed;
    let creator = slot.swarm.record.creator;
    let Some(store) = shared.store.clone() else {
        slot.persisted_announce = slot.swarm.record.last_announce_unix;
        if confirmed {
            tell_confirmed(shared, notes, port, creator);
        }
        if !out.is_empty() {
            send_now(&slot.socket, out, src);
        }
        return;
    };
    let record = slot.swarm.record.clone();
    let reply = (!out.is_empty()).then(|| out.to_vec());
    let (socket, notes, shared, done) = (
        slot.socket.clone(),
        notes.clone(),
        shared.clone(),
        done.clone(),
    );
    crate::spawn::spawn(&format!("saving swarm {port}"), async move {
        let announce = record.last_announce_unix;
        match blocking(move || store.put(&record)).await {
            Ok(()) => {
                let _ = done.send(Done::Persisted(vec![(port, announce)]));
            }
            Err(e) => tracing::error!("saving swarm {port}: {e}"),
        }
        if confirmed {
            tell_confirmed(&shared, &notes, port, creator);
        }
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, src).await;
        }
    });
}

/// Reports a swarm confirmed: an event for the user, a note for the
/// central tracker.
fn tell_confirmed(
    shared: &Shared,
    notes: &mpsc::UnboundedSender<Note>,
    port: u16,
    creator: Option<IpAddr>,
) {
    shared.events.emit(Event::SwarmConfirmed { port });
    let _ = notes.send(Note::Confirmed { port, creator });
}

/// Sets the don't-fragment bit on everything `socket` sends, and sends
/// without regard to the path MTU, as QUIC does: no reply is over 1,200
/// bytes (PROTOCOL.md). Besides, the kernel then gives an unfragmentable
/// datagram IP id 0 instead of drawing one from its shared table (2% of the
/// tracker's CPU per announce, measured with perf).
fn dont_fragment(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        use rustix::net::sockopt;
        let set = match socket.local_addr() {
            Ok(SocketAddr::V4(_)) => {
                sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::PROBE)
                    .map_err(std::io::Error::from)
            }
            Ok(SocketAddr::V6(_)) => {
                // A dual-stack socket sends to IPv4-mapped peers over IPv4.
                let _ = sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::PROBE);
                sockopt::set_ipv6_mtu_discover(socket, sockopt::Ipv6PathMtuDiscovery::PROBE)
                    .map_err(std::io::Error::from)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = set {
            tracing::debug!("don't-fragment on a swarm socket: {e}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Sends `data` to `to` if the socket takes it now; a datagram the socket
/// has no room for is dropped (the peer asks again).
fn send_now(socket: &UdpSocket, data: &[u8], to: SocketAddr) {
    if let Err(e) = socket.try_send_to(data, to) {
        tracing::trace!("reply to {to} dropped: {e}");
    }
}

/// Runs one reachability probe for swarm `port` on its own task, if a
/// tracker-wide slot is free: a TCP connection to `addr`, closed at once
/// with a reset and without a byte sent, given up after [`PROBE_TIMEOUT`]
/// (one SYN). Its result comes back through `done`. Returns false, and
/// runs nothing, without a free slot: the probe counts as not run.
fn start_probe(
    shared: &Shared,
    port: u16,
    addr: SocketAddr,
    done: &mpsc::UnboundedSender<Done>,
) -> bool {
    let Ok(permit) = shared.probes.clone().try_acquire_owned() else {
        return false;
    };
    let cancel = shared.cancel.clone();
    let done = done.clone();
    crate::spawn::spawn(&format!("probe {addr}"), async move {
        let reached = tokio::select! {
            _ = cancel.cancelled() => None,
            r = probe(addr) => Some(r),
        };
        drop(permit);
        let _ = done.send(Done::Probe {
            port,
            addr,
            reached,
        });
    });
    true
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::state::StateError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A batch takes what waits, says whether that emptied the socket, and
    /// cuts a datagram too long for its buffer; once emptied, the socket is
    /// not read again before something new arrives.
    #[tokio::test]
    async fn a_batch_reads_what_waits_and_knows_when_the_socket_is_empty() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = socket.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = sender.local_addr().unwrap();
        let total = BATCH + 8;
        for i in 0..total {
            // The last one is longer than a buffer.
            let len = if i == total - 1 { 700 } else { 1 + i };
            sender
                .send_to(&vec![u8::try_from(i).unwrap(); len], to)
                .unwrap();
        }
        let mut batch = RecvBatch::new().unwrap();
        socket.readable().await.unwrap();
        let (got, drained) = batch.recv(&socket).unwrap();
        assert_eq!((got, drained), (BATCH, false));
        for (i, meta) in batch.meta.iter().enumerate() {
            assert_eq!(meta.addr, from);
            assert_eq!(meta.len, 1 + i);
            assert!(batch.bufs[i][..meta.len]
                .iter()
                .all(|&b| usize::from(b) == i));
        }
        socket.readable().await.unwrap();
        let (got, drained) = batch.recv(&socket).unwrap();
        assert_eq!((got, drained), (8, true));
        assert_eq!(batch.meta[7].len, 512, "cut to the buffer");
        // Emptied: the readiness is cleared, nothing is read until more comes.
        assert_eq!(batch.recv(&socket).unwrap(), (0, true));
        let waited = tokio::time::timeout(Duration::from_millis(50), socket.readable()).await;
        assert!(waited.is_err(), "readable again with nothing new");
        sender.send_to(b"again", to).unwrap();
        tokio::time::timeout(Duration::from_secs(5), socket.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.recv(&socket).unwrap(), (1, true));
        assert_eq!(&batch.bufs[0][..batch.meta[0].len], b"again");
    }

    /// Swarm sockets send with the don't-fragment bit, ignoring the path MTU.
    #[tokio::test]
    async fn swarm_sockets_do_not_fragment() {
        use rustix::net::sockopt;
        let v4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        dont_fragment(&v4);
        assert_eq!(
            sockopt::ip_mtu_discover(&v4).unwrap(),
            sockopt::Ipv4PathMtuDiscovery::PROBE
        );
        // IPv6 may be off on a test machine: said, not passed silently.
        match UdpSocket::bind("[::1]:0").await {
            Ok(v6) => {
                dont_fragment(&v6);
                assert_eq!(
                    sockopt::ipv6_mtu_discover(&v6).unwrap(),
                    sockopt::Ipv6PathMtuDiscovery::PROBE
                );
            }
            Err(e) => eprintln!("IPv6 half not checked: cannot bind [::1]: {e}"),
        }
    }
}
