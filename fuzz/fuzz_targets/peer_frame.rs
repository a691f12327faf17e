#![no_main]
//! Arbitrary bytes through the peer frame decoder, as a stream: decode frames
//! one after another until the bytes run out or are invalid. Whatever decodes
//! must re-encode to exactly the bytes it came from (the encoding is
//! canonical), and the header helpers must agree with the full decoder.

use hayedik_proto::peer::{decode_frame, BlockHeader, FrameHeader, Message, MessageType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((message, used))) = decode_frame(rest) {
        assert!(used > 0 && used <= rest.len());
        assert_eq!(message.to_vec(), &rest[..used], "re-encoding differs");
        let header = FrameHeader::decode(rest)
            .expect("header of a decoded frame")
            .expect("complete header");
        assert_eq!(header.kind, message.kind());
        assert_eq!(header.frame_len(), used);
        if let Message::Block {
            piece,
            offset,
            data,
        } = &message
        {
            let b = BlockHeader::decode(rest)
                .expect("block header")
                .expect("complete block header");
            assert_eq!(
                (b.piece, b.offset, b.len as usize),
                (*piece, *offset, data.len())
            );
        }
        rest = &rest[used..];
    }
    let _ = BlockHeader::decode(data);
    if let Some((&kind, payload)) = data.split_first() {
        if let Some(kind) = MessageType::from_u8(kind) {
            let _ = Message::decode_payload(kind, payload);
        }
    }
});
