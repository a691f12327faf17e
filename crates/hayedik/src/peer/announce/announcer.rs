//! The announce loop: [`spawn_announcer`] runs a [`TrackerClient`] on its
//! own task, announcing at once, then every interval the tracker gives or
//! when its owner changes the state, publishing replies and failures on
//! `watch` channels, and saying "leaving" when it stops. [`Announcer`] is
//! the owner's handle.

use std::time::Duration;

use hayedik_proto::tracker::{ExtFlags, PeerState, Probe};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::transport::Backoff;
use super::{
    AnnounceError, AnnounceReply, TrackerClient, LEAVE_DEADLINE, LOOP_RETRY_FIRST, LOOP_RETRY_MAX,
};

/// What the owner of an [`Announcer`] wants announced.
#[derive(Debug, Clone, Copy)]
struct Wish {
    state: PeerState,
    wanted: u16,
    /// What ANNOUNCE_X asks for (when the client uses extensions).
    flags: ExtFlags,
}

/// While a probe is under way, the loop asks again this often.
pub const PROBE_POLL: Duration = Duration::from_secs(1);

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

/// Sets what ANNOUNCE_X asks for (a probe, listing us as relayed) from a
/// task other than the [`Announcer`]'s owner.
#[derive(Debug, Clone)]
pub struct FlagsHandle {
    wish: watch::Sender<Wish>,
}

impl FlagsHandle {
    /// Asks for `flags` from now on; announces at once when they changed.
    /// Without extensions (see [`TrackerClient::use_extensions`]), nothing
    /// changes.
    pub fn set(&self, flags: ExtFlags) {
        self.wish.send_if_modified(|w| {
            let changed = w.flags != flags;
            w.flags = flags;
            changed
        });
    }
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
        flags: ExtFlags::default(),
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

    /// A handle that sets what ANNOUNCE_X asks for.
    pub fn flags_handle(&self) -> FlagsHandle {
        FlagsHandle {
            wish: self.wish.clone(),
        }
    }

    /// Announces at once (e.g. when short of peers), without waiting for the
    /// interval.
    pub fn announce_now(&self) {
        self.wish.send_modify(|_| {});
    }

    /// What [`Announcer::announce_now`] does, for a task that outlives a
    /// borrow of the announcer.
    pub fn announce_handle(&self) -> impl Fn() + Send + Sync + 'static {
        let wish = self.wish.clone();
        move || wish.send_modify(|_| {})
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
            _ = client.serve_punch() => {}
        }
        let w = *wish.borrow_and_update();
        if w.state == PeerState::Leaving {
            break;
        }
        client.flags = w.flags;
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
                if reply.ext.is_some_and(|e| e.probe == Probe::Pending) {
                    next = Instant::now() + PROBE_POLL;
                }
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
