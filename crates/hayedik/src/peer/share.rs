//! `hayedik share PATH`: hash the file into a manifest, create a swarm on
//! the tracker (an embedded one unless `--tracker` is given), print the
//! ticket, and serve until interrupted.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hayedik_proto::manifest::{
    choose_piece_size, is_single_plain_name, validate_path, FileEntry, Manifest, MAX_FILES,
    MAX_PATH_DEPTH,
};
use hayedik_proto::ticket::Ticket;
use hayedik_proto::tracker::PeerState;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::announce::{claim_swarm, create_swarm, spawn_announcer, AnnounceError, TrackerClient};
use super::guard::ServeGuard;
use super::hashing::hash_pieces;
use super::remembered;
use super::swarm::{Content, Swarm, SwarmOptions};
use super::{node, resolve, udp_socket_for};
use crate::events::{human_bytes, human_rate, plural, Event, Events};
use crate::portmap::{self, Proto};
use crate::spawn::{Scope, SHUTDOWN_WAIT};
use crate::storage::{Bitfield, PieceLayout, TreeStorage};
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
    /// Incoming sessions from one address (see `slots.rs`).
    pub max_peers_per_ip: usize,
    /// Stop once this many other peers hold a verified copy.
    pub until_replicated: Option<u32>,
    /// Leave out names other systems could not write instead of refusing.
    pub skip_unportable: bool,
    /// `--port-mapping`: have the router forward our ports.
    pub port_mapping: bool,
    /// `--dht`: also announce in the Mainline DHT (docs/dht.md).
    pub dht: Option<crate::dht::DhtConfig>,
}

/// A running share (for the demo and tests): its ticket and counters.
#[derive(Debug, Clone)]
pub struct Shared {
    pub ticket: Ticket,
    pub swarm: Arc<Swarm>,
}

/// Shares until `cancel` fires; `on_ready` gets the ticket once it is known.
/// When it returns, every task it started has ended (see [`crate::spawn`]),
/// and only then is `stopped` emitted.
pub async fn share(
    opts: ShareOptions,
    events: Events,
    cancel: CancellationToken,
    on_ready: impl FnOnce(Shared),
) -> anyhow::Result<()> {
    let scope = Scope::new("share");
    let cancel = cancel.child_token();
    let mut stop = None;
    let mut punch = None;
    let result = scope
        .run(share_scoped(
            opts,
            &events,
            cancel.clone(),
            on_ready,
            (&mut stop, &mut punch),
        ))
        .await;
    cancel.cancel();
    scope.shutdown(SHUTDOWN_WAIT).await;
    if let Some(punch) = punch {
        punch.close().await;
    }
    if let Some(stopped) = stop {
        events.emit(stopped);
    }
    result
}

async fn share_scoped(
    opts: ShareOptions,
    events: &Events,
    cancel: CancellationToken,
    on_ready: impl FnOnce(Shared),
    (stop, punch_out): (
        &mut Option<Event>,
        &mut Option<std::sync::Arc<super::punch::Punch>>,
    ),
) -> anyhow::Result<()> {
    let path = opts.path.clone();
    let walked = {
        let p = path.clone();
        let skip = opts.skip_unportable;
        tokio::task::spawn_blocking(move || walk_with(&p, skip))
            .await
            .map_err(|e| anyhow!("reading {}: {e}", path.display()))?
            .map_err(|e| {
                crate::events::Failure::error(crate::events::ErrorKind::Input, format!("{e:#}"))
            })?
    };
    for w in &walked.skipped {
        events.emit(Event::Warning { message: w.clone() });
    }
    let (listener, local) = node::bind_listener(opts.listen, events).await?;

    let manifest = tokio::select! {
        // Hashing a large file takes a while: an interrupt need not wait.
        _ = cancel.cancelled() => {
            *stop = Some(Event::Stopped { uploaded: Some(0), downloaded: Some(0), complete: None, kept: None });
            return Ok(());
        }
        m = build_manifest(&walked, events) => m?,
    };
    let (manifest, layout, storage) = manifest;
    let manifest_bytes = manifest.encode();
    let name = manifest.top_name().to_owned();
    let root = manifest.root();

    // The tracker: the given one, or one embedded in this process.
    // With --port-mapping, an embedded tracker lists its own sharer under
    // the router's address once it is known.
    let external = (opts.port_mapping && opts.tracker.is_none())
        .then(|| Arc::new(crate::tracker::swarm::ExternalAddress::default()));
    let (central, ticket_host) = match &opts.tracker {
        Some(t) => {
            let (host, port) = split_host_port(t)?;
            (
                resolve(&host, port).await?,
                opts.public_host.clone().unwrap_or(host),
            )
        }
        None => embedded_tracker(&opts, external.clone(), &cancel).await?,
    };
    let socket = udp_socket_for(central).await?;
    let waiting = status_line(events);
    if let Some(w) = &waiting {
        w.set_message(format!("contacting tracker {central} ..."));
    }
    // The same content at the same tracker gets the same swarm, so the
    // same ticket: the one the tracker knows for its key, or a new one on
    // the port it had last time (see `remembered`).
    let tracker_name = opts.tracker.as_deref().unwrap_or(remembered::EMBEDDED);
    let key = hayedik_proto::manifest::swarm_key(&root);
    let wish = remembered::recall(tracker_name, &key);
    let created = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = stable_swarm(&socket, central, key, wish) => r,
    };
    if let Some(w) = waiting {
        w.finish_and_clear();
    }
    let swarm_port = created.map_err(|e| anyhow::Error::new(e).context("creating the swarm"))?;
    // --port-mapping: our TCP port, and an embedded tracker's two UDP
    // ports, forwarded by the router from now until we stop.
    let mut ports = vec![(Proto::Tcp, local.port())];
    if external.is_some() {
        ports.extend([(Proto::Udp, central.port()), (Proto::Udp, swarm_port)]);
    }
    let mapped = match opts.port_mapping {
        true => portmap::map_or_warn(&ports, &cancel, events).await,
        false => None,
    };
    let mapped_tcp = mapped.as_ref().map(|m| m[0].external);
    let (ticket_host, ticket_port) = match (&mapped, &external) {
        (Some(m), Some(x)) => {
            // Our own announces come from `central`'s IP: the tracker
            // lists them under the router's.
            x.set(central.ip(), m[0].external.ip());
            let host = match &opts.public_host {
                Some(_) => ticket_host,
                None => m[2].external.ip().to_string(),
            };
            (host, m[2].external.port())
        }
        _ => (ticket_host, swarm_port),
    };
    if wish != Some(swarm_port) {
        remembered::remember(tracker_name, &key, swarm_port);
    }
    {
        let bytes = manifest_bytes.clone();
        let _ =
            tokio::task::spawn_blocking(move || remembered::remember_manifest(&root, &bytes)).await;
    }
    let ticket = Ticket {
        host: ticket_host,
        port: ticket_port,
        root,
    };
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
            layout: layout.clone(),
            manifest_bytes,
            storage,
            download: None,
            guard: {
                let guard = ServeGuard::verified(layout, walked.sources.clone());
                guard.tell(events.clone());
                guard
            },
        },
        Bitfield::full(pieces),
        None,
    );
    node::spawn_listener(listener, swarm.clone(), opts.max_peers_per_ip);
    let swarm_addr = SocketAddr::new(central.ip(), swarm_port);
    swarm.pex.note_tracker(swarm_addr);
    swarm.pex.note_tracker(central);
    let announced_port = mapped_tcp.map_or(local.port(), |a| a.port());
    // Hole punching with a tracker elsewhere (an embedded one is on this
    // host: nothing to punch through).
    let punch = match opts.tracker.is_some() {
        true => super::punch::attach(&swarm, &socket, swarm_addr).await,
        false => None,
    };
    *punch_out = swarm.punch.get().cloned();
    let mut client =
        TrackerClient::from_socket(socket, swarm_addr, swarm.swarm_key, announced_port);
    if let Some(link) = punch {
        client.set_punch(link);
    }
    if mapped_tcp.is_some() {
        client.set_mapped();
    }
    // The first announce binds the swarm's key at the tracker: until then no
    // one else may announce in it, so the ticket is printed only after it.
    tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = client.announce(PeerState::Complete, 0) => if let Err(e) = r {
            events.emit(Event::Warning { message: format!("first announce to the swarm tracker: {e}; retrying in the background") });
        },
    }
    // An embedded tracker would probe us from our own host: only a
    // tracker elsewhere can tell whether others reach us.
    let probe = opts.tracker.is_some();
    if probe {
        client.use_extensions();
    }
    let announcer = spawn_announcer(client, PeerState::Complete, swarm.cancel.clone());
    // Dial the downloaders the tracker lists too: a sharer behind a firewall
    // or NAT serves over connections it opens itself.
    let paths = node::spawn_connector(swarm.clone(), announcer.replies());
    if let Some(dht) = opts.dht.clone() {
        crate::dht::peer::spawn(swarm.clone(), announced_port, dht, events).await?;
    }
    if probe {
        super::reach::spawn_reach(swarm.clone(), &announcer, events.clone(), paths, mapped_tcp);
    } else if let Some(addr) = mapped_tcp {
        // Our embedded tracker lists us at the mapped address.
        events.emit(Event::Reachability {
            reachable: true,
            addr: addr.to_string(),
            how: "mapped".into(),
        });
    }
    let s = swarm.clone();
    announcer.spawn_lonely_reannounce(LONELY_REANNOUNCE, move || s.peer_count() == 0);
    events.emit(Event::Ticket {
        ticket: ticket.to_string(),
        root: hayedik_proto::hex::encode(&root),
        bytes,
        pieces: u64::from(pieces),
        name,
        files: walked.entries.iter().filter(|e| !e.directory).count() as u64,
        folder: walked.folder,
    });
    on_ready(Shared {
        ticket,
        swarm: swarm.clone(),
    });
    watch_swarm(&swarm, &announcer, events, opts.until_replicated).await;
    swarm.cancel.cancel();
    announcer.leave().await;
    *stop = Some(Event::Stopped {
        uploaded: Some(swarm.uploaded.load(Ordering::Relaxed)),
        downloaded: Some(0),
        complete: None,
        kept: None,
    });
    if let Some(fatal) = swarm.fatal() {
        bail!("{fatal}");
    }
    Ok(())
}

/// The swarm of `key` at the central tracker: found by its key, or created
/// on the port `wish` names when it is free, or on any port. A tracker that
/// predates CLAIM answers none, and gets a plain JOIN.
async fn stable_swarm(
    socket: &UdpSocket,
    central: SocketAddr,
    key: [u8; 32],
    wish: Option<u16>,
) -> Result<u16, AnnounceError> {
    // One deadline for the whole search, as for a plain JOIN.
    let end = tokio::time::Instant::now() + CREATE_DEADLINE;
    let left = || end.saturating_duration_since(tokio::time::Instant::now());
    if let Some(port) = wish {
        match claim_swarm(socket, central, key, port, left()).await {
            Ok(Some(claimed)) => return Ok(claimed.port()),
            Ok(None) => return create_swarm(socket, central, left()).await,
            // Another swarm holds the port, or the tracker does not give it.
            Err(AnnounceError::WrongSwarm { .. } | AnnounceError::SwarmFull { .. }) => {
                tracing::info!("port {port} is not available for our swarm: asking for any port");
            }
            Err(e) => return Err(e),
        }
    }
    match claim_swarm(socket, central, key, 0, left()).await? {
        Some(claimed) => Ok(claimed.port()),
        None => create_swarm(socket, central, left()).await,
    }
}

/// Until `swarm` is cancelled, or `until` other peers hold a verified copy:
/// counts those copies (peers that told the tracker they are complete, and
/// peers whose sessions with us show every piece), emits `peer_done` for
/// each, and keeps the status line (on a terminal) up to date.
async fn watch_swarm(
    swarm: &Arc<Swarm>,
    announcer: &super::announce::Announcer,
    events: &Events,
    until: Option<u32>,
) {
    let mut sessions = swarm.pieces.complete_peers_rx();
    let mut replies = announcer.replies();
    let mut copies: BTreeSet<SocketAddr> = BTreeSet::new();
    let add = |addr: SocketAddr, copies: &mut BTreeSet<SocketAddr>| {
        if copies.len() < super::pieces::MAX_COMPLETE_PEERS && copies.insert(addr) {
            events.emit(Event::PeerDone {
                addr: addr.to_string(),
                copies: copies.len() as u64,
            });
        }
    };
    let line = status_line(events);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut rate = Vec::<(std::time::Instant, u64)>::new();
    let (mut sessions_open, mut replies_open) = (true, true);
    loop {
        if until.is_some_and(|n| copies.len() >= n as usize) {
            break;
        }
        tokio::select! {
            _ = swarm.cancel.cancelled() => break,
            r = sessions.changed(), if sessions_open => {
                if r.is_err() {
                    sessions_open = false;
                    continue;
                }
                let seen = sessions.borrow_and_update().clone();
                for a in seen {
                    add(a, &mut copies);
                }
            }
            r = replies.changed(), if replies_open => {
                if r.is_err() {
                    replies_open = false;
                    continue;
                }
                let reply = replies.borrow_and_update().clone();
                for p in reply.iter().flat_map(|r| &r.peers) {
                    if p.state == PeerState::Complete {
                        add(p.addr, &mut copies);
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(line) = &line {
                    let now = std::time::Instant::now();
                    let up = swarm.uploaded.load(Ordering::Relaxed);
                    rate.push((now, up));
                    while rate.len() > 2 && now.duration_since(rate[0].0) > Duration::from_secs(3) {
                        rate.remove(0);
                    }
                    let (t0, u0) = rate[0];
                    let secs = now.duration_since(t0).as_secs_f64();
                    let per_sec = if secs > 0.0 { up.saturating_sub(u0) as f64 / secs } else { 0.0 };
                    let copies = copies.len() as u64;
                    let text = format!(
                        "{} connected, {} uploaded ({}), {} {} a whole copy",
                        plural(swarm.peer_count() as u64, "peer"),
                        human_bytes(up),
                        human_rate(per_sec),
                        plural(copies, "peer"),
                        if copies == 1 { "has" } else { "have" },
                    );
                    let width = crate::output::term_width().unwrap_or(80);
                    line.set_message(text.chars().take(width.saturating_sub(3)).collect::<String>());
                }
            }
        }
    }
    if let Some(line) = line {
        line.finish_and_clear();
    }
}

/// A status line on the terminal (on stderr), if the face draws them.
fn status_line(events: &Events) -> Option<ProgressBar> {
    if !events.draws_bars() {
        return None;
    }
    let b = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {wide_msg}") {
        b.set_style(style);
    }
    let b = crate::output::show_bar(b);
    b.enable_steady_tick(Duration::from_millis(120));
    Some(b)
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

/// What `share PATH` shares.
#[derive(Debug, Default)]
pub struct Walked {
    /// Paths start with PATH's own name.
    pub entries: Vec<FileEntry>,
    /// Where each entry is on disk.
    pub sources: Vec<PathBuf>,
    /// What was left out and why, one sentence each.
    pub skipped: Vec<String>,
    /// A folder is shared (not a single file).
    pub folder: bool,
}

/// Lists what `share PATH` shares: the file, or every file and empty folder
/// of the folder, in name order (so the same tree always gives the same
/// manifest). Symbolic links inside a folder are not followed and not
/// shared (each is reported in `skipped`), nor are sockets, pipes and
/// devices, nor hayedik's own side files of unfinished downloads
/// (`.NAME.hayedik-part`, `.NAME.hayedik-resume`). PATH itself may be a
/// link. A name that is not UTF-8 or not portable is an error: the receiver
/// could not write it.
pub fn walk(path: &Path) -> anyhow::Result<Walked> {
    walk_with(path, false)
}

/// [`walk`]; with `skip_unportable`, a name inside the folder that other
/// systems could not write is left out (and said in `skipped`) instead of
/// refusing the share.
pub fn walk_with(path: &Path, skip_unportable: bool) -> anyhow::Result<Walked> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot share {}: check the path", path.display()))?;
    let name = match path.file_name() {
        Some(n) => n.to_owned(),
        // `.` or `..`: the folder's own name.
        None => std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_owned()))
            .ok_or_else(|| anyhow!("{} has no name to share it under", path.display()))?,
    };
    let name = name
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} has no usable name (it must be UTF-8)", path.display()))?;
    if !is_single_plain_name(&name) {
        bail!("cannot share {name:?}: the name is not portable (reserved, or with characters other systems refuse); rename it");
    }
    let mut walked = Walked::default();
    if meta.is_file() {
        walked
            .entries
            .push(FileEntry::file(name, meta.len(), is_executable(&meta)));
        walked.sources.push(path.to_path_buf());
    } else if meta.is_dir() {
        walked.folder = true;
        walk_folder(path, &name, 1, skip_unportable, &mut walked)?;
    } else {
        bail!("{} is not a regular file or a folder", path.display());
    }
    if walked.entries.len() > MAX_FILES as usize {
        bail!(
            "{} holds more than {MAX_FILES} files and folders: share a smaller folder",
            path.display()
        );
    }
    Ok(walked)
}

/// Adds the contents of folder `dir` (shared as `rel`); an empty folder (or
/// one that holds only what is not shared) becomes a folder entry.
fn walk_folder(
    dir: &Path,
    rel: &str,
    depth: usize,
    skip_unportable: bool,
    out: &mut Walked,
) -> anyhow::Result<()> {
    if depth > MAX_PATH_DEPTH {
        bail!(
            "{} is more than {MAX_PATH_DEPTH} folders deep",
            dir.display()
        );
    }
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        children.push(entry.file_name());
    }
    children.sort();
    let before = out.entries.len();
    for child in children {
        let source = dir.join(&child);
        let Some(name) = child.to_str() else {
            if skip_unportable {
                out.skipped.push(format!(
                    "not sharing {}: the name is not UTF-8",
                    source.display()
                ));
                continue;
            }
            bail!(
                "cannot share {}: the name is not UTF-8; rename it, or leave such names out with --skip-unportable",
                source.display()
            );
        };
        if crate::storage::is_side_name(name) || super::get::is_lock_name(name) {
            out.skipped.push(format!(
                "not sharing {}: a hayedik download's side file",
                source.display()
            ));
            continue;
        }
        let path = format!("{rel}/{name}");
        if let Err(e) = validate_path(&path) {
            if skip_unportable {
                out.skipped.push(format!(
                    "not sharing {}: {e} (other systems could not write it)",
                    source.display()
                ));
                continue;
            }
            bail!(
                "cannot share {}: {e}; rename it (other systems could not write it), or leave such names out with --skip-unportable",
                source.display()
            );
        }
        if out.entries.len() >= MAX_FILES as usize {
            bail!("the folder holds more than {MAX_FILES} files and folders: share a smaller one");
        }
        let meta = std::fs::symlink_metadata(&source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            out.skipped.push(format!(
                "not sharing {}: symbolic links are not followed",
                source.display()
            ));
        } else if kind.is_dir() {
            walk_folder(&source, &path, depth + 1, skip_unportable, out)?;
        } else if kind.is_file() {
            out.entries
                .push(FileEntry::file(path, meta.len(), is_executable(&meta)));
            out.sources.push(source);
        } else {
            out.skipped.push(format!(
                "not sharing {}: not a regular file",
                source.display()
            ));
        }
    }
    if out.entries.len() == before {
        out.entries.push(FileEntry::folder(rel));
        out.sources.push(dir.to_path_buf());
    }
    Ok(())
}

/// Hashes the files with a progress bar (on a terminal) on every core.
async fn build_manifest(
    walked: &Walked,
    events: &Events,
) -> anyhow::Result<(Manifest, PieceLayout, Arc<TreeStorage>)> {
    let sizes: Vec<u64> = walked.entries.iter().map(|e| e.size).collect();
    let len: u64 = sizes.iter().sum();
    let piece_size = choose_piece_size(len);
    let layout = PieceLayout::from_sizes(&sizes, u64::from(piece_size))
        .map_err(|e| anyhow!("cannot share this: {e}"))?;
    let storage = Arc::new(TreeStorage::read_only(
        layout.clone(),
        walked.sources.clone(),
    ));
    let bar = (events.draws_bars() && len > 64 << 20).then(|| {
        let b = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "hashing {bar:40.cyan/blue} {bytes}/{total_bytes} ({binary_bytes_per_sec})",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    });
    let (s, l, b) = (storage.clone(), layout.clone(), bar.clone());
    let hashes = tokio::task::spawn_blocking(move || {
        hash_pieces(s.as_ref(), &l, &|n| {
            if let Some(b) = &b {
                b.set_position(n);
            }
        })
    })
    .await
    .map_err(|e| anyhow!("hashing: {e}"))?
    .map_err(|e| anyhow!("reading the files to share: {e} ({})", read_hint(&e)))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let manifest = Manifest {
        files: walked.entries.clone(),
        piece_size,
        pieces: hashes,
    };
    manifest
        .validate()
        .map_err(|e| anyhow!("cannot share this: {e}"))?;
    Ok((manifest, layout, storage))
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Starts a central tracker in this process, on 7410 or a free port, and
/// returns the address to reach it by and the host for the ticket.
async fn embedded_tracker(
    opts: &ShareOptions,
    external: Option<Arc<crate::tracker::swarm::ExternalAddress>>,
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
        let config = TrackerConfig {
            external,
            ..TrackerConfig::default()
        };
        if let Err(e) = crate::tracker::run(socket, config, Events::discard(), cancel).await {
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

/// What to do about an error reading the files while hashing them.
fn read_hint(e: &std::io::Error) -> &'static str {
    // Windows' ERROR_SHARING_VIOLATION and ERROR_LOCK_VIOLATION: another
    // program holds the file open without sharing it.
    if cfg!(windows) && matches!(crate::storage::raw_os_error(e), Some(32 | 33)) {
        return "another program holds it open: close that program and try again";
    }
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "check that you may read it",
        std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof => {
            "did a file change or vanish while it was read?"
        }
        _ => "did a file change or vanish?",
    }
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

    #[test]
    fn read_errors_say_what_to_do() {
        use std::io::{Error, ErrorKind};
        let hint = |kind| read_hint(&Error::from(kind));
        assert!(hint(ErrorKind::PermissionDenied).contains("may read"));
        assert!(hint(ErrorKind::NotFound).contains("vanish"));
        assert!(hint(ErrorKind::UnexpectedEof).contains("change"));
        let held = read_hint(&Error::from_raw_os_error(32));
        assert_eq!(held.contains("another program"), cfg!(windows), "{held}");
    }
}
