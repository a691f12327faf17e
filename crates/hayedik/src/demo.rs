//! `hayedik demo`: the whole system in one process on loopback, with a
//! temporary directory: a central tracker, a sharer of a generated file, and
//! downloaders starting at different times that finish and seed each other;
//! progress bars, then a table of who got what from whom.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::events::EventSink;
use crate::peer::get::{get_observed, GetOptions};
use crate::peer::share::{share, ShareOptions};
use crate::peer::swarm::Swarm;
use crate::tracker::TrackerConfig;

/// A line on stdout through [`crate::output`] (`println!` panics on a
/// closed stdout).
macro_rules! say {
    ($($arg:tt)*) => {
        crate::output::stdout(format!($($arg)*) + "\n", crate::output::Priority::Essential)
    };
}

/// Free space kept beyond the demo's files.
const SPARE_BYTES: u64 = 64 << 20;
/// Downloaders, and when each starts after the first.
const GETTERS: usize = 4;
const STAGGER: Duration = Duration::from_millis(700);
/// The sharer's upload cap, so that downloaders visibly trade pieces.
const SHARER_CAP: u64 = 96 << 20;

/// Fills `buf` with cheap pseudo-random bytes (xorshift), so the file does
/// not compress or dedupe into nothing.
fn fill(buf: &mut [u8], mut seed: u64) {
    for chunk in buf.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let bytes = seed.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

struct Getter {
    swarm: Arc<Swarm>,
    started: Instant,
    finished: Option<Duration>,
}

/// What `demo` was asked for: the file's size, and where to write (a
/// temporary folder inside `dir`, or the system's, removed at the end).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub size: u64,
    pub dir: Option<std::path::PathBuf>,
}

/// Writes `len` pseudo-random bytes to `path`, a chunk at a time.
fn generate(path: &std::path::Path, len: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        fill(&mut chunk[..n], seed);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1) | 1;
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// blake3 of a file, read a chunk at a time.
fn hash_file(path: &std::path::Path) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
}

pub async fn run(opts: DemoOptions, cancel: CancellationToken) -> anyhow::Result<()> {
    let file_bytes = opts.size;
    let base = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    // The original and a copy per downloader (and their side files).
    let needed = file_bytes
        .saturating_mul(GETTERS as u64 + 1)
        .saturating_add(SPARE_BYTES);
    if let Ok(free) = fs4::available_space(&base) {
        if free < needed {
            return Err(crate::events::Failure::error(
                crate::events::ErrorKind::Disk,
                format!(
                    "the demo needs {} in {} ({} copies of {}), and {} is free: choose a smaller --size or another --dir",
                    crate::events::human_bytes(needed),
                    base.display(),
                    GETTERS + 1,
                    crate::events::human_bytes(file_bytes),
                    crate::events::human_bytes(free)
                ),
            ));
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("hayedik-demo-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a folder in {}", base.display()))?;
    let src = dir.path().join("demo.bin");
    say!("hayedik demo: a tracker, a sharer and {GETTERS} downloaders on 127.0.0.1");
    say!(
        "generating a {} file in {} (removed at the end)",
        crate::events::human_bytes(file_bytes),
        dir.path().display()
    );
    {
        let src = src.clone();
        tokio::task::spawn_blocking(move || generate(&src, file_bytes))
            .await
            .map_err(|e| anyhow!("generating: {e}"))?
            .context("writing the demo file")?;
    }

    let stop = cancel.child_token();
    // The central tracker.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .context("binding the tracker")?;
    let tracker_addr = socket.local_addr()?;
    let t = stop.clone();
    let tracker = crate::spawn::spawn("demo tracker", async move {
        crate::tracker::run(socket, TrackerConfig::default(), EventSink::discard(), t).await
    });
    say!("tracker      udp {tracker_addr}");

    // The sharer.
    let (ready_tx, ready_rx) = oneshot::channel();
    let share_opts = ShareOptions {
        path: src.clone(),
        tracker: Some(tracker_addr.to_string()),
        public_host: None,
        listen: "127.0.0.1:0".parse()?,
        max_upload: Some(SHARER_CAP),
        max_peers_per_ip: crate::peer::slots::DEFAULT_PER_ADDRESS,
        until_replicated: None,
        skip_unportable: false,
        port_mapping: false,
        dht: None,
    };
    let s = stop.clone();
    let sharer = crate::spawn::spawn("demo sharer", async move {
        share(share_opts, EventSink::discard(), s, move |shared| {
            let _ = ready_tx.send(shared);
        })
        .await
    });
    let shared = tokio::select! {
        r = ready_rx => r.map_err(|_| anyhow!("the sharer stopped before giving a ticket"))?,
        _ = cancel.cancelled() => return Ok(()),
    };
    let ticket = shared.ticket.clone();
    say!(
        "sharer       tcp 127.0.0.1:{} (upload capped at {} MiB/s)",
        shared.swarm.listen_port,
        SHARER_CAP >> 20
    );
    say!("ticket       {ticket}\n");

    // The bars redraw the lines above them: the header must be out first.
    crate::output::flush(Duration::from_secs(1));
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>9} {bar:40.green/blue} {bytes:>10}/{total_bytes} {binary_bytes_per_sec:>12} {msg}",
    )
    .map_err(|e| anyhow!("{e}"))?
    .progress_chars("=> ");
    let mut getters: Vec<Getter> = Vec::new();
    let mut tasks = Vec::new();
    let mut bars = Vec::new();
    let wall = Instant::now();
    for i in 0..GETTERS {
        if i > 0 {
            tokio::select! {
                _ = tokio::time::sleep(STAGGER) => {}
                _ = cancel.cancelled() => return Ok(()),
            }
        }
        let out = dir.path().join(format!("getter{}", i + 1));
        let opts = GetOptions {
            ticket: ticket.clone(),
            out_dir: out,
            listen: "127.0.0.1:0".parse()?,
            seed: true,
            timeout: Some(Duration::from_secs(60)),
            max_upload: None,
            max_download: None,
            only: Vec::new(),
            max_peers_per_ip: crate::peer::slots::DEFAULT_PER_ADDRESS,
            port_mapping: false,
            dht: None,
        };
        let (tx, rx) = oneshot::channel();
        let s = stop.clone();
        tasks.push(crate::spawn::spawn(
            &format!("demo getter {}", i + 1),
            async move {
                get_observed(opts, EventSink::discard(), s, move |swarm| {
                    let _ = tx.send(swarm);
                })
                .await
            },
        ));
        let swarm = rx
            .await
            .map_err(|_| anyhow!("getter {} did not start", i + 1))?;
        let bar = multi.add(ProgressBar::new(file_bytes));
        bar.set_style(style.clone());
        bar.set_prefix(format!("getter {}", i + 1));
        bars.push(bar);
        getters.push(Getter {
            swarm,
            started: Instant::now(),
            finished: None,
        });
    }
    // Follow progress until every getter is complete.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for (g, bar) in getters.iter_mut().zip(&bars) {
            bar.set_position(g.swarm.bytes_verified());
            if g.finished.is_none() && *g.swarm.complete_rx().borrow() {
                g.finished = Some(g.started.elapsed());
                bar.finish_with_message("done, seeding");
            } else if g.finished.is_none() {
                bar.set_message(format!("{} peers", g.swarm.peer_count()));
            }
        }
        if getters.iter().all(|g| g.finished.is_some()) {
            break;
        }
        if Instant::now() > deadline {
            stop.cancel();
            return Err(anyhow!("the demo did not finish in two minutes"));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = cancel.cancelled() => {
                stop.cancel();
                return Ok(());
            }
        }
    }
    // Let the last renames land, then stop everyone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total_wall = wall.elapsed();
    let names: BTreeMap<SocketAddr, String> = std::iter::once((
        SocketAddr::from(([127, 0, 0, 1], shared.swarm.listen_port)),
        "sharer".to_string(),
    ))
    .chain(getters.iter().enumerate().map(|(i, g)| {
        (
            SocketAddr::from(([127, 0, 0, 1], g.swarm.listen_port)),
            format!("getter {}", i + 1),
        )
    }))
    .collect();
    say!("");
    say!("{:<9} {:>8} {:>10}  received from", "who", "time", "MiB/s");
    for (i, g) in getters.iter().enumerate() {
        let t = g.finished.unwrap_or_default().as_secs_f64();
        let rate = if t > 0.0 {
            file_bytes as f64 / t / 1_048_576.0
        } else {
            0.0
        };
        let from: Vec<String> = g
            .swarm
            .from_counts()
            .iter()
            .map(|(addr, n)| {
                let who = names.get(addr).cloned().unwrap_or_else(|| addr.to_string());
                format!("{who} {:.0} MiB", *n as f64 / 1_048_576.0)
            })
            .collect();
        say!(
            "getter {:<2} {:>7.2}s {:>10.1}  {}",
            i + 1,
            t,
            rate,
            from.join(", ")
        );
    }
    let up = shared
        .swarm
        .uploaded
        .load(std::sync::atomic::Ordering::Relaxed);
    say!(
        "sharer uploaded {:.2} copies of the file for {GETTERS} downloaders; all done in {:.2} s",
        up as f64 / file_bytes.max(1) as f64,
        total_wall.as_secs_f64()
    );
    stop.cancel();
    for t in tasks {
        match t.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.context("a getter failed")),
            Err(e) => return Err(anyhow!("a getter task failed: {e}")),
        }
    }
    sharer.await.map_err(|e| anyhow!("sharer task: {e}"))??;
    tracker.await.map_err(|e| anyhow!("tracker task: {e}"))??;
    // Every copy is verified piece by piece already; compare once more.
    let original = hash_file(&src).context("reading the demo file")?;
    for i in 0..GETTERS {
        let copy = dir.path().join(format!("getter{}", i + 1)).join("demo.bin");
        let h = hash_file(&copy).with_context(|| format!("reading {}", copy.display()))?;
        if h != original {
            return Err(anyhow!("{} differs from the original", copy.display()));
        }
    }
    say!("all {GETTERS} copies are identical to the original");
    say!("");
    say!("now try it between two machines:");
    say!("  hayedik share FILE      # on the one that has FILE: prints a ticket");
    say!("  hayedik get TICKET      # on the other, with that ticket");
    Ok(())
}
