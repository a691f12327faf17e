//! The loop that serves every swarm tracker of a tracker, each on its own
//! socket: receive, let [`SwarmTracker`] decide, persist what must survive,
//! reply.
//!
//! One loop for all swarms, not a task per swarm (issue 16, point 7): an
//! idle swarm then costs its state and its socket's registration, not a
//! task with its own timers and futures. A datagram costs work for its own
//! swarm only, whatever the number of swarms:
//! - on Linux the loop is a thread of its own (tokio's blocking pool), and
//!   every swarm socket is in one epoll set of its own (edge-triggered, for
//!   reading only, the port as its data), with an eventfd that its
//!   channels ring. One `epoll_wait` names up to [`EVENTS`] ready swarms,
//!   and a reply's send wakes nothing. Before, each socket was tokio's:
//!   registered for reading and writing, with a waker and a readiness
//!   state of its own, all of which an announce touched; at 10,000 swarms
//!   that cost the tracker 14% more CPU per announce (docs/performance.md,
//!   "The swarm sockets in one epoll set, on a thread of their own");
//! - elsewhere the loop is a task, each swarm's socket is tokio's and wakes
//!   a `SlotWaker` of its own, which puts the swarm's port on a ready list.
//!
//! It reclaims a swarm when no CONFIRM arrives in time, expires silent
//! peers, and retires a swarm when nobody announced for too long, or when
//! nobody announced at all soon after its confirmation
//! ([`SwarmTracker::retire_due`]). Writes to the store run on the blocking
//! pool, never in this loop: the periodic ones in one batch per tick, and
//! the ones a reply must wait for (CONFIRMED, the first ANNOUNCE) on a task
//! of their own that sends the reply once the record is durable.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
#[cfg(not(target_os = "linux"))]
use std::sync::{atomic::AtomicBool, Mutex};
#[cfg(not(target_os = "linux"))]
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(not(target_os = "linux"))]
use tokio::io::ReadBuf;
use tokio::sync::mpsc;
#[cfg(not(target_os = "linux"))]
use tokio::sync::Notify;

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
#[cfg(not(target_os = "linux"))]
const YIELD_EVERY: usize = 1024;

/// Ready swarms taken from the epoll set in one `epoll_wait`.
#[cfg(target_os = "linux")]
const EVENTS: usize = 256;

/// The epoll data of the swarm loop's wake-up (ports are below 2^16).
#[cfg(target_os = "linux")]
const WAKE_DATA: u64 = u64::MAX;

/// A swarm's socket: nonblocking, bound to the swarm's port. The swarm task
/// reads it; the central tracker keeps a copy to send OFFERs from it, and
/// frees the port once its copy is the last.
pub type SwarmSocket = Arc<UdpSocket>;

/// A swarm handed to the swarm task: its state and its socket.
pub type Adopt = (SwarmTracker, SwarmSocket);

/// Where the swarm task takes new swarms; cheap to clone.
#[derive(Clone)]
pub struct Swarms {
    tx: mpsc::UnboundedSender<Adopt>,
    wake: WakeUp,
}

impl Swarms {
    /// Hands `swarm` to the swarm task, which serves it from now on (a swarm
    /// given after the tracker stopped is dropped with its socket).
    pub fn adopt(&self, swarm: SwarmTracker, socket: SwarmSocket) {
        let _ = self.tx.send((swarm, socket));
        self.wake.wake();
    }
}

/// Wakes the swarm loop after something was put in one of its channels.
/// On Linux an eventfd in the loop's epoll set; elsewhere the channels'
/// own wake-ups do it (the loop is a task that waits on them).
#[derive(Clone)]
struct WakeUp {
    #[cfg(target_os = "linux")]
    fd: Arc<std::os::fd::OwnedFd>,
}

impl WakeUp {
    #[cfg(target_os = "linux")]
    fn new() -> std::io::Result<Self> {
        use rustix::event::{eventfd, EventfdFlags};
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Self { fd: Arc::new(fd) })
    }

    #[cfg(not(target_os = "linux"))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    fn wake(&self) {
        // A full counter (2^64 - 2 wake-ups not yet read) is still a
        // wake-up: nothing to do about an error.
        #[cfg(target_os = "linux")]
        let _ = rustix::io::write(&*self.fd, &1u64.to_ne_bytes());
    }

    /// Resets the counter, before the channels are read: a message sent
    /// after that wakes the loop again.
    #[cfg(target_os = "linux")]
    fn clear(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&*self.fd, &mut count);
    }
}

/// Where the tasks the swarm task starts report back.
#[derive(Clone)]
struct Mailbox {
    tx: mpsc::UnboundedSender<Done>,
    wake: WakeUp,
}

impl Mailbox {
    fn send(&self, done: Done) {
        let _ = self.tx.send(done);
        self.wake.wake();
    }
}

/// One served swarm.
struct Slot {
    swarm: SwarmTracker,
    socket: SwarmSocket,
    /// Its socket held more than a batch at the last read: it is on the
    /// list of sockets read again in the next round.
    #[cfg(target_os = "linux")]
    again: bool,
    /// The socket as tokio's (a second descriptor of it), and the waker
    /// its readiness wakes.
    #[cfg(not(target_os = "linux"))]
    io: tokio::net::UdpSocket,
    #[cfg(not(target_os = "linux"))]
    waker: Arc<SlotWaker>,
    gauge: GaugeGuard,
    /// When a pending swarm is reclaimed; `None` once confirmed.
    confirm_deadline: Option<tokio::time::Instant>,
    /// `last_announce_unix` as last written to the store.
    persisted_announce: u64,
}

impl Slot {
    /// See [`SwarmTracker::warm_ahead`]; with the socket and the gauges.
    #[cfg(target_os = "linux")]
    fn warm_ahead(&self) {
        use std::os::fd::AsRawFd;
        std::hint::black_box((
            self.socket.as_raw_fd(),
            self.gauge.gauge.announces.load(Relaxed),
        ));
        self.swarm.warm_ahead();
    }
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
    let wake = WakeUp::new()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let done = Mailbox {
        tx: done_tx,
        wake: wake.clone(),
    };
    #[cfg(target_os = "linux")]
    {
        use rustix::event::epoll;
        let set = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &set,
            &*wake.fd,
            epoll::EventData::new_u64(WAKE_DATA),
            epoll::EventFlags::IN,
        )?;
        let stop = StopOnDrop {
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            wake: wake.clone(),
        };
        let r = Reactor::new(
            shared.clone(),
            notes,
            done,
            (set, stop.stop.clone()),
            RecvBatch::new()?,
        );
        let cancel = shared.cancel.clone();
        crate::spawn::spawn("swarms: stop", async move {
            let _stop = stop;
            cancel.cancelled().await;
        });
        crate::spawn::spawn_blocking("swarms", move || r.run(rx, done_rx));
    }
    #[cfg(not(target_os = "linux"))]
    {
        let r = Reactor::new(shared, notes, done);
        // Outside tokio's cooperative budget: the task yields by itself
        // (when no socket has anything left, and after a round in which a
        // busy socket used up its batch). Under the budget, a socket polled
        // after the budget ran out waits for the task's next turn without
        // being registered, and measured at 10,000 swarms that left about
        // 1% of the announces unanswered for over 100 ms.
        crate::spawn::spawn("swarms", tokio::task::unconstrained(r.run(rx, done_rx)));
    }
    Ok(Swarms { tx, wake })
}

/// Stops the swarm loop when dropped: held by a task that ends when the
/// tracker is cancelled, and is dropped unpolled when its runtime shuts
/// down (which then waits for the loop, a blocking task, to end).
#[cfg(target_os = "linux")]
struct StopOnDrop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    wake: WakeUp,
}

#[cfg(target_os = "linux")]
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.wake.wake();
    }
}

/// The ports whose sockets became readable, and a wake-up for the task.
#[cfg(not(target_os = "linux"))]
#[derive(Default)]
struct Ready {
    ports: Mutex<Vec<u16>>,
    notify: Notify,
}

/// The waker a swarm's socket holds: puts the swarm on the ready list once.
#[cfg(not(target_os = "linux"))]
struct SlotWaker {
    port: u16,
    queued: AtomicBool,
    ready: Arc<Ready>,
}

#[cfg(not(target_os = "linux"))]
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

struct Reactor {
    shared: Arc<Shared>,
    notes: mpsc::UnboundedSender<Note>,
    /// Boxed: growing the map moves pointers, not whole swarms (at 10,000
    /// swarms a growth of unboxed slots stalled every swarm for 200 ms,
    /// most of it page faults on the new table).
    slots: HashMap<u16, Box<Slot>>,
    /// Every swarm socket (edge-triggered, for reading, its port as data)
    /// and the loop's wake-up.
    #[cfg(target_os = "linux")]
    set: std::os::fd::OwnedFd,
    /// Set when the loop must end ([`StopOnDrop`]).
    #[cfg(target_os = "linux")]
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Ports whose socket held more than a batch at its last read (each
    /// once: see `Slot::again`), read again in the next round, and the
    /// list of the round being served.
    #[cfg(target_os = "linux")]
    again: Vec<u16>,
    #[cfg(target_os = "linux")]
    serving: Vec<u16>,
    #[cfg(target_os = "linux")]
    batch: RecvBatch,
    /// The ready list, and the ports taken off it.
    #[cfg(not(target_os = "linux"))]
    ready: Arc<Ready>,
    #[cfg(not(target_os = "linux"))]
    ports: Vec<u16>,
    /// A socket used up its batch this round: yield before the next, so
    /// that the runtime polls the other sockets and runs the other tasks.
    #[cfg(not(target_os = "linux"))]
    must_yield: bool,
    /// Datagrams handled since the task last yielded.
    #[cfg(not(target_os = "linux"))]
    since_yield: usize,
    #[cfg(not(target_os = "linux"))]
    buf: Box<[u8; 512]>,
    /// Pending swarms by deadline; the deadline is the same for all, so
    /// creation order is deadline order.
    pending: VecDeque<(tokio::time::Instant, u16)>,
    done: Mailbox,
    /// A periodic batch is being written.
    batch_running: bool,
    out: Vec<u8>,
}

/// How often every swarm's periodic work runs.
fn tick_every(shared: &Shared) -> Duration {
    let retire = shared.retire;
    (shared
        .swarm_settings
        .interval
        .min(retire.after)
        .min(retire.unannounced)
        / 2)
    .clamp(Duration::from_millis(100), Duration::from_secs(30))
}

#[cfg(target_os = "linux")]
impl Reactor {
    fn new(
        shared: Arc<Shared>,
        notes: mpsc::UnboundedSender<Note>,
        done: Mailbox,
        (set, stop): (std::os::fd::OwnedFd, Arc<std::sync::atomic::AtomicBool>),
        batch: RecvBatch,
    ) -> Self {
        Self {
            shared,
            notes,
            slots: HashMap::new(),
            set,
            stop,
            again: Vec::new(),
            serving: Vec::new(),
            batch,
            pending: VecDeque::new(),
            done,
            batch_running: false,
            out: Vec::new(),
        }
    }

    /// The loop, on a thread of its own (the blocking pool's): one
    /// `epoll_wait` names up to [`EVENTS`] ready swarms (or the wake-up
    /// for the channels), with a timeout that is the next timer, and no
    /// timeout while sockets wait to be read again. The timers and the
    /// channels are looked at after every round, so a flood on the sockets
    /// never starves them.
    fn run(
        mut self,
        mut adopt: mpsc::UnboundedReceiver<Adopt>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
    ) {
        use rustix::event::epoll;
        let tick_every = tick_every(&self.shared);
        let mut next_tick = Instant::now() + tick_every;
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
        let mut failures = 0u32;
        while !self.stop.load(std::sync::atomic::Ordering::Acquire) {
            let now = Instant::now();
            let mut until = next_tick;
            if let Some(&(at, _)) = self.pending.front() {
                until = until.min(at.into_std());
            }
            let wait = if self.again.is_empty() {
                until.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            let timeout = rustix::event::Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            events.clear();
            match epoll::wait(
                &self.set,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timeout),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => failures = 0,
                Err(e) => {
                    // Cannot happen with a valid set and buffer; not a
                    // busy loop if it does.
                    failures += 1;
                    if failures == 1 {
                        tracing::error!("waiting on the swarm sockets: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let mut serving = std::mem::take(&mut self.serving);
            std::mem::swap(&mut serving, &mut self.again);
            for &port in &serving {
                if let Some(slot) = self.slots.get_mut(&port) {
                    slot.again = false;
                }
            }
            let mut woken = false;
            for event in &events {
                match event.data.u64() {
                    WAKE_DATA => woken = true,
                    data => serving.extend(u16::try_from(data).ok()),
                }
            }
            for (i, &port) in serving.iter().enumerate() {
                // The next swarm's state, while this one's datagrams are
                // read and answered.
                if let Some(next) = serving.get(i + 1).and_then(|p| self.slots.get(p)) {
                    next.warm_ahead();
                }
                self.serve(port);
            }
            serving.clear();
            self.serving = serving;
            if woken {
                self.done.wake.clear();
            }
            // Bounded by what the channels hold: swarms the central
            // tracker created, and the few reports of finished tasks.
            while let Ok(d) = done_rx.try_recv() {
                self.on_done(d);
            }
            while let Ok((swarm, socket)) = adopt.try_recv() {
                self.adopt(swarm, socket);
            }
            if self
                .pending
                .front()
                .is_some_and(|&(at, _)| at.into_std() <= Instant::now())
            {
                self.reclaim(tokio::time::Instant::now());
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick();
                next_tick = now + tick_every;
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Reactor {
    fn new(shared: Arc<Shared>, notes: mpsc::UnboundedSender<Note>, done: Mailbox) -> Self {
        Self {
            shared,
            notes,
            slots: HashMap::new(),
            ready: Arc::new(Ready::default()),
            ports: Vec::new(),
            must_yield: false,
            since_yield: 0,
            buf: Box::new([0u8; 512]),
            pending: VecDeque::new(),
            done,
            batch_running: false,
            out: Vec::new(),
        }
    }

    /// The loop, a task: the sockets' wakers put their swarms on the ready
    /// list, the timers and channels are tokio's.
    async fn run(
        mut self,
        mut adopt: mpsc::UnboundedReceiver<Adopt>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
    ) {
        let mut tick = tokio::time::interval(tick_every(&self.shared));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        let cancelled = shared.cancel.cancelled();
        tokio::pin!(cancelled);
        let ready = self.ready.clone();
        // One timer for the earliest confirmation deadline, moved as it
        // changes (not a new timer at every turn of the loop).
        let reclaim = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(reclaim);
        loop {
            let next_reclaim = self.pending.front().map(|(at, _)| *at);
            if let Some(at) = next_reclaim {
                if reclaim.deadline() != at {
                    reclaim.as_mut().reset(at);
                }
            }
            // Unbiased: a flood on the sockets never starves the timers.
            tokio::select! {
                _ = &mut cancelled => break,
                Some(done) = done_rx.recv() => self.on_done(done),
                _ = ready.notify.notified() => {
                    self.serve_ready();
                    if std::mem::take(&mut self.must_yield) || self.since_yield >= YIELD_EVERY {
                        self.since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Some((swarm, socket)) = adopt.recv() => self.adopt(swarm, socket),
                _ = &mut reclaim, if next_reclaim.is_some() => self.reclaim(tokio::time::Instant::now()),
                _ = tick.tick() => self.tick(),
            }
        }
    }

    /// Serves the ports on the ready list.
    fn serve_ready(&mut self) {
        let mut ports = std::mem::take(&mut self.ports);
        std::mem::swap(
            &mut ports,
            &mut *self.ready.ports.lock().unwrap_or_else(|e| e.into_inner()),
        );
        for port in ports.drain(..) {
            self.serve(port);
        }
        self.ports = ports;
    }

    /// Takes what waits on `port`'s socket, up to [`BATCH`] datagrams.
    fn serve(&mut self, port: u16) {
        let Some((slot, waker)) = take_ready(&mut self.slots, port) else {
            return;
        };
        let mut cx = Context::from_waker(&waker);
        for _ in 0..BATCH {
            // Every valid datagram is under 64 bytes; a longer one is cut,
            // and still refused as malformed.
            let mut buf = ReadBuf::new(&mut self.buf[..]);
            let src = match slot.io.poll_recv_from(&mut cx, &mut buf) {
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
                done: &self.done,
                now: Instant::now(),
                now_unix: unix_now(),
            };
            on.datagram(slot, src, &self.buf[..n], &mut self.out);
        }
        // More may wait: after the others, and after the runtime's turn.
        slot.waker.wake_by_ref();
        self.must_yield = true;
    }
}

impl Reactor {
    fn adopt(&mut self, swarm: SwarmTracker, socket: SwarmSocket) {
        let port = swarm.record.port;
        dont_fragment(&socket);
        #[cfg(not(target_os = "linux"))]
        let io = match socket.try_clone().and_then(tokio::net::UdpSocket::from_std) {
            Ok(io) => io,
            Err(e) => return self.cannot_serve(&swarm, e),
        };
        #[cfg(target_os = "linux")]
        if let Err(e) = rustix::event::epoll::add(
            &self.set,
            &*socket,
            rustix::event::epoll::EventData::new_u64(u64::from(port)),
            rustix::event::epoll::EventFlags::IN | rustix::event::epoll::EventFlags::ET,
        ) {
            return self.cannot_serve(&swarm, e.into());
        }
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
            #[cfg(target_os = "linux")]
            again: false,
            #[cfg(not(target_os = "linux"))]
            io,
            #[cfg(not(target_os = "linux"))]
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
        // Reads what already waits (and, elsewhere than on Linux,
        // registers the waker).
        self.serve(port);
    }

    /// A swarm whose socket cannot be waited on: dropped, as if reclaimed
    /// or retired, so that the central tracker frees its port.
    fn cannot_serve(&mut self, swarm: &SwarmTracker, e: std::io::Error) {
        let port = swarm.record.port;
        tracing::error!("swarm {port} cannot be served: {e}");
        self.shared.events.emit(Event::error(
            crate::events::ErrorKind::Network,
            format!("swarm {port} cannot be served: {e}"),
        ));
        let _ = self.notes.send(Note::Gone {
            port,
            creator: swarm.record.creator,
            was_pending: !swarm.is_confirmed(),
        });
    }

    /// Takes `slot` out of the epoll set before it is dropped: the central
    /// tracker's copy of the socket keeps it open a little longer, and its
    /// port may be bound again after.
    fn forget(&self, slot: &Slot) {
        #[cfg(target_os = "linux")]
        if let Err(e) = rustix::event::epoll::delete(&self.set, &*slot.socket) {
            tracing::debug!("swarm {} out of the epoll set: {e}", slot.swarm.record.port);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = slot;
    }

    /// Takes what waits on `port`'s socket, up to [`BATCH`] datagrams, in
    /// one `recvmmsg`. Fewer than asked for means the socket is empty, so
    /// no second call is made to find out (a `recvfrom` per socket per
    /// wake-up that returns `EAGAIN`: about one system call in three). A
    /// socket that may hold more is read again in the next round: the
    /// epoll set is edge-triggered, and says nothing more about it.
    #[cfg(target_os = "linux")]
    fn serve(&mut self, port: u16) {
        let Some(slot) = self.slots.get_mut(&port) else {
            return;
        };
        // Bounded: an error (an ICMP error from an earlier send surfaces
        // on the next receive) is tried past a few times at most.
        for _ in 0..4 {
            let (got, drained) = match self.batch.recv(&slot.socket) {
                Ok(r) => r,
                Err(e) => {
                    tracing::trace!("swarm {port} recv: {e}");
                    continue;
                }
            };
            // One clock reading for the batch, not two per datagram.
            let on = Serving {
                shared: &self.shared,
                notes: &self.notes,
                done: &self.done,
                now: Instant::now(),
                now_unix: unix_now(),
            };
            for (buf, meta) in self.batch.bufs.iter().zip(&self.batch.meta).take(got) {
                let data = &buf[..meta.len.min(buf.len())];
                // One buffer holds one datagram: the sockets do not ask
                // for GRO. Cut at `stride` anyway, as the crate documents.
                for one in data.chunks(meta.stride.max(1)) {
                    on.datagram(slot, meta.addr, one, &mut self.out);
                }
            }
            if drained {
                return;
            }
            break;
        }
        // More may wait: after the others.
        if !slot.again {
            slot.again = true;
            self.again.push(port);
        }
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
                self.forget(&slot);
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
                self.forget(&slot);
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
            let done = self.done.clone();
            crate::spawn::spawn("saving swarms", async move {
                match blocking(move || store.put_all(&batch)).await {
                    Ok(()) => {
                        done.send(Done::Persisted(written));
                    }
                    Err(e) => tracing::error!("saving swarms: {e}"),
                }
                done.send(Done::BatchOver);
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
#[cfg(not(target_os = "linux"))]
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
    done: &'a Mailbox,
    /// When the datagrams were read, by the monotonic clock and in Unix
    /// seconds.
    now: Instant,
    now_unix: u64,
}

impl Serving<'_> {
    /// Applies one datagram from `src` to `slot`'s swarm and sends what it
    /// calls for (`out` is scratch).
    fn datagram(&self, slot: &mut Slot, src: SocketAddr, data: &[u8], out: &mut Vec<u8>) {
        let effect = slot.swarm.handle(src, data, self.now, out);
        act(self, slot, effect, src, out);
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

    /// Takes up to [`BATCH`] datagrams from `socket` (nonblocking): how
    /// many, and whether that emptied it (fewer than asked for: the queue
    /// ran dry).
    fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<(usize, bool)> {
        let mut slices = self.bufs.each_mut().map(|b| std::io::IoSliceMut::new(b));
        match self.state.recv(socket.into(), &mut slices, &mut self.meta) {
            Ok(got) => Ok((got, got < BATCH)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok((0, true)),
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
fn act(on: &Serving<'_>, slot: &mut Slot, effect: Effect, src: SocketAddr, out: &[u8]) {
    let (shared, notes, done) = (on.shared, on.notes, on.done);
    let port = slot.swarm.record.port;
    if matches!(effect, Effect::Announced | Effect::KeyBound) {
        slot.gauge.gauge.announces.fetch_add(1, Relaxed);
        show(slot);
    }
    match effect {
        Effect::Nothing => {}
        Effect::Announced => slot.swarm.record.last_announce_unix = on.now_unix,
        Effect::Confirmed => {
            slot.confirm_deadline = None;
            slot.gauge.gauge.confirmed.store(true, Relaxed);
            shared.stats.confirmed.fetch_add(1, Relaxed);
            slot.swarm.record.last_announce_unix = on.now_unix;
        }
        Effect::KeyBound => {
            slot.swarm.record.last_announce_unix = on.now_unix;
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
                done.send(Done::Persisted(vec![(port, announce)]));
            }
            Err(e) => tracing::error!("saving swarm {port}: {e}"),
        }
        if confirmed {
            tell_confirmed(&shared, &notes, port, creator);
        }
        if let Some(reply) = reply {
            send_now(&socket, &reply, src);
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
    // On Linux straight to the system call: libc's `sendto`, a
    // cancellation point, wraps it in two more calls (1.5% of the
    // tracker's CPU per announce, measured with perf).
    #[cfg(target_os = "linux")]
    let sent = rustix::net::sendto(socket, data, rustix::net::SendFlags::empty(), &to)
        .map_err(std::io::Error::from);
    #[cfg(not(target_os = "linux"))]
    let sent = socket.send_to(data, to);
    if let Err(e) = sent {
        tracing::trace!("reply to {to} dropped: {e}");
    }
}

/// Runs one reachability probe for swarm `port` on its own task, if a
/// tracker-wide slot is free: a TCP connection to `addr`, closed at once
/// with a reset and without a byte sent, given up after [`PROBE_TIMEOUT`]
/// (one SYN). Its result comes back through `done`. Returns false, and
/// runs nothing, without a free slot: the probe counts as not run.
fn start_probe(shared: &Shared, port: u16, addr: SocketAddr, done: &Mailbox) -> bool {
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
        done.send(Done::Probe {
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
    /// cuts a datagram too long for its buffer; an empty socket reads as
    /// nothing, and emptied.
    #[test]
    fn a_batch_reads_what_waits_and_knows_when_the_socket_is_empty() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let to = socket.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
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
        let (got, drained) = batch.recv(&socket).unwrap();
        assert_eq!((got, drained), (BATCH, false));
        for (i, meta) in batch.meta.iter().enumerate() {
            assert_eq!(meta.addr, from);
            assert_eq!(meta.len, 1 + i);
            assert!(batch.bufs[i][..meta.len]
                .iter()
                .all(|&b| usize::from(b) == i));
        }
        let (got, drained) = batch.recv(&socket).unwrap();
        assert_eq!((got, drained), (8, true));
        assert_eq!(batch.meta[7].len, 512, "cut to the buffer");
        assert_eq!(batch.recv(&socket).unwrap(), (0, true));
        sender.send_to(b"again", to).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            match batch.recv(&socket).unwrap() {
                (0, _) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                r => break r,
            }
        };
        assert_eq!(got, (1, true));
        assert_eq!(&batch.bufs[0][..batch.meta[0].len], b"again");
    }

    /// Swarm sockets send with the don't-fragment bit, ignoring the path MTU.
    #[tokio::test]
    async fn swarm_sockets_do_not_fragment() {
        use rustix::net::sockopt;
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        dont_fragment(&v4);
        assert_eq!(
            sockopt::ip_mtu_discover(&v4).unwrap(),
            sockopt::Ipv4PathMtuDiscovery::PROBE
        );
        // IPv6 may be off on a test machine: said, not passed silently.
        match UdpSocket::bind("[::1]:0") {
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
