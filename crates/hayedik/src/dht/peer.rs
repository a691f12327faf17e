//! `share`/`get --dht`: a DHT node in client mode that announces our TCP
//! port under the swarm's [`super::info_hash`] and looks the hash up,
//! offering every peer found to the connector (`Found::Dht`).
//!
//! Lookups start right away and back off from [`LOOKUP_FIRST`] to
//! [`LOOKUP_MAX`] (at most [`LOOKUP_MAX_LONELY`] while no peer is
//! connected); each is bounded in time ([`LOOKUP_TIME`]) and in peers
//! ([`LOOKUP_PEERS`]). The announce is renewed every [`ANNOUNCE_EVERY`]
//! (sooner after a failure). When the swarm is cancelled the node is
//! dropped and its UDP socket waited for (the crate runs it on a thread of
//! its own, which ends within a tick once the last handle is gone).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::DhtConfig;
use crate::events::{Event, Events};
use crate::peer::swarm::{Found, Swarm};

pub const LOOKUP_FIRST: Duration = Duration::from_secs(2);
pub const LOOKUP_MAX: Duration = Duration::from_secs(300);
pub const LOOKUP_MAX_LONELY: Duration = Duration::from_secs(30);
pub const LOOKUP_TIME: Duration = Duration::from_secs(30);
pub const LOOKUP_PEERS: usize = 200;
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(10 * 60);
const ANNOUNCE_RETRY_FIRST: Duration = Duration::from_secs(5);
const ANNOUNCE_TIME: Duration = Duration::from_secs(60);
/// Peers remembered as already offered (offered again once forgotten).
const SEEN_MAX: usize = 1024;

/// Starts the node (its `dht` event says where it listens) and the task
/// that announces `port` and looks the swarm up until `swarm.cancel`.
pub async fn spawn(
    swarm: Arc<Swarm>,
    port: u16,
    config: DhtConfig,
    events: &Events,
) -> anyhow::Result<()> {
    let dht = tokio::task::spawn_blocking(move || build(&config))
        .await
        .map_err(|e| anyhow::anyhow!("starting the DHT node: {e}"))?
        .map_err(|e| anyhow::anyhow!("starting the DHT node: {e}"))?
        .as_async();
    let local = dht.info().await.local_addr();
    events.emit(Event::Dht {
        addr: local.to_string(),
    });
    let hash = mainline::Id::from_bytes(super::info_hash(&swarm.root))
        .map_err(|e| anyhow::anyhow!("the DHT info hash: {e}"))?;
    crate::spawn::spawn("dht", async move {
        let cancel = swarm.cancel.clone();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = run(&dht, hash, port, &swarm) => {}
        }
        drop(dht);
        super::node::wait_closed(local).await;
    });
    Ok(())
}

fn build(config: &DhtConfig) -> std::io::Result<mainline::Dht> {
    let mut b = mainline::Dht::builder();
    if let Some(nodes) = &config.bootstrap {
        b.bootstrap(nodes);
        if nodes.iter().all(|a| a.ip().is_loopback()) {
            // A private test network on this machine: stay on loopback.
            b.bind_address(Ipv4Addr::LOCALHOST);
        }
    }
    b.build()
}

async fn run(dht: &mainline::async_dht::AsyncDht, hash: mainline::Id, port: u16, swarm: &Swarm) {
    let now = Instant::now();
    let (mut next_lookup, mut next_announce) = (now, now);
    let mut lookup_wait = LOOKUP_FIRST;
    let mut announce_retry = ANNOUNCE_RETRY_FIRST;
    let mut seen: HashSet<SocketAddrV4> = HashSet::new();
    loop {
        tokio::time::sleep_until(next_lookup.min(next_announce)).await;
        if Instant::now() >= next_lookup {
            let found = lookup(dht, hash, swarm, &mut seen).await;
            tracing::debug!(found, "DHT lookup");
            let cap = if swarm.peer_count() == 0 {
                LOOKUP_MAX_LONELY
            } else {
                LOOKUP_MAX
            };
            lookup_wait = match found {
                0 => (lookup_wait * 2).min(cap),
                _ => LOOKUP_FIRST,
            };
            next_lookup = Instant::now() + lookup_wait;
        }
        if Instant::now() >= next_announce {
            match tokio::time::timeout(ANNOUNCE_TIME, dht.announce_peer(hash, Some(port))).await {
                Ok(Ok(_)) => {
                    tracing::debug!(port, "announced in the DHT");
                    announce_retry = ANNOUNCE_RETRY_FIRST;
                    next_announce = Instant::now() + ANNOUNCE_EVERY;
                }
                Ok(Err(e)) => {
                    tracing::debug!("announcing in the DHT: {e}");
                    next_announce = Instant::now() + announce_retry;
                    announce_retry = (announce_retry * 2).min(ANNOUNCE_EVERY);
                }
                Err(_) => {
                    tracing::debug!("announcing in the DHT: timed out");
                    next_announce = Instant::now() + announce_retry;
                    announce_retry = (announce_retry * 2).min(ANNOUNCE_EVERY);
                }
            }
        }
    }
}

/// One lookup: offers the peers not offered before; how many.
async fn lookup(
    dht: &mainline::async_dht::AsyncDht,
    hash: mainline::Id,
    swarm: &Swarm,
    seen: &mut HashSet<SocketAddrV4>,
) -> usize {
    let mut stream = dht.get_peers(hash);
    let deadline = Instant::now() + LOOKUP_TIME;
    let (mut got, mut offered) = (0usize, 0usize);
    while got < LOOKUP_PEERS {
        let batch = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(batch)) => batch,
            Ok(None) | Err(_) => break,
        };
        for addr in batch.into_iter().take(LOOKUP_PEERS - got) {
            got += 1;
            if seen.contains(&addr) {
                continue;
            }
            if seen.len() >= SEEN_MAX {
                seen.clear();
            }
            // Dropped when the connector's queue is full: offered again
            // by a later lookup.
            if swarm.offer_peer(SocketAddr::V4(addr), Found::Dht) {
                seen.insert(addr);
                offered += 1;
            }
        }
    }
    offered
}
