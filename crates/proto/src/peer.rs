//! The peer wire protocol, version 2: length-prefixed frames inside a TLS
//! 1.3 channel, the handshake, and the messages that move the manifest and
//! pieces between peers.
//!
//! # The channel
//!
//! Everything below travels inside TLS 1.3 (hayedik's `peer/secure.rs`:
//! rustls with ring, an ephemeral self-signed certificate nobody checks, no
//! client certificate, no resumption). Both ends then read the channel
//! binding `X`: the RFC 8446 exporter with label [`EXPORTER_LABEL`], no
//! context, [`EXPORTER_LEN`] bytes. `X` is the same on both ends of one
//! TLS connection and different on every other, and the proofs cover it.
//! A version 1 peer (these frames in plaintext) sends a Hello as its first
//! bytes; the accepting side answers it, in plaintext, with
//! `Goodbye(`[`V1_REFUSAL`]`)` and closes.
//!
//! # Frames
//!
//! Every message is one frame: a `u32` big-endian length of what follows, a
//! `u8` message type, then the payload (all integers big-endian). The length
//! is checked against the type's bounds as soon as the five header bytes are
//! in, before anything is allocated, so no frame can make a peer buffer more
//! than [`MAX_FRAME`] bytes, and a Have cannot claim to be 4 MiB long.
//!
//! [`decode_frame`] tells "need more bytes" (`Ok(None)`) from "invalid"
//! (`Err`). An I/O loop that wants to read a block's data straight into its
//! own buffer decodes the [`FrameHeader`] (or [`BlockHeader`]) first, and a
//! sender writes [`encode_block_header`] then the block's bytes, never
//! copying them into a [`Message`].
//!
//! # Handshake
//!
//! A is the side that connected (the [`Role::Initiator`], the TLS client),
//! B the side that accepted (the [`Role::Responder`], the TLS server).
//! What follows, inside the channel, is what hayedik's `peer/handshake.rs`
//! does; this crate provides the messages, [`handshake_proof`] and
//! [`verify_proof`].
//!
//! 1. A -> B `Hello { version, swarm, nonce_a, listen_port }`. `swarm` is
//!    [`crate::manifest::swarm_key`] of the root: enough for B to pick the
//!    content it serves, useless for fetching it. B sends nothing inside
//!    the channel (not even its Hello, which names the swarm) before it has
//!    a Hello for a swarm it serves. For another swarm B answers
//!    `Goodbye("this peer does not serve that swarm")` and closes. A Hello
//!    of another version does not decode
//!    ([`PeerWireError::UnsupportedVersion`]): B answers
//!    `Goodbye("unsupported protocol version: this peer speaks version N")`
//!    and closes. A Hello whose nonce is the nonce of one of B's own
//!    handshakes in progress (B dialled itself) is refused: B closes
//!    without a word.
//! 2. B -> A `Hello { version, swarm, nonce_b, listen_port }` with the same
//!    swarm, then B -> A `Proof`, since B now holds both nonces. The listen
//!    port (the TCP port the sender serves on, 0 for none) is informational:
//!    it is not covered by the proofs.
//! 3. A checks B's Hello the same way, then verifies B's proof with
//!    [`verify_proof`]: a bad proof gets `Goodbye("wrong proof")` and the
//!    connection is closed. Only then A -> B `Proof`, so a listener that
//!    knows only the swarm key never gets a proof from A.
//! 4. B verifies A's proof the same way (`Goodbye("wrong proof")` and close
//!    when it is bad).
//!
//! Until a side has verified the other's proof it sends nothing but its own
//! Hello and Proof and serves nothing. Any other message where a Hello or a
//! Proof is expected ends the connection (no Goodbye), and so does a
//! Goodbye. hayedik gives the whole handshake, TLS included, 10 s.
//!
//! A proof is `blake3::keyed_hash(peer_auth_key(root), "hayedik peer proof
//! v2" || X || role || verifier's nonce || prover's nonce)`. Why: the swarm
//! key is known to the tracker and to anyone who reads an ANNOUNCE, so
//! holding it proves nothing; the proof shows that the prover knows the
//! root (the ticket) without revealing it. `X` makes a proof worthless on
//! any other TLS connection: a man in the middle terminates two connections
//! with two different `X` and, without the root, can neither forward nor
//! make a proof; a reflected or replayed proof does not verify either. The
//! verifier's fresh nonce and the role byte keep each proof specific to its
//! handshake and direction, and B proves too, so A does not spend its
//! requests (or reveal what it wants) on a peer that only knows the swarm
//! key. Proofs are compared in constant time. Any ticket holder is trusted
//! with the content: the channel keeps out everyone else.
//!
//! # After the handshake
//!
//! * A side that knows the manifest sends `Bitfield` first (one bit per piece,
//!   piece 0 in the high bit of byte 0, spare bits zero), then `Have` for each
//!   piece it verifies later. No Bitfield means no pieces.
//! * A side without the manifest sends `ManifestRequest`; the answer is
//!   `Manifest { bytes }`, which it checks with
//!   [`crate::manifest::Manifest::verify`] against the ticket's root.
//! * `Request { piece, offset, len }` asks for `len` (1..=[`MAX_BLOCK`]) bytes of
//!   a piece, pipelined; each is answered by exactly one `Block` with the same
//!   piece and offset and `len` bytes of data, or one `Reject` with the same
//!   three fields (piece not held, too many requests queued). `Cancel` withdraws
//!   a request; a Block already on its way may still arrive and is dropped.
//!   Indexes and ranges are checked against the manifest by the session: a
//!   request outside a piece is a protocol violation.
//! * `KeepAlive` keeps an idle connection open; `Goodbye { reason }` is the
//!   last frame before a side closes.
//! * `PeerExchange { added, dropped }` (peer wire 2.1: only when both sides
//!   agreed on ALPN [`ALPN_PEX`] in the TLS handshake) tells the other side
//!   the listen addresses of the swarm's other peers, at most
//!   [`MAX_PEX_ADDRS`] per list; the decoder refuses longer lists, unknown
//!   address families and trailing bytes.
//!
//! Byte layouts: `docs/peer-protocol.md`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::codec::{Reader, Short, Writer};
use crate::manifest::{MAX_MANIFEST_BYTES, MAX_PIECES};

/// The peer protocol version sent in Hello: 2, frames inside TLS 1.3
/// (version 1 was the same frames in plaintext, and is refused).
pub const PROTOCOL_VERSION: u8 = 2;
/// The RFC 8446 exporter label of the channel binding that the proofs
/// cover (no context; [`EXPORTER_LEN`] bytes).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-hayedik-peer-v2";
/// Bytes of the channel binding taken from the TLS exporter.
pub const EXPORTER_LEN: usize = 32;
/// The Goodbye a version 2 listener sends, in plaintext, to a version 1
/// peer's Hello before closing.
pub const V1_REFUSAL: &str = "this peer speaks protocol version 2 (encrypted); upgrade hayedik";
/// The first payload bytes of a Hello, so a stray connection is told apart.
pub const HELLO_MAGIC: [u8; 4] = *b"HYDK";
/// Largest block a Request may ask for and a Block may carry.
pub const MAX_BLOCK: u32 = 1 << 20;
/// Longest Goodbye reason, in bytes.
pub const MAX_REASON: usize = 1024;
/// Largest bitfield: one bit per piece of the largest manifest.
pub const MAX_BITFIELD_BYTES: usize = MAX_PIECES.div_ceil(8) as usize;
/// Bytes before a frame's payload: length and type.
pub const FRAME_HEADER_LEN: usize = 5;
/// Bytes before a Block's data: frame header, piece, offset.
pub const BLOCK_HEADER_LEN: usize = FRAME_HEADER_LEN + 8;
/// Largest value of the length prefix: a type byte and the largest payload
/// (a manifest).
pub const MAX_FRAME_LEN: u32 = 1 + MAX_MANIFEST_BYTES as u32;
/// Largest whole frame, length prefix included.
pub const MAX_FRAME: usize = 4 + MAX_FRAME_LEN as usize;
/// Payload length of a Hello (versions 1 and 2 alike): magic, version, swarm, nonce,
/// listen port.
pub const HELLO_LEN: usize = 4 + 1 + 32 + 32 + 2;
/// Longest Hello of any version: a later version may grow it.
const MAX_HELLO_LEN: usize = 256;
const PROOF_DOMAIN: &[u8] = b"hayedik peer proof v2";
/// The ALPN protocol name of peer wire 2.1: version 2 plus peer exchange
/// ([`Message::PeerExchange`]). A dialler offers it first and
/// [`ALPN_V2`] second; PeerExchange travels only when both sides agreed on
/// it.
pub const ALPN_PEX: &[u8] = b"hayedik/2.1";
/// The ALPN protocol name of plain peer wire version 2 (no peer exchange).
pub const ALPN_V2: &[u8] = b"hayedik/2";
/// Addresses in each list (added, dropped) of one PeerExchange at most.
pub const MAX_PEX_ADDRS: usize = 50;
/// Largest PeerExchange payload: two counts and 2 x 50 IPv6 entries.
pub const MAX_PEX_PAYLOAD: usize = 2 + 2 * MAX_PEX_ADDRS * PEX_V6_ENTRY;
const PEX_V6_ENTRY: usize = 1 + 16 + 2;

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    KeepAlive = 0,
    Hello = 1,
    Proof = 2,
    Goodbye = 3,
    ManifestRequest = 4,
    Manifest = 5,
    Bitfield = 6,
    Have = 7,
    Request = 8,
    Block = 9,
    Cancel = 10,
    Reject = 11,
    PeerExchange = 12,
}

impl MessageType {
    pub fn from_u8(v: u8) -> Option<MessageType> {
        use MessageType::*;
        Some(match v {
            0 => KeepAlive,
            1 => Hello,
            2 => Proof,
            3 => Goodbye,
            4 => ManifestRequest,
            5 => Manifest,
            6 => Bitfield,
            7 => Have,
            8 => Request,
            9 => Block,
            10 => Cancel,
            11 => Reject,
            12 => PeerExchange,
            _ => return None,
        })
    }

    /// The payload lengths this type allows.
    pub fn payload_bounds(self) -> std::ops::RangeInclusive<usize> {
        use MessageType::*;
        match self {
            KeepAlive | ManifestRequest => 0..=0,
            Hello => 5..=MAX_HELLO_LEN,
            Proof => 32..=32,
            Goodbye => 0..=MAX_REASON,
            Manifest => 1..=MAX_MANIFEST_BYTES,
            Bitfield => 0..=MAX_BITFIELD_BYTES,
            Have => 4..=4,
            Request | Cancel | Reject => 12..=12,
            Block => 9..=8 + MAX_BLOCK as usize,
            PeerExchange => 2..=MAX_PEX_PAYLOAD,
        }
    }
}

/// One peer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Nothing; keeps an idle connection open.
    KeepAlive,
    /// The first frame from each side. Decodes only with
    /// `version == PROTOCOL_VERSION` (else [`PeerWireError::UnsupportedVersion`]).
    Hello {
        version: u8,
        /// `swarm_key(root)`.
        swarm: [u8; 32],
        /// Fresh random bytes for this connection.
        nonce: [u8; 32],
        /// The TCP port the sender serves pieces on (0: none), so that an
        /// accepted connection is known by the address the tracker lists.
        listen_port: u16,
    },
    /// [`handshake_proof`] of the sender.
    Proof {
        mac: [u8; 32],
    },
    /// The last frame before closing; at most [`MAX_REASON`] bytes of UTF-8.
    Goodbye {
        reason: String,
    },
    ManifestRequest,
    /// The encoded manifest, 1..=[`MAX_MANIFEST_BYTES`] bytes.
    Manifest {
        bytes: Vec<u8>,
    },
    /// The sender's pieces; see [`Bitfield`].
    Bitfield {
        bits: Vec<u8>,
    },
    /// The sender now holds (verified) this piece.
    Have {
        piece: u32,
    },
    Request {
        piece: u32,
        offset: u32,
        len: u32,
    },
    /// 1..=[`MAX_BLOCK`] bytes of a piece, answering a Request.
    Block {
        piece: u32,
        offset: u32,
        data: Vec<u8>,
    },
    Cancel {
        piece: u32,
        offset: u32,
        len: u32,
    },
    Reject {
        piece: u32,
        offset: u32,
        len: u32,
    },
    /// Peer exchange (wire 2.1 only): listen addresses of other peers of
    /// the swarm the sender has sessions with (`added`) or no longer has
    /// (`dropped`), at most [`MAX_PEX_ADDRS`] each.
    PeerExchange {
        added: Vec<SocketAddr>,
        dropped: Vec<SocketAddr>,
    },
}

/// Why bytes from a peer are not a valid frame. Every one ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerWireError {
    #[error("frame length {0} is out of bounds (1..={MAX_FRAME_LEN})")]
    FrameLength(u32),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("{kind:?} message with a {len}-byte payload")]
    PayloadLength { kind: MessageType, len: usize },
    #[error("not a hayedik peer (bad hello magic)")]
    BadMagic,
    #[error("peer speaks protocol version {0}, this one speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u8),
    #[error("block length {0} is out of 1..={MAX_BLOCK}")]
    BlockLength(u32),
    #[error("goodbye reason is not UTF-8")]
    ReasonNotUtf8,
    #[error("expected a Block frame, got {0:?}")]
    NotBlock(MessageType),
    #[error("peer exchange: {0}")]
    PeerExchange(&'static str),
}

/// The first five bytes of a frame, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: MessageType,
    /// Bytes after the type byte; within `kind.payload_bounds()`.
    pub payload_len: u32,
}

impl FrameHeader {
    /// Decodes the header at the start of `buf`: `Ok(None)` until five bytes
    /// are there (a bad length is refused from four).
    pub fn decode(buf: &[u8]) -> Result<Option<FrameHeader>, PeerWireError> {
        let mut r = Reader::new(buf);
        let Ok(len) = r.u32() else { return Ok(None) };
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(PeerWireError::FrameLength(len));
        }
        let Ok(kind) = r.u8() else { return Ok(None) };
        let kind = MessageType::from_u8(kind).ok_or(PeerWireError::UnknownType(kind))?;
        let payload_len = len - 1;
        check_len(kind, payload_len as usize)?;
        Ok(Some(FrameHeader { kind, payload_len }))
    }

    /// The whole frame's length, header included.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload_len as usize
    }
}

/// The start of a Block frame: where its data goes and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub piece: u32,
    pub offset: u32,
    /// Data bytes that follow the [`BLOCK_HEADER_LEN`] header bytes.
    pub len: u32,
}

impl BlockHeader {
    /// Decodes the first [`BLOCK_HEADER_LEN`] bytes of a frame that must be a
    /// Block; `Ok(None)` until they are all there.
    pub fn decode(buf: &[u8]) -> Result<Option<BlockHeader>, PeerWireError> {
        let Some(h) = FrameHeader::decode(buf)? else {
            return Ok(None);
        };
        if h.kind != MessageType::Block {
            return Err(PeerWireError::NotBlock(h.kind));
        }
        let mut r = Reader::new(buf.get(FRAME_HEADER_LEN..).unwrap_or_default());
        match (r.u32(), r.u32()) {
            (Ok(piece), Ok(offset)) => Ok(Some(BlockHeader {
                piece,
                offset,
                len: h.payload_len - 8,
            })),
            _ => Ok(None),
        }
    }
}

/// The header of a Block frame carrying `len` bytes: write it, then the data.
/// `len` must be in 1..=[`MAX_BLOCK`] for the peer to accept the frame.
pub fn encode_block_header(piece: u32, offset: u32, len: u32) -> [u8; BLOCK_HEADER_LEN] {
    let mut out = [0u8; BLOCK_HEADER_LEN];
    out[0..4].copy_from_slice(&len.saturating_add(9).to_be_bytes());
    out[4] = MessageType::Block as u8;
    out[5..9].copy_from_slice(&piece.to_be_bytes());
    out[9..13].copy_from_slice(&offset.to_be_bytes());
    out
}

/// Decodes one frame from the start of `buf`: `Ok(None)` if more bytes are
/// needed, else the message and the bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, PeerWireError> {
    let Some(h) = FrameHeader::decode(buf)? else {
        return Ok(None);
    };
    let Some(payload) = buf.get(FRAME_HEADER_LEN..h.frame_len()) else {
        return Ok(None);
    };
    Ok(Some((
        Message::decode_payload(h.kind, payload)?,
        h.frame_len(),
    )))
}

impl Message {
    pub fn kind(&self) -> MessageType {
        match self {
            Message::KeepAlive => MessageType::KeepAlive,
            Message::Hello { .. } => MessageType::Hello,
            Message::Proof { .. } => MessageType::Proof,
            Message::Goodbye { .. } => MessageType::Goodbye,
            Message::ManifestRequest => MessageType::ManifestRequest,
            Message::Manifest { .. } => MessageType::Manifest,
            Message::Bitfield { .. } => MessageType::Bitfield,
            Message::Have { .. } => MessageType::Have,
            Message::Request { .. } => MessageType::Request,
            Message::Block { .. } => MessageType::Block,
            Message::Cancel { .. } => MessageType::Cancel,
            Message::Reject { .. } => MessageType::Reject,
            Message::PeerExchange { .. } => MessageType::PeerExchange,
        }
    }

    /// A Hello of this version.
    pub fn hello(swarm: [u8; 32], nonce: [u8; 32], listen_port: u16) -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            swarm,
            nonce,
            listen_port,
        }
    }

    /// A Goodbye, its reason cut to [`MAX_REASON`] bytes on a char boundary.
    pub fn goodbye(reason: &str) -> Message {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Message::Goodbye {
            reason: reason[..end].to_owned(),
        }
    }

    /// Appends the frame to `out`. The peer accepts it only if the message
    /// keeps to the bounds ([`MAX_BLOCK`], [`MAX_MANIFEST_BYTES`],
    /// [`MAX_BITFIELD_BYTES`], [`MAX_REASON`]); nothing panics if it does not.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u32(0); // patched below
        out.put_u8(self.kind() as u8);
        match self {
            Message::KeepAlive | Message::ManifestRequest => {}
            Message::Hello {
                version,
                swarm,
                nonce,
                listen_port,
            } => {
                out.put_bytes(&HELLO_MAGIC);
                out.put_u8(*version);
                out.put_bytes(swarm);
                out.put_bytes(nonce);
                out.put_u16(*listen_port);
            }
            Message::Proof { mac } => out.put_bytes(mac),
            Message::Goodbye { reason } => out.put_bytes(reason.as_bytes()),
            Message::Manifest { bytes } => out.put_bytes(bytes),
            Message::Bitfield { bits } => out.put_bytes(bits),
            Message::Have { piece } => out.put_u32(*piece),
            Message::Request { piece, offset, len }
            | Message::Cancel { piece, offset, len }
            | Message::Reject { piece, offset, len } => {
                out.put_u32(*piece);
                out.put_u32(*offset);
                out.put_u32(*len);
            }
            Message::Block {
                piece,
                offset,
                data,
            } => {
                out.put_u32(*piece);
                out.put_u32(*offset);
                out.put_bytes(data);
            }
            Message::PeerExchange { added, dropped } => {
                put_addrs(out, added);
                put_addrs(out, dropped);
            }
        }
        let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a payload whose type and length came from a [`FrameHeader`]
    /// (checked again here, so any slice is safe).
    pub fn decode_payload(kind: MessageType, payload: &[u8]) -> Result<Message, PeerWireError> {
        check_len(kind, payload.len())?;
        let mut r = Reader::new(payload);
        let short = |_: Short| PeerWireError::PayloadLength {
            kind,
            len: payload.len(),
        };
        Ok(match kind {
            MessageType::KeepAlive => Message::KeepAlive,
            MessageType::ManifestRequest => Message::ManifestRequest,
            MessageType::Hello => {
                if r.array::<4>().map_err(short)? != HELLO_MAGIC {
                    return Err(PeerWireError::BadMagic);
                }
                let version = r.u8().map_err(short)?;
                if version != PROTOCOL_VERSION {
                    return Err(PeerWireError::UnsupportedVersion(version));
                }
                if payload.len() != HELLO_LEN {
                    return Err(short(Short));
                }
                Message::Hello {
                    version,
                    swarm: r.array().map_err(short)?,
                    nonce: r.array().map_err(short)?,
                    listen_port: r.u16().map_err(short)?,
                }
            }
            MessageType::Proof => Message::Proof {
                mac: r.array().map_err(short)?,
            },
            MessageType::Goodbye => Message::Goodbye {
                reason: std::str::from_utf8(payload)
                    .map_err(|_| PeerWireError::ReasonNotUtf8)?
                    .to_owned(),
            },
            MessageType::Manifest => Message::Manifest {
                bytes: payload.to_vec(),
            },
            MessageType::Bitfield => Message::Bitfield {
                bits: payload.to_vec(),
            },
            MessageType::Have => Message::Have {
                piece: r.u32().map_err(short)?,
            },
            MessageType::Request | MessageType::Cancel | MessageType::Reject => {
                let (piece, offset, len) = (
                    r.u32().map_err(short)?,
                    r.u32().map_err(short)?,
                    r.u32().map_err(short)?,
                );
                if len == 0 || len > MAX_BLOCK {
                    return Err(PeerWireError::BlockLength(len));
                }
                match kind {
                    MessageType::Request => Message::Request { piece, offset, len },
                    MessageType::Cancel => Message::Cancel { piece, offset, len },
                    _ => Message::Reject { piece, offset, len },
                }
            }
            MessageType::Block => Message::Block {
                piece: r.u32().map_err(short)?,
                offset: r.u32().map_err(short)?,
                data: r.rest().to_vec(),
            },
            MessageType::PeerExchange => {
                let added = get_addrs(&mut r)?;
                let dropped = get_addrs(&mut r)?;
                if !r.is_empty() {
                    return Err(PeerWireError::PeerExchange("bytes after the lists"));
                }
                Message::PeerExchange { added, dropped }
            }
        })
    }
}

/// A PeerExchange list: a count (0..=[`MAX_PEX_ADDRS`]), then per address
/// a family byte (4 or 6), the IP (4 or 16 bytes) and the port. A longer
/// list is cut to its first [`MAX_PEX_ADDRS`] (the peer would refuse it).
fn put_addrs(out: &mut Vec<u8>, addrs: &[SocketAddr]) {
    let addrs = &addrs[..addrs.len().min(MAX_PEX_ADDRS)];
    out.put_u8(addrs.len() as u8);
    for a in addrs {
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
}

fn get_addrs(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, PeerWireError> {
    let truncated = |_: Short| PeerWireError::PeerExchange("truncated list");
    let n = usize::from(r.u8().map_err(truncated)?);
    if n > MAX_PEX_ADDRS {
        return Err(PeerWireError::PeerExchange(
            "more than 50 addresses in a list",
        ));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ip = match r.u8().map_err(truncated)? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>().map_err(truncated)?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>().map_err(truncated)?)),
            _ => return Err(PeerWireError::PeerExchange("unknown address family")),
        };
        out.push(SocketAddr::new(ip, r.u16().map_err(truncated)?));
    }
    Ok(out)
}

fn check_len(kind: MessageType, len: usize) -> Result<(), PeerWireError> {
    if kind.payload_bounds().contains(&len) {
        Ok(())
    } else {
        Err(PeerWireError::PayloadLength { kind, len })
    }
}

/// Which side of a connection a proof comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that connected.
    Initiator = 0,
    /// The side that accepted.
    Responder = 1,
}

impl Role {
    pub fn other(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }
}

/// The proof that side `role` sends: `blake3::keyed_hash(auth_key,
/// "hayedik peer proof v2" || binding || role || their_nonce || my_nonce)`,
/// with `auth_key = peer_auth_key(root)` and `binding` the connection's
/// TLS exporter value ([`EXPORTER_LABEL`]): a proof is worth something on
/// its own TLS connection only.
pub fn handshake_proof(
    auth_key: &[u8; 32],
    binding: &[u8; EXPORTER_LEN],
    role: Role,
    their_nonce: &[u8; 32],
    my_nonce: &[u8; 32],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(auth_key);
    h.update(PROOF_DOMAIN);
    h.update(binding);
    h.update(&[role as u8]);
    h.update(their_nonce);
    h.update(my_nonce);
    *h.finalize().as_bytes()
}

/// Checks, in constant time, the proof `mac` that the other side (of role
/// `their_role`, nonce `their_nonce`) sent in answer to `my_nonce` on the
/// connection whose channel binding is `binding`.
pub fn verify_proof(
    auth_key: &[u8; 32],
    binding: &[u8; EXPORTER_LEN],
    their_role: Role,
    my_nonce: &[u8; 32],
    their_nonce: &[u8; 32],
    mac: &[u8; 32],
) -> bool {
    // blake3::Hash's equality is constant-time.
    let expected = handshake_proof(auth_key, binding, their_role, my_nonce, their_nonce);
    blake3::Hash::from(expected) == *mac
}

/// Which pieces a peer holds: bit `i` is bit `7 - i % 8` of byte `i / 8`
/// (piece 0 is the high bit of the first byte); spare bits are zero.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
    ones: u32,
}

/// Why received bitfield bytes do not fit the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    #[error("bitfield has {found} bytes, the manifest's pieces need {expected}")]
    Length { expected: usize, found: usize },
    #[error("bitfield has bits set past the last piece")]
    SpareBits,
}

impl Bitfield {
    /// `len` pieces, none held.
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bits: vec![0; len.div_ceil(8) as usize],
            len,
            ones: 0,
        }
    }

    /// `len` pieces, all held.
    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        b.bits.fill(0xFF);
        if let Some(last) = b.bits.last_mut() {
            *last &= spare_mask(len);
        }
        b.ones = len;
        b
    }

    /// A received bitfield for `len` pieces: exactly `ceil(len / 8)` bytes,
    /// spare bits zero.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Bitfield, BitfieldError> {
        let expected = len.div_ceil(8) as usize;
        if bytes.len() != expected {
            return Err(BitfieldError::Length {
                expected,
                found: bytes.len(),
            });
        }
        if let Some(last) = bytes.last() {
            if last & !spare_mask(len) != 0 {
                return Err(BitfieldError::SpareBits);
            }
        }
        Ok(Bitfield {
            bits: bytes.to_vec(),
            len,
            ones: bytes.iter().map(|b| b.count_ones()).sum(),
        })
    }

    /// The number of pieces.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `index` is held (false past the end).
    pub fn get(&self, index: u32) -> bool {
        self.bits
            .get((index / 8) as usize)
            .is_some_and(|b| b & bit(index) != 0)
    }

    /// Marks piece `index` held; true if it was not before. An index past the
    /// end is ignored (false): check indexes against the manifest first.
    pub fn set(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        match self.bits.get_mut((index / 8) as usize) {
            Some(b) if *b & bit(index) == 0 => {
                *b |= bit(index);
                self.ones += 1;
                true
            }
            _ => false,
        }
    }

    /// Pieces held.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Every piece held (true for zero pieces).
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// The wire form, for `Message::Bitfield`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// The indexes of the pieces held, in order.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

fn bit(index: u32) -> u8 {
    0x80 >> (index % 8)
}

/// The bits of the last byte that stand for pieces.
fn spare_mask(len: u32) -> u8 {
    match len % 8 {
        0 => 0xFF,
        r => 0xFFu8 << (8 - r),
    }
}

#[cfg(test)]
#[path = "peer_tests.rs"]
mod tests;
