//! The relay's own small protocol (docs/relay.md): the hello that opens every
//! TCP connection to a relay, the relay's one-byte answer, and the frames of
//! a registered peer's control connection. After an answer of 0 to DIAL or
//! ACCEPT the connection carries the two peers' byte stream unchanged (the
//! peer wire's TLS, end to end); the relay never parses it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::codec::{Reader, Writer};

/// ASCII `HYRL`, the first four bytes on every connection to a relay.
pub const MAGIC: [u8; 4] = *b"HYRL";
/// The relay protocol version.
pub const VERSION: u8 = 1;
/// The longest hello: magic, version, kind, key, an IPv6 address and port.
pub const MAX_HELLO: usize = 4 + 1 + 1 + 32 + 1 + 16 + 2;
/// Control frame, relay -> registered peer: a getter waits in session `id`.
pub const FRAME_INCOMING: u8 = 1;
/// Control frame, either way: keepalive.
pub const FRAME_PING: u8 = 0;
/// Length of an INCOMING frame before the dialer's address: type, session
/// id, family (then 4 or 16 address bytes).
pub const INCOMING_FIXED_LEN: usize = 10;

/// `BLAKE3::derive_key` context of the relay key: what a peer registers
/// under and a getter dials, derived from the content root so that only
/// holders of a ticket know it, and distinct from the swarm key the tracker
/// sees.
pub const RELAY_KEY_CONTEXT: &str = "hayedik relay key v1";

/// The first message on a connection to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// Keep this connection as my control connection: I am reachable through
    /// the relay at (my source IP as the relay sees it, `port`) under `key`.
    Register { key: [u8; 32], port: u16 },
    /// Splice me to the peer registered under `key` at `target`.
    Dial { key: [u8; 32], target: SocketAddr },
    /// I take session `id` (announced on my control connection).
    Accept { id: u64 },
}

/// The relay's one-byte answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Registered, or spliced: the byte stream follows.
    Ok = 0,
    Malformed = 1,
    /// No peer registered under that key and address, or no such session.
    NotFound = 2,
    /// A cap or the rate limit refused it: try later.
    Busy = 3,
    /// The relayed peer did not take the session in time.
    TimedOut = 4,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::Malformed,
            2 => Status::NotFound,
            3 => Status::Busy,
            4 => Status::TimedOut,
            _ => return None,
        })
    }
}

/// Why bytes are not (yet) a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("need more bytes")]
    Incomplete,
    #[error("not a relay hello")]
    Invalid,
}

impl Hello {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_bytes(&MAGIC);
        out.put_u8(VERSION);
        match self {
            Hello::Register { key, port } => {
                out.put_u8(1);
                out.put_bytes(key);
                out.put_u16(*port);
            }
            Hello::Dial { key, target } => {
                out.put_u8(2);
                out.put_bytes(key);
                match target.ip() {
                    IpAddr::V4(ip) => {
                        out.put_u8(4);
                        out.put_bytes(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.put_u8(6);
                        out.put_bytes(&ip.octets());
                    }
                }
                out.put_u16(target.port());
            }
            Hello::Accept { id } => {
                out.put_u8(3);
                out.put_u64(*id);
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAX_HELLO);
        self.encode(&mut v);
        v
    }

    /// Decodes a hello from the start of `buf`: the hello and the bytes it
    /// used, `Incomplete` when `buf` is a prefix of one, `Invalid` when it
    /// never can be (another magic, version or kind, family, a port of 0).
    pub fn decode(buf: &[u8]) -> Result<(Hello, usize), HelloError> {
        let mut r = Reader::new(buf);
        let short = |_| HelloError::Incomplete;
        let magic = r.bytes(buf.len().min(4)).map_err(short)?;
        if magic != &MAGIC[..magic.len()] {
            return Err(HelloError::Invalid);
        }
        if magic.len() < 4 {
            return Err(HelloError::Incomplete);
        }
        if r.u8().map_err(short)? != VERSION {
            return Err(HelloError::Invalid);
        }
        let hello = match r.u8().map_err(short)? {
            1 => {
                let key = r.array::<32>().map_err(short)?;
                let port = r.u16().map_err(short)?;
                if port == 0 {
                    return Err(HelloError::Invalid);
                }
                Hello::Register { key, port }
            }
            2 => {
                let key = r.array::<32>().map_err(short)?;
                let ip = match r.u8().map_err(short)? {
                    4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>().map_err(short)?)),
                    6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>().map_err(short)?)),
                    _ => return Err(HelloError::Invalid),
                };
                let port = r.u16().map_err(short)?;
                if port == 0 {
                    return Err(HelloError::Invalid);
                }
                Hello::Dial {
                    key,
                    target: SocketAddr::new(ip, port),
                }
            }
            3 => Hello::Accept {
                id: r.u64().map_err(short)?,
            },
            _ => return Err(HelloError::Invalid),
        };
        Ok((hello, r.position()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vectors() {
        let reg = Hello::Register {
            key: [7; 32],
            port: 0x1F90,
        };
        let mut bytes = b"HYRL\x01\x01".to_vec();
        bytes.extend_from_slice(&[7; 32]);
        bytes.extend_from_slice(&[0x1F, 0x90]);
        assert_eq!(reg.to_vec(), bytes);
        assert_eq!(Hello::decode(&bytes), Ok((reg, 40)));

        let dial = Hello::Dial {
            key: [7; 32],
            target: "192.0.2.5:80".parse().unwrap(),
        };
        let mut bytes = b"HYRL\x01\x02".to_vec();
        bytes.extend_from_slice(&[7; 32]);
        bytes.extend_from_slice(&[4, 192, 0, 2, 5, 0, 80]);
        assert_eq!(dial.to_vec(), bytes);
        assert_eq!(Hello::decode(&bytes), Ok((dial, 45)));

        let accept = Hello::Accept {
            id: 0x0102030405060708,
        };
        let bytes = b"HYRL\x01\x03\x01\x02\x03\x04\x05\x06\x07\x08".to_vec();
        assert_eq!(accept.to_vec(), bytes);
        // Bytes after the hello are the stream's, not the hello's.
        let mut more = bytes.clone();
        more.push(0x16);
        assert_eq!(Hello::decode(&more), Ok((accept, 14)));
    }

    #[test]
    fn prefixes_are_incomplete_and_garbage_invalid() {
        let bytes = Hello::Dial {
            key: [1; 32],
            target: "[2001:db8::1]:443".parse().unwrap(),
        }
        .to_vec();
        assert_eq!(bytes.len(), MAX_HELLO);
        for n in 0..bytes.len() {
            assert_eq!(
                Hello::decode(&bytes[..n]),
                Err(HelloError::Incomplete),
                "{n}"
            );
        }
        for bad in [
            &b"HYRX"[..],
            b"GET ",
            b"HYRL\x02\x01",
            b"HYRL\x01\x09",
            b"\x16\x03\x01",
        ] {
            assert_eq!(Hello::decode(bad), Err(HelloError::Invalid), "{bad:?}");
        }
        let mut port0 = b"HYRL\x01\x01".to_vec();
        port0.extend_from_slice(&[0; 34]);
        assert_eq!(Hello::decode(&port0), Err(HelloError::Invalid));
        let mut family = b"HYRL\x01\x02".to_vec();
        family.extend_from_slice(&[0; 32]);
        family.push(5);
        assert_eq!(Hello::decode(&family), Err(HelloError::Invalid));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Hello::decode(&bytes);
        }

        #[test]
        fn roundtrip(key in any::<[u8; 32]>(), port in 1u16.., ip in any::<[u8; 16]>(), v4 in any::<bool>(), id in any::<u64>()) {
            let ip = if v4 { IpAddr::from([ip[0], ip[1], ip[2], ip[3]]) } else { IpAddr::from(ip) };
            for h in [
                Hello::Register { key, port },
                Hello::Dial { key, target: SocketAddr::new(ip, port) },
                Hello::Accept { id },
            ] {
                let b = h.to_vec();
                prop_assert_eq!(Hello::decode(&b), Ok((h, b.len())));
            }
        }
    }
}
