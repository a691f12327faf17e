//! A `get` that holds the whole content brings its ticket's swarm back when
//! the swarm tracker is gone (its tracker restarted without state, or
//! retired the swarm): it CLAIMs the ticket's port for the swarm key at the
//! central tracker (docs/protocol.md, "stable swarms"), then announces there
//! again, so holders of the old ticket find it.
//!
//! The ticket names the swarm port, not the central tracker's: the central
//! tracker is looked for at the ticket's host on the default port (7410).

use std::sync::Arc;
use std::time::Duration;

use hayedik_proto::ticket::Ticket;

use super::announce::{claim_swarm, AnnounceError, Announcer, Claimed};
use super::share::DEFAULT_TRACKER_PORT;
use super::swarm::Swarm;
use super::{resolve, udp_socket_for};

/// Claims tried over a run; then the swarm stays as it is.
const MAX_TRIES: u32 = 5;
/// Pause between two claims.
const BETWEEN_TRIES: Duration = Duration::from_secs(30);
/// Deadline of one claim.
const CLAIM_DEADLINE: Duration = Duration::from_secs(10);

/// While `swarm` runs: each time the swarm tracker stops answering (the
/// announcer reports it unreachable), claims the ticket's port at most
/// [`MAX_TRIES`] times, [`BETWEEN_TRIES`] apart, and announces at once when
/// the swarm is back on it.
pub fn spawn_revive(swarm: Arc<Swarm>, announcer: &Announcer, ticket: Ticket) {
    let mut errors = announcer.errors();
    let now = announcer.announce_handle();
    crate::spawn::spawn("revive", async move {
        let cancel = swarm.cancel.clone();
        for _ in 0..MAX_TRIES {
            // Until the swarm tracker stops answering.
            loop {
                let unreachable = matches!(
                    *errors.borrow_and_update(),
                    Some(AnnounceError::Unreachable { .. })
                );
                if unreachable {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    changed = errors.changed() => if changed.is_err() { return },
                }
            }
            let revived = tokio::select! {
                _ = cancel.cancelled() => return,
                r = claim(&swarm, &ticket) => r,
            };
            match revived {
                Ok(true) => {
                    tracing::info!("brought the swarm back on port {}", ticket.port);
                    now();
                }
                Ok(false) => return,
                Err(e) => tracing::info!("cannot bring the swarm back: {e:#}"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(BETWEEN_TRIES) => {}
            }
        }
    });
}

/// One claim: `Ok(true)` when the swarm is on the ticket's port now,
/// `Ok(false)` when trying again is pointless (the key's swarm lives on
/// another port); an error (no tracker answers there yet, say) is tried
/// again later.
async fn claim(swarm: &Swarm, ticket: &Ticket) -> anyhow::Result<bool> {
    let central = resolve(&ticket.host, DEFAULT_TRACKER_PORT).await?;
    let socket = udp_socket_for(central).await?;
    match claim_swarm(
        &socket,
        central,
        swarm.swarm_key,
        ticket.port,
        CLAIM_DEADLINE,
    )
    .await?
    {
        Some(Claimed::Created(p) | Claimed::Found(p)) if p == ticket.port => Ok(true),
        Some(c) => {
            tracing::info!(
                "the tracker at {central} has this swarm on port {}, not on the ticket's {}",
                c.port(),
                ticket.port
            );
            Ok(false)
        }
        None => Err(anyhow::anyhow!(
            "no tracker at {central} answers CLAIM (down, or older)"
        )),
    }
}
