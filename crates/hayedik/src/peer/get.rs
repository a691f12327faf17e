//! `hayedik get TICKET`: announce, fetch and verify the manifest, download
//! from every peer at once, resume what an earlier run left, finish, and
//! seed on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use hayedik_proto::manifest::{hash_piece, Manifest};
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
    node::spawn_listener(listener, swarm.clone(), opts.max_peers_per_ip);
    observe(swarm.clone());
    let socket = udp_socket_for(tracker).await?;
    let mut client = TrackerClient::from_socket(socket, tracker, swarm.swarm_key, local.port());
    if let Some(t) = opts.timeout {
        // An unreachable tracker must show as such before --timeout ends.
        client.set_deadline(client.deadline().min(t / 2).max(Duration::from_millis(500)));
    }
    client.use_extensions();
    let announcer = spawn_announcer(client, PeerState::Downloading, swarm.cancel.clone());
    let paths = node::spawn_connector(swarm.clone(), announcer.replies());
    super::reach::spawn_reach(swarm.clone(), &announcer, events.clone(), paths.clone());
    let s = swarm.clone();
    announcer.spawn_lonely_reannounce(super::share::LONELY_REANNOUNCE, move || s.peer_count() == 0);
    let progress = Progress::new(events.clone(), opts.timeout);

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
    events.emit(Event::Manifest {
        name: name.clone(),
        bytes: total,
        pieces: u64::from(manifest.piece_count()),
    });
    let wanted = select(&manifest, &opts.only)?;
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
    let opened = {
        let m = manifest.clone();
        let p = progress.clone();
        tokio::task::spawn_blocking(move || {
            Download::open(
                &target,
                &|i, data| m.piece_hash(i) == Some(&hash_piece(data)),
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
            for w in &file.warnings {
                tracing::warn!("{w}");
            }
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
            for w in d.warnings() {
                tracing::warn!("{w}");
            }
            let d = Arc::new(d);
            let have = d.have();
            let reused = d.reused_bytes();
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
            for w in &file.warnings {
                tracing::warn!("{w}");
            }
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

/// Per manifest entry, whether `--only` selects it (every entry when no
/// pattern is given). A pattern matches a path inside the shared folder
/// (`docs/*.md`; `*` stays within a folder, `**` crosses folders) or the
/// whole path with the folder's name (`photos/2024/**`); a pattern that
/// matches a folder selects everything in it. For a single shared file, the
/// pattern is matched against its name. A pattern that matches nothing is an
/// error, so a typo does not silently download nothing.
pub fn select(manifest: &Manifest, only: &[String]) -> anyhow::Result<Vec<bool>> {
    if only.is_empty() {
        return Ok(vec![true; manifest.files.len()]);
    }
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let patterns = only
        .iter()
        .map(|p| {
            glob::Pattern::new(p).map_err(|e| anyhow!("--only {p:?} is not a valid pattern: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut used = vec![false; patterns.len()];
    let top = manifest.top_name();
    let wanted = manifest
        .files
        .iter()
        .map(|f| {
            let inner = f
                .path
                .strip_prefix(top)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(&f.path);
            // The path and each folder above it, with and without the top.
            let mut candidates = vec![f.path.as_str(), inner];
            let mut p = f.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                candidates.push(parent);
                if let Some(inner) = parent.strip_prefix(top).and_then(|r| r.strip_prefix('/')) {
                    candidates.push(inner);
                }
                p = parent;
            }
            let mut hit = false;
            for (i, pattern) in patterns.iter().enumerate() {
                if candidates.iter().any(|c| pattern.matches_with(c, options)) {
                    used[i] = true;
                    hit = true;
                }
            }
            hit
        })
        .collect();
    if let Some(i) = used.iter().position(|u| !u) {
        let sample: Vec<&str> = manifest
            .files
            .iter()
            .take(5)
            .map(|f| f.path.as_str())
            .collect();
        bail!(
            "--only {:?} matches nothing in this share ({} entries, such as {}); patterns match paths inside {top:?}, e.g. 'docs/*.md' or 'docs/**'",
            only[i],
            manifest.files.len(),
            sample.join(", ")
        );
    }
    Ok(wanted)
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
