#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

/// A frame built by hand: length, type, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

fn check_vector(m: Message, bytes: &[u8]) {
    assert_eq!(m.to_vec(), bytes, "encoding of {m:?}");
    assert_eq!(decode_frame(bytes), Ok(Some((m, bytes.len()))));
}

#[test]
fn vectors() {
    check_vector(Message::KeepAlive, &[0, 0, 0, 1, 0]);
    check_vector(Message::ManifestRequest, &[0, 0, 0, 1, 4]);

    let mut hello = b"HYDK".to_vec();
    hello.push(2);
    hello.extend_from_slice(&[0xAA; 32]);
    hello.extend_from_slice(&[0xBB; 32]);
    hello.extend_from_slice(&[0x1F, 0x90]);
    let hello_frame = frame(1, &hello);
    assert_eq!(&hello_frame[..5], &[0, 0, 0, 72, 1]);
    check_vector(Message::hello([0xAA; 32], [0xBB; 32], 8080), &hello_frame);

    check_vector(Message::Proof { mac: [7; 32] }, &frame(2, &[7; 32]));
    check_vector(
        Message::Goodbye {
            reason: "bad proof".into(),
        },
        &frame(3, b"bad proof"),
    );
    check_vector(
        Message::Goodbye {
            reason: String::new(),
        },
        &[0, 0, 0, 1, 3],
    );
    check_vector(
        Message::Manifest {
            bytes: b"HYDKMAN".to_vec(),
        },
        &frame(5, b"HYDKMAN"),
    );
    check_vector(
        Message::Bitfield {
            bits: vec![0b1010_0000],
        },
        &[0, 0, 0, 2, 6, 0xA0],
    );
    check_vector(Message::Bitfield { bits: vec![] }, &[0, 0, 0, 1, 6]);
    check_vector(
        Message::Have { piece: 0x01020304 },
        &[0, 0, 0, 5, 7, 1, 2, 3, 4],
    );
    let triple = [0, 0, 0, 9, 0, 0, 0x40, 0, 0, 0x10, 0, 0];
    check_vector(
        Message::Request {
            piece: 9,
            offset: 0x4000,
            len: 0x100000,
        },
        &frame(8, &triple),
    );
    check_vector(
        Message::Cancel {
            piece: 9,
            offset: 0x4000,
            len: 0x100000,
        },
        &frame(10, &triple),
    );
    check_vector(
        Message::Reject {
            piece: 9,
            offset: 0x4000,
            len: 0x100000,
        },
        &frame(11, &triple),
    );
    check_vector(
        Message::Block {
            piece: 1,
            offset: 2,
            data: vec![0xDE, 0xAD],
        },
        &[0, 0, 0, 11, 9, 0, 0, 0, 1, 0, 0, 0, 2, 0xDE, 0xAD],
    );
}

#[test]
fn block_header_helpers_match_the_message() {
    let data = vec![5u8; 300];
    let m = Message::Block {
        piece: 77,
        offset: 1 << 19,
        data: data.clone(),
    };
    let bytes = m.to_vec();
    let header = encode_block_header(77, 1 << 19, 300);
    assert_eq!(&bytes[..BLOCK_HEADER_LEN], &header);
    assert_eq!(&bytes[BLOCK_HEADER_LEN..], &data[..]);
    for cut in 0..BLOCK_HEADER_LEN {
        assert_eq!(BlockHeader::decode(&bytes[..cut]), Ok(None), "cut {cut}");
    }
    let want = BlockHeader {
        piece: 77,
        offset: 1 << 19,
        len: 300,
    };
    assert_eq!(BlockHeader::decode(&header), Ok(Some(want)));
    assert_eq!(BlockHeader::decode(&bytes), Ok(Some(want)));
    assert_eq!(
        BlockHeader::decode(&Message::Have { piece: 1 }.to_vec()),
        Err(PeerWireError::NotBlock(MessageType::Have))
    );
    let fh = FrameHeader::decode(&bytes).unwrap().unwrap();
    assert_eq!(fh.kind, MessageType::Block);
    assert_eq!(fh.frame_len(), bytes.len());
    assert_eq!(
        Message::decode_payload(fh.kind, &bytes[FRAME_HEADER_LEN..]),
        Ok(m)
    );
}

#[test]
fn frames_stream_one_after_another() {
    let msgs = [
        Message::hello([1; 32], [2; 32], 7),
        Message::Proof { mac: [3; 32] },
        Message::Have { piece: 4 },
        Message::KeepAlive,
    ];
    let mut stream = Vec::new();
    for m in &msgs {
        m.encode(&mut stream);
    }
    let mut at = 0;
    for m in &msgs {
        let (got, used) = decode_frame(&stream[at..]).unwrap().unwrap();
        assert_eq!(&got, m);
        at += used;
    }
    assert_eq!(at, stream.len());
    assert_eq!(decode_frame(&stream[at..]), Ok(None));
}

#[test]
fn hostile_frames() {
    // Refused from the length alone, before the type or any payload arrives.
    assert_eq!(
        decode_frame(&[0xFF, 0xFF, 0xFF, 0xFF]),
        Err(PeerWireError::FrameLength(u32::MAX))
    );
    assert_eq!(
        FrameHeader::decode(&[0xFF, 0xFF, 0xFF, 0xFF, 9]),
        Err(PeerWireError::FrameLength(u32::MAX))
    );
    assert_eq!(
        decode_frame(&[0, 0, 0, 0]),
        Err(PeerWireError::FrameLength(0))
    );
    let too_long = MAX_FRAME_LEN + 1;
    assert_eq!(
        decode_frame(&too_long.to_be_bytes()),
        Err(PeerWireError::FrameLength(too_long))
    );
    // The largest legal frame is a manifest; its header is accepted.
    let mut max = MAX_FRAME_LEN.to_be_bytes().to_vec();
    max.push(5);
    assert_eq!(decode_frame(&max), Ok(None));
    assert_eq!(MAX_FRAME, 4 + 1 + MAX_MANIFEST_BYTES);

    assert_eq!(
        decode_frame(&[0, 0, 0, 1, 13]),
        Err(PeerWireError::UnknownType(13))
    );
    assert_eq!(
        decode_frame(&[0, 0, 0, 1, 0xFF]),
        Err(PeerWireError::UnknownType(0xFF))
    );
    // A Have claiming 4 MiB is refused at the header.
    assert_eq!(
        decode_frame(&[0, 0x40, 0, 0, 7]),
        Err(PeerWireError::PayloadLength {
            kind: MessageType::Have,
            len: 0x3F_FFFF
        })
    );
    // A Block longer than MAX_BLOCK is refused at the header.
    let big_block = 1 + 8 + MAX_BLOCK + 1;
    let mut b = big_block.to_be_bytes().to_vec();
    b.push(9);
    assert!(matches!(
        decode_frame(&b),
        Err(PeerWireError::PayloadLength {
            kind: MessageType::Block,
            ..
        })
    ));
    // Empty block data, empty manifest, payload on a KeepAlive.
    for (kind, payload) in [(9u8, &[0u8; 8][..]), (5, &[][..]), (0, &[0][..])] {
        assert!(
            matches!(
                decode_frame(&frame(kind, payload)),
                Err(PeerWireError::PayloadLength { .. })
            ),
            "type {kind}"
        );
    }
    for len in [0u32, MAX_BLOCK + 1, u32::MAX] {
        let mut p = vec![0; 8];
        p.extend_from_slice(&len.to_be_bytes());
        for kind in [8, 10, 11] {
            assert_eq!(
                decode_frame(&frame(kind, &p)),
                Err(PeerWireError::BlockLength(len))
            );
        }
    }
    assert_eq!(
        decode_frame(&frame(3, &[0xC3, 0x28])),
        Err(PeerWireError::ReasonNotUtf8)
    );
    assert!(decode_frame(&frame(3, &[b'x'; MAX_REASON + 1])).is_err());
    assert!(decode_frame(&frame(6, &vec![0; MAX_BITFIELD_BYTES + 1])).is_err());
    assert!(decode_frame(&frame(6, &vec![0; MAX_BITFIELD_BYTES])).is_ok());
}

#[test]
fn hostile_hellos() {
    let good = Message::hello([1; 32], [2; 32], 7).to_vec();
    let mut magic = good.clone();
    magic[5] = b'X';
    assert_eq!(decode_frame(&magic), Err(PeerWireError::BadMagic));
    // Another version is reported as such, whatever its length, so the
    // session can answer with a Goodbye that says so.
    let mut v3 = b"HYDK".to_vec();
    v3.push(3);
    v3.extend_from_slice(&[0; 100]);
    assert_eq!(
        decode_frame(&frame(1, &v3)),
        Err(PeerWireError::UnsupportedVersion(3))
    );
    // A version 1 (plaintext) Hello, as an old peer sends it.
    let mut v1 = good[FRAME_HEADER_LEN..].to_vec();
    v1[4] = 1;
    assert_eq!(
        decode_frame(&frame(1, &v1)),
        Err(PeerWireError::UnsupportedVersion(1))
    );
    assert_eq!(
        decode_frame(&frame(1, b"HYDK\x00")),
        Err(PeerWireError::UnsupportedVersion(0))
    );
    // Version 2 has exactly one length.
    let mut long = good[FRAME_HEADER_LEN..].to_vec();
    long.push(0);
    assert!(matches!(
        decode_frame(&frame(1, &long)),
        Err(PeerWireError::PayloadLength {
            kind: MessageType::Hello,
            len: 72
        })
    ));
    assert!(matches!(
        decode_frame(&frame(1, &good[FRAME_HEADER_LEN..good.len() - 1])),
        Err(PeerWireError::PayloadLength { .. })
    ));
    assert!(decode_frame(&frame(1, &[0; MAX_HELLO_LEN + 1])).is_err());
    // Not a hayedik peer at all: an HTTP request.
    assert!(decode_frame(b"GET / HTTP/1.1\r\n\r\n").is_err());
}

#[test]
fn goodbye_reason_is_cut_on_a_char_boundary() {
    let long = "é".repeat(MAX_REASON); // 2 bytes each
    let Message::Goodbye { reason } = Message::goodbye(&long) else {
        panic!("not a goodbye");
    };
    assert_eq!(reason.len(), MAX_REASON);
    let odd = format!("x{long}");
    let Message::Goodbye { reason } = Message::goodbye(&odd) else {
        panic!("not a goodbye");
    };
    assert_eq!(reason.len(), MAX_REASON - 1);
    let bytes = Message::goodbye(&odd).to_vec();
    assert!(decode_frame(&bytes).unwrap().is_some());
}

#[test]
fn handshake_proofs() {
    let root = [9u8; 32];
    let key = crate::manifest::peer_auth_key(&root);
    let (na, nb) = ([0xA; 32], [0xB; 32]);
    // B (responder) proves after seeing A's nonce; A proves after B's.
    let tls = [0x7; 32];
    let proof_b = handshake_proof(&key, &tls, Role::Responder, &na, &nb);
    let proof_a = handshake_proof(&key, &tls, Role::Initiator, &nb, &na);
    assert!(verify_proof(
        &key,
        &tls,
        Role::Responder,
        &na,
        &nb,
        &proof_b
    ));
    assert!(verify_proof(
        &key,
        &tls,
        Role::Initiator,
        &nb,
        &na,
        &proof_a
    ));
    // Reflection: B's own proof sent back to B as A's does not verify.
    assert!(!verify_proof(
        &key,
        &tls,
        Role::Initiator,
        &nb,
        &na,
        &proof_b
    ));
    // With nonces swapped, or for another root, or another nonce: refused.
    assert!(!verify_proof(
        &key,
        &tls,
        Role::Responder,
        &nb,
        &na,
        &proof_b
    ));
    let other = crate::manifest::peer_auth_key(&[8; 32]);
    assert!(!verify_proof(
        &other,
        &tls,
        Role::Responder,
        &na,
        &nb,
        &proof_b
    ));
    assert!(!verify_proof(
        &key,
        &tls,
        Role::Responder,
        &[0xC; 32],
        &nb,
        &proof_b
    ));
    // On another TLS connection (another exporter value): refused.
    assert!(!verify_proof(
        &key,
        &[0x8; 32],
        Role::Responder,
        &na,
        &nb,
        &proof_b
    ));
    assert_eq!(Role::Initiator.other(), Role::Responder);
    // The layout, spelled out.
    let mut input = b"hayedik peer proof v2".to_vec();
    input.extend_from_slice(&tls);
    input.push(1);
    input.extend_from_slice(&na);
    input.extend_from_slice(&nb);
    assert_eq!(proof_b, *blake3::keyed_hash(&key, &input).as_bytes());
}

#[test]
fn bitfields() {
    let mut b = Bitfield::new(10);
    assert_eq!(b.as_bytes(), &[0, 0]);
    assert!(!b.is_complete());
    assert!(b.set(0));
    assert!(!b.set(0));
    assert!(b.set(9));
    assert!(!b.set(10));
    assert!(!b.set(u32::MAX));
    assert_eq!(b.as_bytes(), &[0x80, 0x40]);
    assert!(b.get(0) && b.get(9) && !b.get(1) && !b.get(10) && !b.get(u32::MAX));
    assert_eq!(b.count(), 2);
    assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 9]);
    assert_eq!(Bitfield::from_bytes(b.as_bytes(), 10), Ok(b.clone()));

    let full = Bitfield::full(10);
    assert_eq!(full.as_bytes(), &[0xFF, 0xC0]);
    assert!(full.is_complete());
    assert_eq!(full.count(), 10);
    assert_eq!(Bitfield::full(16).as_bytes(), &[0xFF, 0xFF]);
    assert!(Bitfield::new(0).is_complete());
    assert!(Bitfield::new(0).is_empty());
    assert_eq!(Bitfield::from_bytes(&[], 0).map(|b| b.len()), Ok(0));

    assert_eq!(
        Bitfield::from_bytes(&[0xFF, 0xE0], 10),
        Err(BitfieldError::SpareBits)
    );
    assert_eq!(
        Bitfield::from_bytes(&[0xFF], 10),
        Err(BitfieldError::Length {
            expected: 2,
            found: 1
        })
    );
    assert_eq!(
        Bitfield::from_bytes(&[0, 0, 0], 10),
        Err(BitfieldError::Length {
            expected: 2,
            found: 3
        })
    );
}

fn arb_triple() -> impl Strategy<Value = (u32, u32, u32)> {
    (any::<u32>(), any::<u32>(), 1..=MAX_BLOCK)
}

pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::ManifestRequest),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u16>())
            .prop_map(|(s, n, p)| Message::hello(s, n, p)),
        any::<[u8; 32]>().prop_map(|mac| Message::Proof { mac }),
        ".{0,60}".prop_map(|r| Message::goodbye(&r)),
        proptest::collection::vec(any::<u8>(), 1..300)
            .prop_map(|bytes| Message::Manifest { bytes }),
        proptest::collection::vec(any::<u8>(), 0..60).prop_map(|bits| Message::Bitfield { bits }),
        any::<u32>().prop_map(|piece| Message::Have { piece }),
        arb_triple().prop_map(|(piece, offset, len)| Message::Request { piece, offset, len }),
        arb_triple().prop_map(|(piece, offset, len)| Message::Cancel { piece, offset, len }),
        arb_triple().prop_map(|(piece, offset, len)| Message::Reject { piece, offset, len }),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 1..600)
        )
            .prop_map(|(piece, offset, data)| Message::Block {
                piece,
                offset,
                data
            }),
        (arb_addrs(), arb_addrs())
            .prop_map(|(added, dropped)| Message::PeerExchange { added, dropped }),
    ]
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn arb_addrs() -> impl Strategy<Value = Vec<SocketAddr>> {
    proptest::collection::vec(arb_addr(), 0..=MAX_PEX_ADDRS)
}

proptest! {
    #[test]
    fn roundtrip(m in arb_message()) {
        let bytes = m.to_vec();
        prop_assert_eq!(decode_frame(&bytes), Ok(Some((m.clone(), bytes.len()))));
        let h = FrameHeader::decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(h.kind, m.kind());
        prop_assert_eq!(h.frame_len(), bytes.len());
    }

    #[test]
    fn truncations_are_incomplete(m in arb_message()) {
        let bytes = m.to_vec();
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode_frame(&bytes[..cut]), Ok(None), "cut at {}", cut);
        }
    }

    #[test]
    fn a_stream_fed_in_pieces_decodes(
        msgs in proptest::collection::vec(arb_message(), 1..6),
        chunk in 1usize..64,
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            m.encode(&mut stream);
        }
        // Feed the bytes in chunks as a socket would, decoding greedily.
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        for part in stream.chunks(chunk) {
            buf.extend_from_slice(part);
            while let Some((m, used)) = decode_frame(&buf).unwrap() {
                got.push(m);
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_frame(&bytes);
        let _ = BlockHeader::decode(&bytes);
    }

    #[test]
    fn arbitrary_payloads_never_panic(kind in 0u8..16, payload in proptest::collection::vec(any::<u8>(), 0..100)) {
        let bytes = frame(kind, &payload);
        if let Ok(Some((m, used))) = decode_frame(&bytes) {
            // Canonical: whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(m.to_vec(), bytes);
        }
        if let Some(kind) = MessageType::from_u8(kind) {
            let _ = Message::decode_payload(kind, &payload);
        }
    }

    #[test]
    fn bitfields_roundtrip(len in 0u32..200, set in proptest::collection::vec(any::<u32>(), 0..50)) {
        let mut b = Bitfield::new(len);
        for i in &set {
            b.set(i % (len + 1));
        }
        let again = Bitfield::from_bytes(b.as_bytes(), len).unwrap();
        prop_assert_eq!(again.count(), b.ones().count() as u32);
        prop_assert_eq!(&again, &b);
    }

    #[test]
    fn bitfield_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..30), len in 0u32..250) {
        if let Ok(b) = Bitfield::from_bytes(&bytes, len) {
            prop_assert_eq!(b.as_bytes(), &bytes[..]);
            prop_assert!(b.ones().all(|i| i < len));
        }
    }
}

#[test]
fn peer_exchange_vectors() {
    let m = Message::PeerExchange {
        added: vec![
            "192.0.2.7:7411".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        ],
        dropped: vec!["10.0.0.1:80".parse().unwrap()],
    };
    let mut payload = vec![2, 4, 192, 0, 2, 7, 0x1C, 0xF3, 6];
    payload.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    payload.extend_from_slice(&[0; 11]);
    payload.extend_from_slice(&[1, 0x01, 0xBB]);
    payload.extend_from_slice(&[1, 4, 10, 0, 0, 1, 0, 80]);
    check_vector(m, &frame(12, &payload));
    check_vector(
        Message::PeerExchange {
            added: vec![],
            dropped: vec![],
        },
        &[0, 0, 0, 3, 12, 0, 0],
    );
    // The largest: 50 + 50 IPv6 entries.
    let v6: SocketAddr = "[2001:db8::2]:1".parse().unwrap();
    let full = Message::PeerExchange {
        added: vec![v6; MAX_PEX_ADDRS],
        dropped: vec![v6; MAX_PEX_ADDRS],
    };
    let bytes = full.to_vec();
    assert_eq!(bytes.len(), FRAME_HEADER_LEN + MAX_PEX_PAYLOAD);
    assert_eq!(decode_frame(&bytes), Ok(Some((full, bytes.len()))));
    // An encoder given too many addresses sends the first 50 only.
    let many = Message::PeerExchange {
        added: vec![v6; 10_000],
        dropped: vec![],
    };
    match decode_frame(&many.to_vec()) {
        Ok(Some((Message::PeerExchange { added, .. }, _))) => {
            assert_eq!(added.len(), MAX_PEX_ADDRS)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_peer_exchanges() {
    let entry = [4u8, 127, 0, 0, 1, 0x1F, 0x90];
    // 51 addresses in a list.
    let mut p = vec![51];
    for _ in 0..51 {
        p.extend_from_slice(&entry);
    }
    p.push(0);
    assert_eq!(
        decode_frame(&frame(12, &p)),
        Err(PeerWireError::PeerExchange(
            "more than 50 addresses in a list"
        ))
    );
    // A count claiming more entries than there are bytes.
    assert_eq!(
        decode_frame(&frame(12, &[3, 4, 1, 2, 3, 4, 0, 1])),
        Err(PeerWireError::PeerExchange("truncated list"))
    );
    // No dropped list at all.
    assert_eq!(
        decode_frame(&frame(12, &[1, 4, 1, 2, 3, 4, 0, 1])),
        Err(PeerWireError::PeerExchange("truncated list"))
    );
    // An unknown family, and bytes after the lists.
    assert_eq!(
        decode_frame(&frame(12, &[1, 5, 1, 2, 3, 4, 0, 1, 0])),
        Err(PeerWireError::PeerExchange("unknown address family"))
    );
    assert_eq!(
        decode_frame(&frame(12, &[0, 0, 0])),
        Err(PeerWireError::PeerExchange("bytes after the lists"))
    );
    // Larger than the limit, or shorter than two counts: refused at the
    // header, before the payload is read.
    let mut big = ((MAX_PEX_PAYLOAD + 2) as u32).to_be_bytes().to_vec();
    big.push(12);
    assert_eq!(
        decode_frame(&big),
        Err(PeerWireError::PayloadLength {
            kind: MessageType::PeerExchange,
            len: MAX_PEX_PAYLOAD + 1
        })
    );
    assert!(decode_frame(&frame(12, &[0])).is_err());
}

proptest! {
    #[test]
    fn peer_exchange_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(m) = Message::decode_payload(MessageType::PeerExchange, &payload) {
            let Message::PeerExchange { added, dropped } = &m else {
                panic!("{m:?}");
            };
            prop_assert!(added.len() <= MAX_PEX_ADDRS && dropped.len() <= MAX_PEX_ADDRS);
            prop_assert_eq!(&m.to_vec()[FRAME_HEADER_LEN..], &payload[..]);
        }
    }
}
