//! `hayedik share PATH`: hash the file into a manifest, create a swarm on
//! the tracker (an embedded one unless `--tracker` is given), print the
//! ticket, and serve until interrupted.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hayedik_proto::manifest::{choose_piece_size, is_single_plain_name, FileEntry, Manifest};
use hayedik_proto::ticket::Ticket;
use hayedik_proto::tracker::PeerState;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::announce::{create_swarm, spawn_announcer, TrackerClient};
use super::guard::ServeGuard;
use super::hashing::hash_file;
use super::swarm::{Content, Swarm, SwarmOptions};
use super::{node, resolve, udp_socket_for};
use crate::events::{Event, Events};
use crate::storage::{Bitfield, FileStorage};
use crate::tracker::TrackerConfig;

/// The central tracker's well-known port.
pub const DEFAULT_TRACKER_PORT: u16 = 7410;
/// How often a peer with no connection at all asks the tracker again.
pub const LONELY_REANNOUNCE: Duration = Duration::from_secs(5);
/// How long creating the swarm may take before `share` gives up.
pub const CREATE_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ShareOptions {
    pub path: PathBuf,
    /// `HOST:PORT` of a central tracker; `None` runs one in this process.
    pub tracker: Option<String>,
    /// The host put in the ticket for an embedded tracker.
    pub public_host: Option<String>,
    pub listen: SocketAddr,
    pub max_upload: Option<u64>,
}

/// A running share (for the demo and tests): its ticket and counters.
#[derive(Debug, Clone)]
pub struct Shared {
    pub ticket: Ticket,
    pub swarm: Arc<Swarm>,
}

/// Shares until `cancel` fires; `on_ready` gets the ticket once it is known.
pub async fn share(
    opts: ShareOptions,
    events: Events,
    cancel: CancellationToken,
    on_ready: impl FnOnce(Shared),
) -> anyhow::Result<()> {
    let path = opts.path.clone();
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("cannot share {}: check the path", path.display()))?;
    if meta.is_dir() {
        bail!(
            "{} is a folder; this version of hayedik shares single files",
            path.display()
        );
    }
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            anyhow!(
                "{} has no usable file name (it must be UTF-8)",
                path.display()
            )
        })?;
    if !is_single_plain_name(&name) {
        bail!("cannot share {name:?}: the name is not portable (reserved, or with characters other systems refuse); rename it");
    }
    let (listener, local) = node::bind_listener(opts.listen, events).await?;

    let manifest = tokio::select! {
        // Hashing a large file takes a while: an interrupt need not wait.
        _ = cancel.cancelled() => {
            events.emit(Event::Stopped { uploaded: Some(0), downloaded: Some(0) });
            return Ok(());
        }
        m = build_manifest(&path, name, meta.len(), events) => m?,
    };
    let manifest_bytes = manifest.encode();
    let root = manifest.root();

    // The tracker: the given one, or one embedded in this process.
    let (central, ticket_host) = match &opts.tracker {
        Some(t) => {
            let (host, port) = split_host_port(t)?;
            (
                resolve(&host, port).await?,
                opts.public_host.clone().unwrap_or(host),
            )
        }
        None => embedded_tracker(&opts, &cancel).await?,
    };
    let socket = udp_socket_for(central).await?;
    let swarm_port = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = create_swarm(&socket, central, CREATE_DEADLINE) => r.map_err(|e| anyhow!("creating the swarm: {e}"))?,
    };
    let ticket = Ticket {
        host: ticket_host,
        port: swarm_port,
        root,
    };
    let storage =
        FileStorage::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let pieces = manifest.piece_count();
    let bytes = manifest.total_bytes();
    let swarm = Swarm::new(
        SwarmOptions {
            root,
            listen_port: local.port(),
            max_upload: opts.max_upload,
            max_download: None,
        },
        cancel.child_token(),
    );
    swarm.set_content(
        Content {
            manifest,
            manifest_bytes,
            storage: Arc::new(storage),
            download: None,
            guard: ServeGuard::verified(path.clone(), pieces),
        },
        Bitfield::full(pieces),
        None,
    );
    node::spawn_listener(listener, swarm.clone());
    let swarm_addr = SocketAddr::new(central.ip(), swarm_port);
    let client = TrackerClient::from_socket(socket, swarm_addr, swarm.swarm_key, local.port());
    let announcer = spawn_announcer(client, PeerState::Complete, swarm.cancel.clone());
    // Dial the downloaders the tracker lists too: a sharer behind a firewall
    // or NAT serves over connections it opens itself.
    node::spawn_connector(swarm.clone(), announcer.replies());
    let s = swarm.clone();
    announcer.spawn_lonely_reannounce(LONELY_REANNOUNCE, move || s.peer_count() == 0);
    events.emit(Event::Ticket {
        ticket: ticket.to_string(),
        root: hex(&root),
        bytes,
        pieces: u64::from(pieces),
    });
    on_ready(Shared {
        ticket,
        swarm: swarm.clone(),
    });
    swarm.cancel.cancelled().await;
    announcer.leave().await;
    events.emit(Event::Stopped {
        uploaded: Some(swarm.uploaded.load(Ordering::Relaxed)),
        downloaded: Some(0),
    });
    if let Some(fatal) = swarm.fatal() {
        bail!("{fatal}");
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Splits `HOST:PORT` (IPv6 in brackets).
pub fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let bad = || anyhow!("'{s}' is not HOST:PORT (IPv6 hosts in brackets, e.g. [::1]:7410)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Hashes the file with a progress bar (on a terminal) on every core.
async fn build_manifest(
    path: &std::path::Path,
    name: String,
    len: u64,
    events: Events,
) -> anyhow::Result<Manifest> {
    let piece_size = choose_piece_size(len);
    let bar = (!events.is_json() && !events.is_quiet() && len > 64 << 20).then(|| {
        let b = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "hashing {bar:40.cyan/blue} {bytes}/{total_bytes} ({binary_bytes_per_sec})",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    });
    let done = Arc::new(AtomicU64::new(0));
    let p = path.to_path_buf();
    let (d, b) = (done.clone(), bar.clone());
    let hashes = tokio::task::spawn_blocking(move || {
        hash_file(&p, len, piece_size, &|n| {
            d.store(n, Ordering::Relaxed);
            if let Some(b) = &b {
                b.set_position(n);
            }
        })
    })
    .await
    .map_err(|e| anyhow!("hashing: {e}"))?
    .with_context(|| format!("reading {}", path.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let manifest = Manifest {
        files: vec![FileEntry {
            path: name,
            size: len,
            executable: is_executable(path),
        }],
        piece_size,
        pieces: hashes,
    };
    manifest
        .validate()
        .map_err(|e| anyhow!("building the manifest: {e}"))?;
    Ok(manifest)
}

#[cfg(unix)]
fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(_path: &std::path::Path) -> bool {
    false
}

/// Starts a central tracker in this process, on 7410 or a free port, and
/// returns the address to reach it by and the host for the ticket.
async fn embedded_tracker(
    opts: &ShareOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<(SocketAddr, String)> {
    let socket = match UdpSocket::bind(("0.0.0.0", DEFAULT_TRACKER_PORT)).await {
        Ok(s) => s,
        Err(_) => UdpSocket::bind(("0.0.0.0", 0))
            .await
            .context("cannot open a UDP port for the embedded tracker")?,
    };
    let port = socket
        .local_addr()
        .context("reading the tracker's port")?
        .port();
    let host = match &opts.public_host {
        Some(h) => h.clone(),
        None => this_host_ip().to_string(),
    };
    // Announce to it through the public address, so the tracker lists us
    // under the address others can reach.
    let reach = resolve(&host, port).await?;
    let cancel = cancel.clone();
    crate::spawn::spawn("embedded tracker", async move {
        if let Err(e) =
            crate::tracker::run(socket, TrackerConfig::default(), Events::quiet(), cancel).await
        {
            tracing::error!("embedded tracker: {e:#}");
        }
    });
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    Ok((reach, host))
}

/// A reachable address of this machine: the first non-loopback IPv4 address
/// of an interface that is up, else loopback.
pub fn this_host_ip() -> IpAddr {
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|addrs| {
            addrs
                .into_iter()
                .filter(|i| !i.is_loopback())
                .map(|i| i.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_unspecified())
        })
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a.b:7410").unwrap(), ("a.b".into(), 7410));
        assert_eq!(split_host_port("[::1]:9").unwrap(), ("[::1]".into(), 9));
        assert!(split_host_port("::1:9").is_err());
        assert!(split_host_port("host").is_err());
        assert!(split_host_port("host:0").is_err());
        assert!(split_host_port(":80").is_err());
    }
}
