//! The I/O loop of a session: the secure channel and the handshake inside
//! it, then the reader and writer tasks and the loop that feeds the [`Session`] state and carries out
//! its [`Command`]s. Nothing here decides anything about the protocol.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hayedik_proto::peer::{Message, Role};
use rand::SeedableRng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::state::{Command, Peer, Session};
use super::{SessionError, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT};
use crate::peer::disk::DiskReply;
use crate::peer::handshake::{self, Keys};
use crate::peer::pex::PexSession;
use crate::peer::secure;
use crate::peer::serve::{self, Out, Outbox, ServeCtx};
use crate::peer::slots::Activity;
use crate::peer::swarm::Swarm;
use crate::peer::wire::{self, FrameReader, FrameWriter, WireError};

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// How long the writer may take to send what is queued once the session
/// ended, before it is aborted (a peer that does not read).
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// Runs a session on `stream` until it ends. `dialed` is the listed address
/// we connected to (outgoing), `None` for an accepted connection.
///
/// `cancel` ends the session (the swarm stopping, or an eviction by the
/// listener's [`crate::peer::slots::Slots`]); `activity` is touched
/// whenever the peer asks for something or sends data.
pub async fn run(
    swarm: Arc<Swarm>,
    stream: TcpStream,
    dialed: Option<SocketAddr>,
    cancel: CancellationToken,
    activity: Arc<Activity>,
) -> Result<(), SessionError> {
    let remote = match stream.peer_addr() {
        Ok(a) => a,
        Err(e) => {
            return Err(SessionError::Wire {
                peer: dialed.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                source: WireError::Io(e),
            })
        }
    };
    let _ = stream.set_nodelay(true);
    if let Ok(local) = stream.local_addr() {
        swarm.pex.note_own_ip(local.ip());
    }
    run_over(swarm, stream, remote, dialed, cancel, activity).await
}

/// [`run`] over any byte stream (a relayed or hole-punched connection as
/// well as TCP): the secure channel runs end to end inside it. `remote`
/// is the address the stream comes from.
pub async fn run_over<S>(
    swarm: Arc<Swarm>,
    stream: S,
    remote: SocketAddr,
    dialed: Option<SocketAddr>,
    cancel: CancellationToken,
    activity: Arc<Activity>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let result = run_session(swarm.clone(), stream, remote, dialed, cancel, activity).await;
    if let Err(e) = &result {
        // A peer we dialled that closes at our ClientHello (an old,
        // version 1 peer) is no fault, but it is why nothing comes from
        // it: the user is told if the download stalls.
        let old_peer = dialed.is_some()
            && matches!(
                e,
                SessionError::Secure {
                    source: secure::SecureError::ClosedInHandshake,
                    ..
                }
            );
        if e.is_peers_fault() || old_peer {
            swarm.peer_failed(e.to_string());
        }
    }
    result
}

async fn run_session<S>(
    swarm: Arc<Swarm>,
    stream: S,
    remote: SocketAddr,
    dialed: Option<SocketAddr>,
    cancel: CancellationToken,
    activity: Arc<Activity>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let role = if dialed.is_some() {
        Role::Initiator
    } else {
        Role::Responder
    };
    let keys = Keys {
        swarm_key: swarm.swarm_key,
        auth_key: swarm.auth_key,
        listen_port: swarm.listen_port,
        nonces: swarm.nonces.clone(),
    };
    // TLS, then the Hellos and proofs inside it, all within the timeout.
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let channel = match role {
            Role::Initiator => secure::connect(stream).await,
            Role::Responder => secure::accept(stream).await,
        }
        .map_err(|source| SessionError::Secure {
            peer: remote,
            source,
        })?;
        let (rd, wr) = tokio::io::split(channel.stream);
        let mut reader = FrameReader::new(Box::new(rd));
        let mut writer = FrameWriter::new(Box::new(wr));
        let port = handshake::run(
            &keys,
            channel.binding,
            &mut reader,
            &mut writer,
            remote,
            role,
        )
        .await?;
        Ok::<_, SessionError>((reader, writer, port, channel.pex))
    });
    let (reader, mut writer, listen_port, pex) = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = handshake => r.map_err(|_| SessionError::HandshakeTimeout { peer: remote })??,
    };
    let listed = dialed.unwrap_or_else(|| {
        let port = if listen_port == 0 {
            remote.port()
        } else {
            listen_port
        };
        SocketAddr::new(remote.ip(), port)
    });
    if swarm.is_banned(&listed) {
        let _ = writer.send(&Message::goodbye("banned")).await;
        return Err(SessionError::Banned { peer: listed });
    }
    swarm.connected(listed, dialed.is_some() || listen_port != 0);
    let peer = Peer {
        id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
        remote,
        listed,
    };
    let pex = PexSession::new(pex, listed, remote, Instant::now());
    let result = serve(&swarm, reader, writer, peer, pex, cancel, activity).await;
    swarm.disconnected(listed);
    result
}

/// What the loop holds besides the state.
struct Io<'a> {
    swarm: &'a Arc<Swarm>,
    out: mpsc::UnboundedSender<Out>,
    outbox: Arc<Outbox>,
    activity: Arc<Activity>,
    pex: PexSession,
}

/// Messages read from the peer and not yet taken by the session's loop.
const IN_MESSAGES: usize = 2;

async fn serve(
    swarm: &Arc<Swarm>,
    mut reader: FrameReader,
    writer: FrameWriter,
    peer: Peer,
    pex: PexSession,
    cancel: CancellationToken,
    activity: Arc<Activity>,
) -> Result<(), SessionError> {
    let (remote, listed) = (peer.remote, peer.listed);
    // Few messages: blocks beyond these wait in the socket's buffer, which
    // keeps a download's memory bounded however many peers it has. 2
    // rather than 4: a 1 -> 1 getter's peak RSS 10.1 -> 9.1 MB (medians
    // of 5, 256 MiB); the disk thread's queue, not this one, is what
    // keeps the disk busy.
    let (in_tx, mut in_rx) = mpsc::channel(IN_MESSAGES);
    // Unbounded in count, bounded in bytes: the loop stops reading from the
    // peer while `outbox` holds more than MAX_UNSENT bytes of frames, and
    // the peer may have MAX_REMOTE_QUEUE blocks queued.
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let outbox = Arc::new(Outbox::default());
    let (disk_tx, mut disk_rx) = mpsc::unbounded_channel();
    reader.set_pool(swarm.disk.pool.clone());
    let read_task = crate::spawn::spawn(
        &format!("read {remote}"),
        wire::read_loop(reader, in_tx, swarm.down_limit.clone(), IDLE_TIMEOUT),
    );
    let ctx = ServeCtx {
        pieces: swarm.pieces.clone(),
        content: swarm.content_rx(),
        up_limit: swarm.up_limit.clone(),
        uploaded: swarm.uploaded.clone(),
    };
    let mut write_task = crate::spawn::spawn(
        &format!("write {remote}"),
        serve::write_loop(writer, out_rx, ctx, outbox.clone()),
    );
    let mut session = Session::new(
        swarm.pieces.clone(),
        swarm.root,
        peer,
        disk_tx,
        rand::rngs::SmallRng::from_entropy(),
        Instant::now(),
    );
    let mut io = Io {
        swarm,
        out: out_tx,
        outbox,
        activity,
        pex,
    };
    let result = io
        .main_loop(&mut session, &mut in_rx, &mut disk_rx, &cancel)
        .await;
    if result.as_ref().is_err_and(SessionError::is_peers_fault) {
        // Breaking the protocol (a bad message, a bad frame, a TLS record
        // that does not decrypt) costs a strike, like bad data: a peer
        // that keeps doing it is banned instead of being dialed again and
        // again. Struck before the socket closes, so that the peer cannot
        // come back between its close and the strike.
        swarm.strike(listed);
    }
    session.release_all();
    // What the state queued last (a Goodbye...), but no more disk work.
    io.flush(&mut session);
    // Closing the channel ends the writer after what is queued.
    drop(io);
    read_task.abort();
    // A writer stuck on a peer that does not read is aborted, not left
    // holding the socket outside every cap.
    if tokio::time::timeout(WRITER_GRACE, &mut write_task)
        .await
        .is_err()
    {
        write_task.abort();
    }
    result
}

impl Io<'_> {
    fn send(&self, m: Message) {
        let mut bytes = Vec::new();
        m.encode(&mut bytes);
        self.outbox.pending.add(bytes.len());
        let _ = self.out.send(Out::Frame(bytes));
    }

    /// Carries out the commands the state queued.
    async fn execute(&mut self, s: &mut Session) -> Result<(), SessionError> {
        while let Some(c) = s.poll_command() {
            if let Command::Disk(work) = c {
                if let Err(fatal) = self.swarm.disk.write(work).await {
                    // No disk thread: no session of this download can go on.
                    self.swarm.fail(fatal.clone());
                    return Err(SessionError::Fatal(fatal));
                }
            } else {
                self.apply(c);
            }
        }
        Ok(())
    }

    /// Carries out what is queued except disk work (the session is over).
    fn flush(&mut self, s: &mut Session) {
        while let Some(c) = s.poll_command() {
            match c {
                Command::Disk(_) | Command::Serve { .. } => {}
                c => self.apply(c),
            }
        }
    }

    fn apply(&mut self, c: Command) {
        match c {
            Command::Send(m) => self.send(m),
            Command::Serve {
                piece,
                offset,
                len,
                at,
            } => {
                self.outbox.uncancel(piece, offset);
                self.outbox.queued.fetch_add(1, Ordering::Relaxed);
                let _ = self.out.send(Out::Serve {
                    piece,
                    offset,
                    len,
                    at,
                });
            }
            Command::Unserve { piece, offset } => self.outbox.cancel(piece, offset),
            Command::OfferManifest { manifest, bytes } => {
                self.swarm.offer_manifest(manifest, bytes)
            }
            Command::Fail(fatal) => self.swarm.fail(fatal),
            Command::Recycle(buf) => self.swarm.disk.pool.give(buf),
            Command::Disk(_) => {}
        }
    }

    async fn main_loop(
        &mut self,
        s: &mut Session,
        in_rx: &mut mpsc::Receiver<Result<Message, WireError>>,
        disk_rx: &mut mpsc::UnboundedReceiver<DiskReply>,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let swarm = self.swarm.clone();
        let mut content_rx = swarm.content_rx();
        let mut have_rx = swarm.have_rx();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let content = content_rx.borrow_and_update().clone();
        s.start(content, swarm.has_manifest(), Instant::now())?;
        loop {
            self.execute(s).await?;
            let unsent = self.outbox.pending.bytes();
            let reading = Session::wants_input(unsent);
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.send(Message::goodbye("closing"));
                    return Ok(());
                }
                // While the peer leaves our answers unread, its next
                // messages wait in TCP, not in our memory.
                _ = self.outbox.pending.drained(), if !reading => {}
                m = in_rx.recv(), if reading => match m {
                    Some(Ok(m)) => self.on_message(s, m)?,
                    Some(Err(e)) => {
                        return Err(SessionError::Wire { peer: s.remote(), source: e })
                    }
                    None => return Ok(()),
                },
                r = content_rx.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    let c = content_rx.borrow_and_update().clone();
                    if let Some(c) = c {
                        s.on_content(c, Instant::now())?;
                    }
                }
                Some(r) = disk_rx.recv() => s.on_disk(r, Instant::now())?,
                h = have_rx.recv() => match h {
                    Ok(piece) => s.on_local_have(piece, Instant::now()),
                    Err(broadcast::error::RecvError::Lagged(_)) => s.send_bitfield(Instant::now()),
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tick.tick() => {
                    s.on_tick(unsent, Instant::now())?;
                    let peers = swarm.connected_peers();
                    if let Some(m) = self.pex.poll(Instant::now(), &peers) {
                        self.send(m);
                    }
                }
            }
        }
    }

    fn on_message(&mut self, s: &mut Session, m: Message) -> Result<(), SessionError> {
        let now = Instant::now();
        match &m {
            Message::Block { data, .. } => {
                self.activity.touch(now);
                self.swarm
                    .downloaded
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Message::Request { .. } | Message::ManifestRequest => self.activity.touch(now),
            Message::PeerExchange { added, .. } => {
                let swarm = self.swarm;
                let found = self
                    .pex
                    .on_message(added, now, &swarm.pex, swarm.listen_port)
                    .map_err(|v| SessionError::Protocol {
                        peer: s.remote(),
                        what: v.to_string(),
                    })?;
                crate::peer::pex::offer(swarm, &found);
                return Ok(());
            }
            _ => {}
        }
        let queued = self.outbox.queued.load(Ordering::Relaxed);
        s.on_message(m, queued, now)
    }
}
