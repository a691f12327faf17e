//! One session with a remote peer over TCP, in both directions at once: we
//! fetch the pieces it has that we lack, and serve it the pieces we hold.
//!
//! Three tasks per connection, so that no side can deadlock the other:
//! - the reader decodes frames and hands them over (bounded channel);
//! - the writer sends frames and serves requested blocks (reads from storage
//!   off the reactor, applies the upload cap);
//! - the session loop (this module's [`run`]) decides: it never waits on the
//!   socket, only on the reader, the swarm, its timers, and room in the
//!   download's disk queue.
//!
//! A fetched piece is streamed: its blocks are requested in order from one
//! peer and handed as they arrive to the download's disk thread
//! ([`super::disk`]), which writes them at their offset and hashes them
//! incrementally; the piece is marked good only when the whole-piece hash
//! matches the manifest. Nothing unverified is ever served or counted as
//! done.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hayedik_proto::manifest::Manifest;
use hayedik_proto::peer::{Bitfield as WireBitfield, Message, Role, MAX_BLOCK};
use rand::SeedableRng;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::disk::{Block, DiskReply, PieceStream};
use super::slots::Activity;
use super::swarm::{Content, Swarm};
use super::wire::{FrameReader, FrameWriter, Out, OutPending, WireError};

/// Bytes asked for in one request.
pub const BLOCK_SIZE: u32 = 256 << 10;
/// Blocks in flight per peer (8 MiB): measured against 16 with the swarm
/// bench, 1 -> 1 took x0.82 the time and 1 -> 4 x0.94, peak RSS 22.6 MiB.
pub const PIPELINE_BLOCKS: usize = 32;
/// Requests are sent in groups of this many once the pipeline is full:
/// fewer wake-ups and socket writes on both sides.
pub const REQUEST_BATCH: usize = 4;
/// Requests a remote may have queued with us before we reject more.
pub const MAX_REMOTE_QUEUE: usize = 64;
/// Time allowed for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that sends nothing at all for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A peer that leaves what we send unread for this long (our queue for it
/// stays full) is dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A peer that owes us blocks and sends none for this long is dropped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// We send a keep-alive after this long without sending anything.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// Largest piece fetched as an in-memory endgame duplicate.
pub const MAX_DUPLICATE_PIECE: u32 = 4 << 20;
/// Endgame duplicates one session holds at once (bounds memory).
pub const MAX_DUPLICATES: usize = 2;

static NEXT_SESSION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Unrequested or duplicate blocks tolerated before disconnecting.
pub const MAX_JUNK_BLOCKS: u32 = 32;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("handshake with {peer} timed out")]
    HandshakeTimeout { peer: SocketAddr },
    #[error("{peer} does not serve this swarm")]
    OtherSwarm { peer: SocketAddr },
    #[error("{peer} sent a wrong proof: it does not hold the ticket")]
    BadProof { peer: SocketAddr },
    #[error("{peer} broke the protocol: {what}")]
    Protocol { peer: SocketAddr, what: String },
    #[error("{peer} said goodbye: {reason}")]
    Goodbye { peer: SocketAddr, reason: String },
    #[error("{peer} is banned")]
    Banned { peer: SocketAddr },
    #[error("{peer} stalled")]
    Stalled { peer: SocketAddr },
    #[error("connection to {peer}: {source}")]
    Wire { peer: SocketAddr, source: WireError },
    #[error("writing a piece: {0}")]
    Storage(String),
}

impl SessionError {
    /// Whether the peer broke the protocol or lied (as opposed to leaving,
    /// a network failure, or our own shutdown).
    pub fn is_peers_fault(&self) -> bool {
        match self {
            SessionError::BadProof { .. }
            | SessionError::Protocol { .. }
            | SessionError::Banned { .. } => true,
            SessionError::Wire { source, .. } => matches!(source, WireError::Frame(_)),
            _ => false,
        }
    }
}

/// A piece being fetched from this peer.
struct Job {
    piece: u32,
    /// Offset of the piece in the content's byte space.
    base: u64,
    len: u32,
    next_request: u32,
    next_receive: u32,
    fetch: Fetch,
}

/// How a [`Job`]'s blocks are kept.
enum Fetch {
    /// This session is the piece's only writer: its blocks go to the disk
    /// thread, which hashes them as it writes them.
    Stream(Arc<Mutex<PieceStream>>),
    /// An endgame duplicate: kept in memory, hashed here, and written only
    /// if it verifies before the writer's copy.
    Duplicate {
        hasher: Box<blake3::Hasher>,
        buffer: Vec<u8>,
    },
}

struct Session {
    swarm: Arc<Swarm>,
    /// Identifies this session as the writer of a piece.
    id: u64,
    /// The remote's connection address, and its listed address (IP and the
    /// port it serves on) used for accounting and bans.
    remote: SocketAddr,
    listed: SocketAddr,
    out: mpsc::UnboundedSender<Out>,
    /// Ends this session (see [`run`]).
    cancel: CancellationToken,
    /// When the peer last asked for something or sent data.
    activity: Arc<Activity>,
    /// Frame bytes in `out` not written yet (bounded: see [`OutPending`]).
    out_pending: Arc<OutPending>,
    /// Since when `out_pending` has been full.
    out_full_since: Option<Instant>,
    /// Where the disk thread reports on our pieces.
    disk_tx: mpsc::UnboundedSender<DiskReply>,
    /// Numbers this session's piece fetches (see [`DiskReply::Lost`]).
    next_stream: u64,
    cancelled: Arc<Mutex<HashSet<(u32, u32)>>>,
    queued: Arc<AtomicUsize>,
    content: Option<Arc<Content>>,
    remote_have: Option<WireBitfield>,
    /// A bitfield and HAVEs that arrived before we knew the piece count.
    early_bitfield: Option<Vec<u8>>,
    early_haves: Vec<u32>,
    jobs: Vec<Job>,
    /// Pieces the remote refused us: not asked again in this session.
    refused: HashSet<u32>,
    /// Pieces whose last block went to the disk thread, not concluded yet:
    /// not fetched again meanwhile.
    concluding: HashSet<u32>,
    in_flight: usize,
    manifest_asked: bool,
    remote_wants_manifest: bool,
    /// The remote asked for the manifest (at most once per session).
    manifest_requested: bool,
    /// We have sent the remote a Request.
    requested_any: bool,
    junk: u32,
    /// Blocks we cancelled or gave up on that may still arrive.
    stray: u32,
    last_block: Instant,
    last_sent: Instant,
    rng: rand::rngs::SmallRng,
}

/// Runs a session on `stream` until it ends. `dialed` is the listed address
/// we connected to (outgoing), `None` for an accepted connection.
///
/// `cancel` ends the session (the swarm stopping, or an eviction by the
/// listener's [`super::slots::Slots`]); `activity` is touched whenever the
/// peer asks for something or sends data.
pub async fn run(
    swarm: Arc<Swarm>,
    stream: TcpStream,
    dialed: Option<SocketAddr>,
    cancel: CancellationToken,
    activity: Arc<Activity>,
) -> Result<(), SessionError> {
    let result = run_session(swarm.clone(), stream, dialed, cancel, activity).await;
    if let Err(e) = &result {
        if e.is_peers_fault() {
            swarm.peer_failed(e.to_string());
        }
    }
    result
}

async fn run_session(
    swarm: Arc<Swarm>,
    stream: TcpStream,
    dialed: Option<SocketAddr>,
    cancel: CancellationToken,
    activity: Arc<Activity>,
) -> Result<(), SessionError> {
    let remote = stream.peer_addr().map_err(|e| SessionError::Wire {
        peer: dialed.unwrap_or_else(unspecified),
        source: WireError::Io(e),
    })?;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    let role = if dialed.is_some() {
        Role::Initiator
    } else {
        Role::Responder
    };
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        super::handshake::handshake(&swarm, &mut reader, &mut writer, remote, role),
    );
    let listen_port = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = handshake => r.map_err(|_| SessionError::HandshakeTimeout { peer: remote })??,
    };
    let listed = dialed.unwrap_or_else(|| {
        SocketAddr::new(
            remote.ip(),
            if listen_port == 0 {
                remote.port()
            } else {
                listen_port
            },
        )
    });
    if swarm.is_banned(&listed) {
        let _ = writer.send(&Message::goodbye("banned")).await;
        return Err(SessionError::Banned { peer: listed });
    }
    swarm.connected(listed);
    let result = serve(
        swarm.clone(),
        reader,
        writer,
        remote,
        listed,
        cancel,
        activity,
    )
    .await;
    if let Err(SessionError::Protocol { .. }) = &result {
        // Breaking the protocol costs a strike, like bad data: a peer that
        // keeps doing it is banned instead of being dialed again and again.
        swarm.strike(listed);
    }
    swarm.disconnected(listed);
    result
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

fn protocol(peer: SocketAddr, what: String) -> SessionError {
    SessionError::Protocol { peer, what }
}

async fn serve(
    swarm: Arc<Swarm>,
    reader: FrameReader,
    writer: FrameWriter,
    remote: SocketAddr,
    listed: SocketAddr,
    cancel: CancellationToken,
    activity: Arc<Activity>,
) -> Result<(), SessionError> {
    // Few messages: blocks beyond these wait in the socket's buffer, which
    // keeps a download's memory bounded however many peers it has.
    let (in_tx, mut in_rx) = mpsc::channel(4);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let cancelled = Arc::new(Mutex::new(HashSet::new()));
    let queued = Arc::new(AtomicUsize::new(0));
    let out_pending = Arc::new(OutPending::default());
    let (disk_tx, mut disk_rx) = mpsc::unbounded_channel();
    let mut reader = reader;
    reader.set_pool(swarm.disk.pool.clone());
    let read_task = crate::spawn::spawn(
        &format!("read {remote}"),
        super::wire::read_loop(reader, in_tx, swarm.clone(), IDLE_TIMEOUT),
    );
    let write_task = crate::spawn::spawn(
        &format!("write {remote}"),
        super::wire::write_loop(
            writer,
            out_rx,
            swarm.clone(),
            cancelled.clone(),
            queued.clone(),
            out_pending.clone(),
        ),
    );
    let mut s = Session {
        swarm: swarm.clone(),
        id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
        remote,
        listed,
        out: out_tx,
        cancel,
        activity,
        out_pending,
        out_full_since: None,
        disk_tx,
        next_stream: 0,
        cancelled,
        queued,
        content: None,
        remote_have: None,
        early_bitfield: None,
        early_haves: Vec::new(),
        jobs: Vec::new(),
        refused: HashSet::new(),
        concluding: HashSet::new(),
        in_flight: 0,
        manifest_asked: false,
        remote_wants_manifest: false,
        manifest_requested: false,
        requested_any: false,
        junk: 0,
        stray: 0,
        last_block: Instant::now(),
        last_sent: Instant::now(),
        rng: rand::rngs::SmallRng::from_entropy(),
    };
    let result = s.main_loop(&mut in_rx, &mut disk_rx).await;
    s.release_all();
    // Closing the channel ends the writer after what is queued.
    drop(s);
    read_task.abort();
    // A writer stuck on a peer that does not read is aborted, not left
    // holding the socket outside every cap.
    let mut write_task = write_task;
    if tokio::time::timeout(Duration::from_secs(2), &mut write_task)
        .await
        .is_err()
    {
        write_task.abort();
    }
    result
}

impl Session {
    fn send(&mut self, m: Message) {
        let mut bytes = Vec::new();
        m.encode(&mut bytes);
        self.out_pending.add(bytes.len());
        let _ = self.out.send(Out::Frame(bytes));
        self.last_sent = Instant::now();
    }

    async fn main_loop(
        &mut self,
        in_rx: &mut mpsc::Receiver<Result<Message, WireError>>,
        disk_rx: &mut mpsc::UnboundedReceiver<DiskReply>,
    ) -> Result<(), SessionError> {
        let mut content_rx = self.swarm.content_rx();
        let mut have_rx = self.swarm.have_rx();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cancel = self.cancel.clone();
        if let Some(c) = content_rx.borrow_and_update().clone() {
            self.on_content(c)?;
        } else {
            self.ask_manifest();
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.send(Message::goodbye("closing"));
                    return Ok(());
                }
                // While the peer leaves our answers unread, its next
                // messages wait in TCP, not in our memory.
                _ = self.out_pending.drained(), if self.out_pending.is_full() => {}
                m = in_rx.recv(), if !self.out_pending.is_full() => {
                    match m {
                        Some(Ok(m)) => self.on_message(m).await?,
                        Some(Err(e)) => return Err(SessionError::Wire { peer: self.remote, source: e }),
                        None => return Ok(()),
                    }
                }
                r = content_rx.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    let c = content_rx.borrow_and_update().clone();
                    if let Some(c) = c {
                        self.on_content(c)?;
                    }
                }
                Some(r) = disk_rx.recv() => self.on_disk(r)?,
                h = have_rx.recv() => match h {
                    Ok(piece) => self.on_local_have(piece),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.send_bitfield(),
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tick.tick() => self.on_tick()?,
            }
        }
    }

    fn ask_manifest(&mut self) {
        if !self.manifest_asked && !self.swarm.has_manifest() {
            self.manifest_asked = true;
            self.send(Message::ManifestRequest);
        }
    }

    fn on_content(&mut self, content: Arc<Content>) -> Result<(), SessionError> {
        if self.content.is_some() {
            return Ok(());
        }
        self.content = Some(content.clone());
        if self.remote_wants_manifest {
            self.send(Message::Manifest {
                bytes: content.manifest_bytes.clone(),
            });
        }
        self.send_bitfield();
        if let Some(bits) = self.early_bitfield.take() {
            self.on_bitfield(bits)?;
        }
        for piece in std::mem::take(&mut self.early_haves) {
            self.on_have(piece)?;
        }
        self.refill();
        Ok(())
    }

    fn send_bitfield(&mut self) {
        if self.content.is_none() {
            return;
        }
        if let Some(have) = self.swarm.have() {
            self.send(Message::Bitfield {
                bits: have.as_bytes().to_vec(),
            });
        }
    }

    fn on_local_have(&mut self, piece: u32) {
        // Endgame: someone else delivered a piece we are fetching here.
        if let Some(i) = self.jobs.iter().position(|j| j.piece == piece) {
            let job = self.jobs.swap_remove(i);
            let outstanding = job.next_request - job.next_receive;
            let mut offset = job.next_receive;
            while offset < job.next_request {
                let len = BLOCK_SIZE.min(job.len - offset);
                self.send(Message::Cancel { piece, offset, len });
                offset += len;
            }
            let blocks = outstanding.div_ceil(BLOCK_SIZE);
            self.in_flight -= blocks as usize;
            self.stray += blocks;
            self.swarm.with_picker(|p| p.release(piece as usize));
        }
        if !self.remote_have.as_ref().is_some_and(|h| h.get(piece)) {
            self.send(Message::Have { piece });
        }
        self.refill();
    }

    fn on_bitfield(&mut self, bits: Vec<u8>) -> Result<(), SessionError> {
        let Some(content) = &self.content else {
            self.early_bitfield = Some(bits);
            return Ok(());
        };
        let n = content.manifest.piece_count();
        let field = WireBitfield::from_bytes(&bits, n)
            .map_err(|e| protocol(self.remote, format!("bad bitfield: {e}")))?;
        let old = self.remote_have.replace(field.clone());
        self.swarm.with_picker(|p| {
            for i in 0..n {
                let before = old.as_ref().is_some_and(|o| o.get(i));
                let now = field.get(i);
                if now && !before {
                    p.add_availability(i as usize);
                } else if before && !now {
                    p.remove_availability(i as usize);
                }
            }
        });
        self.refill();
        Ok(())
    }

    fn on_have(&mut self, piece: u32) -> Result<(), SessionError> {
        let Some(content) = &self.content else {
            return Ok(());
        };
        if piece >= content.manifest.piece_count() {
            return Err(protocol(
                self.remote,
                format!("HAVE for piece {piece} out of range"),
            ));
        }
        let field = self
            .remote_have
            .get_or_insert_with(|| WireBitfield::new(content.manifest.piece_count()));
        if !field.get(piece) {
            field.set(piece);
            self.swarm
                .with_picker(|p| p.add_availability(piece as usize));
        }
        self.refill();
        Ok(())
    }

    async fn on_message(&mut self, m: Message) -> Result<(), SessionError> {
        if matches!(
            m,
            Message::Request { .. } | Message::ManifestRequest | Message::Block { .. }
        ) {
            self.activity.touch(Instant::now());
        }
        match m {
            Message::KeepAlive => {}
            Message::Hello { .. } | Message::Proof { .. } => {
                return Err(protocol(
                    self.remote,
                    "handshake message after the handshake".into(),
                ))
            }
            Message::Goodbye { reason } => {
                return Err(SessionError::Goodbye {
                    peer: self.remote,
                    reason,
                })
            }
            Message::ManifestRequest => {
                if self.manifest_requested {
                    // One manifest per session: it may be megabytes.
                    return Err(protocol(self.remote, "asked for the manifest twice".into()));
                }
                self.manifest_requested = true;
                match &self.content {
                    Some(c) => {
                        let bytes = c.manifest_bytes.clone();
                        self.send(Message::Manifest { bytes });
                    }
                    None => self.remote_wants_manifest = true,
                }
            }
            Message::Manifest { bytes } => self.on_manifest(bytes)?,
            Message::Bitfield { bits } => self.on_bitfield(bits)?,
            Message::Have { piece } => {
                if self.content.is_none() {
                    // Checked once the piece count is known; bounded by the
                    // largest piece count a manifest may have.
                    if self.early_haves.len() < hayedik_proto::manifest::MAX_PIECES as usize {
                        self.early_haves.push(piece);
                    }
                    return Ok(());
                }
                self.on_have(piece)?;
            }
            Message::Request { piece, offset, len } => self.on_request(piece, offset, len),
            Message::Cancel { piece, offset, .. } => {
                if let Ok(mut c) = self.cancelled.lock() {
                    // Bounded by the requests the remote may have queued.
                    if c.len() < 4 * MAX_REMOTE_QUEUE {
                        c.insert((piece, offset));
                    }
                }
            }
            Message::Reject { piece, .. } => {
                if self.jobs.iter().any(|j| j.piece == piece) {
                    self.abandon(piece);
                    // The rejected block will not come; the others may.
                    self.stray = self.stray.saturating_sub(1);
                    self.refused.insert(piece);
                }
                self.refill();
            }
            Message::Block {
                piece,
                offset,
                data,
            } => self.on_block(piece, offset, data).await?,
        }
        Ok(())
    }

    fn on_manifest(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        if !self.manifest_asked {
            return Err(protocol(
                self.remote,
                "sent a manifest nobody asked for".into(),
            ));
        }
        if self.swarm.has_manifest() {
            // Asked, but another session's copy came first.
            return Ok(());
        }
        // The root is what the ticket names: a manifest that does not hash
        // to it is a lie, and costs the peer a strike (as every protocol
        // error does, in `run`).
        if blake3::hash(&bytes).as_bytes() != &self.swarm.root {
            return Err(protocol(
                self.remote,
                "manifest does not match the ticket".into(),
            ));
        }
        match Manifest::decode(&bytes) {
            Ok(m) => {
                self.swarm.offer_manifest(m, bytes);
                self.swarm.touch_progress();
                Ok(())
            }
            Err(e) => {
                // Authentic but unusable (a hostile name...): the content
                // itself is at fault, so no other peer can do better.
                self.swarm.fail(format!(
                    "the ticket names content whose manifest is unusable: {e}; nothing was written"
                ));
                Err(protocol(self.remote, format!("unusable manifest: {e}")))
            }
        }
    }

    fn on_request(&mut self, piece: u32, offset: u32, len: u32) {
        let ok = self.content.as_ref().is_some_and(|c| {
            let plen = c.layout.piece_len(piece);
            piece < c.manifest.piece_count()
                && (1..=MAX_BLOCK).contains(&len)
                && u64::from(offset) + u64::from(len) <= plen
        }) && self.swarm.has_piece(piece)
            && self.queued.load(Ordering::Relaxed) < MAX_REMOTE_QUEUE;
        if !ok {
            self.send(Message::Reject { piece, offset, len });
            return;
        }
        let Some(content) = &self.content else { return };
        if let Ok(mut c) = self.cancelled.lock() {
            c.remove(&(piece, offset));
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let _ = self.out.send(Out::Serve {
            piece,
            offset,
            len,
            at: piece_base(content, piece) + u64::from(offset),
        });
        self.last_sent = Instant::now();
    }

    async fn on_block(
        &mut self,
        piece: u32,
        offset: u32,
        data: Vec<u8>,
    ) -> Result<(), SessionError> {
        let Some(i) = self
            .jobs
            .iter()
            .position(|j| j.piece == piece && j.next_receive == offset && offset < j.next_request)
        else {
            // Cancelled: expected. Unrequested or duplicate: tolerated a
            // little, then the peer is dropped; at once if we never asked
            // it for anything.
            if !self.requested_any {
                return Err(protocol(
                    self.remote,
                    "sent a block nobody asked for".into(),
                ));
            }
            if self.stray > 0 {
                self.stray -= 1;
                return Ok(());
            }
            self.junk += 1;
            if self.junk > MAX_JUNK_BLOCKS {
                return Err(protocol(self.remote, "too many unrequested blocks".into()));
            }
            return Ok(());
        };
        let expect = BLOCK_SIZE.min(self.jobs[i].len - offset);
        if data.len() != expect as usize {
            return Err(protocol(
                self.remote,
                format!("block of {} bytes where {expect} were asked", data.len()),
            ));
        }
        self.last_block = Instant::now();
        self.in_flight -= 1;
        let Some(content) = self.content.clone() else {
            return Ok(());
        };
        // Ask for the next block before this one is written and hashed, so
        // the peer keeps sending while the disk works.
        self.refill();
        let n = data.len();
        self.swarm.downloaded.fetch_add(n as u64, Ordering::Relaxed);
        let job = &mut self.jobs[i];
        let at = job.base + u64::from(offset);
        job.next_receive += n as u32;
        let last = job.next_receive >= job.len;
        let stream = match &mut job.fetch {
            Fetch::Stream(stream) => Some(stream.clone()),
            Fetch::Duplicate { hasher, buffer } => {
                // Endgame duplicate: memory only, until it verifies.
                hasher.update(&data);
                buffer.extend_from_slice(&data);
                None
            }
        };
        if let Some(stream) = stream {
            if last {
                // The disk thread concludes the piece from here on.
                self.jobs.swap_remove(i);
                self.concluding.insert(piece);
            }
            let block = Block {
                swarm: self.swarm.clone(),
                content,
                stream,
                at,
                data,
                last,
            };
            if let Err(e) = self.swarm.disk.write(block).await {
                // No disk thread: no session of this download can go on.
                self.swarm.fail(e.clone());
                return Err(SessionError::Storage(e));
            }
            if last {
                self.refill();
            }
            return Ok(());
        }
        self.swarm.disk.pool.give(data);
        if !last {
            return Ok(());
        }
        let job = self.jobs.swap_remove(i);
        let Fetch::Duplicate { hasher, buffer } = job.fetch else {
            return Ok(());
        };
        let good = Some(hasher.finalize().as_bytes()) == content.manifest.piece_hash(piece);
        if !good {
            if self.swarm.bad_piece(piece, self.listed) {
                return Err(self.banned());
            }
            self.refill();
            return Ok(());
        }
        let (storage, swarm, id, base) = (
            content.storage.clone(),
            self.swarm.clone(),
            self.id,
            job.base,
        );
        let written = tokio::task::spawn_blocking(move || {
            swarm
                .write_piece_data(piece, id, true, storage.as_ref(), base, &buffer)
                .map(|w| w && swarm.finalize(piece, id))
        })
        .await
        .map_err(|e| SessionError::Storage(e.to_string()))?;
        let ours = match written {
            Ok(w) => w,
            Err(e) => return Err(self.storage_failed(&content, e)),
        };
        if ours {
            self.swarm
                .piece_verified(piece, u64::from(job.len), Some(self.listed));
        } else {
            tracing::trace!(piece, "duplicate piece (endgame)");
            self.swarm.with_picker(|p| p.release(piece as usize));
        }
        self.refill();
        Ok(())
    }

    /// What the disk thread found about one of our pieces.
    fn on_disk(&mut self, reply: DiskReply) -> Result<(), SessionError> {
        match reply {
            DiskReply::Lost { piece, stream } => {
                let ours = self.jobs.iter().any(|j| {
                    j.piece == piece
                        && matches!(&j.fetch, Fetch::Stream(s)
                            if s.lock().is_ok_and(|s| s.stream == stream))
                });
                if ours {
                    // Another session's verified copy took the piece over.
                    self.abandon(piece);
                }
                self.refill();
                Ok(())
            }
            DiskReply::Concluded { piece } => {
                self.concluding.remove(&piece);
                self.refill();
                Ok(())
            }
            DiskReply::Banned => Err(self.banned()),
            DiskReply::Failed(msg) => Err(SessionError::Storage(msg)),
        }
    }

    /// Drops the job for `piece`: its outstanding blocks become strays.
    fn abandon(&mut self, piece: u32) {
        if let Some(i) = self.jobs.iter().position(|j| j.piece == piece) {
            let job = self.jobs.swap_remove(i);
            let blocks = (job.next_request - job.next_receive).div_ceil(BLOCK_SIZE);
            self.in_flight -= blocks as usize;
            self.stray += blocks;
            if matches!(job.fetch, Fetch::Stream(_)) {
                self.swarm.release_writer(piece, self.id);
            }
            self.swarm.with_picker(|p| p.release(piece as usize));
        }
    }

    /// The peer is banned: tells it why and ends the session.
    fn banned(&mut self) -> SessionError {
        self.send(Message::goodbye("you sent pieces that do not verify"));
        SessionError::Banned { peer: self.listed }
    }

    /// A write failed: the whole download stops with a clear error.
    fn storage_failed(&self, content: &Content, e: std::io::Error) -> SessionError {
        let msg = super::disk::storage_message(content, e);
        self.swarm.fail(msg.clone());
        SessionError::Storage(msg)
    }

    /// Keeps [`PIPELINE_BLOCKS`] requests in flight.
    fn refill(&mut self) {
        let (Some(content), Some(remote)) = (self.content.clone(), self.remote_have.as_ref())
        else {
            return;
        };
        if self.in_flight + REQUEST_BATCH > PIPELINE_BLOCKS {
            return;
        }
        let remote = remote.clone();
        while self.in_flight < PIPELINE_BLOCKS {
            if let Some(job) = self.jobs.iter_mut().find(|j| j.next_request < j.len) {
                let len = BLOCK_SIZE.min(job.len - job.next_request);
                let (piece, offset) = (job.piece, job.next_request);
                job.next_request += len;
                self.in_flight += 1;
                if self.in_flight == 1 {
                    self.last_block = Instant::now();
                }
                self.send(Message::Request { piece, offset, len });
                self.requested_any = true;
                continue;
            }
            let jobs: Vec<u32> = self.jobs.iter().map(|j| j.piece).collect();
            let (refused, concluding) = (&self.refused, &self.concluding);
            let rng = &mut self.rng;
            let picked = self
                .swarm
                .with_picker(|p| {
                    p.pick(
                        |i| remote.get(i as u32),
                        |i| {
                            let i = i as u32;
                            jobs.contains(&i) || refused.contains(&i) || concluding.contains(&i)
                        },
                        rng,
                    )
                })
                .flatten();
            let Some(piece) = picked else { break };
            let piece = piece as u32;
            let Ok(len) = u32::try_from(content.layout.piece_len(piece)) else {
                self.swarm.with_picker(|p| p.release(piece as usize));
                break;
            };
            if len == 0 {
                // An empty piece verifies against the hash of nothing.
                let good = content.manifest.piece_hash(piece) == Some(blake3::hash(&[]).as_bytes());
                if good {
                    self.swarm.piece_verified(piece, 0, Some(self.listed));
                } else {
                    self.swarm.with_picker(|p| p.release(piece as usize));
                }
                continue;
            }
            let duplicates = self
                .jobs
                .iter()
                .filter(|j| matches!(j.fetch, Fetch::Duplicate { .. }))
                .count();
            let fetch = if self.swarm.claim_writer(piece, self.id) {
                self.next_stream += 1;
                Fetch::Stream(PieceStream::new(
                    piece,
                    len,
                    self.id,
                    self.next_stream,
                    self.listed,
                    self.disk_tx.clone(),
                ))
            } else if len <= MAX_DUPLICATE_PIECE && duplicates < MAX_DUPLICATES {
                Fetch::Duplicate {
                    hasher: Box::default(),
                    buffer: Vec::with_capacity(len as usize),
                }
            } else {
                // Someone else writes it and we may not duplicate it.
                self.swarm.with_picker(|p| p.release(piece as usize));
                break;
            };
            self.jobs.push(Job {
                piece,
                base: piece_base(&content, piece),
                len,
                next_request: 0,
                next_receive: 0,
                fetch,
            });
        }
    }

    fn on_tick(&mut self) -> Result<(), SessionError> {
        if self.swarm.is_banned(&self.listed) {
            // Banned from elsewhere: another session with the same peer, or
            // the disk thread concluding pieces of a session already gone.
            return Err(self.banned());
        }
        let now = Instant::now();
        if !self.out_pending.is_full() {
            self.out_full_since = None;
        } else if now.duration_since(*self.out_full_since.get_or_insert(now)) > WRITE_STALL_TIMEOUT
        {
            return Err(protocol(
                self.remote,
                format!(
                    "left {} bytes we sent unread for {} s",
                    self.out_pending.bytes(),
                    WRITE_STALL_TIMEOUT.as_secs()
                ),
            ));
        }
        if self.in_flight > 0 && now.duration_since(self.last_block) > STALL_TIMEOUT {
            return Err(SessionError::Stalled { peer: self.remote });
        }
        if now.duration_since(self.last_sent) > KEEPALIVE_EVERY {
            self.send(Message::KeepAlive);
        }
        // Pieces may have been released by other sessions.
        self.refill();
        Ok(())
    }

    /// Gives every assigned piece back to the picker.
    fn release_all(&mut self) {
        let jobs: Vec<u32> = self.jobs.drain(..).map(|j| j.piece).collect();
        for &piece in &jobs {
            self.swarm.release_writer(piece, self.id);
        }
        let remote = self.remote_have.take();
        self.swarm.with_picker(|p| {
            for piece in jobs {
                p.release(piece as usize);
            }
            if let Some(r) = remote {
                for i in 0..r.len() {
                    if r.get(i) {
                        p.remove_availability(i as usize);
                    }
                }
            }
        });
    }
}

/// Where a piece starts in the storage's (virtual) byte space: pieces are
/// `piece_size` apart whatever the files (see `storage::PieceLayout`).
fn piece_base(content: &Content, piece: u32) -> u64 {
    content.layout.piece_offset(piece)
}
