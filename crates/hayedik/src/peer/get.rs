//! `hayedik get TICKET`: announce, fetch and verify the manifest, download
//! from every peer at once, resume what an earlier run left, finish, and
//! seed on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use hayedik_proto::ticket::Ticket;
use hayedik_proto::tracker::PeerState;
use tokio_util::sync::CancellationToken;

use super::announce::{spawn_announcer, TrackerClient};
use super::fatal::Fatal;
use super::guard::ServeGuard;
use super::progress::Progress;
use super::swarm::{Content, Swarm, SwarmOptions};
use super::{node, resolve, udp_socket_for};
use crate::events::{Event, Events};
use crate::spawn::{Scope, SHUTDOWN_WAIT};
use crate::storage::{Bitfield, Download, Opened, PieceLayout, Target, TreeStorage};

/// What `get` was asked to do.
#[derive(Debug, Clone)]
pub struct GetOptions {
    pub ticket: Ticket,
    pub out_dir: PathBuf,
    pub listen: SocketAddr,
    pub seed: bool,
    /// Give up when nothing progresses for this long; `None` waits forever.
    pub timeout: Option<Duration>,
    pub max_upload: Option<u64>,
    pub max_download: Option<u64>,
    /// `--only` patterns: download only the files they match (all when empty).
    pub only: Vec<String>,
    /// Incoming sessions from one address (see `slots.rs`).
    pub max_peers_per_ip: usize,
    /// `--port-mapping`: have the router forward our TCP port.
    pub port_mapping: bool,
    /// `--dht`: also find peers in the Mainline DHT (docs/dht.md).
    pub dht: Option<crate::dht::DhtConfig>,
}

/// What a finished `get` reports (also used by the demo).
#[derive(Debug, Clone)]
pub struct GetReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
    pub reused: u64,
    pub from: std::collections::BTreeMap<SocketAddr, u64>,
    pub uploaded: u64,
}

/// Runs `get` until done (and, when seeding, until `cancel`).
pub async fn get(
    opts: GetOptions,
    events: Events,
    cancel: CancellationToken,
) -> anyhow::Result<Option<GetReport>> {
    get_observed(opts, events, cancel, |_| {}).await
}

/// [`get`], handing the swarm to `observe` as soon as it exists (the demo
/// draws its own progress from it). When it returns, every task it started
/// has ended (see [`crate::spawn`]), and only then is `stopped` emitted.
pub async fn get_observed(
    opts: GetOptions,
    events: Events,
    cancel: CancellationToken,
    observe: impl FnOnce(Arc<Swarm>),
) -> anyhow::Result<Option<GetReport>> {
    let scope = Scope::new("get");
    let cancel = cancel.child_token();
    let mut stop = None;
    let mut swarm = None;
    let result = scope
        .run(get_scoped(
            opts,
            &events,
            cancel.clone(),
            observe,
            (&mut stop, &mut swarm),
        ))
        .await;
    cancel.cancel();
    scope.shutdown(SHUTDOWN_WAIT).await;
    if let Some(punch) = swarm.as_ref().and_then(|s| s.punch.get()) {
        punch.close().await;
    }
    // The sessions are gone: the disk thread finishes what they queued.
    if let Some(thread) = swarm.and_then(|s: Arc<Swarm>| s.disk.close()) {
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(SHUTDOWN_WAIT, joined).await.is_err() {
            tracing::warn!("the disk writer thread is still writing; leaving it");
        }
    }
    if let Some(stopped) = stop {
        events.emit(stopped);
    }
    result
}

async fn get_scoped(
    opts: GetOptions,
    events: &Events,
    cancel: CancellationToken,
    observe: impl FnOnce(Arc<Swarm>),
    (stop, swarm_out): (&mut Option<Event>, &mut Option<Arc<Swarm>>),
) -> anyhow::Result<Option<GetReport>> {
    let started = Instant::now();
    // Before any traffic: a destination that cannot take the download.
    check_destination(&opts.out_dir)?;
    let (listener, local) = node::bind_listener(opts.listen, events).await?;
    let tracker = resolve(&opts.ticket.host, opts.ticket.port).await?;
    let swarm = Swarm::new(
        SwarmOptions {
            root: opts.ticket.root,
            listen_port: local.port(),
            max_upload: opts.max_upload,
            max_download: opts.max_download,
        },
        cancel.child_token(),
    );
    *swarm_out = Some(swarm.clone());
    swarm.pex.note_tracker(tracker);
    // A manifest this machine kept (from an earlier share or get): a
    // complete copy in the folder is then verified and served even when no
    // peer is left to send the manifest (super::revive).
    let root = opts.ticket.root;
    if let Ok(Some((manifest, bytes))) =
        tokio::task::spawn_blocking(move || super::remembered::recall_manifest(&root)).await
    {
        swarm.offer_manifest(manifest, bytes);
    }
    node::spawn_listener(listener, swarm.clone(), opts.max_peers_per_ip);
    observe(swarm.clone());
    // --port-mapping: the router forwards our TCP port until we stop;
    // we announce the port it forwards.
    let mapped = match opts.port_mapping {
        true => crate::portmap::map_or_warn(
            &[(crate::portmap::Proto::Tcp, local.port())],
            &cancel,
            events,
        )
        .await
        .map(|m| m[0].external),
        false => None,
    };
    let socket = udp_socket_for(tracker).await?;
    let punch = super::punch::attach(&swarm, &socket, tracker).await;
    let announced_port = mapped.map_or(local.port(), |a| a.port());
    let mut client = TrackerClient::from_socket(socket, tracker, swarm.swarm_key, announced_port);
    if let Some(link) = punch {
        client.set_punch(link);
    }
    if mapped.is_some() {
        client.set_mapped();
    }
    if let Some(t) = opts.timeout {
        // An unreachable tracker must show as such before --timeout ends.
        client.set_deadline(client.deadline().min(t / 2).max(Duration::from_millis(500)));
    }
    client.use_extensions();
    let announcer = spawn_announcer(client, PeerState::Downloading, swarm.cancel.clone());
    let paths = node::spawn_connector(swarm.clone(), announcer.replies());
    if let Some(dht) = opts.dht.clone() {
        crate::dht::peer::spawn(swarm.clone(), announced_port, dht, events).await?;
    }
    let hush = super::reach::spawn_reach(
        swarm.clone(),
        &announcer,
        events.clone(),
        paths.clone(),
        mapped,
    );
    let s = swarm.clone();
    announcer.spawn_lonely_reannounce(super::share::LONELY_REANNOUNCE, move || s.peer_count() == 0);
    let progress = Progress::new(
        events.clone(),
        opts.timeout,
        format!("{}:{}", opts.ticket.host, opts.ticket.port),
    );
    if opts.dht.is_some() {
        progress.dht_on();
    }

    let result = download(&opts, &swarm, &announcer, &progress, events, started).await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            progress.finish();
            announcer.leave().await;
            swarm.cancel.cancel();
            return Err(e);
        }
    };
    let Some(report) = report else {
        // Interrupted: the resume state is saved; tell the tracker we leave.
        progress.finish();
        announcer.leave().await;
        swarm.cancel.cancel();
        *stop = Some(stopped(&swarm, false));
        return Ok(None);
    };
    progress.finish();
    if !opts.seed {
        // `done` is the last word of a get that does not seed.
        hush.silence();
    }
    events.emit(Event::Done {
        path: report.path.display().to_string(),
        bytes: report.bytes,
        seconds: report.seconds,
        reused: report.reused,
        from: report
            .from
            .iter()
            .map(|(a, n)| (a.to_string(), *n))
            .collect(),
        via: report
            .from
            .keys()
            .map(|a| (a.to_string(), paths.via(a).as_str().to_string()))
            .collect(),
    });
    let kept = swarm
        .manifest_rx()
        .borrow()
        .as_ref()
        .map(|(_, b)| b.clone());
    if let Some(bytes) = kept {
        let root = opts.ticket.root;
        let _ = tokio::task::spawn_blocking(move || {
            super::remembered::remember_manifest(&root, &bytes)
        })
        .await;
    }
    // With --only, what is held is a part of the content: say so.
    let whole = swarm.have().is_some_and(|h| h.is_full());
    announcer.set_state(if whole {
        PeerState::Complete
    } else {
        PeerState::Downloading
    });
    if !opts.seed {
        announcer.leave().await;
        swarm.cancel.cancel();
        return Ok(Some(report));
    }
    events.emit(Event::Seeding);
    if whole {
        super::revive::spawn_revive(swarm.clone(), &announcer, opts.ticket.clone());
    }
    swarm.cancel.cancelled().await;
    announcer.leave().await;
    *stop = Some(stopped(&swarm, true));
    Ok(Some(GetReport {
        uploaded: swarm.uploaded.load(std::sync::atomic::Ordering::Relaxed),
        ..report
    }))
}

/// `complete`: whether the download was done (in place) when it stopped.
fn stopped(swarm: &Swarm, complete: bool) -> Event {
    use std::sync::atomic::Ordering::Relaxed;
    Event::Stopped {
        uploaded: Some(swarm.uploaded.load(Relaxed)),
        downloaded: Some(swarm.downloaded.load(Relaxed)),
        complete: Some(complete),
        kept: (!complete).then(|| swarm.bytes_verified()),
    }
}

/// Until the content is complete and in place: `Ok(None)` if interrupted.
async fn download(
    opts: &GetOptions,
    swarm: &Arc<Swarm>,
    announcer: &super::announce::Announcer,
    progress: &Progress,
    events: &Events,
    started: Instant,
) -> anyhow::Result<Option<GetReport>> {
    let cancel = swarm.cancel.clone();
    let mut manifest_rx = swarm.manifest_rx();
    let (manifest, manifest_bytes) = loop {
        if let Some(m) = manifest_rx.borrow_and_update().clone() {
            break m;
        }
        tokio::select! {
            _ = cancel.cancelled() => return interrupted(swarm),
            _ = manifest_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                progress.check_stalled(swarm, announcer)?;
            }
        }
    };
    let name = manifest.top_name().to_owned();
    let total = manifest.total_bytes();
    let wanted = select(&manifest, &opts.only)?;
    let selected = manifest
        .files
        .iter()
        .zip(&wanted)
        .filter(|(_, w)| **w)
        .map(|(f, _)| f.size)
        .sum();
    progress.clear_status();
    events.emit(Event::Manifest {
        name: name.clone(),
        bytes: total,
        pieces: u64::from(manifest.piece_count()),
        files: manifest.files.len() as u64,
        path: opts.out_dir.join(&name).display().to_string(),
        selected,
    });
    let sizes: Vec<u64> = manifest.files.iter().map(|f| f.size).collect();
    let layout = PieceLayout::from_sizes(&sizes, u64::from(manifest.piece_size))
        .map_err(|e| anyhow!("the manifest's piece layout is unusable: {e}"))?;
    let target = Target {
        dir: opts.out_dir.clone(),
        files: manifest.files.clone(),
        layout: layout.clone(),
        root: opts.ticket.root,
        wanted,
    };
    // Before anything is written: another hayedik downloading the same
    // content into the same folder. Held until this returns (complete and
    // in place, or stopped with the resume state saved).
    let _lock = DirLock::take(&opts.out_dir, &opts.ticket.root)?;
    let opened = {
        let m = manifest.clone();
        let p = progress.clone();
        tokio::task::spawn_blocking(move || {
            Download::open(
                &target,
                &|i, hash| m.piece_hash(i) == Some(hash),
                &|done, total| p.checking(done, total),
            )
        })
        .await
        .map_err(|e| anyhow!("checking existing data: {e}"))?
        .map_err(anyhow::Error::new)?
    };
    let final_paths = |storage: &TreeStorage| -> Vec<PathBuf> {
        (0..layout.file_count())
            .map(|i| storage.file(i).map(|f| f.path.clone()).unwrap_or_default())
            .collect()
    };
    match opened {
        Opened::Complete(file) => {
            warn(events, &file.warnings);
            let bytes = held_bytes(&layout, &file.have);
            swarm.set_content(
                Content {
                    manifest: (*manifest).clone(),
                    layout: layout.clone(),
                    manifest_bytes: (*manifest_bytes).clone(),
                    storage: file.storage.clone(),
                    download: None,
                    guard: ServeGuard::verified(layout.clone(), final_paths(&file.storage)),
                },
                file.have.clone(),
                None,
            );
            Ok(Some(GetReport {
                path: file.path,
                bytes,
                seconds: started.elapsed().as_secs_f64(),
                reused: file.reused_bytes,
                from: Default::default(),
                uploaded: 0,
            }))
        }
        Opened::Partial(d) => {
            warn(events, d.warnings());
            let d = Arc::new(d);
            let have = d.have();
            let reused = d.reused_bytes();
            if reused > 0 {
                events.emit(Event::Resuming {
                    bytes: reused,
                    bytes_total: total,
                });
            }
            let wanted = d.wanted();
            let picker_wanted = (0..wanted.len()).map(|i| wanted.get(i)).collect();
            // What this download holds when done: the wanted pieces, and any
            // other verified piece found on disk.
            let mut held = have.clone();
            wanted.ones().for_each(|p| {
                held.set(p);
            });
            let bytes = held_bytes(&layout, &held);
            swarm.set_content(
                Content {
                    manifest: (*manifest).clone(),
                    layout: layout.clone(),
                    manifest_bytes: (*manifest_bytes).clone(),
                    storage: d.storage(),
                    download: Some(d.clone()),
                    // Files change while downloading: watched once they are
                    // complete and in place.
                    guard: ServeGuard::new(layout.clone()),
                },
                have,
                Some(picker_wanted),
            );
            progress.start(name, bytes, swarm.bytes_verified());
            let saver = spawn_saver(d.clone(), swarm.clone());
            let mut complete = swarm.complete_rx();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let finished = loop {
                if *complete.borrow_and_update() {
                    break true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => break false,
                    _ = complete.changed() => {}
                    _ = tick.tick() => {
                        progress.update(swarm);
                        if let Err(e) = progress.check_stalled(swarm, announcer) {
                            saver.abort();
                            save(&d).await.map_err(|f| anyhow!(f.message()))?;
                            return Err(e);
                        }
                    }
                }
            };
            saver.abort();
            // The last pieces, or everything verified before an interrupt.
            if let Err(fatal) = save(&d).await {
                swarm.fail(fatal);
            }
            if let Some(fatal) = swarm.fatal() {
                bail!("{}", fatal.message());
            }
            if !finished {
                return interrupted(swarm);
            }
            progress.update(swarm);
            let file = {
                let d = d.clone();
                tokio::task::spawn_blocking(move || d.finish())
                    .await
                    .map_err(|e| anyhow!("finishing: {e}"))?
                    .map_err(anyhow::Error::new)?
            };
            warn(events, &file.warnings);
            if let Some(c) = swarm.content() {
                c.guard.watch(final_paths(&file.storage));
            }
            Ok(Some(GetReport {
                path: file.path,
                bytes,
                seconds: started.elapsed().as_secs_f64(),
                reused,
                from: swarm.from_counts(),
                uploaded: 0,
            }))
        }
    }
}

/// Bytes of the pieces in `pieces`.
fn held_bytes(layout: &PieceLayout, pieces: &Bitfield) -> u64 {
    pieces.ones().map(|p| layout.piece_len(p)).sum()
}

pub use super::select::select;

/// Says each of `warnings` to the user.
fn warn<W: std::fmt::Display>(events: &Events, warnings: &[W]) {
    for w in warnings {
        events.emit(Event::Warning {
            message: w.to_string(),
        });
    }
}

/// An advisory lock on a download's side files: held by the `get` that
/// writes them, so a second `get` of the same content into the same folder
/// stops before touching anything. The lock file (`.ROOT16.hayedik-lock`,
/// beside the side files) is removed when the lock is released.
#[derive(Debug)]
pub struct DirLock {
    file: Option<std::fs::File>,
    path: PathBuf,
}

/// The suffix of [`DirLock`]'s file: `share` never shares such a file.
pub const LOCK_SUFFIX: &str = ".hayedik-lock";

/// Whether `name` is a [`DirLock`] file's name.
pub fn is_lock_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(LOCK_SUFFIX)
}

/// Fails when `dir` exists and is not a folder (checked before any
/// traffic; a missing one is created when the download starts).
pub fn check_destination(dir: &std::path::Path) -> anyhow::Result<()> {
    use crate::events::{ErrorKind, Failure};
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(Failure::error(
            ErrorKind::Destination,
            format!(
                "{} is a file, not a folder: -o names the folder to download into",
                dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

impl DirLock {
    /// Checks that `dir` can be a destination (creating it if missing),
    /// then takes the lock for content `root` in it.
    pub fn take(dir: &std::path::Path, root: &[u8; 32]) -> anyhow::Result<DirLock> {
        use crate::events::{ErrorKind, Failure};
        check_destination(dir)?;
        match std::fs::metadata(dir) {
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(dir).map_err(|e| {
                Failure::error(
                    ErrorKind::Destination,
                    format!(
                        "cannot create {}: {e}; choose another -o DIR",
                        dir.display()
                    ),
                )
            })?,
        }
        let hex = hayedik_proto::hex::encode(root);
        let path = dir.join(format!(".{}{LOCK_SUFFIX}", &hex[..16]));
        let busy = || {
            Failure::error(
                ErrorKind::Locked,
                format!(
                    "another hayedik is already downloading this into {}: wait for it to finish, or stop it first",
                    dir.display()
                ),
            )
        };
        // A lock file removed by its finishing holder between our open and
        // our lock is a file nobody else locks: open it again.
        for _ in 0..3 {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| {
                    Failure::error(
                        ErrorKind::Destination,
                        format!(
                            "cannot write to {}: {e}; choose a writable -o DIR",
                            dir.display()
                        ),
                    )
                })?;
            match fs4::FileExt::try_lock(&file) {
                Ok(()) => {}
                Err(fs4::TryLockError::WouldBlock) => return Err(busy()),
                Err(fs4::TryLockError::Error(e)) => {
                    // A file system without locks: go on unguarded.
                    tracing::debug!("cannot lock {}: {e}", path.display());
                    return Ok(DirLock {
                        file: Some(file),
                        path,
                    });
                }
            }
            if still_named(&file, &path) {
                return Ok(DirLock {
                    file: Some(file),
                    path,
                });
            }
        }
        Err(busy())
    }
}

impl Drop for DirLock {
    /// Removes the lock file, then releases the lock (a `get` that opened
    /// the file meanwhile sees it is gone and takes a new one).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.file.take();
    }
}

/// Whether `path` still names the open `file`.
#[cfg(unix)]
fn still_named(file: &std::fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Windows does not remove a file another process holds open.
#[cfg(not(unix))]
fn still_named(_file: &std::fs::File, path: &std::path::Path) -> bool {
    path.exists()
}

fn interrupted(swarm: &Swarm) -> anyhow::Result<Option<GetReport>> {
    match swarm.fatal() {
        Some(fatal) => bail!("{}", fatal.message()),
        None => Ok(None),
    }
}

async fn save(d: &Arc<Download>) -> Result<(), Fatal> {
    let d = d.clone();
    tokio::task::spawn_blocking(move || d.save())
        .await
        .map_err(|e| Fatal::Internal(format!("saving resume state: {e}")))?
        .map_err(Fatal::from)
}

/// Saves the resume state every half second while pieces arrive.
fn spawn_saver(d: Arc<Download>, swarm: Arc<Swarm>) -> tokio::task::JoinHandle<()> {
    crate::spawn::spawn("resume saver", async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Err(fatal) = save(&d).await {
                swarm.fail(fatal);
                return;
            }
        }
    })
}
