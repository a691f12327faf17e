//! Rogue peers: test helpers that speak the peer wire protocol of
//! `hayedik_proto::peer` and break it on purpose (the tests that set them on
//! honest peers are in `faults_rogue.rs`).
//!
//! - [`Wire`]: one connection of peer wire version 2 (TLS 1.3, with
//!   hayedik's own TLS configurations), blocking, with frame decoding and
//!   receive deadlines; [`Wire::handshake`] runs either side of the
//!   handshake inside the channel, with a right or a wrong proof; raw
//!   frames go inside the channel ([`Wire::send_raw`]), raw bytes and
//!   damaged records outside it ([`Wire::send_tcp`], [`Wire::seal`]).
//! - [`Served`]: content the way a sharer describes it (manifest, root,
//!   bytes), so a rogue can answer requests with real or damaged data.
//! - [`Rogue`]: a listening rogue peer with one [`Act`], on threads, logging
//!   what it saw in a [`Log`]; [`announce_seeder`] and [`create_swarm`] get
//!   it listed by a tracker.
//! - [`Slowloris`]: hundreds of idle connections, reopened when closed.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hayedik::peer::announce::TrackerClient;
use hayedik::peer::secure::{self, rustls};
use hayedik_proto::manifest::{
    choose_piece_size, hash_piece, peer_auth_key, swarm_key, FileEntry, Manifest,
};
use hayedik_proto::peer::{
    decode_frame, handshake_proof, verify_proof, Bitfield, Message, MessageType, Role,
};
use hayedik_proto::tracker::PeerState;

/// What [`Wire::recv`] got.
#[derive(Debug)]
pub enum Got {
    Msg(Message),
    /// The other side closed (or reset) the connection, or ended TLS with
    /// an alert.
    Closed,
    /// Nothing within the time given.
    Timeout,
    /// Bytes that are not a valid frame, or TLS records that do not decrypt.
    Invalid(String),
}

/// One peer connection of version 2, blocking: TLS 1.3 with hayedik's own
/// configurations ([`secure`]) over a TCP stream, driven by hand so that a
/// test can also write raw TCP bytes ([`Wire::send_tcp`]) or TLS records
/// it damaged first ([`Wire::seal`]).
pub struct Wire {
    pub stream: TcpStream,
    pub tls: rustls::Connection,
    /// The connection's channel binding (TLS exporter).
    pub binding: [u8; 32],
    buf: Vec<u8>,
}

impl Wire {
    /// A connection to `addr`, TLS set up as the dialling side.
    pub fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Wire::new(stream)
    }

    /// TLS as the dialling side on `stream`; panics if it fails.
    pub fn new(stream: TcpStream) -> Wire {
        Wire::client(stream).unwrap_or_else(|e| panic!("TLS as a client: {e}"))
    }

    /// TLS as the dialling side on `stream`.
    pub fn client(stream: TcpStream) -> Result<Wire, String> {
        let config = secure::client_config().map_err(|e| e.to_string())?;
        let conn = rustls::ClientConnection::new(config, secure::server_name())
            .map_err(|e| e.to_string())?;
        Wire::start(stream, conn.into())
    }

    /// TLS as the accepting side on `stream`.
    pub fn server(stream: TcpStream) -> Result<Wire, String> {
        let config = secure::server_config().map_err(|e| e.to_string())?;
        let conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
        Wire::start(stream, conn.into())
    }

    pub fn start(mut stream: TcpStream, mut tls: rustls::Connection) -> Result<Wire, String> {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        tls.set_buffer_limit(None);
        while tls.is_handshaking() {
            tls.complete_io(&mut stream)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        let binding = match &tls {
            rustls::Connection::Client(c) => secure::binding(c),
            rustls::Connection::Server(c) => secure::binding(c),
        }
        .map_err(|e| e.to_string())?;
        Ok(Wire {
            stream,
            tls,
            binding,
            buf: Vec::new(),
        })
    }

    /// Writes out what TLS has ready.
    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.stream)?;
        }
        Ok(())
    }

    pub fn send(&mut self, m: &Message) -> io::Result<()> {
        self.send_raw(&m.to_vec())
    }

    /// Any bytes, inside the channel.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.writer().write_all(bytes)?;
        self.flush()
    }

    /// Bytes straight onto TCP, outside TLS.
    pub fn send_tcp(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The TLS records that would carry `bytes`, not sent: to be damaged
    /// and sent with [`Wire::send_tcp`].
    pub fn seal(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.tls.writer().write_all(bytes);
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut out).is_err() {
                break;
            }
        }
        out
    }

    /// The next message within `limit`.
    pub fn recv(&mut self, limit: Duration) -> Got {
        let deadline = Instant::now() + limit;
        loop {
            match decode_frame(&self.buf) {
                Ok(Some((m, used))) => {
                    self.buf.drain(..used);
                    return Got::Msg(m);
                }
                Ok(None) => {}
                Err(e) => return Got::Invalid(e.to_string()),
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.tls.reader().read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Got::Closed,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.tls.read_tls(&mut self.stream) {
                Ok(_) => {
                    let processed = self.tls.process_new_packets();
                    let _ = self.flush();
                    match processed {
                        Ok(_) => {}
                        Err(rustls::Error::AlertReceived(_)) => return Got::Closed,
                        Err(e) => return Got::Invalid(format!("TLS: {e}")),
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Timeout
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Got::Closed,
            }
        }
    }

    /// Every message until the connection closes or `limit` passes; and
    /// whether it closed.
    pub fn until_closed(&mut self, limit: Duration) -> (Vec<Message>, bool) {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Msg(m) => got.push(m),
                Got::Closed => return (got, true),
                Got::Timeout => return (got, false),
                Got::Invalid(e) => panic!("an honest peer sent an invalid frame: {e}"),
            }
        }
    }

    /// The next message that `pred` accepts within `limit`, skipping the
    /// others (KeepAlive, Have...).
    pub fn recv_matching(&mut self, limit: Duration, pred: impl Fn(&Message) -> bool) -> Got {
        let deadline = Instant::now() + limit;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Msg(m) if !pred(&m) => continue,
                other => return other,
            }
        }
    }

    /// Runs the handshake inside the channel as `role` for the swarm of
    /// `root`, announcing `listen_port`, with a right proof or
    /// (`honest_proof == false`) a random one. Returns whether the other
    /// side's proof verified (false also when, as a responder with a wrong
    /// proof, the other side refused it with a Goodbye before proving).
    pub fn handshake(
        &mut self,
        root: &[u8; 32],
        role: Role,
        listen_port: u16,
        honest_proof: bool,
    ) -> Result<bool, String> {
        let auth = peer_auth_key(root);
        let tls = self.binding;
        let mine: [u8; 32] = rand::random();
        let hello = Message::hello(swarm_key(root), mine, listen_port);
        let limit = Duration::from_secs(10);
        if role == Role::Initiator {
            self.send(&hello).map_err(|e| e.to_string())?;
        }
        let theirs = match self.recv(limit) {
            Got::Msg(Message::Hello { nonce, .. }) => nonce,
            other => return Err(format!("expected Hello, got {other:?}")),
        };
        if role == Role::Responder {
            self.send(&hello).map_err(|e| e.to_string())?;
        }
        let mac = if honest_proof {
            handshake_proof(&auth, &tls, role, &theirs, &mine)
        } else {
            rand::random()
        };
        self.send(&Message::Proof { mac })
            .map_err(|e| e.to_string())?;
        match self.recv(limit) {
            Got::Msg(Message::Proof { mac }) => Ok(verify_proof(
                &auth,
                &tls,
                role.other(),
                &mine,
                &theirs,
                &mac,
            )),
            // A dialling peer refuses our wrong proof without proving.
            Got::Msg(Message::Goodbye { .. }) if role == Role::Responder && !honest_proof => {
                Ok(false)
            }
            other => Err(format!("expected Proof, got {other:?}")),
        }
    }
}

/// Connects to `addr` over plain TCP (no TLS), sends `bytes`, and reads
/// what comes back until the connection closes or `limit` passes: the
/// bytes, and whether it closed.
pub fn plain_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let _ = stream.write_all(bytes);
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        let _ = stream.set_read_timeout(Some(left));
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return (got, false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (got, true),
        }
    }
}

/// Content as a sharer describes it.
#[derive(Clone)]
pub struct Served {
    pub manifest: Manifest,
    /// What is sent for a ManifestRequest (normally `manifest.encode()`).
    pub manifest_bytes: Vec<u8>,
    pub root: [u8; 32],
    pub data: Arc<Vec<u8>>,
}

impl Served {
    /// The manifest `hayedik share` builds for a file named `name` holding
    /// `data` (not executable).
    pub fn file(name: &str, data: &[u8]) -> Served {
        let piece_size = choose_piece_size(data.len() as u64);
        let manifest = Manifest {
            files: vec![FileEntry {
                path: name.to_string(),
                size: data.len() as u64,
                executable: false,
                directory: false,
            }],
            piece_size,
            pieces: data.chunks(piece_size as usize).map(hash_piece).collect(),
        };
        let manifest_bytes = manifest.encode();
        Served {
            root: manifest.root(),
            manifest,
            manifest_bytes,
            data: Arc::new(data.to_vec()),
        }
    }

    /// A manifest with any `files` (hostile names included: nothing is
    /// checked) for `data`; the root is the hash of its encoding.
    pub fn hostile(files: Vec<FileEntry>, data: &[u8]) -> Served {
        let piece_size = 1 << 20;
        let manifest = Manifest {
            files,
            piece_size,
            pieces: data.chunks(piece_size as usize).map(hash_piece).collect(),
        };
        let manifest_bytes = manifest.encode();
        Served {
            root: *blake3::hash(&manifest_bytes).as_bytes(),
            manifest,
            manifest_bytes,
            data: Arc::new(data.to_vec()),
        }
    }

    pub fn piece_count(&self) -> u32 {
        self.manifest.piece_count()
    }

    /// The bytes a Request names, if they are in the content.
    pub fn block(&self, piece: u32, offset: u32, len: u32) -> Option<&[u8]> {
        let start = u64::from(piece) * u64::from(self.manifest.piece_size) + u64::from(offset);
        let end = start + u64::from(len);
        let piece_end = (u64::from(piece) + 1) * u64::from(self.manifest.piece_size);
        if end > piece_end {
            return None;
        }
        self.data
            .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
}

/// How a [`Rogue`] misbehaves on every connection it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Answers every Request with a Block of the right length and wrong bytes.
    Corrupt,
    /// Answers every Request with the right Block, twice.
    Duplicate,
    /// After its Bitfield, sends blocks nobody asked for.
    Unrequested,
    /// After the handshake, sends a frame whose length prefix is 0xFFFFFFFF.
    MaxLengthPrefix,
    /// After its Bitfield, sends a Have for a piece past the end.
    HaveOutOfRange,
    /// Answers ManifestRequest with `Served::manifest_bytes`, whatever they
    /// are (a manifest that does not match the ticket's root...).
    Manifest,
    /// Sends a wrong proof and records what the other side sends next.
    BadProof,
    /// Knows the root, but answers every Request with the right Block in a
    /// TLS record with one bit flipped.
    FlipRecord,
}

/// What a rogue saw.
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub accepted: u32,
    pub handshakes: u32,
    pub requests: u32,
    pub blocks_sent: u32,
    pub manifests_sent: u32,
    pub goodbyes: Vec<String>,
    /// When each connection ended (closed or reset by the other side).
    pub closed: Vec<Instant>,
    /// Kinds of messages received after the handshake.
    pub received: Vec<MessageType>,
}

/// A rogue peer listening on 127.0.0.1.
pub struct Rogue {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
}

impl Rogue {
    pub fn start(served: Served, act: Act) -> Rogue {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a rogue");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("rogue address");
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let served = Arc::new(served);
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        lock(&l).accepted += 1;
                        let (l, s, served) = (l.clone(), s.clone(), served.clone());
                        thread::spawn(move || match Wire::server(stream) {
                            Ok(w) => serve(w, &served, act, addr, &l, &s),
                            Err(_) => lock(&l).closed.push(Instant::now()),
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Rogue { addr, log, stop }
    }

    /// A copy of the log as it is now.
    pub fn log(&self) -> Log {
        lock(&self.log).clone()
    }

    /// Waits up to `limit` for `pred` to hold on the log.
    pub fn wait_log(&self, limit: Duration, pred: impl Fn(&Log) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if pred(&lock(&self.log)) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        pred(&lock(&self.log))
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// One accepted connection of a rogue.
fn serve(
    mut w: Wire,
    served: &Served,
    act: Act,
    me: SocketAddr,
    log: &Mutex<Log>,
    stop: &AtomicBool,
) {
    let honest_proof = act != Act::BadProof;
    match w.handshake(&served.root, Role::Responder, me.port(), honest_proof) {
        Ok(_) => lock(log).handshakes += 1,
        Err(_) => {
            lock(log).closed.push(Instant::now());
            return;
        }
    }
    let n = served.piece_count();
    let mut opening = Vec::new();
    if act != Act::BadProof {
        opening.push(Message::Bitfield {
            bits: Bitfield::full(n).as_bytes().to_vec(),
        });
    }
    match act {
        Act::MaxLengthPrefix => {
            let _ = w.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF, MessageType::Block as u8, 0, 0]);
        }
        Act::FlipRecord => {
            // The Bitfield goes out intact, so that it is asked for blocks.
        }
        Act::HaveOutOfRange => opening.push(Message::Have { piece: n + 7 }),
        Act::Unrequested => {
            for i in 0..64u32 {
                let piece = i % n.max(1);
                if let Some(data) = served.block(piece, 0, 16 << 10) {
                    opening.push(Message::Block {
                        piece,
                        offset: 0,
                        data: data.to_vec(),
                    });
                }
            }
        }
        _ => {}
    }
    for m in &opening {
        if w.send(m).is_err() {
            lock(log).closed.push(Instant::now());
            return;
        }
        if matches!(m, Message::Block { .. }) {
            lock(log).blocks_sent += 1;
        }
    }
    while !stop.load(Ordering::Relaxed) {
        let m = match w.recv(Duration::from_millis(200)) {
            Got::Msg(m) => m,
            Got::Timeout => continue,
            Got::Closed | Got::Invalid(_) => break,
        };
        lock(log).received.push(m.kind());
        let replies = answer(served, act, &m, log);
        for r in replies {
            let sent = if act == Act::FlipRecord && matches!(r, Message::Block { .. }) {
                let mut records = w.seal(&r.to_vec());
                let at = records.len() / 2;
                if let Some(b) = records.get_mut(at) {
                    *b ^= 0x10;
                }
                w.send_tcp(&records)
            } else {
                w.send(&r)
            };
            if sent.is_err() {
                lock(log).closed.push(Instant::now());
                return;
            }
        }
    }
    lock(log).closed.push(Instant::now());
}

/// A rogue's answers to `m`.
fn answer(served: &Served, act: Act, m: &Message, log: &Mutex<Log>) -> Vec<Message> {
    match m {
        Message::Goodbye { reason } => {
            lock(log).goodbyes.push(reason.clone());
            Vec::new()
        }
        Message::ManifestRequest if act != Act::BadProof => {
            lock(log).manifests_sent += 1;
            vec![Message::Manifest {
                bytes: served.manifest_bytes.clone(),
            }]
        }
        Message::Request { piece, offset, len } if act != Act::BadProof => {
            let mut l = lock(log);
            l.requests += 1;
            let Some(data) = served.block(*piece, *offset, *len) else {
                return vec![Message::Reject {
                    piece: *piece,
                    offset: *offset,
                    len: *len,
                }];
            };
            let mut data = data.to_vec();
            if act == Act::Corrupt {
                data.iter_mut().for_each(|b| *b ^= 0x5A);
            }
            let block = Message::Block {
                piece: *piece,
                offset: *offset,
                data,
            };
            let copies = if act == Act::Duplicate { 2 } else { 1 };
            l.blocks_sent += copies;
            vec![block; copies as usize]
        }
        _ => Vec::new(),
    }
}

/// Runs `f` on a fresh single-threaded tokio runtime.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// Lists `tcp_port` (on this machine) as a seeder of `root` in the swarm
/// tracker at `swarm`.
pub fn announce_seeder(swarm: SocketAddr, root: &[u8; 32], tcp_port: u16) {
    announce_as(swarm, &swarm_key(root), tcp_port, PeerState::Complete);
}

/// Lists `tcp_port` (on this machine) in the swarm of `key` at `swarm` in
/// `state`: all it takes is the swarm key.
pub fn announce_as(swarm: SocketAddr, key: &[u8; 32], tcp_port: u16, state: PeerState) {
    block_on(async {
        let mut client = TrackerClient::bind(swarm, *key, tcp_port)
            .await
            .expect("a tracker client");
        client
            .announce(state, 0)
            .await
            .unwrap_or_else(|e| panic!("announcing the rogue: {e}"));
    });
}

/// Creates a swarm for `root` at the central tracker `central` and lists
/// `tcp_port` in it as a seeder; returns the swarm's port.
pub fn create_swarm(central: SocketAddr, root: &[u8; 32], tcp_port: u16) -> u16 {
    block_on(async {
        let mut client =
            TrackerClient::create(central, swarm_key(root), tcp_port, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("creating a swarm: {e}"));
        client
            .announce(PeerState::Complete, 0)
            .await
            .unwrap_or_else(|e| panic!("announcing the rogue: {e}"));
        client.swarm_addr().port()
    })
}

/// Hundreds of idle TCP connections to one peer from 127.0.0.2: each sends
/// nothing, and is opened again (after `pause`) when the peer closes it.
pub struct Slowloris {
    stop: Arc<AtomicBool>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    /// Connections opened so far.
    pub opened: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Slowloris {
    pub fn start(target: SocketAddr, connections: usize, pause: Duration) -> Slowloris {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicUsize::new(0));
        let (s, o, n) = (stop.clone(), open.clone(), opened.clone());
        let thread = thread::spawn(move || {
            block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..connections {
                    let (s, o, n) = (s.clone(), o.clone(), n.clone());
                    tasks.push(tokio::spawn(async move {
                        idle_connection(target, pause, &s, &o, &n).await;
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Slowloris {
            stop,
            open,
            opened,
            thread: Some(thread),
        }
    }
}

async fn idle_connection(
    target: SocketAddr,
    pause: Duration,
    stop: &AtomicBool,
    open: &AtomicUsize,
    opened: &AtomicUsize,
) {
    use tokio::io::AsyncReadExt;
    let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0);
    while !stop.load(Ordering::Relaxed) {
        let connected = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(source)?;
            socket.connect(target).await
        }
        .await;
        if let Ok(mut stream) = connected {
            opened.fetch_add(1, Ordering::Relaxed);
            open.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 1024];
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        }
        tokio::time::sleep(pause).await;
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
