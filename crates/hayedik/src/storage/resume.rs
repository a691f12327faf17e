//! The resume file: which pieces of a part file were verified and synced.
//!
//! Layout (integers little-endian), 96 bytes plus the bitfield:
//!
//! ```text
//! magic        8   b"HAYEDIKR"
//! version      4   1
//! root        32   the content root
//! content_len  8
//! piece_size   8
//! piece_count  4
//! bitfield     ceil(piece_count / 8), piece 0 = most significant bit of byte 0
//! checksum    32   BLAKE3 of every byte before it
//! ```
//!
//! Decoding is a pure function; a file that fails it is discarded, never
//! trusted, and even a valid one is only a list of pieces to re-verify.

use super::{Bitfield, PieceLayout};

const MAGIC: &[u8; 8] = b"HAYEDIKR";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 32 + 8 + 8 + 4;
const CHECKSUM_LEN: usize = 32;

/// What a resume file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeState {
    pub root: [u8; 32],
    pub content_len: u64,
    pub piece_size: u64,
    /// Pieces verified and synced to the part file (the bitfield's length is
    /// the piece count).
    pub have: Bitfield,
}

/// Why a resume file was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("too short")]
    TooShort,
    #[error("checksum mismatch")]
    Checksum,
    #[error("not a hayedik resume file")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("bitfield length does not match the piece count")]
    Length,
    #[error("bits set past the last piece")]
    SpareBits,
}

impl ResumeState {
    /// Size of the encoding for `piece_count` pieces.
    pub fn encoded_len(piece_count: u32) -> usize {
        HEADER_LEN + Bitfield::byte_len(piece_count) + CHECKSUM_LEN
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::encoded_len(self.have.len()));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.content_len.to_le_bytes());
        out.extend_from_slice(&self.piece_size.to_le_bytes());
        out.extend_from_slice(&self.have.len().to_le_bytes());
        out.extend_from_slice(self.have.as_bytes());
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ResumeError> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(ResumeError::TooShort);
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if blake3::hash(body) != *checksum_array(checksum) {
            return Err(ResumeError::Checksum);
        }
        let mut r = Reader(body);
        if r.take::<8>()? != *MAGIC {
            return Err(ResumeError::Magic);
        }
        let version = u32::from_le_bytes(r.take()?);
        if version != VERSION {
            return Err(ResumeError::Version(version));
        }
        let root = r.take::<32>()?;
        let content_len = u64::from_le_bytes(r.take()?);
        let piece_size = u64::from_le_bytes(r.take()?);
        let piece_count = u32::from_le_bytes(r.take()?);
        if r.0.len() != Bitfield::byte_len(piece_count) {
            return Err(ResumeError::Length);
        }
        let have = Bitfield::from_bytes(r.0, piece_count).ok_or(ResumeError::SpareBits)?;
        Ok(ResumeState {
            root,
            content_len,
            piece_size,
            have,
        })
    }

    /// Whether this state is about the content `root` cut as `layout`;
    /// `None` when it is, else why not.
    pub fn mismatch(&self, root: &[u8; 32], layout: &PieceLayout) -> Option<&'static str> {
        if &self.root != root {
            Some("it is for other content")
        } else if self.content_len != layout.content_len()
            || self.piece_size != layout.piece_size()
            || self.have.len() != layout.piece_count()
        {
            Some("it is for another piece layout")
        } else {
            None
        }
    }
}

fn checksum_array(bytes: &[u8]) -> &[u8; 32] {
    const ZERO: [u8; 32] = [0; 32];
    <&[u8; 32]>::try_from(bytes).unwrap_or(&ZERO)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ResumeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(ResumeError::TooShort)?;
        self.0 = rest;
        Ok(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(count: u32, picks: &[u32]) -> ResumeState {
        let mut have = Bitfield::new(count);
        for &p in picks {
            have.set(p);
        }
        ResumeState {
            root: [7; 32],
            content_len: u64::from(count) * 3,
            piece_size: 3,
            have,
        }
    }

    #[test]
    fn known_bytes() {
        let bytes = state(9, &[0, 8]).encode();
        assert_eq!(bytes.len(), ResumeState::encoded_len(9));
        assert_eq!(&bytes[..12], b"HAYEDIKR\x01\x00\x00\x00");
        assert_eq!(&bytes[12..44], &[7; 32]);
        assert_eq!(&bytes[44..52], &27u64.to_le_bytes());
        assert_eq!(&bytes[52..60], &3u64.to_le_bytes());
        assert_eq!(&bytes[60..64], &9u32.to_le_bytes());
        assert_eq!(&bytes[64..66], &[0x80, 0x80]);
        assert_eq!(&bytes[66..], blake3::hash(&bytes[..66]).as_bytes());
    }

    #[test]
    fn rejects_damage() {
        let good = state(9, &[1]).encode();
        assert!(ResumeState::decode(&good).is_ok());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(ResumeState::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..good.len() {
            assert!(ResumeState::decode(&good[..n]).is_err(), "truncated to {n}");
        }
        // A valid checksum over a wrong length or spare bits is still refused.
        let resealed = |mut body: Vec<u8>| {
            let sum = blake3::hash(&body);
            body.extend_from_slice(sum.as_bytes());
            body
        };
        let mut body = good[..good.len() - 32].to_vec();
        body.push(0);
        assert_eq!(
            ResumeState::decode(&resealed(body)),
            Err(ResumeError::Length)
        );
        let mut body = good[..good.len() - 32].to_vec();
        body[65] = 0x01;
        assert_eq!(
            ResumeState::decode(&resealed(body)),
            Err(ResumeError::SpareBits)
        );
        let mut body = good[..good.len() - 32].to_vec();
        body[8] = 2;
        assert_eq!(
            ResumeState::decode(&resealed(body)),
            Err(ResumeError::Version(2))
        );
    }

    proptest! {
        #[test]
        fn round_trips(count in 0u32..100, picks in proptest::collection::vec(0u32..100, 0..30)) {
            let s = state(count, &picks);
            prop_assert_eq!(ResumeState::decode(&s.encode()), Ok(s));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ResumeState::decode(&bytes);
        }
    }
}
