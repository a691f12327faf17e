//! The secure channel of peer wire version 2 (docs/peer-protocol.md,
//! "Version 2"): TLS 1.3 over any byte stream, with an ephemeral
//! self-signed certificate that nobody checks, and the channel binding
//! (the RFC 8446 exporter) that the in-channel proofs of [`super::handshake`]
//! cover.
//!
//! Why a certificate nobody checks is enough: TLS here only gives a
//! confidential, integrity-protected channel with fresh keys; who is at
//! the other end is decided inside it, by proofs keyed by the ticket's root
//! over [`EXPORTER_LABEL`]'s value. A man in the middle terminates two TLS
//! connections with two different exporter values, so without the root it
//! can produce neither side's proof, and a proof made on one connection is
//! worthless on any other.
//!
//! The side that accepts looks at the first byte: a TLS record (`0x16`)
//! goes to TLS; a version 1 peer (a plaintext frame, first byte `0x00`) is
//! told in plaintext to upgrade ([`V1_REFUSAL`]) and closed; anything else
//! is closed without a word.

use std::io;
use std::sync::{Arc, OnceLock};

use hayedik_proto::peer::{
    decode_frame, FrameHeader, Message, MessageType, PeerWireError, ALPN_PEX, ALPN_V2,
    EXPORTER_LABEL, EXPORTER_LEN, FRAME_HEADER_LEN, V1_REFUSAL,
};
pub use rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::readbuf::GrowingReader;

/// The name the dialler puts in its ClientHello (SNI). It names no host:
/// the certificate is not checked against it.
pub const SERVER_NAME: &str = "hayedik.invalid";

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The most bytes read from the stream at once, under TLS. rustls asks for
/// 4 KiB per read; a buffer below it makes that one system call per 64 KiB
/// instead of one per 4 KiB (a copy is cheaper than a system call). The
/// buffer grows to this size only while the stream keeps it full
/// ([`GrowingReader`]): a session that only receives requests keeps 4 KiB.
const READ_BUFFER: usize = 64 << 10;

/// Why a secure channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error(
        "the connection closed during the TLS handshake: an old hayedik \
         (peer protocol version 1, unencrypted), or not a hayedik peer"
    )]
    ClosedInHandshake,
    #[error("it speaks peer protocol version 1 (unencrypted); told it to upgrade")]
    OldPeer,
    #[error("not a hayedik peer (its first bytes are neither TLS nor a hayedik Hello)")]
    NotHayedik,
    #[error("TLS exporter: {0}")]
    Exporter(rustls::Error),
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// A TLS connection, either side, as the session uses it.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// An established channel: the stream, and its channel binding.
pub struct Channel {
    pub stream: Box<dyn Duplex>,
    /// The exporter value ([`EXPORTER_LABEL`], no context).
    pub binding: [u8; EXPORTER_LEN],
    /// Both sides agreed on ALPN [`ALPN_PEX`] (peer wire 2.1): peer
    /// exchange may travel. False with a peer that offers only
    /// [`ALPN_V2`], or no ALPN at all (hayedik before 2.1).
    pub pex: bool,
}

/// The ALPN protocols offered (dialler) and accepted (listener), most
/// preferred first: 2.1 (peer exchange), then plain 2.
fn alpn() -> Vec<Vec<u8>> {
    vec![ALPN_PEX.to_vec(), ALPN_V2.to_vec()]
}

/// Whether the protocol ALPN settled on is 2.1.
fn agreed_pex(protocol: Option<&[u8]>) -> bool {
    protocol == Some(ALPN_PEX)
}

/// The crypto provider: ring, TLS 1.3 suites only, AES-GCM first
/// (hardware AES on most CPUs), ChaCha20-Poly1305 for the others.
pub fn crypto_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
            provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..provider::default_provider()
    }
}

/// Accepts any certificate, but still checks that the TLS 1.3 handshake
/// was signed by the key of the certificate that was sent (so the channel
/// has the usual TLS 1.3 guarantees toward whoever holds that key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never negotiated (TLS 1.3 only).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// This process's TLS configurations, built once (one certificate and key
/// per process, never written anywhere).
struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn build() -> Result<Configs, String> {
    let provider = Arc::new(crypto_provider());
    let tls13 = &[&rustls::version::TLS13];
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(tls13)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
        .with_no_client_auth();
    // Every connection a full handshake with fresh keys: nothing to resume.
    client.resumption = rustls::client::Resumption::disabled();
    client.alpn_protocols = alpn();
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(tls13)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| e.to_string())?;
    server.send_tls13_tickets = 0;
    // The listener picks the first of its own list the dialler offered; a
    // dialler that offers none (before 2.1) is still served, without PEX.
    server.alpn_protocols = alpn();
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Configs {
        client: Arc::new(client),
        server: Arc::new(server),
    })
}

fn configs() -> Result<&'static Configs, SecureError> {
    static CONFIGS: OnceLock<Result<Configs, String>> = OnceLock::new();
    CONFIGS
        .get_or_init(build)
        .as_ref()
        .map_err(|e| SecureError::Setup(e.clone()))
}

/// The dialling side's TLS configuration (the test harness's rogue peers
/// use it too).
pub fn client_config() -> Result<Arc<ClientConfig>, SecureError> {
    Ok(configs()?.client.clone())
}

/// The accepting side's TLS configuration, with this process's certificate.
pub fn server_config() -> Result<Arc<ServerConfig>, SecureError> {
    Ok(configs()?.server.clone())
}

/// [`SERVER_NAME`] as rustls takes it.
pub fn server_name() -> ServerName<'static> {
    // SERVER_NAME is a valid DNS name: the fallback is never taken.
    ServerName::try_from(SERVER_NAME)
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// The channel binding of an established TLS connection (either side).
pub fn binding<D>(conn: &rustls::ConnectionCommon<D>) -> Result<[u8; EXPORTER_LEN], rustls::Error> {
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
}

fn handshake_error(e: io::Error) -> SecureError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => SecureError::ClosedInHandshake,
        _ => SecureError::Tls(e),
    }
}

/// Sets up the channel as the side that dialled.
pub async fn connect<S>(stream: S) -> Result<Channel, SecureError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connector = TlsConnector::from(client_config()?);
    let tls = connector
        .connect(server_name(), GrowingReader::new(stream, READ_BUFFER))
        .await
        .map_err(handshake_error)?;
    let binding = binding(tls.get_ref().1).map_err(SecureError::Exporter)?;
    let pex = agreed_pex(tls.get_ref().1.alpn_protocol());
    Ok(Channel {
        stream: Box::new(tls),
        binding,
        pex,
    })
}

/// Sets up the channel as the side that accepted. A version 1 peer gets
/// a plaintext Goodbye ([`V1_REFUSAL`]) and [`SecureError::OldPeer`].
pub async fn accept<S>(stream: S) -> Result<Channel, SecureError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut stream = GrowingReader::new(stream, READ_BUFFER);
    // A look at the first byte, left in the buffer.
    let first = match stream.fill_buf().await.map_err(handshake_error)? {
        [] => return Err(SecureError::ClosedInHandshake),
        [b, ..] => *b,
    };
    if first != TLS_HANDSHAKE {
        return Err(refuse_plaintext(stream).await);
    }
    let acceptor = TlsAcceptor::from(server_config()?);
    let tls = acceptor.accept(stream).await.map_err(handshake_error)?;
    let binding = binding(tls.get_ref().1).map_err(SecureError::Exporter)?;
    let pex = agreed_pex(tls.get_ref().1.alpn_protocol());
    Ok(Channel {
        stream: Box::new(tls),
        binding,
        pex,
    })
}

/// A plaintext first byte: reads at most one version 1 Hello frame (the
/// header first: another type, or a length outside a Hello's bounds, is
/// refused before anything more is read) and answers it with
/// [`V1_REFUSAL`].
async fn refuse_plaintext<S>(mut stream: S) -> SecureError
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    if stream.read_exact(&mut frame).await.is_err() {
        return SecureError::NotHayedik;
    }
    // Only a Hello is read (at most 256 bytes): nothing else is worth an
    // answer, or a buffer.
    let header = match FrameHeader::decode(&frame) {
        Ok(Some(h)) if h.kind == MessageType::Hello => h,
        _ => return SecureError::NotHayedik,
    };
    let len = header.payload_len as usize;
    frame.resize(FRAME_HEADER_LEN + len, 0);
    if stream
        .read_exact(&mut frame[FRAME_HEADER_LEN..])
        .await
        .is_err()
    {
        return SecureError::NotHayedik;
    }
    match decode_frame(&frame) {
        Err(PeerWireError::UnsupportedVersion(v)) if v < 2 => {
            let _ = stream
                .write_all(&Message::goodbye(V1_REFUSAL).to_vec())
                .await;
            let _ = stream.shutdown().await;
            SecureError::OldPeer
        }
        _ => SecureError::NotHayedik,
    }
}

/// Whether an I/O error is our TLS layer refusing what the peer sent (a
/// record that does not decrypt, is too large, or is out of place), as
/// opposed to the connection failing. An alert the peer sent is not: it
/// means the peer refused something of ours (or something on the path
/// damaged our records), which is no proof against the peer.
pub fn is_tls_violation(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
        && e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| !matches!(tls, rustls::Error::AlertReceived(_)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn both_sides_get_the_same_binding_and_another_connection_another() {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (a, b) = tokio::io::duplex(64 << 10);
            let (ca, cb) = tokio::join!(connect(a), accept(b));
            let (ca, cb) = (ca.unwrap(), cb.unwrap());
            assert_eq!(ca.binding, cb.binding);
            assert!(ca.pex && cb.pex, "two current peers agree on 2.1");
            seen.push(ca.binding);
        }
        assert_ne!(seen[0], seen[1]);
    }

    /// A dialler with the given ALPN list against our listener: whether
    /// the listener's side says PEX was agreed, and what was agreed.
    async fn listener_with(offered: Vec<Vec<u8>>) -> (bool, Option<Vec<u8>>) {
        let mut config = (*client_config().unwrap()).clone();
        config.alpn_protocols = offered;
        let (a, b) = tokio::io::duplex(64 << 10);
        let connector = TlsConnector::from(Arc::new(config));
        let (ca, cb) = tokio::join!(connector.connect(server_name(), a), accept(b));
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        (cb.pex, ca.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[tokio::test]
    async fn old_peers_agree_on_2_without_peer_exchange() {
        assert_eq!(
            listener_with(vec![ALPN_V2.to_vec()]).await,
            (false, Some(ALPN_V2.to_vec()))
        );
        // hayedik before 2.1 offers no ALPN at all.
        assert_eq!(listener_with(vec![]).await, (false, None));
        assert_eq!(
            listener_with(vec![ALPN_V2.to_vec(), ALPN_PEX.to_vec()]).await,
            (true, Some(ALPN_PEX.to_vec())),
            "the listener's preference wins"
        );
    }

    #[tokio::test]
    async fn bytes_cross_the_channel() {
        let (a, b) = tokio::io::duplex(64 << 10);
        let (ca, cb) = tokio::join!(connect(a), accept(b));
        let (mut ca, mut cb) = (ca.unwrap(), cb.unwrap());
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let w = tokio::spawn(async move {
            ca.stream.write_all(&sent).await.unwrap();
            ca.stream.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        cb.stream.read_to_end(&mut got).await.unwrap();
        w.await.unwrap();
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn a_version_1_hello_is_told_to_upgrade() {
        let (mut a, b) = tokio::io::duplex(64 << 10);
        let mut hello = Message::hello([1; 32], [2; 32], 7).to_vec();
        hello[FRAME_HEADER_LEN + 4] = 1;
        a.write_all(&hello).await.unwrap();
        let err = match accept(b).await {
            Err(e) => e,
            Ok(_) => panic!("a plaintext Hello got a channel"),
        };
        assert!(matches!(err, SecureError::OldPeer), "{err}");
        let mut back = Vec::new();
        a.read_to_end(&mut back).await.unwrap();
        let (m, _) = decode_frame(&back).unwrap().unwrap();
        assert_eq!(m, Message::goodbye(V1_REFUSAL));
    }

    #[tokio::test]
    async fn anything_else_is_closed_silently() {
        for junk in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0, 0, 0, 0, 0][..],
            &[0xFF; 9][..],
        ] {
            let (mut a, b) = tokio::io::duplex(64 << 10);
            a.write_all(junk).await.unwrap();
            a.shutdown().await.unwrap();
            assert!(accept(b).await.is_err());
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.unwrap();
            assert!(back.is_empty(), "{junk:?} got {back:?}");
        }
    }

    #[test]
    fn only_our_own_refusals_are_violations() {
        let err = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert!(is_tls_violation(&err(rustls::Error::DecryptError)));
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac);
        assert!(!is_tls_violation(&err(alert)));
        assert!(!is_tls_violation(&io::Error::from(
            io::ErrorKind::UnexpectedEof
        )));
    }

    #[tokio::test]
    async fn a_plaintext_frame_other_than_a_hello_is_refused_at_its_header() {
        // A Manifest header announcing 4 MiB: refused without waiting for
        // (or allocating) the payload.
        let (mut a, b) = tokio::io::duplex(64 << 10);
        a.write_all(&[0, 0x40, 0, 1, 5]).await.unwrap();
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), accept(b)).await;
        assert!(matches!(refused, Ok(Err(SecureError::NotHayedik))));
    }

    #[tokio::test]
    async fn a_dialler_meeting_a_silent_closer_gets_a_clear_error() {
        let (a, b) = tokio::io::duplex(64 << 10);
        drop(b);
        match connect(a).await {
            Err(SecureError::ClosedInHandshake) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a channel with nobody"),
        }
    }
}
