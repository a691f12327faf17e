//! The peer's side of the relay: [`dial`] opens a session to a relayed peer,
//! [`spawn_registration`] keeps a control connection open and takes the
//! sessions the relay announces on it. Both hand the spliced stream to the
//! peer session (`run_over`), whose TLS runs end to end through the relay.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hayedik_proto::relay::{Hello, Status, FRAME_INCOMING, FRAME_PING};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::peer::node::Paths;
use crate::peer::session;
use crate::peer::slots::Activity;
use crate::peer::swarm::Swarm;

/// Time allowed to connect to the relay and get its answer.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(12);
/// A registered peer sends a keepalive this often (the relay closes a
/// control connection silent for its idle limit, 60 s by default).
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Sessions taken through the relay at once.
pub const MAX_RELAYED_INCOMING: usize = 64;

/// Why a relay did not give us a stream.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay at {relay}: {source}")]
    Io {
        relay: SocketAddr,
        source: std::io::Error,
    },
    #[error("relay at {relay} did not answer in time")]
    Timeout { relay: SocketAddr },
    #[error("relay at {relay} refused: {status}")]
    Refused { relay: SocketAddr, status: String },
}

/// Connects to `relay`, sends `hello` and reads the answer byte.
async fn open(relay: SocketAddr, hello: Hello) -> Result<TcpStream, RelayError> {
    let io = |source| RelayError::Io { relay, source };
    let attempt = async {
        let mut s = TcpStream::connect(relay).await.map_err(io)?;
        let _ = s.set_nodelay(true);
        s.write_all(&hello.to_vec()).await.map_err(io)?;
        let status = s.read_u8().await.map_err(io)?;
        match Status::from_u8(status) {
            Some(Status::Ok) => Ok(s),
            other => Err(RelayError::Refused {
                relay,
                status: match other {
                    Some(Status::NotFound) => "no such peer registered".into(),
                    Some(Status::Busy) => "busy (a cap or rate limit)".into(),
                    Some(Status::TimedOut) => "the peer did not take the session".into(),
                    Some(Status::Malformed) => "malformed hello".into(),
                    _ => format!("unknown status {status}"),
                },
            }),
        }
    };
    tokio::time::timeout(RELAY_TIMEOUT, attempt)
        .await
        .map_err(|_| RelayError::Timeout { relay })?
}

/// A stream to the peer listed at `target`, spliced by `relay`.
pub async fn dial(
    relay: SocketAddr,
    key: [u8; 32],
    target: SocketAddr,
) -> Result<TcpStream, RelayError> {
    open(relay, Hello::Dial { key, target }).await
}

/// Keeps us registered at `relay` under `key` and `port` until the swarm
/// is cancelled, reconnecting with backoff; `registered` says whether we
/// are now. Every session the relay announces runs as an accepted session.
pub fn spawn_registration(
    swarm: Arc<Swarm>,
    relay: SocketAddr,
    key: [u8; 32],
    registered: watch::Sender<bool>,
    paths: Arc<Paths>,
) {
    let port = swarm.listen_port;
    crate::spawn::spawn(&format!("relay registration {relay}"), async move {
        let cancel = swarm.cancel.clone();
        let sessions = Arc::new(Semaphore::new(MAX_RELAYED_INCOMING));
        let mut backoff = Duration::from_secs(1);
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = open(relay, Hello::Register { key, port }) => r,
            };
            match result {
                Ok(control) => {
                    backoff = Duration::from_secs(1);
                    registered.send_replace(true);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = serve_control(&swarm, relay, control, &sessions, &paths) => {
                            tracing::info!("relay at {relay}: control connection ended: {r:?}");
                        }
                    }
                    registered.send_replace(false);
                }
                Err(e) => tracing::warn!("registering at the relay: {e}"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    });
}

async fn serve_control(
    swarm: &Arc<Swarm>,
    relay: SocketAddr,
    control: TcpStream,
    sessions: &Arc<Semaphore>,
    paths: &Arc<Paths>,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = control.into_split();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    loop {
        tokio::select! {
            _ = keepalive.tick() => wr.write_all(&[FRAME_PING]).await?,
            frame = rd.read_u8() => match frame? {
                FRAME_PING => {}
                FRAME_INCOMING => {
                    let id = rd.read_u64().await?;
                    let dialer = match rd.read_u8().await? {
                        4 => {
                            let mut a = [0u8; 4];
                            rd.read_exact(&mut a).await?;
                            IpAddr::from(a)
                        }
                        6 => {
                            let mut a = [0u8; 16];
                            rd.read_exact(&mut a).await?;
                            IpAddr::from(a)
                        }
                        f => return Err(std::io::Error::other(format!("relay sent family {f}"))),
                    };
                    let Ok(permit) = sessions.clone().try_acquire_owned() else {
                        tracing::debug!("relay session {id}: too many relayed sessions, ignored");
                        continue;
                    };
                    let swarm = swarm.clone();
                    let paths = paths.clone();
                    crate::spawn::spawn(&format!("relayed session {id}"), async move {
                        take_session(swarm, relay, id, dialer, &paths).await;
                        drop(permit);
                    });
                }
                other => {
                    return Err(std::io::Error::other(format!("relay sent unknown frame {other}")));
                }
            },
        }
    }
}

/// Takes session `id`, dialed by a getter at `dialer`: the session is
/// keyed by that IP and the port the getter's handshake names (its listed
/// address when its NAT keeps one public IP), and counted as relayed.
async fn take_session(
    swarm: Arc<Swarm>,
    relay: SocketAddr,
    id: u64,
    dialer: IpAddr,
    paths: &Paths,
) {
    let stream = match open(relay, Hello::Accept { id }).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("taking relayed session {id}: {e}");
            return;
        }
    };
    let cancel = swarm.cancel.child_token();
    let activity = Arc::new(Activity::new(Instant::now()));
    paths.relayed_from(dialer);
    let remote = SocketAddr::new(dialer, relay.port());
    if let Err(e) = session::run_over(swarm, stream, remote, None, cancel, activity).await {
        tracing::debug!("relayed session {id} ended: {e}");
    }
}
