#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn hdr(kind: u8, tid: u32, token: u64) -> Vec<u8> {
    let mut v = b"HYDK".to_vec();
    v.push(1);
    v.push(kind);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&tid.to_be_bytes());
    v.extend_from_slice(&token.to_be_bytes());
    v
}

fn roundtrip_bytes(d: &Datagram, bytes: &[u8]) {
    assert_eq!(d.to_vec(), bytes, "encoding of {d:?}");
    assert_eq!(&Datagram::decode(bytes).unwrap(), d);
}

#[test]
fn join_and_challenge_vectors() {
    let join = Datagram::new(0x01020304, Message::Join { cookie: 0 });
    roundtrip_bytes(
        &join,
        &[
            b'H', b'Y', b'D', b'K', 1, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let challenge = Datagram::new(7, Message::Challenge { cookie: 0xAABB });
    roundtrip_bytes(&challenge, &hdr(8, 7, 0xAABB));
    let join2 = Datagram::new(7, Message::Join { cookie: 0xAABB });
    roundtrip_bytes(&join2, &hdr(0, 7, 0xAABB));
}

/// The stable-swarm extension (docs/protocol.md): CLAIM is the header
/// (cookie as token), the swarm key and the port; SWARM_AT the port.
#[test]
fn claim_and_swarm_at_vectors() {
    let claim = Datagram::new(
        0x0A0B0C0D,
        Message::Claim {
            cookie: 0x1122,
            swarm_key: [0x5A; 32],
            port: 0x1F92,
        },
    );
    let mut bytes = hdr(18, 0x0A0B0C0D, 0x1122);
    bytes.extend_from_slice(&[0x5A; 32]);
    bytes.extend_from_slice(&[0x1F, 0x92]);
    roundtrip_bytes(&claim, &bytes);
    assert_eq!(bytes.len(), 54);
    // Any port, no cookie yet.
    let any = Datagram::new(
        1,
        Message::Claim {
            cookie: 0,
            swarm_key: [0; 32],
            port: 0,
        },
    );
    let mut bytes = hdr(18, 1, 0);
    bytes.extend_from_slice(&[0; 34]);
    roundtrip_bytes(&any, &bytes);
    // A key cut short, or a byte too many: malformed.
    let mut short = bytes.clone();
    short.pop();
    let mut long = bytes.clone();
    long.push(0);
    for b in [short, long] {
        assert!(matches!(
            Datagram::decode(&b),
            Err(DecodeError::Body { tid: 1, .. })
        ));
    }
    let at = Datagram::new(3, Message::SwarmAt { port: 7411 });
    let mut bytes = hdr(19, 3, 0);
    bytes.extend_from_slice(&7411u16.to_be_bytes());
    roundtrip_bytes(&at, &bytes);
    // Port 0 is no swarm; another length is malformed.
    let mut zero = hdr(19, 3, 0);
    zero.extend_from_slice(&[0, 0]);
    let mut three = hdr(19, 3, 0);
    three.extend_from_slice(&[0, 1, 2]);
    for b in [zero, three, hdr(19, 3, 0)] {
        assert!(Datagram::decode(&b).is_err());
    }
}

#[test]
fn offer_vectors() {
    let from_swarm = Datagram::new(
        9,
        Message::Offer {
            token: 42,
            port: None,
        },
    );
    roundtrip_bytes(&from_swarm, &hdr(1, 9, 42));
    let from_central = Datagram::new(
        9,
        Message::Offer {
            token: 42,
            port: Some(0x1F40),
        },
    );
    let mut bytes = hdr(1, 9, 42);
    bytes.extend_from_slice(&[0x1F, 0x40]);
    roundtrip_bytes(&from_central, &bytes);
    // A one-byte or three-byte OFFER body is malformed.
    let mut bad = hdr(1, 9, 42);
    bad.push(1);
    assert!(matches!(
        Datagram::decode(&bad),
        Err(DecodeError::Body { tid: 9, .. })
    ));
    bad.extend_from_slice(&[2, 3]);
    assert!(Datagram::decode(&bad).is_err());
}

#[test]
fn confirm_connect_vectors() {
    roundtrip_bytes(
        &Datagram::new(1, Message::Confirm { token: 5 }),
        &hdr(2, 1, 5),
    );
    roundtrip_bytes(&Datagram::new(1, Message::Confirmed), &hdr(3, 1, 0));
    roundtrip_bytes(&Datagram::new(1, Message::Connect), &hdr(4, 1, 0));
    roundtrip_bytes(
        &Datagram::new(
            1,
            Message::Connected {
                connection_id: u64::MAX,
            },
        ),
        &hdr(5, 1, u64::MAX),
    );
}

#[test]
fn announce_vector() {
    let key = [0x11; 32];
    let d = Datagram::new(
        3,
        Message::Announce {
            connection_id: 99,
            announce: Announce {
                swarm_key: key,
                port: 6881,
                state: PeerState::Complete,
                wanted: 50,
            },
        },
    );
    let mut bytes = hdr(6, 3, 99);
    bytes.extend_from_slice(&key);
    bytes.extend_from_slice(&[0x1A, 0xE1, 2, 0, 50]);
    assert_eq!(bytes.len(), HEADER_LEN + ANNOUNCE_BODY_LEN);
    roundtrip_bytes(&d, &bytes);
}

#[test]
fn announce_malformed_cases() {
    let body = |port: u16, state: u8| {
        let mut b = hdr(6, 3, 99);
        b.extend_from_slice(&[0; 32]);
        b.extend_from_slice(&port.to_be_bytes());
        b.push(state);
        b.extend_from_slice(&[0, 0]);
        b
    };
    assert!(Datagram::decode(&body(1, 4)).is_err(), "state above 3");
    assert!(Datagram::decode(&body(0, 1)).is_err(), "port 0, state 1");
    assert!(Datagram::decode(&body(0, 2)).is_err(), "port 0, state 2");
    assert!(Datagram::decode(&body(0, 0)).is_ok(), "port 0 asking");
    assert!(Datagram::decode(&body(0, 3)).is_ok(), "port 0 leaving");
    let mut long = body(1, 1);
    long.push(0);
    assert!(Datagram::decode(&long).is_err(), "trailing byte");
    let short = &body(1, 1)[..HEADER_LEN + ANNOUNCE_BODY_LEN - 1];
    assert!(Datagram::decode(short).is_err(), "short body");
}

#[test]
fn peers_vector() {
    let d = Datagram::new(
        4,
        Message::Peers(Peers {
            interval: 900,
            seeders: 1,
            partials: 2,
            peers: vec![
                PeerEntry {
                    addr: "10.0.0.1:80".parse().unwrap(),
                    state: PeerState::Complete,
                },
                PeerEntry {
                    addr: "[::1]:443".parse().unwrap(),
                    state: PeerState::Downloading,
                },
            ],
        }),
    );
    let mut bytes = hdr(7, 4, 0);
    bytes.extend_from_slice(&[0x03, 0x84, 0, 0, 0, 1, 0, 0, 0, 2]);
    bytes.extend_from_slice(&[4, 10, 0, 0, 1, 0, 80, 2]);
    bytes.push(6);
    bytes.extend_from_slice(&[0; 15]);
    bytes.extend_from_slice(&[1, 0x01, 0xBB, 1]);
    roundtrip_bytes(&d, &bytes);
    // The same bytes from entries given one at a time.
    if let Message::Peers(p) = &d.message {
        let mut streamed = Vec::new();
        encode_peers(
            &mut streamed,
            4,
            p.interval,
            p.seeders,
            p.partials,
            p.peers.iter().copied(),
        );
        assert_eq!(streamed, bytes);
    }
    // A listed peer in state 0 or 3, or an unknown family, is malformed.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] = 3;
    assert!(Datagram::decode(&bad).is_err());
    let mut bad = bytes;
    bad[PEERS_FIXED_LEN] = 5;
    assert!(Datagram::decode(&bad).is_err());
}

#[test]
fn error_vector_and_cap() {
    let d = Datagram::new(
        6,
        Message::Error {
            code: ErrorCode::WrongSwarmKey,
            message: "no".into(),
        },
    );
    let mut bytes = hdr(15, 6, 0);
    bytes.extend_from_slice(&[0, 4, b'n', b'o']);
    roundtrip_bytes(&d, &bytes);

    let mut out = Vec::new();
    assert!(!encode_error_capped(
        &mut out,
        1,
        ErrorCode::NotConfirmed,
        "x",
        21
    ));
    assert!(out.is_empty());
    assert!(encode_error_capped(
        &mut out,
        1,
        ErrorCode::NotConfirmed,
        "héllo",
        24
    ));
    // "h" fits, "é" (two bytes) would overflow by one: cut before it.
    assert_eq!(out.len(), 23);
    assert_eq!(
        Datagram::decode(&out).unwrap().message,
        Message::Error {
            code: ErrorCode::NotConfirmed,
            message: "h".into()
        }
    );
}

#[test]
fn header_checks_in_order() {
    assert_eq!(decode_header(&[]), Err(HeaderError::Drop));
    assert_eq!(decode_header(&hdr(0, 1, 0)[..19]), Err(HeaderError::Drop));
    let mut wrong_magic = hdr(0, 1, 0);
    wrong_magic[0] = b'X';
    assert_eq!(decode_header(&wrong_magic), Err(HeaderError::Drop));
    let mut v2 = hdr(0, 77, 0);
    v2[4] = 2;
    assert_eq!(
        decode_header(&v2),
        Err(HeaderError::UnsupportedVersion {
            version: 2,
            tid: 77
        })
    );
    // Version is checked before the type.
    v2[5] = 200;
    assert!(matches!(
        decode_header(&v2),
        Err(HeaderError::UnsupportedVersion { .. })
    ));
    assert_eq!(decode_header(&hdr(9, 1, 0)), Err(HeaderError::Drop));
    // Reserved bytes are ignored on receive.
    let mut reserved = hdr(4, 1, 0);
    reserved[6] = 0xFF;
    assert_eq!(
        Datagram::decode(&reserved).unwrap().message,
        Message::Connect
    );
}

#[test]
fn bodies_of_empty_types_must_be_empty() {
    for kind in [0u8, 2, 3, 4, 5, 8] {
        let mut b = hdr(kind, 1, 1);
        b.push(0);
        assert!(Datagram::decode(&b).is_err(), "type {kind}");
    }
}

#[test]
fn announce_x_vectors() {
    let announce = Announce {
        swarm_key: [0xAB; 32],
        port: 0x1F90,
        state: PeerState::Complete,
        wanted: 0,
    };
    let plain = Datagram::new(
        5,
        Message::AnnounceX {
            connection_id: 0x0102,
            announce,
            flags: ExtFlags {
                probe: false,
                relayed: true,
                mapped: false,
                punch: false,
            },
        },
    );
    let mut bytes = hdr(16, 5, 0x0102);
    bytes.extend_from_slice(&[0xAB; 32]);
    bytes.extend_from_slice(&[0x1F, 0x90, 2, 0, 0, 0x02]);
    roundtrip_bytes(&plain, &bytes);
    assert_eq!(bytes.len(), HEADER_LEN + ANNOUNCE_X_BODY_LEN);
    // MAPPED: flags 0x04.
    let mapped = Datagram::new(
        5,
        Message::AnnounceX {
            connection_id: 0x0102,
            announce,
            flags: ExtFlags {
                probe: false,
                relayed: false,
                mapped: true,
                punch: false,
            },
        },
    );
    let mut bytes = hdr(16, 5, 0x0102);
    bytes.extend_from_slice(&[0xAB; 32]);
    bytes.extend_from_slice(&[0x1F, 0x90, 2, 0, 0, 0x04]);
    roundtrip_bytes(&mapped, &bytes);
    // Asking for a probe: flags 0x01 and 218 zero bytes of padding.
    let probe = Datagram::new(
        5,
        Message::AnnounceX {
            connection_id: 0x0102,
            announce,
            flags: ExtFlags {
                probe: true,
                relayed: false,
                mapped: false,
                punch: false,
            },
        },
    );
    let mut bytes = hdr(16, 5, 0x0102);
    bytes.extend_from_slice(&[0xAB; 32]);
    bytes.extend_from_slice(&[0x1F, 0x90, 2, 0, 0, 0x01]);
    bytes.extend_from_slice(&[0; PROBE_PADDING]);
    roundtrip_bytes(&probe, &bytes);
    assert_eq!(bytes.len(), 276);
    // Padding of another length, unknown flag bits, a missing flags byte
    // or a listed state with port 0: malformed.
    let mut short = bytes.clone();
    short.pop();
    let mut long = bytes.clone();
    long.push(0);
    let mut unknown = hdr(16, 5, 1);
    unknown.extend_from_slice(&[0xAB; 32]);
    unknown.extend_from_slice(&[0x1F, 0x90, 2, 0, 0, 0x10]);
    let mut no_flags = hdr(16, 5, 1);
    no_flags.extend_from_slice(&[0xAB; 32]);
    no_flags.extend_from_slice(&[0x1F, 0x90, 2, 0, 0]);
    let mut port0 = hdr(16, 5, 1);
    port0.extend_from_slice(&[0xAB; 32]);
    port0.extend_from_slice(&[0, 0, 1, 0, 0, 0]);
    for bad in [short, long, unknown, no_flags, port0] {
        assert!(matches!(
            Datagram::decode(&bad),
            Err(DecodeError::Body {
                source: Malformed {
                    kind: Kind::AnnounceX
                },
                ..
            })
        ));
    }
}

#[test]
fn peers_x_vector() {
    let p = Datagram::new(
        9,
        Message::PeersX(PeersX {
            interval: 60,
            seeders: 1,
            partials: 2,
            probe: Probe::Unreachable,
            observed: "203.0.113.7:8080".parse().unwrap(),
            relay: RelayAddr::SameHost(7410),
            peers: vec![
                PeerEntryX {
                    entry: PeerEntry {
                        addr: "10.0.0.1:6881".parse().unwrap(),
                        state: PeerState::Complete,
                    },
                    relayed: false,
                    mapped: true,
                    punchable: false,
                },
                PeerEntryX {
                    entry: PeerEntry {
                        addr: "[2001:db8::1]:80".parse().unwrap(),
                        state: PeerState::Downloading,
                    },
                    relayed: true,
                    mapped: false,
                    punchable: false,
                },
            ],
        }),
    );
    let mut bytes = hdr(17, 9, 0);
    bytes.extend_from_slice(&[0, 60, 0, 0, 0, 1, 0, 0, 0, 2, 2]);
    bytes.extend_from_slice(&[4, 203, 0, 113, 7, 0x1F, 0x90]);
    bytes.extend_from_slice(&[1, 0x1C, 0xF2]);
    // The first entry is MAPPED (flags 0x02), the second relayed (0x01).
    bytes.extend_from_slice(&[4, 10, 0, 0, 1, 0x1A, 0xE1, 2, 2]);
    bytes.push(6);
    bytes.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    bytes.extend_from_slice(&[0, 80, 1, 1]);
    roundtrip_bytes(&p, &bytes);
    // A relay at an explicit address, no relay, no entries.
    for (relay, tail) in [
        (RelayAddr::None, vec![0u8]),
        (
            RelayAddr::At("192.0.2.1:7410".parse().unwrap()),
            vec![4, 192, 0, 2, 1, 0x1C, 0xF2],
        ),
    ] {
        let d = Datagram::new(
            1,
            Message::PeersX(PeersX {
                interval: 1,
                seeders: 0,
                partials: 0,
                probe: Probe::NotAsked,
                observed: "192.0.2.9:1".parse().unwrap(),
                relay,
                peers: vec![],
            }),
        );
        let mut bytes = hdr(17, 1, 0);
        bytes.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[4, 192, 0, 2, 9, 0, 1]);
        bytes.extend_from_slice(&tail);
        roundtrip_bytes(&d, &bytes);
    }
    // An entry flag with a bit other than RELAYED (1), MAPPED (2) or
    // PUNCHABLE (4), a probe result above 4, a relay family of 5: malformed.
    let mut bad_flag = bytes_of(&p);
    *bad_flag.last_mut().unwrap() = 8;
    let mut bad_probe = bytes_of(&p);
    bad_probe[HEADER_LEN + 10] = 5;
    let mut bad_relay = bytes_of(&p);
    bad_relay[HEADER_LEN + 11 + 7] = 5;
    for bad in [bad_flag, bad_probe, bad_relay] {
        assert!(Datagram::decode(&bad).is_err());
    }
}

fn bytes_of(d: &Datagram) -> Vec<u8> {
    d.to_vec()
}

fn arb_state() -> impl Strategy<Value = PeerState> {
    prop_oneof![
        Just(PeerState::Asking),
        Just(PeerState::Downloading),
        Just(PeerState::Complete),
        Just(PeerState::Leaving),
    ]
}

fn arb_entry() -> impl Strategy<Value = PeerEntry> {
    (
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ],
        any::<u16>(),
        prop_oneof![Just(PeerState::Downloading), Just(PeerState::Complete)],
    )
        .prop_map(|(ip, port, state)| PeerEntry {
            addr: SocketAddr::new(ip, port),
            state,
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<[u8; 32]>(), any::<u16>()).prop_map(|(cookie, swarm_key, port)| {
            Message::Claim {
                cookie,
                swarm_key,
                port,
            }
        }),
        (1..=u16::MAX).prop_map(|port| Message::SwarmAt { port }),
        (any::<u64>(), 1..=u16::MAX, any::<[u8; 4]>(), 1..=u16::MAX).prop_map(
            |(connection_id, port, ip, tport)| Message::Introduce {
                connection_id,
                port,
                target: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), tport),
            }
        ),
        (any::<[u8; 16]>(), 1..=u16::MAX, 1..=u16::MAX).prop_map(|(ip, port, udp_port)| {
            Message::Introduced {
                peer: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port),
                udp_port,
            }
        }),
        any::<u64>().prop_map(|cookie| Message::Join { cookie }),
        any::<u64>().prop_map(|cookie| Message::Challenge { cookie }),
        (any::<u64>(), any::<Option<u16>>())
            .prop_map(|(token, port)| Message::Offer { token, port }),
        any::<u64>().prop_map(|token| Message::Confirm { token }),
        Just(Message::Confirmed),
        Just(Message::Connect),
        any::<u64>().prop_map(|connection_id| Message::Connected { connection_id }),
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u16>(),
            arb_state(),
            any::<u16>()
        )
            .prop_filter("listed states need a port", |(_, _, port, state, _)| *port
                != 0
                || !state.is_listed())
            .prop_map(
                |(connection_id, swarm_key, port, state, wanted)| Message::Announce {
                    connection_id,
                    announce: Announce {
                        swarm_key,
                        port,
                        state,
                        wanted
                    }
                }
            ),
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(arb_entry(), 0..60)
        )
            .prop_map(
                |(interval, seeders, partials, peers)| Message::Peers(Peers {
                    interval,
                    seeders,
                    partials,
                    peers
                })
            ),
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            1u16..,
            arb_state(),
            any::<u16>(),
            (any::<bool>(), any::<bool>(), any::<bool>())
        )
            .prop_map(
                |(connection_id, swarm_key, port, state, wanted, (probe, relayed, mapped))| {
                    Message::AnnounceX {
                        connection_id,
                        announce: Announce {
                            swarm_key,
                            port,
                            state,
                            wanted,
                        },
                        flags: ExtFlags {
                            probe,
                            relayed,
                            mapped,
                            punch: false,
                        },
                    }
                }
            ),
        (
            (any::<u16>(), any::<u32>(), any::<u32>()),
            0u8..5,
            arb_entry(),
            prop_oneof![
                Just(RelayAddr::None),
                any::<u16>().prop_map(RelayAddr::SameHost),
                arb_entry().prop_map(|e| RelayAddr::At(e.addr)),
            ],
            proptest::collection::vec((arb_entry(), any::<bool>(), any::<bool>()), 0..60)
        )
            .prop_map(|((interval, seeders, partials), probe, me, relay, peers)| {
                Message::PeersX(PeersX {
                    interval,
                    seeders,
                    partials,
                    probe: Probe::from_u8(probe).unwrap(),
                    observed: me.addr,
                    relay,
                    peers: peers
                        .into_iter()
                        .map(|(entry, relayed, mapped)| PeerEntryX {
                            entry,
                            relayed,
                            mapped,
                            punchable: false,
                        })
                        .collect(),
                })
            }),
        (any::<u16>(), ".{0,40}").prop_map(|(code, message)| Message::Error {
            code: ErrorCode::from_u16(code),
            message
        }),
    ]
}

proptest! {
    #[test]
    fn roundtrip(tid in any::<u32>(), message in arb_message()) {
        let d = Datagram::new(tid, message);
        let bytes = d.to_vec();
        prop_assert_eq!(Datagram::decode(&bytes), Ok(d));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let _ = Datagram::decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_never_panic(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = hdr(kind, 1, 2);
        bytes.extend_from_slice(&body);
        if let Ok(d) = Datagram::decode(&bytes) {
            // What decodes re-encodes to something that decodes the same.
            prop_assert_eq!(Datagram::decode(&d.to_vec()), Ok(d));
        }
    }

    #[test]
    fn truncations_never_panic(tid in any::<u32>(), message in arb_message()) {
        let bytes = Datagram::new(tid, message).to_vec();
        for cut in 0..bytes.len() {
            let r = Datagram::decode(&bytes[..cut]);
            if cut < HEADER_LEN {
                prop_assert_eq!(r, Err(DecodeError::Header(HeaderError::Drop)));
            }
        }
    }

    #[test]
    fn capped_errors_fit(msg in ".{0,300}", max in 0usize..400) {
        let mut out = Vec::new();
        let sent = encode_error_capped(&mut out, 1, ErrorCode::Malformed, &msg, max);
        prop_assert_eq!(sent, max >= ERROR_MIN_LEN);
        prop_assert!(out.len() <= max);
        if sent {
            prop_assert!(Datagram::decode(&out).is_ok());
        }
    }
}

#[test]
fn introduce_vectors() {
    let d = Datagram::new(
        9,
        Message::Introduce {
            connection_id: 0x0A0B,
            port: 0x1F90,
            target: "10.0.2.7:6881".parse().unwrap(),
        },
    );
    let mut bytes = hdr(20, 9, 0x0A0B);
    bytes.extend_from_slice(&[0x1F, 0x90, 4, 10, 0, 2, 7, 0x1A, 0xE1]);
    bytes.resize(INTRODUCE_LEN, 0);
    roundtrip_bytes(&d, &bytes);
    // IPv6 target: padded to the same length.
    let v6 = Datagram::new(
        9,
        Message::Introduce {
            connection_id: 1,
            port: 80,
            target: "[2001:db8::1]:443".parse().unwrap(),
        },
    );
    assert_eq!(v6.to_vec().len(), INTRODUCE_LEN);
    assert_eq!(Datagram::decode(&v6.to_vec()).unwrap(), v6);
    // Any other length is malformed, as are ports 0 and unknown families.
    for len in [HEADER_LEN, INTRODUCE_LEN - 1, INTRODUCE_LEN + 1] {
        let mut b = bytes.clone();
        b.resize(len, 0);
        assert!(Datagram::decode(&b).is_err(), "length {len}");
    }
    let mut zero_port = bytes.clone();
    zero_port[20..22].copy_from_slice(&[0, 0]);
    assert!(Datagram::decode(&zero_port).is_err());
    let mut family = bytes.clone();
    family[22] = 5;
    assert!(Datagram::decode(&family).is_err());
    // Padding is ignored on receive.
    let mut padded = bytes.clone();
    padded[INTRODUCE_LEN - 1] = 0xFF;
    assert_eq!(Datagram::decode(&padded).unwrap(), d);
}

#[test]
fn introduced_vectors() {
    let d = Datagram::new(
        9,
        Message::Introduced {
            peer: "10.0.2.7:6881".parse().unwrap(),
            udp_port: 0x9C40,
        },
    );
    let mut bytes = hdr(21, 9, 0);
    bytes.extend_from_slice(&[4, 10, 0, 2, 7, 0x1A, 0xE1, 0x9C, 0x40]);
    roundtrip_bytes(&d, &bytes);
    assert_eq!(bytes.len(), 29);
    let v6 = Datagram::new(
        1,
        Message::Introduced {
            peer: "[2001:db8::1]:443".parse().unwrap(),
            udp_port: 1,
        },
    );
    // Two of the largest INTRODUCED never exceed one INTRODUCE.
    assert!(2 * v6.to_vec().len() <= INTRODUCE_LEN);
    let mut short = bytes.clone();
    short.pop();
    assert!(Datagram::decode(&short).is_err());
    // PUNCH and PUNCHABLE bits.
    assert!(ExtFlags::from_u8(0x08).unwrap().punch);
    assert!(ExtFlags::from_u8(0x10).is_none());
}
