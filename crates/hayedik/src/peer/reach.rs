//! Where we stand: asks the swarm tracker to probe our TCP port, and when
//! nobody can reach it, registers at the tracker's relay and has the
//! tracker list us as reachable through it. Says the outcome once as a
//! `reachability` event (and again when it changes).
//!
//! With `--port-mapping`, the port announced is the one the router
//! forwards, and a successful probe says `mapped`.
//!
//! Steps: the announcer asks with a probe (ANNOUNCE_X, flag 1) and polls
//! while the answer is "pending"; "reachable" ends it (`direct`); otherwise,
//! with a relay named by the tracker, a registration is kept there and,
//! while it is up, announces carry flag 2 (`relay`); without a relay, `none`.
//! A tracker that does not know the extension leaves the question open:
//! nothing is said but a log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hayedik_proto::tracker::{ExtFlags, Probe};
use tokio::sync::watch;

use super::announce::{AnnounceReply, Announcer, ExtReply, FlagsHandle};
use super::swarm::Swarm;
use crate::events::{Event, Events};

/// How long to wait for the tracker's verdict before giving up asking.
pub const PROBE_PATIENCE: Duration = Duration::from_secs(20);
/// How long a refused probe (the tracker was busy) waits before asking again.
const REFUSED_RETRY: Duration = Duration::from_secs(10);

/// Stops the `reachability` events of one [`spawn_reach`], so that a
/// `get --no-seed` says nothing after its `done` (the verdict may come
/// while it leaves).
#[derive(Clone, Default)]
pub struct Hush(Arc<std::sync::Mutex<bool>>);

impl Hush {
    /// No `reachability` event after this returns.
    pub fn silence(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// Starts finding out whether others reach us, and acting on it.
pub fn spawn_reach(
    swarm: Arc<Swarm>,
    announcer: &Announcer,
    events: Events,
    paths: Arc<super::node::Paths>,
    mapped: Option<SocketAddr>,
) -> Hush {
    let hush = Hush::default();
    let out = hush.clone();
    let emit = move |events: &Events, reachable: bool, addr: SocketAddr, how: &str| {
        // Under the lock: `silence` waits for an event being sent.
        let silenced = hush.0.lock().unwrap_or_else(|e| e.into_inner());
        if !*silenced {
            emit(events, reachable, addr, how);
        }
    };
    let mut replies = announcer.replies();
    let ctl = announcer.flags_handle();
    ctl.set(ExtFlags {
        probe: true,
        relayed: false,
        mapped: false,
        punch: false,
    });
    crate::spawn::spawn("reachability", async move {
        let cancel = swarm.cancel.clone();
        let verdict = tokio::select! {
            _ = cancel.cancelled() => return,
            v = verdict(&mut replies, &ctl) => v,
        };
        ctl.set(ExtFlags::default());
        let ext = match verdict {
            Verdict::Known(ext) => ext,
            Verdict::Unknown => {
                tracing::info!(
                    "the tracker cannot tell whether others reach us (it predates the probe)"
                );
                return;
            }
            // The announcer stopped (we are leaving): nothing to say.
            Verdict::Gone => return,
        };
        paths.set_reachable(ext.probe == Probe::Reachable);
        if ext.probe == Probe::Reachable {
            // Through our router's port mapping, when we made one.
            let how = if mapped.is_some() { "mapped" } else { "direct" };
            emit(&events, true, ext.observed, how);
            return;
        }
        let Some(relay) = ext.relay else {
            emit(&events, false, ext.observed, "none");
            return;
        };
        let (tx, mut registered) = watch::channel(false);
        crate::relay::client::spawn_registration(
            swarm.clone(),
            relay,
            crate::relay::relay_key(&swarm.root),
            tx,
            paths.clone(),
        );
        let mut said: Option<bool> = None;
        let patience = tokio::time::sleep(PROBE_PATIENCE);
        tokio::pin!(patience);
        loop {
            let up = *registered.borrow_and_update();
            ctl.set(ExtFlags {
                probe: false,
                relayed: up,
                mapped: false,
                punch: false,
            });
            if up && said != Some(true) {
                emit(&events, true, ext.observed, "relay");
                said = Some(true);
            } else if !up && said == Some(true) {
                emit(&events, false, ext.observed, "none");
                said = Some(false);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = registered.changed() => if r.is_err() { return },
                // No registration in time: say so once, keep trying.
                _ = &mut patience, if said.is_none() => {
                    emit(&events, false, ext.observed, "none");
                    said = Some(false);
                }
            }
        }
    });
    out
}

fn emit(events: &Events, reachable: bool, addr: SocketAddr, how: &str) {
    events.emit(Event::Reachability {
        reachable,
        addr: addr.to_string(),
        how: how.to_string(),
    });
}

/// What the tracker's answers said.
enum Verdict {
    Known(ExtReply),
    /// The tracker does not answer ANNOUNCE_X.
    Unknown,
    /// The announce loop ended before an answer.
    Gone,
}

/// Waits for a conclusive probe answer (an undecided one after
/// [`PROBE_PATIENCE`] counts as "not reachable").
async fn verdict(
    replies: &mut watch::Receiver<Option<AnnounceReply>>,
    ctl: &FlagsHandle,
) -> Verdict {
    let deadline = tokio::time::Instant::now() + PROBE_PATIENCE;
    let mut last = None;
    loop {
        let reply = replies.borrow_and_update().clone();
        if let Some(reply) = reply {
            let Some(ext) = reply.ext else {
                return Verdict::Unknown;
            };
            match ext.probe {
                Probe::Reachable | Probe::Unreachable => return Verdict::Known(ext),
                Probe::Refused => {
                    // Ask again later; meanwhile ask for nothing.
                    ctl.set(ExtFlags::default());
                    tokio::time::sleep(REFUSED_RETRY).await;
                    ctl.set(ExtFlags {
                        probe: true,
                        relayed: false,
                        mapped: false,
                        punch: false,
                    });
                }
                Probe::Pending | Probe::NotAsked => {}
            }
            last = Some(ext);
        }
        tokio::select! {
            r = replies.changed() => if r.is_err() { return Verdict::Gone },
            _ = tokio::time::sleep_until(deadline) => {
                // Undecided: treat a tracker that kept refusing as a "no".
                return match last {
                    Some(e) => Verdict::Known(ExtReply { probe: Probe::Unreachable, ..e }),
                    None => Verdict::Unknown,
                };
            }
        }
    }
}
