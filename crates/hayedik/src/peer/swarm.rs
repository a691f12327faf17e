//! The peer's view of one swarm: what every session shares.
//!
//! [`Swarm`] holds the content once known (manifest and storage), the piece
//! picker, our verified pieces, per-peer accounting (bytes received, strikes
//! for bad pieces, bans) and the rate caps. Sessions call its synchronous
//! methods; nothing here does I/O except through the storage handed in.
//!
//! Invariants:
//! - a piece is in `have` only after its bytes were written and verified
//!   against the manifest hash;
//! - `bytes_verified` is the sum of the lengths of the pieces in `have`;
//! - a banned address is never connected to again in this process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hayedik_proto::manifest::{peer_auth_key, swarm_key, Manifest};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::guard::ServeGuard;
use super::picker::Picker;
use super::rate::RateLimit;
use crate::storage::{Bitfield, Download, PieceLayout, Storage};

/// A verified manifest and its canonical encoding.
pub type VerifiedManifest = (Arc<Manifest>, Arc<Vec<u8>>);

/// No session writes this piece.
pub const NO_WRITER: u64 = 0;
/// The piece is verified: nobody writes it any more.
pub const FINAL: u64 = u64::MAX;

/// Bad pieces a peer may send before it is banned.
pub const MAX_STRIKES: u32 = 2;

/// The content once the manifest is known and storage is open.
pub struct Content {
    pub manifest: Manifest,
    /// The manifest's pieces; piece `i` is at `i * piece_size` in `storage`.
    pub layout: PieceLayout,
    /// The manifest's canonical encoding, served to peers that ask.
    pub manifest_bytes: Vec<u8>,
    pub storage: Arc<dyn Storage>,
    /// Resume bookkeeping while downloading; `None` for a complete copy.
    pub download: Option<Arc<Download>>,
    /// Re-verifies pieces on disk before they are served.
    pub guard: ServeGuard,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field("pieces", &self.manifest.piece_count())
            .finish_non_exhaustive()
    }
}

/// Settings of a peer's swarm.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    pub root: [u8; 32],
    /// The TCP port we serve on (told to peers in the handshake).
    pub listen_port: u16,
    pub max_upload: Option<u64>,
    pub max_download: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    picker: Option<Picker>,
    have: Option<Bitfield>,
    bytes_verified: u64,
    /// Verified bytes received, by the peer's listed address.
    from: BTreeMap<SocketAddr, u64>,
    strikes: HashMap<SocketAddr, u32>,
    banned: HashSet<SocketAddr>,
    /// Listed addresses with an open session (either direction).
    connected: HashMap<SocketAddr, usize>,
    last_progress: Option<Instant>,
}

/// Shared state of one swarm, as seen by a peer.
pub struct Swarm {
    pub root: [u8; 32],
    pub swarm_key: [u8; 32],
    pub auth_key: [u8; 32],
    pub listen_port: u16,
    pub cancel: CancellationToken,
    pub up_limit: RateLimit,
    pub down_limit: RateLimit,
    pub uploaded: AtomicU64,
    pub downloaded: AtomicU64,
    /// Block buffers and the writer thread of the download.
    pub disk: super::disk::Disk,
    /// The first verified manifest a session obtained (getter side).
    manifest_tx: watch::Sender<Option<VerifiedManifest>>,
    content_tx: watch::Sender<Option<Arc<Content>>>,
    /// Pieces newly verified, for sessions to send HAVE.
    have_tx: broadcast::Sender<u32>,
    /// Fires when the last wanted piece is verified.
    complete_tx: watch::Sender<bool>,
    /// The first error that makes going on pointless (a full disk...).
    fatal: Mutex<Option<String>>,
    /// Why the last session that a peer broke ended, so a download that
    /// gets nowhere can say so instead of "no peer could be reached".
    last_peer_error: Mutex<Option<String>>,
    /// Per piece, which session may write it to storage: [`NO_WRITER`],
    /// a session id, or [`FINAL`] once verified. Held while writing, so a
    /// piece is written by one session at a time and never after it is
    /// verified (see [`Swarm::write_piece_data`]).
    writers: std::sync::RwLock<Vec<Mutex<u64>>>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("listen_port", &self.listen_port)
            .finish_non_exhaustive()
    }
}

/// What [`Swarm::piece_verified`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// New piece: announce it.
    New,
    /// Someone else delivered it first (endgame).
    Duplicate,
}

impl Swarm {
    pub fn new(opts: SwarmOptions, cancel: CancellationToken) -> Arc<Swarm> {
        let (have_tx, _) = broadcast::channel(1024);
        Arc::new(Swarm {
            swarm_key: swarm_key(&opts.root),
            auth_key: peer_auth_key(&opts.root),
            root: opts.root,
            listen_port: opts.listen_port,
            cancel,
            up_limit: RateLimit::new(opts.max_upload),
            down_limit: RateLimit::new(opts.max_download),
            uploaded: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            disk: Default::default(),
            manifest_tx: watch::channel(None).0,
            content_tx: watch::channel(None).0,
            have_tx,
            complete_tx: watch::channel(false).0,
            fatal: Mutex::new(None),
            last_peer_error: Mutex::new(None),
            writers: std::sync::RwLock::new(Vec::new()),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take every session down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a manifest already verified against the root; the first wins.
    pub fn offer_manifest(&self, manifest: Manifest, bytes: Vec<u8>) {
        self.manifest_tx.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some((Arc::new(manifest), Arc::new(bytes)));
            true
        });
    }

    /// Waits for a verified manifest (getter side).
    pub fn manifest_rx(&self) -> watch::Receiver<Option<VerifiedManifest>> {
        self.manifest_tx.subscribe()
    }

    pub fn has_manifest(&self) -> bool {
        self.manifest_tx.borrow().is_some() || self.content_tx.borrow().is_some()
    }

    /// Makes the content available: sessions start exchanging pieces.
    /// `have` is what is already verified, `wanted` what to fetch (all when None).
    pub fn set_content(&self, content: Content, have: Bitfield, wanted: Option<Vec<bool>>) {
        let n = content.manifest.piece_count();
        let bools: Vec<bool> = (0..n).map(|i| have.get(i)).collect();
        let bytes_verified = have.ones().map(|i| content.layout.piece_len(i)).sum();
        if let Ok(mut w) = self.writers.write() {
            *w = bools
                .iter()
                .map(|&h| Mutex::new(if h { FINAL } else { NO_WRITER }))
                .collect();
        }
        let picker = Picker::new(bools, wanted);
        let complete = picker.is_complete();
        {
            let mut inner = self.lock();
            inner.picker = Some(picker);
            inner.have = Some(have);
            inner.bytes_verified = bytes_verified;
            inner.last_progress = Some(Instant::now());
        }
        self.content_tx.send_replace(Some(Arc::new(content)));
        if complete {
            self.complete_tx.send_replace(true);
        }
    }

    pub fn content(&self) -> Option<Arc<Content>> {
        self.content_tx.borrow().clone()
    }

    pub fn content_rx(&self) -> watch::Receiver<Option<Arc<Content>>> {
        self.content_tx.subscribe()
    }

    pub fn complete_rx(&self) -> watch::Receiver<bool> {
        self.complete_tx.subscribe()
    }

    pub fn have_rx(&self) -> broadcast::Receiver<u32> {
        self.have_tx.subscribe()
    }

    /// Our verified pieces (empty before the content is known).
    pub fn have(&self) -> Option<Bitfield> {
        self.lock().have.clone()
    }

    pub fn has_piece(&self, piece: u32) -> bool {
        self.lock().have.as_ref().is_some_and(|h| h.get(piece))
    }

    pub fn bytes_verified(&self) -> u64 {
        self.lock().bytes_verified
    }

    pub fn last_progress(&self) -> Option<Instant> {
        self.lock().last_progress
    }

    /// Marks the moment something useful happened (manifest obtained...).
    pub fn touch_progress(&self) {
        self.lock().last_progress = Some(Instant::now());
    }

    /// Bytes of verified data received from each listed peer.
    pub fn from_counts(&self) -> BTreeMap<SocketAddr, u64> {
        self.lock().from.clone()
    }

    /// Runs `f` with the picker (None before the content is known).
    pub fn with_picker<T>(&self, f: impl FnOnce(&mut Picker) -> T) -> Option<T> {
        self.lock().picker.as_mut().map(f)
    }

    /// A piece from `peer` verified and written.
    pub fn piece_verified(&self, piece: u32, len: u64, peer: Option<SocketAddr>) -> Verified {
        let (new, complete) = {
            let mut inner = self.lock();
            let Some(picker) = inner.picker.as_mut() else {
                return Verified::Duplicate;
            };
            let new = picker.complete(piece as usize);
            let complete = picker.is_complete();
            if new {
                if let Some(h) = inner.have.as_mut() {
                    h.set(piece);
                }
                inner.bytes_verified += len;
                inner.last_progress = Some(Instant::now());
                if let Some(p) = peer {
                    *inner.from.entry(p).or_default() += len;
                }
            }
            (new, complete)
        };
        if !new {
            return Verified::Duplicate;
        }
        if let Some(c) = self.content() {
            c.guard.mark(piece);
            if let Some(d) = &c.download {
                d.mark_verified(piece);
            }
        }
        let _ = self.have_tx.send(piece);
        if complete {
            self.complete_tx.send_replace(true);
        }
        Verified::New
    }

    /// Makes session `id` the one that writes `piece` to storage, if nobody
    /// does. Returns whether it is.
    pub fn claim_writer(&self, piece: u32, id: u64) -> bool {
        self.with_writer(piece, |w| {
            if *w == NO_WRITER {
                *w = id;
            }
            *w == id
        })
        .unwrap_or(false)
    }

    /// Session `id` stops writing `piece` (unless it was verified).
    pub fn release_writer(&self, piece: u32, id: u64) {
        self.with_writer(piece, |w| {
            if *w == id {
                *w = NO_WRITER;
            }
        });
    }

    fn with_writer<T>(&self, piece: u32, f: impl FnOnce(&mut u64) -> T) -> Option<T> {
        let all = self.writers.read().ok()?;
        let mut w = all
            .get(piece as usize)?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Some(f(&mut w))
    }

    /// Writes `data` at `at` for `piece` if session `id` is its writer, or
    /// (with `take_over`) if the piece is not verified yet, making `id` the
    /// writer. The piece's lock is held while writing: blocking, call it off
    /// the reactor. `Ok(false)`: not written (someone else owns the piece).
    pub fn write_piece_data(
        &self,
        piece: u32,
        id: u64,
        take_over: bool,
        storage: &dyn Storage,
        at: u64,
        data: &[u8],
    ) -> std::io::Result<bool> {
        let Ok(all) = self.writers.read() else {
            return Ok(false);
        };
        let Some(slot) = all.get(piece as usize) else {
            return Ok(false);
        };
        let mut w = slot.lock().unwrap_or_else(|e| e.into_inner());
        if *w == FINAL || (*w != id && !take_over) {
            return Ok(false);
        }
        *w = id;
        storage.write_at(at, data)?;
        Ok(true)
    }

    /// Marks `piece` verified if session `id` wrote it: returns false when
    /// another session owns it (its data, not ours, is on disk).
    pub fn finalize(&self, piece: u32, id: u64) -> bool {
        self.with_writer(piece, |w| {
            if *w == id {
                *w = FINAL;
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
    }

    /// A piece from `peer` failed verification: strike, maybe ban. Returns
    /// true when the peer is now banned.
    pub fn bad_piece(&self, piece: u32, peer: SocketAddr) -> bool {
        if let Some(p) = self.lock().picker.as_mut() {
            p.release(piece as usize);
        }
        tracing::warn!(%peer, piece, "piece failed verification");
        self.strike(peer)
    }

    /// Counts a misdeed of `peer` (bad data, a lying manifest); returns true
    /// when the peer is now banned.
    pub fn strike(&self, peer: SocketAddr) -> bool {
        let mut inner = self.lock();
        let strikes = inner.strikes.entry(peer).or_default();
        *strikes += 1;
        if *strikes >= MAX_STRIKES {
            inner.banned.insert(peer);
            tracing::warn!(%peer, "peer banned after {} bad pieces", MAX_STRIKES);
            return true;
        }
        false
    }

    /// A piece we held no longer matches on disk: stop serving it, and
    /// fetch it again if we are still downloading.
    pub fn piece_lost(&self, piece: u32) {
        let Some(content) = self.content() else {
            return;
        };
        let len = content.layout.piece_len(piece);
        let mut inner = self.lock();
        let was = inner.have.as_mut().is_some_and(|h| h.clear(piece));
        if !was {
            return;
        }
        inner.bytes_verified = inner.bytes_verified.saturating_sub(len);
        drop(inner);
        self.with_writer(piece, |w| *w = NO_WRITER);
        let mut inner = self.lock();
        if content.download.is_some() {
            if let Some(p) = inner.picker.as_mut() {
                p.lost(piece as usize);
            }
        }
        tracing::warn!(
            piece,
            "piece no longer matches the ticket on disk: not serving it"
        );
    }

    /// Records a fatal error and stops everything.
    pub fn fail(&self, message: String) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(message);
        }
        self.cancel.cancel();
    }

    /// Records why a session ended by the peer's fault.
    pub fn peer_failed(&self, why: String) {
        if let Ok(mut e) = self.last_peer_error.lock() {
            *e = Some(why);
        }
    }

    /// See [`Swarm::peer_failed`].
    pub fn last_peer_error(&self) -> Option<String> {
        self.last_peer_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    pub fn is_banned(&self, peer: &SocketAddr) -> bool {
        self.lock().banned.contains(peer)
    }

    pub fn is_connected(&self, peer: &SocketAddr) -> bool {
        self.lock().connected.contains_key(peer)
    }

    /// Records an open session with `peer`'s listed address.
    pub fn connected(&self, peer: SocketAddr) {
        *self.lock().connected.entry(peer).or_default() += 1;
    }

    pub fn disconnected(&self, peer: SocketAddr) {
        let mut inner = self.lock();
        if let Some(n) = inner.connected.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                inner.connected.remove(&peer);
            }
        }
    }

    /// Distinct peers with an open session.
    pub fn peer_count(&self) -> usize {
        self.lock().connected.len()
    }
}
