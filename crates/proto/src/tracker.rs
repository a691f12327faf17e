//! The tracker's UDP datagrams (PROTOCOL.md, version 1) as typed values.
//!
//! Decoding is split in two steps because the protocol's order of checks puts
//! socket- and state-dependent checks between them: [`decode_header`] handles
//! length, magic and version (garbage is [`HeaderError::Drop`]: silence), the
//! caller then checks that the type is expected on its socket and validates the
//! token, and only then calls [`decode_body`]. [`Datagram::decode`] does both
//! at once for clients, which have no such ordering to respect.
//!
//! Every datagram is whole, so a short body is malformed, never "incomplete".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::codec::{Reader, Short, Writer};

/// ASCII `HYDK`, the first four bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"HYDK";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 20;
/// No PEERS datagram is larger than this (PROTOCOL.md).
pub const MAX_PEERS_DATAGRAM: usize = 1200;
/// Bytes of the fixed part of a PEERS datagram: header, interval, two counts.
pub const PEERS_FIXED_LEN: usize = HEADER_LEN + 2 + 4 + 4;
/// Length of an ANNOUNCE body.
pub const ANNOUNCE_BODY_LEN: usize = 32 + 2 + 1 + 2;
/// Length of an ERROR datagram with an empty message.
pub const ERROR_MIN_LEN: usize = HEADER_LEN + 2;
/// Length of an ANNOUNCE_X body without padding: the ANNOUNCE body and flags.
pub const ANNOUNCE_X_BODY_LEN: usize = ANNOUNCE_BODY_LEN + 1;
/// Zero bytes an ANNOUNCE_X that asks for a probe carries after its flags,
/// so that the probe (at most a SYN, an ACK and a RST) never sends more
/// bytes than the request brought in.
pub const PROBE_PADDING: usize = 218;
/// Bytes of a PEERS_X datagram before its relay field: header, interval,
/// counts, probe result.
pub const PEERS_X_FIXED_LEN: usize = HEADER_LEN + 2 + 4 + 4 + 1;
/// Length of an INTRODUCE datagram (always: padded), so that the two
/// INTRODUCED datagrams it causes (at most 41 bytes each) never add up to
/// more than it brought in.
pub const INTRODUCE_LEN: usize = 116;

/// The datagram type, byte 5 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Join = 0,
    Offer = 1,
    Confirm = 2,
    Confirmed = 3,
    Connect = 4,
    Connected = 5,
    Announce = 6,
    Peers = 7,
    Challenge = 8,
    Error = 15,
    /// Extension: ANNOUNCE with flags (docs/protocol.md, "Extensions").
    AnnounceX = 16,
    /// Extension: the reply to ANNOUNCE_X.
    PeersX = 17,
    /// Extension: find the swarm of a key, or create it (on a given port).
    Claim = 18,
    /// Extension: the answer to CLAIM when the key already has a swarm.
    SwarmAt = 19,
    /// Extension: introduce me to a listed peer, for hole punching.
    Introduce = 20,
    /// Extension: sent to both sides of an INTRODUCE.
    Introduced = 21,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            0 => Kind::Join,
            1 => Kind::Offer,
            2 => Kind::Confirm,
            3 => Kind::Confirmed,
            4 => Kind::Connect,
            5 => Kind::Connected,
            6 => Kind::Announce,
            7 => Kind::Peers,
            8 => Kind::Challenge,
            15 => Kind::Error,
            16 => Kind::AnnounceX,
            17 => Kind::PeersX,
            18 => Kind::Claim,
            19 => Kind::SwarmAt,
            20 => Kind::Introduce,
            21 => Kind::Introduced,
            _ => return None,
        })
    }
}

/// The fields of the header that matter after magic and version are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Transaction id: chosen by the requester, echoed in the reply.
    pub tid: u32,
    /// Per type: join cookie, confirmation token, or connection id.
    pub token: u64,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Too short, wrong magic, or a type no socket expects: no reply at all.
    #[error("not a hayedik datagram")]
    Drop,
    /// Right magic, another version: ERROR 1 is allowed (size permitting).
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion { version: u8, tid: u32 },
}

/// A body that does not parse for its type: ERROR 2 is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind:?} body")]
pub struct Malformed {
    pub kind: Kind,
}

/// Why a whole datagram did not decode (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("{source} (transaction {tid})")]
    Body { tid: u32, source: Malformed },
}

/// Checks length, magic and version; returns the header and the body.
///
/// Unknown type bytes are dropped here: no socket expects them.
pub fn decode_header(buf: &[u8]) -> Result<(Header, &[u8]), HeaderError> {
    if buf.len() < HEADER_LEN || buf[0..4] != MAGIC {
        return Err(HeaderError::Drop);
    }
    let mut r = Reader::new(&buf[4..HEADER_LEN]);
    let (version, kind, _reserved, tid, token) =
        (|| -> Result<_, Short> { Ok((r.u8()?, r.u8()?, r.u16()?, r.u32()?, r.u64()?)) })()
            .map_err(|Short| HeaderError::Drop)?;
    if version != VERSION {
        return Err(HeaderError::UnsupportedVersion { version, tid });
    }
    let kind = Kind::from_u8(kind).ok_or(HeaderError::Drop)?;
    Ok((Header { kind, tid, token }, &buf[HEADER_LEN..]))
}

/// What a peer tells a swarm tracker about itself in an ANNOUNCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerState {
    /// Only asking for peers: do not list me.
    Asking = 0,
    /// Downloading: list me as a partial source.
    Downloading = 1,
    /// Complete: list me as a seeder.
    Complete = 2,
    /// Leaving: remove me.
    Leaving = 3,
}

impl PeerState {
    pub fn from_u8(v: u8) -> Option<PeerState> {
        Some(match v {
            0 => PeerState::Asking,
            1 => PeerState::Downloading,
            2 => PeerState::Complete,
            3 => PeerState::Leaving,
            _ => return None,
        })
    }

    /// Whether a peer in this state is listed to others.
    pub fn is_listed(self) -> bool {
        matches!(self, PeerState::Downloading | PeerState::Complete)
    }
}

/// The body of an ANNOUNCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// `BLAKE3::derive_key("hayedik swarm key v1", root)`.
    pub swarm_key: [u8; 32],
    /// The peer's TCP port for piece traffic (0 only with states 0 and 3).
    pub port: u16,
    pub state: PeerState,
    /// Peers wanted; 0 asks for the tracker's default.
    pub wanted: u16,
}

/// One listed peer in a PEERS body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerEntry {
    pub addr: SocketAddr,
    /// `Downloading` or `Complete`; nothing else is ever listed.
    pub state: PeerState,
}

impl PeerEntry {
    /// Encoded length: family, address, port, state.
    pub fn encoded_len(&self) -> usize {
        match self.addr.ip() {
            IpAddr::V4(_) => PEER_ENTRY_V4_LEN,
            IpAddr::V6(_) => PEER_ENTRY_V6_LEN,
        }
    }
}

/// The body of a PEERS reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// Seconds until the peer should announce again.
    pub interval: u16,
    pub seeders: u32,
    pub partials: u32,
    pub peers: Vec<PeerEntry>,
}

/// What an ANNOUNCE_X asks for besides an ANNOUNCE's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtFlags {
    /// Try a TCP connection back to my source IP and announced port.
    pub probe: bool,
    /// List me as reachable through this tracker's relay (I hold a
    /// registration there).
    pub relayed: bool,
    /// The TCP port I announce is forwarded to me by my router (a port
    /// mapping: UPnP-IGD, NAT-PMP or PCP); list me as reachable there.
    pub mapped: bool,
    /// I may be introduced to (and ask to be introduced to) other peers
    /// that opted in, for hole punching (INTRODUCE).
    pub punch: bool,
}

impl ExtFlags {
    const PROBE: u8 = 0x01;
    const RELAYED: u8 = 0x02;
    const MAPPED: u8 = 0x04;
    const PUNCH: u8 = 0x08;

    pub fn to_u8(self) -> u8 {
        (if self.probe { Self::PROBE } else { 0 })
            | (if self.relayed { Self::RELAYED } else { 0 })
            | (if self.mapped { Self::MAPPED } else { 0 })
            | (if self.punch { Self::PUNCH } else { 0 })
    }

    /// Unknown bits are refused, so that a later bit is never ignored.
    pub fn from_u8(v: u8) -> Option<ExtFlags> {
        if v & !(Self::PROBE | Self::RELAYED | Self::MAPPED | Self::PUNCH) != 0 {
            return None;
        }
        Some(ExtFlags {
            probe: v & Self::PROBE != 0,
            relayed: v & Self::RELAYED != 0,
            mapped: v & Self::MAPPED != 0,
            punch: v & Self::PUNCH != 0,
        })
    }
}

/// The answer to a probe, in PEERS_X.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The ANNOUNCE_X did not ask.
    NotAsked = 0,
    /// A TCP connection to the source IP and announced port succeeded.
    Reachable = 1,
    /// It failed or timed out.
    Unreachable = 2,
    /// Under way: ask again in a second.
    Pending = 3,
    /// Not tried: too many probes now (ask again later).
    Refused = 4,
}

impl Probe {
    pub fn from_u8(v: u8) -> Option<Probe> {
        Some(match v {
            0 => Probe::NotAsked,
            1 => Probe::Reachable,
            2 => Probe::Unreachable,
            3 => Probe::Pending,
            4 => Probe::Refused,
            _ => return None,
        })
    }
}

/// Where the swarm's relay is, in PEERS_X.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAddr {
    /// This tracker runs no relay.
    None,
    /// At the IP the requester sent its ANNOUNCE_X to, on this TCP port.
    SameHost(u16),
    /// At this address.
    At(SocketAddr),
}

impl RelayAddr {
    fn encoded_len(&self) -> usize {
        match self {
            RelayAddr::None => 1,
            RelayAddr::SameHost(_) => 3,
            RelayAddr::At(a) if a.is_ipv4() => 7,
            RelayAddr::At(_) => 19,
        }
    }
}

/// One listed peer in a PEERS_X body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerEntryX {
    pub entry: PeerEntry,
    /// Reachable only through the relay: dial the relay and ask for this
    /// address (the peer's source IP as the tracker saw it, announced port).
    pub relayed: bool,
    /// Reachable at a port its router forwards to it (a port mapping).
    pub mapped: bool,
    /// Opted in to hole punching (shown only to requesters that opted in
    /// themselves): an INTRODUCE naming it may be answered.
    pub punchable: bool,
}

impl PeerEntryX {
    const RELAYED: u8 = 0x01;
    const MAPPED: u8 = 0x02;
    const PUNCHABLE: u8 = 0x04;

    fn flags(&self) -> u8 {
        (if self.relayed { Self::RELAYED } else { 0 })
            | (if self.mapped { Self::MAPPED } else { 0 })
            | (if self.punchable { Self::PUNCHABLE } else { 0 })
    }
}

impl PeerEntryX {
    /// Encoded length: a PEERS entry and a flags byte.
    pub fn encoded_len(&self) -> usize {
        self.entry.encoded_len() + 1
    }
}

/// The body of a PEERS_X reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersX {
    pub interval: u16,
    pub seeders: u32,
    pub partials: u32,
    pub probe: Probe,
    /// The requester as the tracker lists it: source IP, announced port.
    pub observed: SocketAddr,
    pub relay: RelayAddr,
    pub peers: Vec<PeerEntryX>,
}

impl PeersX {
    /// Bytes before the entries.
    pub fn fixed_len(observed: &SocketAddr, relay: &RelayAddr) -> usize {
        PEERS_X_FIXED_LEN + addr_len(observed) + relay.encoded_len()
    }
}

fn addr_len(a: &SocketAddr) -> usize {
    if a.is_ipv4() {
        1 + 4 + 2
    } else {
        1 + 16 + 2
    }
}

/// ERROR codes of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    UnsupportedVersion,
    Malformed,
    BadConnectionId,
    WrongSwarmKey,
    RateLimited,
    NotConfirmed,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::Malformed => 2,
            ErrorCode::BadConnectionId => 3,
            ErrorCode::WrongSwarmKey => 4,
            ErrorCode::RateLimited => 5,
            ErrorCode::NotConfirmed => 6,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::Malformed,
            3 => ErrorCode::BadConnectionId,
            4 => ErrorCode::WrongSwarmKey,
            5 => ErrorCode::RateLimited,
            6 => ErrorCode::NotConfirmed,
            c => ErrorCode::Other(c),
        }
    }
}

/// A typed datagram: the type, its token and its body in one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// peer -> central; `cookie` 0 asks for a CHALLENGE.
    Join { cookie: u64 },
    /// central -> peer.
    Challenge { cookie: u64 },
    /// swarm (`port: None`, sent from the swarm port) and central
    /// (`port: Some`) -> peer.
    Offer { token: u64, port: Option<u16> },
    /// peer -> swarm port.
    Confirm { token: u64 },
    /// swarm -> peer.
    Confirmed,
    /// peer -> swarm port.
    Connect,
    /// swarm -> peer.
    Connected { connection_id: u64 },
    /// peer -> swarm port.
    Announce {
        connection_id: u64,
        announce: Announce,
    },
    /// swarm -> peer.
    Peers(Peers),
    /// peer -> swarm port (extension).
    AnnounceX {
        connection_id: u64,
        announce: Announce,
        flags: ExtFlags,
    },
    /// swarm -> peer (extension), only in reply to ANNOUNCE_X.
    PeersX(PeersX),
    /// peer -> central (extension): the swarm of `swarm_key`, or a new one
    /// bound to it, on `port` (0: any free port). `cookie` as for JOIN.
    Claim {
        cookie: u64,
        swarm_key: [u8; 32],
        port: u16,
    },
    /// central -> peer (extension), only in reply to CLAIM: the key's swarm
    /// already exists, on this port.
    SwarmAt { port: u16 },
    /// peer -> swarm port (extension): introduce me (listed at my source
    /// IP and my announced TCP `port`) to the listed peer `target`.
    /// Always [`INTRODUCE_LEN`] bytes (zero padding).
    Introduce {
        connection_id: u64,
        port: u16,
        target: SocketAddr,
    },
    /// swarm -> peer (extension), to both sides of an INTRODUCE: the other
    /// side as listed (`peer`: IP and announced TCP port) and the UDP port
    /// its announces come from (same IP).
    Introduced { peer: SocketAddr, udp_port: u16 },
    /// either way.
    Error { code: ErrorCode, message: String },
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Join { .. } => Kind::Join,
            Message::Challenge { .. } => Kind::Challenge,
            Message::Offer { .. } => Kind::Offer,
            Message::Confirm { .. } => Kind::Confirm,
            Message::Confirmed => Kind::Confirmed,
            Message::Connect => Kind::Connect,
            Message::Connected { .. } => Kind::Connected,
            Message::Announce { .. } => Kind::Announce,
            Message::Peers(_) => Kind::Peers,
            Message::AnnounceX { .. } => Kind::AnnounceX,
            Message::PeersX(_) => Kind::PeersX,
            Message::Claim { .. } => Kind::Claim,
            Message::SwarmAt { .. } => Kind::SwarmAt,
            Message::Introduce { .. } => Kind::Introduce,
            Message::Introduced { .. } => Kind::Introduced,
            Message::Error { .. } => Kind::Error,
        }
    }

    fn token(&self) -> u64 {
        match *self {
            Message::Join { cookie }
            | Message::Challenge { cookie }
            | Message::Claim { cookie, .. } => cookie,
            Message::Offer { token, .. } | Message::Confirm { token } => token,
            Message::Connected { connection_id }
            | Message::Announce { connection_id, .. }
            | Message::AnnounceX { connection_id, .. }
            | Message::Introduce { connection_id, .. } => connection_id,
            _ => 0,
        }
    }
}

/// A datagram: transaction id and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub tid: u32,
    pub message: Message,
}

impl Datagram {
    pub fn new(tid: u32, message: Message) -> Self {
        Self { tid, message }
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_header(out, self.message.kind(), self.tid, self.message.token());
        match &self.message {
            Message::Join { .. }
            | Message::Challenge { .. }
            | Message::Confirm { .. }
            | Message::Confirmed
            | Message::Connect
            | Message::Connected { .. } => {}
            Message::Offer { port, .. } => {
                if let Some(port) = port {
                    out.put_u16(*port);
                }
            }
            Message::Announce { announce, .. } => encode_announce(out, announce),
            Message::Claim {
                swarm_key, port, ..
            } => {
                out.put_bytes(swarm_key);
                out.put_u16(*port);
            }
            Message::SwarmAt { port } => out.put_u16(*port),
            Message::Introduce { port, target, .. } => {
                let start = out.len() - HEADER_LEN;
                out.put_u16(*port);
                encode_addr(out, target);
                let used = out.len() - start;
                out.put_bytes(&[0u8; INTRODUCE_LEN][..INTRODUCE_LEN.saturating_sub(used)]);
            }
            Message::Introduced { peer, udp_port } => {
                encode_addr(out, peer);
                out.put_u16(*udp_port);
            }
            Message::AnnounceX {
                announce, flags, ..
            } => {
                encode_announce(out, announce);
                out.put_u8(flags.to_u8());
                if flags.probe {
                    out.put_bytes(&[0u8; PROBE_PADDING]);
                }
            }
            Message::PeersX(p) => {
                out.put_u16(p.interval);
                out.put_u32(p.seeders);
                out.put_u32(p.partials);
                out.put_u8(p.probe as u8);
                encode_addr(out, &p.observed);
                match p.relay {
                    RelayAddr::None => out.put_u8(0),
                    RelayAddr::SameHost(port) => {
                        out.put_u8(1);
                        out.put_u16(port);
                    }
                    RelayAddr::At(a) => encode_addr(out, &a),
                }
                for e in &p.peers {
                    encode_peer_entry(out, &e.entry);
                    out.put_u8(e.flags());
                }
            }
            Message::Peers(p) => {
                encode_peers_body(
                    out,
                    p.interval,
                    p.seeders,
                    p.partials,
                    p.peers.iter().copied(),
                );
            }
            Message::Error { code, message } => {
                out.put_u16(code.to_u16());
                out.put_bytes(message.as_bytes());
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }

    /// Decodes a whole datagram (header and body).
    pub fn decode(buf: &[u8]) -> Result<Datagram, DecodeError> {
        let (header, body) = decode_header(buf)?;
        let message = decode_body(&header, body).map_err(|source| DecodeError::Body {
            tid: header.tid,
            source,
        })?;
        Ok(Datagram {
            tid: header.tid,
            message,
        })
    }
}

/// Writes a whole PEERS datagram whose entries come one at a time: the
/// bytes of `Datagram::new(tid, Message::Peers(..)).encode(out)`, without
/// collecting the entries into a [`Peers`] first (a tracker's hot path).
pub fn encode_peers(
    out: &mut Vec<u8>,
    tid: u32,
    interval: u16,
    seeders: u32,
    partials: u32,
    peers: impl IntoIterator<Item = PeerEntry>,
) {
    encode_peers_head(out, tid, interval, seeders, partials);
    for e in peers {
        encode_peer_entry(out, &e);
    }
}

/// Writes a PEERS datagram up to its first entry: the entries follow, each
/// written by [`put_peer_entry_v4`] or [`put_peer_entry_v6`] (a tracker
/// that keeps its peers in its own form writes them from it).
pub fn encode_peers_head(out: &mut Vec<u8>, tid: u32, interval: u16, seeders: u32, partials: u32) {
    encode_header(out, Kind::Peers, tid, 0);
    encode_peers_counts(out, interval, seeders, partials);
}

fn encode_peers_body(
    out: &mut Vec<u8>,
    interval: u16,
    seeders: u32,
    partials: u32,
    peers: impl IntoIterator<Item = PeerEntry>,
) {
    encode_peers_counts(out, interval, seeders, partials);
    for e in peers {
        encode_peer_entry(out, &e);
    }
}

fn encode_peers_counts(out: &mut Vec<u8>, interval: u16, seeders: u32, partials: u32) {
    out.put_u16(interval);
    out.put_u32(seeders);
    out.put_u32(partials);
}

/// The encoded length of a peer entry with an IPv4 address.
pub const PEER_ENTRY_V4_LEN: usize = 1 + 4 + 2 + 1;
/// The encoded length of a peer entry with an IPv6 address.
pub const PEER_ENTRY_V6_LEN: usize = 1 + 16 + 2 + 1;

/// A peer entry with an IPv4 address.
#[inline]
pub fn peer_entry_v4(ip: [u8; 4], port: u16, state: PeerState) -> [u8; PEER_ENTRY_V4_LEN] {
    let [p0, p1] = port.to_be_bytes();
    let [a, b, c, d] = ip;
    [4, a, b, c, d, p0, p1, state as u8]
}

/// A peer entry with an IPv6 address.
#[inline]
pub fn peer_entry_v6(ip: [u8; 16], port: u16, state: PeerState) -> [u8; PEER_ENTRY_V6_LEN] {
    let mut e = [0u8; PEER_ENTRY_V6_LEN];
    e[0] = 6;
    e[1..17].copy_from_slice(&ip);
    e[17..19].copy_from_slice(&port.to_be_bytes());
    e[19] = state as u8;
    e
}

/// Appends a peer entry with an IPv4 address, in one copy.
#[inline]
pub fn put_peer_entry_v4(out: &mut Vec<u8>, ip: [u8; 4], port: u16, state: PeerState) {
    out.extend_from_slice(&peer_entry_v4(ip, port, state));
}

/// Appends a peer entry with an IPv6 address, in one copy.
#[inline]
pub fn put_peer_entry_v6(out: &mut Vec<u8>, ip: [u8; 16], port: u16, state: PeerState) {
    out.extend_from_slice(&peer_entry_v6(ip, port, state));
}

/// Writes a header with the reserved field zero.
pub fn encode_header(out: &mut Vec<u8>, kind: Kind, tid: u32, token: u64) {
    out.put_bytes(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind as u8);
    out.put_u16(0);
    out.put_u32(tid);
    out.put_u64(token);
}

fn encode_announce(out: &mut Vec<u8>, announce: &Announce) {
    out.put_bytes(&announce.swarm_key);
    out.put_u16(announce.port);
    out.put_u8(announce.state as u8);
    out.put_u16(announce.wanted);
}

/// Family (4 or 6), address, port.
fn encode_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_bytes(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_bytes(&ip.octets());
        }
    }
    out.put_u16(a.port());
}

fn encode_peer_entry(out: &mut Vec<u8>, e: &PeerEntry) {
    match e.addr.ip() {
        IpAddr::V4(ip) => put_peer_entry_v4(out, ip.octets(), e.addr.port(), e.state),
        IpAddr::V6(ip) => put_peer_entry_v6(out, ip.octets(), e.addr.port(), e.state),
    }
}

/// Decodes the body of a datagram whose header was accepted.
///
/// A body longer or shorter than its type's layout is malformed.
pub fn decode_body(header: &Header, body: &[u8]) -> Result<Message, Malformed> {
    let kind = header.kind;
    let bad = Malformed { kind };
    let mut r = Reader::new(body);
    let message = match kind {
        Kind::Join => Message::Join {
            cookie: header.token,
        },
        Kind::Challenge => Message::Challenge {
            cookie: header.token,
        },
        Kind::Offer => {
            let port = match body.len() {
                0 => None,
                2 => Some(r.u16().map_err(|_| bad)?),
                _ => return Err(bad),
            };
            Message::Offer {
                token: header.token,
                port,
            }
        }
        Kind::Confirm => Message::Confirm {
            token: header.token,
        },
        Kind::Confirmed => Message::Confirmed,
        Kind::Connect => Message::Connect,
        Kind::Connected => Message::Connected {
            connection_id: header.token,
        },
        Kind::Announce => Message::Announce {
            connection_id: header.token,
            announce: decode_announce(&mut r).ok_or(bad)?,
        },
        Kind::Peers => Message::Peers(decode_peers(&mut r).ok_or(bad)?),
        Kind::AnnounceX => {
            let announce = decode_announce(&mut r).ok_or(bad)?;
            let flags = ExtFlags::from_u8(r.u8().map_err(|_| bad)?).ok_or(bad)?;
            if flags.probe {
                // Padding: zero on send, ignored on receive, exact length.
                r.bytes(PROBE_PADDING).map_err(|_| bad)?;
            }
            Message::AnnounceX {
                connection_id: header.token,
                announce,
                flags,
            }
        }
        Kind::PeersX => Message::PeersX(decode_peers_x(&mut r).ok_or(bad)?),
        Kind::Claim => Message::Claim {
            cookie: header.token,
            swarm_key: r.array::<32>().map_err(|_| bad)?,
            port: r.u16().map_err(|_| bad)?,
        },
        Kind::SwarmAt => {
            let port = r.u16().map_err(|_| bad)?;
            if port == 0 {
                return Err(bad);
            }
            Message::SwarmAt { port }
        }
        Kind::Introduce => {
            if HEADER_LEN + body.len() != INTRODUCE_LEN {
                return Err(bad);
            }
            let port = r.u16().map_err(|_| bad)?;
            let family = r.u8().map_err(|_| bad)?;
            let target = decode_addr(&mut r, family).ok_or(bad)?;
            if port == 0 || target.port() == 0 {
                return Err(bad);
            }
            // Padding: zero on send, ignored on receive.
            r.bytes(r.remaining()).map_err(|_| bad)?;
            Message::Introduce {
                connection_id: header.token,
                port,
                target,
            }
        }
        Kind::Introduced => {
            let family = r.u8().map_err(|_| bad)?;
            let peer = decode_addr(&mut r, family).ok_or(bad)?;
            let udp_port = r.u16().map_err(|_| bad)?;
            if peer.port() == 0 || udp_port == 0 {
                return Err(bad);
            }
            Message::Introduced { peer, udp_port }
        }
        Kind::Error => {
            let code = ErrorCode::from_u16(r.u16().map_err(|_| bad)?);
            // A sender may cut a message mid-character to fit the size rule.
            let message = String::from_utf8_lossy(r.rest()).into_owned();
            return Ok(Message::Error { code, message });
        }
    };
    if !r.is_empty() {
        return Err(bad);
    }
    Ok(message)
}

fn decode_announce(r: &mut Reader<'_>) -> Option<Announce> {
    let swarm_key = r.array::<32>().ok()?;
    let port = r.u16().ok()?;
    let state = PeerState::from_u8(r.u8().ok()?)?;
    let wanted = r.u16().ok()?;
    if port == 0 && state.is_listed() {
        return None;
    }
    Some(Announce {
        swarm_key,
        port,
        state,
        wanted,
    })
}

fn decode_addr(r: &mut Reader<'_>, family: u8) -> Option<SocketAddr> {
    let ip = match family {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>().ok()?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>().ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, r.u16().ok()?))
}

fn decode_peers_x(r: &mut Reader<'_>) -> Option<PeersX> {
    let interval = r.u16().ok()?;
    let seeders = r.u32().ok()?;
    let partials = r.u32().ok()?;
    let probe = Probe::from_u8(r.u8().ok()?)?;
    let family = r.u8().ok()?;
    let observed = decode_addr(r, family)?;
    let relay = match r.u8().ok()? {
        0 => RelayAddr::None,
        1 => RelayAddr::SameHost(r.u16().ok()?),
        family => RelayAddr::At(decode_addr(r, family)?),
    };
    // At most one entry per 9 bytes: bounded by the datagram itself.
    let mut peers = Vec::with_capacity(r.remaining() / 9);
    while !r.is_empty() {
        let family = r.u8().ok()?;
        let addr = decode_addr(r, family)?;
        let state = PeerState::from_u8(r.u8().ok()?).filter(|s| s.is_listed())?;
        let flags = r.u8().ok()?;
        if flags & !(PeerEntryX::RELAYED | PeerEntryX::MAPPED | PeerEntryX::PUNCHABLE) != 0 {
            return None;
        }
        peers.push(PeerEntryX {
            entry: PeerEntry { addr, state },
            relayed: flags & PeerEntryX::RELAYED != 0,
            mapped: flags & PeerEntryX::MAPPED != 0,
            punchable: flags & PeerEntryX::PUNCHABLE != 0,
        });
    }
    Some(PeersX {
        interval,
        seeders,
        partials,
        probe,
        observed,
        relay,
        peers,
    })
}

fn decode_peers(r: &mut Reader<'_>) -> Option<Peers> {
    let interval = r.u16().ok()?;
    let seeders = r.u32().ok()?;
    let partials = r.u32().ok()?;
    // At most one entry per 8 bytes: bounded by the datagram itself.
    let mut peers = Vec::with_capacity(r.remaining() / 8);
    while !r.is_empty() {
        let ip = match r.u8().ok()? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>().ok()?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>().ok()?)),
            _ => return None,
        };
        let port = r.u16().ok()?;
        let state = PeerState::from_u8(r.u8().ok()?).filter(|s| s.is_listed())?;
        peers.push(PeerEntry {
            addr: SocketAddr::new(ip, port),
            state,
        });
    }
    Some(Peers {
        interval,
        seeders,
        partials,
        peers,
    })
}

/// Encodes an ERROR no longer than `max_len` bytes, cutting the message
/// (at a character boundary) to fit. Returns `false`, writing nothing, when
/// not even the code fits: the caller must then stay silent.
pub fn encode_error_capped(
    out: &mut Vec<u8>,
    tid: u32,
    code: ErrorCode,
    message: &str,
    max_len: usize,
) -> bool {
    if max_len < ERROR_MIN_LEN {
        return false;
    }
    let room = max_len - ERROR_MIN_LEN;
    let mut cut = message.len().min(room);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    encode_header(out, Kind::Error, tid, 0);
    out.put_u16(code.to_u16());
    out.put_bytes(&message.as_bytes()[..cut]);
    true
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
