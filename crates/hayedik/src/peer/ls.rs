//! `hayedik ls TICKET`: find peers through the ticket's tracker, fetch and
//! verify the manifest (against the ticket's root), and list its entries
//! without downloading any piece.

use std::time::Duration;

use hayedik_proto::tracker::PeerState;
use tokio_util::sync::CancellationToken;

use super::announce::{spawn_announcer, TrackerClient};
use super::progress::Progress;
use super::swarm::{Swarm, SwarmOptions};
use super::{node, resolve, udp_socket_for};
use crate::events::{Event, Events};
use crate::spawn::{Scope, SHUTDOWN_WAIT};

/// Lists the share; `Ok(false)` when interrupted before the manifest came.
pub async fn ls(
    ticket: hayedik_proto::ticket::Ticket,
    timeout: Option<Duration>,
    events: Events,
    cancel: CancellationToken,
) -> anyhow::Result<bool> {
    let scope = Scope::new("ls");
    let cancel = cancel.child_token();
    let result = scope
        .run(ls_scoped(ticket, timeout, &events, cancel.clone()))
        .await;
    cancel.cancel();
    scope.shutdown(SHUTDOWN_WAIT).await;
    result
}

async fn ls_scoped(
    ticket: hayedik_proto::ticket::Ticket,
    timeout: Option<Duration>,
    events: &Events,
    cancel: CancellationToken,
) -> anyhow::Result<bool> {
    let tracker = resolve(&ticket.host, ticket.port).await?;
    // No listener: this peer serves nothing, and says so with port 0.
    let swarm = Swarm::new(
        SwarmOptions {
            root: ticket.root,
            listen_port: 0,
            max_upload: None,
            max_download: None,
        },
        cancel.child_token(),
    );
    let socket = udp_socket_for(tracker).await?;
    let mut client = TrackerClient::from_socket(socket, tracker, swarm.swarm_key, 0);
    if let Some(t) = timeout {
        client.set_deadline(client.deadline().min(t / 2).max(Duration::from_millis(500)));
    }
    let announcer = spawn_announcer(client, PeerState::Asking, swarm.cancel.clone());
    node::spawn_connector(swarm.clone(), announcer.replies());
    let s = swarm.clone();
    announcer.spawn_lonely_reannounce(super::share::LONELY_REANNOUNCE, move || s.peer_count() == 0);
    let progress = Progress::new(
        events.clone(),
        timeout,
        format!("{}:{}", ticket.host, ticket.port),
    );
    let mut manifest_rx = swarm.manifest_rx();
    let found = loop {
        if let Some(m) = manifest_rx.borrow_and_update().clone() {
            break Ok(Some(m.0));
        }
        tokio::select! {
            _ = cancel.cancelled() => break Ok(None),
            _ = manifest_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Err(e) = progress.check_stalled(&swarm, &announcer) {
                    break Err(e);
                }
            }
        }
    };
    progress.finish();
    announcer.leave().await;
    swarm.cancel.cancel();
    let Some(manifest) = found? else {
        return Ok(false);
    };
    let top = manifest.top_name().to_owned();
    let single = manifest.is_single_file();
    for f in &manifest.files {
        let path = if single {
            f.path.clone()
        } else {
            f.path
                .strip_prefix(&top)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(&f.path)
                .to_string()
        };
        events.emit(Event::Entry {
            path,
            bytes: f.size,
            folder: f.directory,
        });
    }
    Ok(true)
}
