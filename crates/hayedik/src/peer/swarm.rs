//! The peer's view of one swarm: what every session of it shares.
//!
//! [`Swarm`] holds the keys derived from the ticket, the content once known
//! (manifest and storage), the piece state ([`SharedPieces`], the one owner
//! of which pieces are held, fetched and written, and of strikes and bans),
//! the sessions open with each peer, the rate caps, the download's disk
//! thread, and the first fatal error. Nothing here does I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hayedik_proto::manifest::{peer_auth_key, swarm_key, Manifest};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use super::content::{Content, VerifiedManifest};
use super::disk::Disk;
use super::fatal::{Fatal, FatalSlot};
use super::handshake::Nonces;
use super::pieces::SharedPieces;
use super::rate::RateLimit;
use crate::storage::Bitfield;

/// Where a peer offered to the connector (besides the tracker's list) was
/// heard of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A lookup in the Mainline DHT.
    Dht,
    /// Another peer's peer exchange.
    Pex,
}

/// Peers offered to the connector and not yet taken; more are dropped
/// (the sources offer again later).
pub const MAX_OFFERED: usize = 256;

/// Settings of a peer's swarm.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    pub root: [u8; 32],
    /// The TCP port we serve on (told to peers in the handshake).
    pub listen_port: u16,
    pub max_upload: Option<u64>,
    pub max_download: Option<u64>,
}

/// Shared state of one swarm, as seen by a peer.
pub struct Swarm {
    pub root: [u8; 32],
    pub swarm_key: [u8; 32],
    pub auth_key: [u8; 32],
    pub listen_port: u16,
    pub cancel: CancellationToken,
    pub up_limit: Arc<RateLimit>,
    pub down_limit: Arc<RateLimit>,
    pub uploaded: Arc<AtomicU64>,
    pub downloaded: Arc<AtomicU64>,
    /// Which pieces are held, fetched, written; strikes and bans.
    pub pieces: Arc<SharedPieces>,
    /// Block buffers and the writer thread of the download.
    pub disk: Disk,
    /// The nonces of this swarm's handshakes in progress.
    pub nonces: Arc<Nonces>,
    /// The first error that makes going on pointless (a full disk...).
    pub fatal: Arc<FatalSlot>,
    /// The first verified manifest a session obtained (getter side).
    manifest_tx: watch::Sender<Option<VerifiedManifest>>,
    content_tx: watch::Sender<Option<Arc<Content>>>,
    /// Why the last session that a peer broke ended, so a download that
    /// gets nowhere can say so instead of "no peer could be reached".
    last_peer_error: Mutex<Option<String>>,
    /// Listed addresses with an open session (either direction), bounded
    /// by the sessions' own caps.
    /// (sessions, whether the peer told a port it serves on).
    connected: Mutex<HashMap<SocketAddr, (usize, bool)>>,
    /// Peers heard of elsewhere than the tracker (DHT, peer exchange), for
    /// the connector to dial; bounded by [`MAX_OFFERED`].
    offers_tx: mpsc::Sender<(SocketAddr, Found)>,
    offers_rx: Mutex<Option<mpsc::Receiver<(SocketAddr, Found)>>>,
    /// Hole punching, when on (set once by `get` or `share`).
    pub punch: std::sync::OnceLock<Arc<super::punch::Punch>>,
    /// Our own and the tracker's addresses, for peer exchange.
    pub pex: super::pex::PexShared,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("listen_port", &self.listen_port)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take every session down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Swarm {
    pub fn new(opts: SwarmOptions, cancel: CancellationToken) -> Arc<Swarm> {
        let pieces = Arc::new(SharedPieces::new(Instant::now()));
        let fatal = Arc::new(FatalSlot::new(cancel.clone()));
        let (offers_tx, offers_rx) = mpsc::channel(MAX_OFFERED);
        Arc::new(Swarm {
            swarm_key: swarm_key(&opts.root),
            auth_key: peer_auth_key(&opts.root),
            root: opts.root,
            listen_port: opts.listen_port,
            cancel,
            up_limit: Arc::new(RateLimit::new(opts.max_upload)),
            down_limit: Arc::new(RateLimit::new(opts.max_download)),
            uploaded: Arc::new(AtomicU64::new(0)),
            downloaded: Arc::new(AtomicU64::new(0)),
            disk: Disk::new(pieces.clone(), fatal.clone()),
            nonces: Arc::default(),
            pieces,
            fatal,
            manifest_tx: watch::channel(None).0,
            content_tx: watch::channel(None).0,
            last_peer_error: Mutex::new(None),
            connected: Mutex::new(HashMap::new()),
            offers_tx,
            offers_rx: Mutex::new(Some(offers_rx)),
            punch: std::sync::OnceLock::new(),
            pex: Default::default(),
        })
    }

    /// Offers a peer heard of elsewhere than the tracker to the connector,
    /// which dials it like a listed one (it must pass the proof like any
    /// other). False when the queue is full: the offer is dropped.
    pub fn offer_peer(&self, addr: SocketAddr, found: Found) -> bool {
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return false;
        }
        self.offers_tx.try_send((addr, found)).is_ok()
    }

    /// The receiving end of [`Swarm::offer_peer`], for the one connector.
    pub(crate) fn take_offers(&self) -> Option<mpsc::Receiver<(SocketAddr, Found)>> {
        lock(&self.offers_rx).take()
    }

    /// Offers a manifest already verified against the root; the first wins.
    pub fn offer_manifest(&self, manifest: Manifest, bytes: Vec<u8>) {
        let offered = self.manifest_tx.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some((Arc::new(manifest), Arc::new(bytes)));
            true
        });
        if offered {
            self.pieces.lock().touch(Instant::now());
        }
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
        self.pieces
            .start(content.layout.clone(), have, wanted, Instant::now());
        self.content_tx.send_replace(Some(Arc::new(content)));
    }

    pub fn content(&self) -> Option<Arc<Content>> {
        self.content_tx.borrow().clone()
    }

    pub fn content_rx(&self) -> watch::Receiver<Option<Arc<Content>>> {
        self.content_tx.subscribe()
    }

    pub fn complete_rx(&self) -> watch::Receiver<bool> {
        self.pieces.complete_rx()
    }

    pub fn have_rx(&self) -> broadcast::Receiver<u32> {
        self.pieces.have_rx()
    }

    /// Our verified pieces (`None` before the content is known).
    pub fn have(&self) -> Option<Bitfield> {
        let p = self.pieces.lock();
        p.is_started().then(|| p.have().clone())
    }

    pub fn has_piece(&self, piece: u32) -> bool {
        self.pieces.lock().has(piece)
    }

    pub fn bytes_verified(&self) -> u64 {
        self.pieces.lock().bytes_verified()
    }

    /// When something useful last happened (a piece, the manifest).
    pub fn last_progress(&self) -> Instant {
        self.pieces.lock().last_progress()
    }

    /// Bytes of verified data received from each listed peer.
    pub fn from_counts(&self) -> BTreeMap<SocketAddr, u64> {
        self.pieces.lock().from_counts().clone()
    }

    /// A held piece no longer matches on disk (see [`Content::piece_lost`]).
    pub fn piece_lost(&self, piece: u32) {
        if let Some(c) = self.content() {
            c.piece_lost(&self.pieces, piece);
        }
    }

    /// Counts a misdeed of `peer`; returns true when it is now banned.
    pub fn strike(&self, peer: SocketAddr) -> bool {
        self.pieces.strike(peer)
    }

    /// Records a fatal error and stops everything.
    pub fn fail(&self, fatal: Fatal) {
        self.fatal.fail(fatal);
    }

    pub fn fatal(&self) -> Option<Fatal> {
        self.fatal.get()
    }

    /// Records why a session ended by the peer's fault.
    pub fn peer_failed(&self, why: String) {
        *lock(&self.last_peer_error) = Some(why);
    }

    /// See [`Swarm::peer_failed`].
    pub fn last_peer_error(&self) -> Option<String> {
        lock(&self.last_peer_error).clone()
    }

    pub fn is_banned(&self, peer: &SocketAddr) -> bool {
        self.pieces.lock().is_banned(peer)
    }

    pub fn is_connected(&self, peer: &SocketAddr) -> bool {
        lock(&self.connected).contains_key(peer)
    }

    /// Records an open session with `peer`'s listed address; `serves`
    /// when others can dial it there (we dialed it, or it told the port it
    /// serves on: `ls` serves nothing and says port 0).
    pub fn connected(&self, peer: SocketAddr, serves: bool) {
        let mut connected = lock(&self.connected);
        let entry = connected.entry(peer).or_default();
        entry.0 += 1;
        entry.1 |= serves;
    }

    pub fn disconnected(&self, peer: SocketAddr) {
        let mut connected = lock(&self.connected);
        if let Some((n, _)) = connected.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                connected.remove(&peer);
            }
        }
    }

    /// The listed addresses of the open sessions that serve there (bounded
    /// by the sessions' caps), for peer exchange.
    pub fn connected_peers(&self) -> Vec<SocketAddr> {
        lock(&self.connected)
            .iter()
            .filter(|(_, (_, serves))| *serves)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Distinct peers with an open session.
    pub fn peer_count(&self) -> usize {
        lock(&self.connected).len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod offer_tests {
    use super::*;

    fn swarm() -> Arc<Swarm> {
        Swarm::new(
            SwarmOptions {
                root: [7; 32],
                listen_port: 1,
                max_upload: None,
                max_download: None,
            },
            CancellationToken::new(),
        )
    }

    #[test]
    fn offers_are_bounded_and_reach_the_one_taker() {
        let s = swarm();
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert!(!s.offer_peer("192.0.2.1:0".parse().unwrap(), Found::Dht));
        assert!(!s.offer_peer("0.0.0.0:80".parse().unwrap(), Found::Pex));
        assert!(!s.offer_peer("224.0.0.1:80".parse().unwrap(), Found::Pex));
        for _ in 0..MAX_OFFERED {
            assert!(s.offer_peer(a, Found::Pex));
        }
        assert!(!s.offer_peer(a, Found::Dht), "the queue is bounded");
        let mut rx = s.take_offers().unwrap();
        assert!(s.take_offers().is_none(), "one connector takes them");
        assert_eq!(rx.try_recv().unwrap(), (a, Found::Pex));
        assert!(s.offer_peer(a, Found::Dht), "room again once one is taken");
    }

    #[test]
    fn peer_exchange_names_only_peers_that_serve() {
        let s = swarm();
        let (served, ls): (SocketAddr, SocketAddr) = (
            "192.0.2.1:4000".parse().unwrap(),
            "192.0.2.2:51000".parse().unwrap(),
        );
        s.connected(served, true);
        s.connected(ls, false);
        assert_eq!(s.connected_peers(), vec![served]);
        assert_eq!(s.peer_count(), 2);
        s.disconnected(served);
        assert!(s.connected_peers().is_empty());
    }
}
