//! The relay's I/O: accept, read the hello, act on it, splice. Every
//! decision about caps is [`Book`]'s; this file only moves bytes and keeps
//! the time limits (hello, accept, idle, session).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hayedik_proto::relay::{Hello, HelloError, Status, FRAME_INCOMING, FRAME_PING, MAX_HELLO};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::book::{Book, Counters, Refusal};
use super::RelayLimits;
use crate::events::{Event, Events};

/// Time allowed to send the hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the relayed peer has to take a session.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the relay pings a control connection (so the peer sees a dead
/// relay) and reports its counters when they changed.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// Copy buffer per direction of a session.
const SPLICE_BUF: usize = 64 * 1024;

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves the relay on `listener` until `cancel` fires, reporting its
/// counters as `relay` events.
pub async fn serve(
    listener: TcpListener,
    limits: RelayLimits,
    events: Events,
    cancel: CancellationToken,
) {
    serve_observed(listener, limits, events, cancel, |_| {}).await
}

/// [`serve`], handing the relay's book to `observe` first (the tracker's
/// status page reads its counters).
pub async fn serve_observed(
    listener: TcpListener,
    limits: RelayLimits,
    events: Events,
    cancel: CancellationToken,
    observe: impl FnOnce(Arc<Mutex<Book>>),
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Connections handled at once: every registration and both ends of
    // every session, plus room for hellos in flight.
    let conns = Arc::new(Semaphore::new(
        limits.max_peers + 2 * limits.max_sessions + 64,
    ));
    let book = Arc::new(Mutex::new(Book::new(limits)));
    observe(book.clone());
    let report = |c: Counters| Event::Relay {
        addr: addr.clone(),
        peers: c.peers,
        sessions: c.sessions,
        sessions_total: c.sessions_total,
        refused: c.refused,
        bytes: c.bytes,
    };
    let mut last = lock(&book).counters;
    events.emit(report(last));
    let mut tick = tokio::time::interval(PING_EVERY);
    loop {
        let (stream, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let now = lock(&book).counters;
                if now != last {
                    events.emit(report(now));
                    last = now;
                }
                continue;
            }
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("relay: accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        if !lock(&book).admit_connection(from.ip(), Instant::now()) {
            tracing::debug!(%from, "relay: connection rate exceeded: closed");
            continue;
        }
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            lock(&book).counters.refused += 1;
            continue;
        };
        let (book, cancel) = (book.clone(), cancel.child_token());
        crate::spawn::spawn(&format!("relay {from}"), async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = connection(book, stream, from) => {
                    if let Err(e) = r {
                        tracing::debug!(%from, "relay connection: {e}");
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn connection(
    book: Arc<Mutex<Book>>,
    mut stream: TcpStream,
    from: SocketAddr,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; MAX_HELLO];
    let mut n = 0;
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match Hello::decode(&buf[..n]) {
                Ok((hello, used)) => return Ok::<_, std::io::Error>(Some((hello, used))),
                Err(HelloError::Invalid) => return Ok(None),
                Err(HelloError::Incomplete) => {}
            }
            let got = stream.read(&mut buf[n..]).await?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            n += got;
        }
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let Some((hello, used)) = hello else {
        stream.write_all(&[Status::Malformed as u8]).await?;
        return Ok(());
    };
    let early = buf[used..n].to_vec();
    match hello {
        Hello::Register { key, port } => control(book, stream, (key, from.ip(), port)).await,
        Hello::Dial { key, target } => {
            let reg = (key, target.ip().to_canonical(), target.port());
            dial(book, stream, from.ip(), reg, early).await
        }
        Hello::Accept { id } => {
            let taken = lock(&book).accept(from.ip(), id);
            match taken {
                Ok(tx) => {
                    // The dialing task answers both ends and splices;
                    // bytes the peer sent early are refused by design
                    // (it must wait for the answer).
                    let _ = tx.send(stream);
                    Ok(())
                }
                Err(_) => stream.write_all(&[Status::NotFound as u8]).await,
            }
        }
    }
}

fn status_of(r: Refusal) -> u8 {
    match r {
        Refusal::Busy => Status::Busy as u8,
        Refusal::NotFound => Status::NotFound as u8,
    }
}

/// A registered peer's control connection: INCOMING frames out, keepalives
/// in, until it closes or is idle too long.
async fn control(
    book: Arc<Mutex<Book>>,
    mut stream: TcpStream,
    key: super::book::RegKey,
) -> std::io::Result<()> {
    let key = (key.0, key.1.to_canonical(), key.2);
    let registered = lock(&book).register(key);
    let (id, mut incoming) = match registered {
        Ok(x) => x,
        Err(r) => return stream.write_all(&[status_of(r)]).await,
    };
    let idle = lock(&book).limits().idle;
    let result = async {
        stream.write_all(&[Status::Ok as u8]).await?;
        let (mut rd, mut wr) = stream.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut byte = [0u8; 1];
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            tokio::select! {
                s = incoming.recv() => {
                    let Some((id, dialer)) = s else { return Ok(()) };
                    wr.write_all(&incoming_frame(id, dialer)).await?;
                }
                _ = ping.tick() => wr.write_all(&[FRAME_PING]).await?,
                r = rd.read(&mut byte) => match r? {
                    0 => return Ok(()),
                    _ if byte[0] == FRAME_PING => deadline = tokio::time::Instant::now() + idle,
                    _ => return Err(std::io::Error::other("unexpected byte on a control connection")),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
                }
            }
        }
    }
    .await;
    lock(&book).unregister(key, id);
    result
}

/// INCOMING: type, session id, the dialer's IP (family 4 or 6, address).
fn incoming_frame(id: u64, dialer: IpAddr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(26);
    frame.push(FRAME_INCOMING);
    frame.extend_from_slice(&id.to_be_bytes());
    match dialer.to_canonical() {
        IpAddr::V4(ip) => {
            frame.push(4);
            frame.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            frame.push(6);
            frame.extend_from_slice(&ip.octets());
        }
    }
    frame
}

/// A getter's session: tell the peer, wait for it, splice.
async fn dial(
    book: Arc<Mutex<Book>>,
    mut getter: TcpStream,
    from: IpAddr,
    reg: super::book::RegKey,
    early: Vec<u8>,
) -> std::io::Result<()> {
    let dialed = lock(&book).dial(from, reg);
    let (id, rx) = match dialed {
        Ok(x) => x,
        Err(r) => return getter.write_all(&[status_of(r)]).await,
    };
    let limits = lock(&book).limits().clone();
    let mut carried = 0u64;
    let result = async {
        let mut peer = match tokio::time::timeout(ACCEPT_TIMEOUT, rx).await {
            Ok(Ok(s)) => s,
            _ => return getter.write_all(&[Status::TimedOut as u8]).await,
        };
        let _ = peer.set_nodelay(true);
        peer.write_all(&[Status::Ok as u8]).await?;
        getter.write_all(&[Status::Ok as u8]).await?;
        if !early.is_empty() {
            peer.write_all(&early).await?;
            carried += early.len() as u64;
        }
        splice(getter, peer, &limits, &mut carried).await
    }
    .await;
    lock(&book).session_ended(from, id, carried);
    result
}

/// Copies both ways until both sides closed, or a limit ends the session:
/// the byte budget (both ways together), the session time, or `idle`
/// without a byte either way.
async fn splice(
    a: TcpStream,
    b: TcpStream,
    limits: &RelayLimits,
    carried: &mut u64,
) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let used = AtomicU64::new(*carried);
    let start = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let budget = limits.session_bytes;
    let pump = |mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf| {
        let (used, last) = (&used, &last);
        async move {
            let mut buf = vec![0u8; SPLICE_BUF];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    let _ = w.shutdown().await;
                    return Ok::<(), std::io::Error>(());
                }
                let total = used.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                if total > budget {
                    return Err(std::io::Error::other("session byte budget spent"));
                }
                w.write_all(&buf[..n]).await?;
                let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                last.store(ms, Ordering::Relaxed);
            }
        }
    };
    let idle_watch = async {
        loop {
            let since = start + Duration::from_millis(last.load(Ordering::Relaxed));
            let due = since + limits.idle;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    let both = async { tokio::try_join!(pump(ar, bw), pump(br, aw)).map(|_| ()) };
    let result = tokio::select! {
        r = both => r,
        _ = tokio::time::sleep(limits.session_time) => Err(std::io::Error::other("session time budget spent")),
        _ = idle_watch => Err(std::io::Error::other("session idle")),
    };
    *carried = used.load(Ordering::Relaxed);
    result
}
