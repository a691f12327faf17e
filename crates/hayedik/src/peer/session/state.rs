//! The protocol logic of one session, without sockets or clocks: it takes
//! the remote's messages, the disk thread's replies, our own new pieces and
//! the time, and queues [`Command`]s for the I/O loop ([`super::io`]) to
//! carry out (quinn's `Connection` and `CentralTracker::on_datagram` are
//! the shape). Shared piece state is reached through [`SharedPieces`].
//!
//! What it decides:
//! - what to fetch: it keeps [`PIPELINE_BLOCKS`] requests in flight, a
//!   piece at a time per job, in order, from pieces the picker assigns;
//! - where blocks go: a piece this session writes is streamed to the disk
//!   thread block by block ([`Work::Block`]); an endgame duplicate is kept
//!   in memory, hashed here and handed over whole only if it verifies
//!   ([`Work::Whole`]);
//! - what to serve: requests for pieces we hold, at most
//!   [`MAX_REMOTE_QUEUE`] queued, everything else rejected;
//! - when the peer is at fault: anything out of order or out of range is a
//!   [`SessionError::Protocol`], a peer that owes blocks and sends none for
//!   [`STALL_TIMEOUT`] is stalled, one that leaves what we send unread for
//!   [`WRITE_STALL_TIMEOUT`] (told by the I/O loop as `unsent` bytes) is
//!   dropped.
//!
//! Invariants:
//! - `in_flight` is the number of blocks requested and neither received
//!   nor given up (`jobs`' `next_request - next_receive`, in blocks);
//! - every job's piece is assigned to this session in the picker once,
//!   and given back exactly once: by [`Session::release_all`], by
//!   abandoning it, or by the disk thread concluding it (`concluding`);
//! - nothing is served before the content is known, and only pieces held.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hayedik_proto::manifest::Manifest;
use hayedik_proto::peer::{Bitfield as WireBitfield, Message, MAX_BLOCK};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::SessionError;
use crate::peer::content::Content;
use crate::peer::disk::{DiskReply, PieceStream, Work};
use crate::peer::fatal::Fatal;
use crate::peer::pieces::SharedPieces;

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
/// A peer that leaves what we send unread for this long (more than
/// [`MAX_UNSENT`] bytes wait for it) is dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of frames waiting for the socket above which the session reads
/// no more from its peer: a peer that asks and never reads the answers is
/// held back by TCP instead of growing our memory.
pub const MAX_UNSENT: usize = 256 << 10;
/// A peer that owes us blocks and sends none for this long is dropped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// We send a keep-alive after this long without sending anything.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// Largest piece fetched as an in-memory endgame duplicate.
pub const MAX_DUPLICATE_PIECE: u32 = 4 << 20;
/// Unrequested or duplicate blocks tolerated before disconnecting.
pub const MAX_JUNK_BLOCKS: u32 = 32;

/// What the I/O loop is to do, in order.
#[derive(Debug)]
pub enum Command {
    /// Send this message.
    Send(Message),
    /// Read this block from storage and send it (the writer rejects it if
    /// it turns out not to match on disk).
    Serve {
        piece: u32,
        offset: u32,
        len: u32,
        at: u64,
    },
    /// The remote withdrew its request for this block: skip it if it is
    /// still queued.
    Unserve { piece: u32, offset: u32 },
    /// Hand this to the disk thread (waiting while its queue is full).
    Disk(Work),
    /// A manifest verified against the root, for the whole swarm.
    OfferManifest { manifest: Manifest, bytes: Vec<u8> },
    /// The download cannot go on.
    Fail(Fatal),
    /// A block buffer no longer needed, for the pool.
    Recycle(Vec<u8>),
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
        /// One of the download's [`MAX_DUPLICATES`]: held with the buffer,
        /// into the disk thread's hands.
        permit: OwnedSemaphorePermit,
    },
}

impl Job {
    /// Blocks requested and not received.
    fn outstanding(&self) -> u32 {
        (self.next_request - self.next_receive).div_ceil(BLOCK_SIZE)
    }
}

/// The state of one session after its handshake.
pub struct Session {
    pieces: Arc<SharedPieces>,
    root: [u8; 32],
    /// Identifies this session as the writer of a piece.
    id: u64,
    /// The remote's connection address, and its listed address (IP and the
    /// port it serves on) used for accounting and bans.
    remote: SocketAddr,
    listed: SocketAddr,
    commands: VecDeque<Command>,
    /// Where the disk thread reports on our pieces (the I/O loop holds the
    /// receiving end and hands replies to [`Session::on_disk`]).
    disk_tx: mpsc::UnboundedSender<DiskReply>,
    /// Numbers this session's piece fetches (see [`DiskReply::Lost`]).
    next_stream: u64,
    content: Option<Arc<Content>>,
    remote_have: Option<WireBitfield>,
    /// A bitfield and HAVEs that arrived before we knew the piece count.
    early_bitfield: Option<Vec<u8>>,
    early_haves: Vec<u32>,
    jobs: Vec<Job>,
    /// Pieces the remote refused us: not asked again in this session.
    refused: HashSet<u32>,
    /// Pieces handed to the disk thread whole or to their last block, not
    /// concluded yet: not fetched again meanwhile.
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
    /// Since when more than [`MAX_UNSENT`] bytes wait for the peer.
    unsent_since: Option<Instant>,
    rng: rand::rngs::SmallRng,
}

/// Who the session is with and what it starts from.
pub struct Peer {
    pub id: u64,
    pub remote: SocketAddr,
    pub listed: SocketAddr,
}

impl Session {
    /// A session that has just completed its handshake. `manifest_known`:
    /// the swarm has a manifest already (nothing to ask for).
    pub fn new(
        pieces: Arc<SharedPieces>,
        root: [u8; 32],
        peer: Peer,
        disk_tx: mpsc::UnboundedSender<DiskReply>,
        rng: rand::rngs::SmallRng,
        now: Instant,
    ) -> Self {
        Self {
            pieces,
            root,
            id: peer.id,
            remote: peer.remote,
            listed: peer.listed,
            commands: VecDeque::new(),
            disk_tx,
            next_stream: 0,
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
            last_block: now,
            last_sent: now,
            unsent_since: None,
            rng,
        }
    }

    /// The next thing for the I/O loop to do.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The remote's connection address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Blocks requested from the peer and not received yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether to read the peer's next message: not while `unsent` bytes
    /// (queued for the peer, not written to its socket) exceed
    /// [`MAX_UNSENT`].
    pub fn wants_input(unsent: usize) -> bool {
        unsent <= MAX_UNSENT
    }

    fn send(&mut self, m: Message, now: Instant) {
        self.commands.push_back(Command::Send(m));
        self.last_sent = now;
    }

    fn protocol(&self, what: impl Into<String>) -> SessionError {
        SessionError::Protocol {
            peer: self.remote,
            what: what.into(),
        }
    }

    /// The content is known (now, or already when the session starts):
    /// the session starts exchanging pieces. Without it, the session asks
    /// for the manifest unless `manifest_known`.
    pub fn start(
        &mut self,
        content: Option<Arc<Content>>,
        manifest_known: bool,
        now: Instant,
    ) -> Result<(), SessionError> {
        match content {
            Some(c) => self.on_content(c, now),
            None => {
                if !manifest_known && !self.manifest_asked {
                    self.manifest_asked = true;
                    self.send(Message::ManifestRequest, now);
                }
                Ok(())
            }
        }
    }

    /// The swarm's content became known.
    pub fn on_content(&mut self, content: Arc<Content>, now: Instant) -> Result<(), SessionError> {
        if self.content.is_some() {
            return Ok(());
        }
        self.content = Some(content.clone());
        if self.remote_wants_manifest {
            self.send(
                Message::Manifest {
                    bytes: content.manifest_bytes.clone(),
                },
                now,
            );
        }
        self.send_bitfield(now);
        if let Some(bits) = self.early_bitfield.take() {
            self.on_bitfield(bits, now)?;
        }
        for piece in std::mem::take(&mut self.early_haves) {
            self.on_have(piece, now)?;
        }
        self.refill(now);
        Ok(())
    }

    /// Sends our whole bitfield (at the start, and when we lost track of
    /// which HAVEs we sent).
    pub fn send_bitfield(&mut self, now: Instant) {
        if self.content.is_none() {
            return;
        }
        let bits = self.pieces.lock().have().as_bytes().to_vec();
        self.send(Message::Bitfield { bits }, now);
    }

    /// We hold a new piece (verified by any session).
    pub fn on_local_have(&mut self, piece: u32, now: Instant) {
        // Endgame: someone else delivered a piece we are fetching here.
        if let Some(i) = self.jobs.iter().position(|j| j.piece == piece) {
            let job = self.jobs.swap_remove(i);
            let mut offset = job.next_receive;
            while offset < job.next_request {
                let len = BLOCK_SIZE.min(job.len - offset);
                self.send(Message::Cancel { piece, offset, len }, now);
                offset += len;
            }
            let blocks = job.outstanding();
            self.in_flight -= blocks as usize;
            self.stray += blocks;
            let mut p = self.pieces.lock();
            p.release(piece);
            p.release_writer(piece, self.id);
        }
        if !self.remote_have.as_ref().is_some_and(|h| h.get(piece)) {
            self.send(Message::Have { piece }, now);
        } else if self.pieces.lock().have().is_full() {
            // The remote gets no HAVE for a piece it holds: our whole
            // bitfield tells it we now hold a whole copy (a sharer counts
            // its copies so).
            self.send_bitfield(now);
        }
        self.refill(now);
    }

    /// Tells the swarm when the remote holds every piece.
    fn note_remote_complete(&self) {
        let (Some(content), Some(field)) = (&self.content, &self.remote_have) else {
            return;
        };
        let n = content.manifest.piece_count();
        if n > 0 && field.count() == n {
            self.pieces.peer_complete(self.listed);
        }
    }

    /// A message from the peer. `queued`: blocks the peer asked for that
    /// the writer has not sent yet.
    pub fn on_message(
        &mut self,
        m: Message,
        queued: usize,
        now: Instant,
    ) -> Result<(), SessionError> {
        match m {
            Message::KeepAlive => {}
            Message::Hello { .. } | Message::Proof { .. } => {
                return Err(self.protocol("handshake message after the handshake"))
            }
            // Taken by the I/O loop's peer exchange when 2.1 was agreed.
            Message::PeerExchange { .. } => {
                return Err(self.protocol("peer exchange without hayedik/2.1"))
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
                    return Err(self.protocol("asked for the manifest twice"));
                }
                self.manifest_requested = true;
                match &self.content {
                    Some(c) => {
                        let bytes = c.manifest_bytes.clone();
                        self.send(Message::Manifest { bytes }, now);
                    }
                    None => self.remote_wants_manifest = true,
                }
            }
            Message::Manifest { bytes } => self.on_manifest(bytes)?,
            Message::Bitfield { bits } => self.on_bitfield(bits, now)?,
            Message::Have { piece } => {
                if self.content.is_none() {
                    // Checked once the piece count is known; bounded by the
                    // largest piece count a manifest may have.
                    if self.early_haves.len() < hayedik_proto::manifest::MAX_PIECES as usize {
                        self.early_haves.push(piece);
                    }
                    return Ok(());
                }
                self.on_have(piece, now)?;
            }
            Message::Request { piece, offset, len } => {
                self.on_request(piece, offset, len, queued, now)
            }
            Message::Cancel { piece, offset, .. } => {
                self.commands.push_back(Command::Unserve { piece, offset })
            }
            Message::Reject { piece, .. } => {
                if self.jobs.iter().any(|j| j.piece == piece) {
                    self.abandon(piece);
                    // The rejected block will not come; the others may.
                    self.stray = self.stray.saturating_sub(1);
                    self.refused.insert(piece);
                }
                self.refill(now);
            }
            Message::Block {
                piece,
                offset,
                data,
            } => self.on_block(piece, offset, data, now)?,
        }
        Ok(())
    }

    fn on_manifest(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        if !self.manifest_asked {
            return Err(self.protocol("sent a manifest nobody asked for"));
        }
        if self.content.is_some() {
            return Ok(());
        }
        // The root is what the ticket names: a manifest that does not hash
        // to it is a lie, and costs the peer a strike (as every protocol
        // error does).
        if blake3::hash(&bytes).as_bytes() != &self.root {
            return Err(self.protocol("manifest does not match the ticket"));
        }
        match Manifest::decode(&bytes) {
            Ok(manifest) => {
                self.commands
                    .push_back(Command::OfferManifest { manifest, bytes });
                Ok(())
            }
            Err(e) => {
                // Authentic but unusable (a hostile name...): the content
                // itself is at fault, so no other peer can do better.
                self.commands
                    .push_back(Command::Fail(Fatal::UnusableManifest(e.to_string())));
                Err(self.protocol(format!("unusable manifest: {e}")))
            }
        }
    }

    fn on_bitfield(&mut self, bits: Vec<u8>, now: Instant) -> Result<(), SessionError> {
        let Some(content) = &self.content else {
            self.early_bitfield = Some(bits);
            return Ok(());
        };
        let n = content.manifest.piece_count();
        let field = WireBitfield::from_bytes(&bits, n)
            .map_err(|e| self.protocol(format!("bad bitfield: {e}")))?;
        let old = self.remote_have.replace(field.clone());
        {
            let mut p = self.pieces.lock();
            for i in 0..n {
                let before = old.as_ref().is_some_and(|o| o.get(i));
                let now = field.get(i);
                if now && !before {
                    p.add_availability(i);
                } else if before && !now {
                    p.remove_availability(i);
                }
            }
        }
        self.note_remote_complete();
        self.refill(now);
        Ok(())
    }

    fn on_have(&mut self, piece: u32, now: Instant) -> Result<(), SessionError> {
        let Some(content) = &self.content else {
            return Ok(());
        };
        let n = content.manifest.piece_count();
        if piece >= n {
            return Err(self.protocol(format!("HAVE for piece {piece} out of range")));
        }
        let field = self.remote_have.get_or_insert_with(|| WireBitfield::new(n));
        if !field.get(piece) {
            field.set(piece);
            self.pieces.lock().add_availability(piece);
            self.note_remote_complete();
        }
        self.refill(now);
        Ok(())
    }

    fn on_request(&mut self, piece: u32, offset: u32, len: u32, queued: usize, now: Instant) {
        let at = self.content.as_ref().and_then(|c| {
            let plen = c.layout.piece_len(piece);
            let ok = piece < c.manifest.piece_count()
                && (1..=MAX_BLOCK).contains(&len)
                && u64::from(offset) + u64::from(len) <= plen;
            ok.then(|| c.layout.piece_offset(piece) + u64::from(offset))
        });
        match at {
            Some(at) if queued < MAX_REMOTE_QUEUE && self.pieces.lock().has(piece) => {
                self.commands.push_back(Command::Serve {
                    piece,
                    offset,
                    len,
                    at,
                });
                self.last_sent = now;
            }
            _ => self.send(Message::Reject { piece, offset, len }, now),
        }
    }

    fn on_block(
        &mut self,
        piece: u32,
        offset: u32,
        data: Vec<u8>,
        now: Instant,
    ) -> Result<(), SessionError> {
        let Some(i) = self
            .jobs
            .iter()
            .position(|j| j.piece == piece && j.next_receive == offset && offset < j.next_request)
        else {
            self.commands.push_back(Command::Recycle(data));
            // Cancelled: expected. Unrequested or duplicate: tolerated a
            // little, then the peer is dropped; at once if we never asked
            // it for anything.
            if !self.requested_any {
                return Err(self.protocol("sent a block nobody asked for"));
            }
            if self.stray > 0 {
                self.stray -= 1;
                return Ok(());
            }
            self.junk += 1;
            if self.junk > MAX_JUNK_BLOCKS {
                return Err(self.protocol("too many unrequested blocks"));
            }
            return Ok(());
        };
        let expect = BLOCK_SIZE.min(self.jobs[i].len - offset);
        if data.len() != expect as usize {
            return Err(self.protocol(format!(
                "block of {} bytes where {expect} were asked",
                data.len()
            )));
        }
        self.last_block = now;
        self.in_flight -= 1;
        let Some(content) = self.content.clone() else {
            return Ok(());
        };
        let n = data.len() as u32;
        let job = &mut self.jobs[i];
        let at = job.base + u64::from(offset);
        job.next_receive += n;
        let last = job.next_receive >= job.len;
        if let Fetch::Stream(stream) = &job.fetch {
            let stream = stream.clone();
            if last {
                // The disk thread concludes the piece from here on.
                self.jobs.swap_remove(i);
                self.concluding.insert(piece);
            }
            // Ask for the next blocks first, so the peer keeps sending
            // while the disk works.
            self.refill(now);
            self.commands.push_back(Command::Disk(Work::Block {
                content,
                stream,
                at,
                data,
                last,
            }));
            return Ok(());
        }
        if let Fetch::Duplicate { hasher, buffer, .. } = &mut job.fetch {
            // Endgame duplicate: memory only, until it verifies.
            hasher.update(&data);
            buffer.extend_from_slice(&data);
        }
        self.commands.push_back(Command::Recycle(data));
        if !last {
            self.refill(now);
            return Ok(());
        }
        let job = self.jobs.swap_remove(i);
        let Fetch::Duplicate {
            hasher,
            buffer,
            permit,
        } = job.fetch
        else {
            return Ok(());
        };
        let good = Some(hasher.finalize().as_bytes()) == content.manifest.piece_hash(piece);
        if !good {
            if self.pieces.bad_piece(piece, self.id, self.listed) {
                return Err(self.banned(now));
            }
            self.refill(now);
            return Ok(());
        }
        self.concluding.insert(piece);
        self.commands.push_back(Command::Disk(Work::Whole {
            content,
            piece,
            id: self.id,
            listed: self.listed,
            at: job.base,
            data: buffer,
            replies: self.disk_tx.clone(),
            permit,
        }));
        self.refill(now);
        Ok(())
    }

    /// What the disk thread found about one of our pieces.
    pub fn on_disk(&mut self, reply: DiskReply, now: Instant) -> Result<(), SessionError> {
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
                self.refill(now);
                Ok(())
            }
            DiskReply::Concluded { piece } => {
                self.concluding.remove(&piece);
                self.refill(now);
                Ok(())
            }
            DiskReply::Banned => Err(self.banned(now)),
            DiskReply::Failed(fatal) => Err(SessionError::Fatal(fatal)),
        }
    }

    /// Drops the job for `piece`: its outstanding blocks become strays.
    fn abandon(&mut self, piece: u32) {
        if let Some(i) = self.jobs.iter().position(|j| j.piece == piece) {
            let job = self.jobs.swap_remove(i);
            let blocks = job.outstanding();
            self.in_flight -= blocks as usize;
            self.stray += blocks;
            let mut p = self.pieces.lock();
            if matches!(job.fetch, Fetch::Stream(_)) {
                p.release_writer(piece, self.id);
            }
            p.release(piece);
        }
    }

    /// The peer is banned: tells it why and ends the session.
    fn banned(&mut self, now: Instant) -> SessionError {
        self.send(Message::goodbye("you sent pieces that do not verify"), now);
        SessionError::Banned { peer: self.listed }
    }

    /// Keeps [`PIPELINE_BLOCKS`] requests in flight.
    fn refill(&mut self, now: Instant) {
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
                    self.last_block = now;
                }
                self.send(Message::Request { piece, offset, len }, now);
                self.requested_any = true;
                continue;
            }
            if !self.add_job(&content, &remote, now) {
                break;
            }
        }
    }

    /// Picks a piece for a new job; false when there is none to pick.
    fn add_job(&mut self, content: &Content, remote: &WireBitfield, now: Instant) -> bool {
        let busy: Vec<u32> = self.jobs.iter().map(|j| j.piece).collect();
        let mut p = self.pieces.lock();
        let (refused, concluding) = (&self.refused, &self.concluding);
        let Some(piece) = p.pick(
            |i| remote.get(i),
            |i| busy.contains(&i) || refused.contains(&i) || concluding.contains(&i),
            &mut self.rng,
        ) else {
            return false;
        };
        let Ok(len) = u32::try_from(content.layout.piece_len(piece)) else {
            p.release(piece);
            return false;
        };
        let fetch = if p.claim_writer(piece, self.id) {
            if len == 0 {
                // An empty piece verifies against the hash of nothing.
                let good = content.manifest.piece_hash(piece) == Some(blake3::hash(&[]).as_bytes());
                if !good {
                    p.release(piece);
                    p.release_writer(piece, self.id);
                    return false;
                }
                drop(p);
                let mark = || content.mark_verified(piece);
                self.pieces
                    .verified(piece, self.id, Some(self.listed), now, mark);
                return true;
            }
            self.next_stream += 1;
            Fetch::Stream(PieceStream::new(
                piece,
                self.id,
                self.next_stream,
                self.listed,
                self.disk_tx.clone(),
            ))
        } else if let Some(permit) = (len > 0 && len <= MAX_DUPLICATE_PIECE)
            .then(|| self.pieces.duplicate_permit())
            .flatten()
        {
            Fetch::Duplicate {
                hasher: Box::default(),
                buffer: Vec::with_capacity(len as usize),
                permit,
            }
        } else {
            // Someone else writes it and we may not duplicate it.
            p.release(piece);
            return false;
        };
        drop(p);
        self.jobs.push(Job {
            piece,
            base: content.layout.piece_offset(piece),
            len,
            next_request: 0,
            next_receive: 0,
            fetch,
        });
        true
    }

    /// Once a second or so: stalls, unread output, keep-alives. `unsent`:
    /// bytes queued for the peer and not written to its socket yet.
    pub fn on_tick(&mut self, unsent: usize, now: Instant) -> Result<(), SessionError> {
        if self.pieces.lock().is_banned(&self.listed) {
            // Banned from elsewhere: another session with the same peer, or
            // the disk thread concluding pieces of a session already gone.
            return Err(self.banned(now));
        }
        if Self::wants_input(unsent) {
            self.unsent_since = None;
        } else if now.duration_since(*self.unsent_since.get_or_insert(now)) > WRITE_STALL_TIMEOUT {
            return Err(self.protocol(format!(
                "left {unsent} bytes we sent unread for {} s",
                WRITE_STALL_TIMEOUT.as_secs()
            )));
        }
        if self.in_flight > 0 && now.duration_since(self.last_block) > STALL_TIMEOUT {
            return Err(SessionError::Stalled { peer: self.remote });
        }
        if now.duration_since(self.last_sent) > KEEPALIVE_EVERY {
            self.send(Message::KeepAlive, now);
        }
        // Pieces may have been released by other sessions.
        self.refill(now);
        Ok(())
    }

    /// The session ends: gives every assigned piece back and forgets what
    /// the peer announced. Blocks already handed to the disk thread are
    /// concluded by it.
    pub fn release_all(&mut self) {
        let jobs: Vec<u32> = self.jobs.drain(..).map(|j| j.piece).collect();
        let remote = self.remote_have.take();
        let mut p = self.pieces.lock();
        for piece in jobs {
            p.release_writer(piece, self.id);
            p.release(piece);
        }
        if let Some(r) = remote {
            for i in 0..r.len() {
                if r.get(i) {
                    p.remove_availability(i);
                }
            }
        }
        self.in_flight = 0;
    }
}
