//! The QUIC side of a punched path (quinn): an endpoint on a socket that
//! shares the announce socket's port (SO_REUSEPORT), and one bidirectional
//! stream per connection for the private wire.
//!
//! QUIC's TLS uses this process's ephemeral certificate and accepts any
//! (`secure::client_config`): who the peer is, is proved inside, by the
//! private wire's handshake bound to the ticket, exactly as on TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Join;

use crate::peer::secure;

/// The private wire's byte stream over one QUIC stream.
pub type Stream = Join<quinn::RecvStream, quinn::SendStream>;

const ALPN: &[u8] = b"hayedik-punch/1";

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // The private wire is one stream: no other streams from the peer.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    // A first Initial that reaches the other router before that side's
    // punch is dropped: with QUIC's default initial RTT (333 ms) the
    // retransmission came ~1 s later (measured in the lab: 9 of 20
    // home->home runs at 1.3 s to the first byte instead of 0.3 s).
    t.initial_rtt(Duration::from_millis(50));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(60)) {
        t.max_idle_timeout(Some(idle));
    }
    // Room for a fast path: the default windows cap throughput per RTT.
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    Arc::new(t)
}

fn configs() -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let mut server = (*secure::server_config()?).clone();
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.max_early_data_size = 0;
    let mut client = (*secure::client_config()?).clone();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(server))?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(client))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport());
    // Punched peers are allowed by address already: no retry round trip.
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport());
    Ok((server, client))
}

/// A UDP socket bound to `local` with SO_REUSEPORT (the announce socket
/// holds the same port).
#[cfg(unix)]
pub(super) fn shared_socket(local: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if local.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&local.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(not(unix))]
pub(super) fn shared_socket(_local: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no SO_REUSEPORT on this system",
    ))
}

/// The endpoint on `announce`'s port, and a duplicate of its socket for
/// punch datagrams.
pub fn endpoint(announce: SocketAddr) -> anyhow::Result<(quinn::Endpoint, std::net::UdpSocket)> {
    let socket = shared_socket(announce)?;
    let raw = socket.try_clone()?;
    let (server, client) = configs()?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for QUIC"))?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )?;
    endpoint.set_default_client_config(client);
    Ok((endpoint, raw))
}

/// Connects to `udp` and opens the private wire's stream.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    udp: SocketAddr,
) -> anyhow::Result<(quinn::Connection, Stream)> {
    let conn = endpoint.connect(udp, secure::SERVER_NAME)?.await?;
    let (send, recv) = conn.open_bi().await?;
    Ok((conn, tokio::io::join(recv, send)))
}

/// Accepts `incoming` and its stream.
pub async fn accept(incoming: quinn::Incoming) -> anyhow::Result<(quinn::Connection, Stream)> {
    let conn = incoming.await?;
    let (send, recv) = conn.accept_bi().await?;
    Ok((conn, tokio::io::join(recv, send)))
}
