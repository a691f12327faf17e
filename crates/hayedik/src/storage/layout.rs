//! How content bytes are cut into pieces, and a set of pieces.
//!
//! Content is one file or a tree of files. Pieces are aligned per file:
//! each file is cut into `piece_size` pieces, its last one short, and the
//! next file starts a new piece; an empty file has none. Indices are `u32`,
//! as on the wire.
//!
//! Storage addresses the content through a *virtual byte space* in which
//! piece `i` starts at `i * piece_size`: file `f` occupies
//! `first_piece(f) * piece_size ..` plus its size, so a piece never spans two
//! files, and for a single file the virtual offset is the offset in the file.

use std::ops::Range;
use std::sync::Arc;

use super::StorageError;

/// Largest piece size the layer accepts. It bounds the memory of verification
/// (one piece buffer per hashing thread). Same bound as the manifest's.
pub const MAX_PIECE_SIZE: u64 = 256 << 20;

/// The piece layout of one content: its files' sizes and its piece size.
/// Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceLayout {
    content_len: u64,
    piece_size: u64,
    piece_count: u32,
    /// Per file, its size.
    sizes: Arc<[u64]>,
    /// Per file, the index of its first piece (its pieces end where the next
    /// file's begin; the last ones at `piece_count`).
    starts: Arc<[u32]>,
}

impl PieceLayout {
    /// The layout of a single file of `content_len` bytes. Checks that
    /// `piece_size` is in `1..=MAX_PIECE_SIZE` and that the piece count fits
    /// a `u32`.
    pub fn new(content_len: u64, piece_size: u64) -> Result<Self, StorageError> {
        Self::from_sizes(&[content_len], piece_size)
    }

    /// The layout of files of these sizes, in order, each starting at a new
    /// piece. Errors as [`PieceLayout::new`], and when the sizes overflow.
    pub fn from_sizes(sizes: &[u64], piece_size: u64) -> Result<Self, StorageError> {
        if piece_size == 0 || piece_size > MAX_PIECE_SIZE {
            return Err(StorageError::Layout(format!(
                "piece size {piece_size} is not in 1..={MAX_PIECE_SIZE}"
            )));
        }
        let too_many =
            |count| StorageError::Layout(format!("{count} pieces do not fit a 32-bit piece index"));
        let mut starts = Vec::with_capacity(sizes.len());
        let mut count = 0u64;
        let mut content_len = 0u64;
        for &size in sizes {
            starts.push(u32::try_from(count).map_err(|_| too_many(count))?);
            count += size.div_ceil(piece_size);
            content_len = content_len
                .checked_add(size)
                .ok_or_else(|| StorageError::Layout("the file sizes overflow".to_string()))?;
        }
        let piece_count = u32::try_from(count).map_err(|_| too_many(count))?;
        Ok(PieceLayout {
            content_len,
            piece_size,
            piece_count,
            sizes: sizes.into(),
            starts: starts.into(),
        })
    }

    /// Sum of the file sizes.
    pub fn content_len(&self) -> u64 {
        self.content_len
    }

    /// Length of the virtual byte space: where the last piece ends.
    pub fn virtual_len(&self) -> u64 {
        match self.piece_count.checked_sub(1) {
            Some(last) => self.piece_offset(last) + self.piece_len(last),
            None => 0,
        }
    }

    pub fn piece_size(&self) -> u64 {
        self.piece_size
    }

    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// Number of files (empty ones included).
    pub fn file_count(&self) -> usize {
        self.sizes.len()
    }

    pub fn file_size(&self, file: usize) -> u64 {
        self.sizes.get(file).copied().unwrap_or(0)
    }

    /// The pieces of `file` (empty for an empty file or a bad index).
    pub fn file_pieces(&self, file: usize) -> Range<u32> {
        let Some(&first) = self.starts.get(file) else {
            return 0..0;
        };
        let end = self
            .starts
            .get(file + 1)
            .copied()
            .unwrap_or(self.piece_count);
        first..end
    }

    /// Where `file` starts in the virtual byte space.
    pub fn file_offset(&self, file: usize) -> u64 {
        let first = self.starts.get(file).copied().unwrap_or(self.piece_count);
        u64::from(first) * self.piece_size
    }

    /// The file that holds piece `index`, `None` when out of range.
    pub fn file_of_piece(&self, index: u32) -> Option<usize> {
        if index >= self.piece_count {
            return None;
        }
        // The last file starting at or before `index`: empty files share
        // their start with the next file and come before it.
        self.starts.partition_point(|&s| s <= index).checked_sub(1)
    }

    /// The file that holds virtual offset `offset` and the offset within it,
    /// when `offset` lies inside a file's bytes.
    pub fn locate(&self, offset: u64) -> Option<(usize, u64)> {
        let piece = u32::try_from(offset / self.piece_size).ok()?;
        let file = self.file_of_piece(piece)?;
        let within = offset - self.file_offset(file);
        (within < self.file_size(file)).then_some((file, within))
    }

    /// Virtual byte offset of piece `index` (`index * piece_size`; the
    /// virtual length when out of range).
    pub fn piece_offset(&self, index: u32) -> u64 {
        if index >= self.piece_count {
            return match self.piece_count.checked_sub(1) {
                Some(last) => u64::from(last) * self.piece_size + self.piece_len(last),
                None => 0,
            };
        }
        u64::from(index) * self.piece_size
    }

    /// Length of piece `index`: `piece_size`, less for the last piece of a
    /// file, 0 when out of range.
    pub fn piece_len(&self, index: u32) -> u64 {
        let Some(file) = self.file_of_piece(index) else {
            return 0;
        };
        let start = u64::from(index - self.starts[file]) * self.piece_size;
        (self.sizes[file] - start).min(self.piece_size)
    }
}

/// A set of piece indices `0..len`, stored as bits, most significant bit of
/// byte 0 first (the BitTorrent order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    ones: u32,
}

impl Bitfield {
    /// An empty set over `len` pieces.
    pub fn new(len: u32) -> Self {
        Bitfield {
            bytes: vec![0; Self::byte_len(len)],
            len,
            ones: 0,
        }
    }

    /// The set of all `len` pieces.
    pub fn full(len: u32) -> Self {
        let mut bytes = vec![0xff; Self::byte_len(len)];
        // Bits used in the last byte; 0 when it is used whole.
        let used = len % 8;
        if used != 0 {
            if let Some(last) = bytes.last_mut() {
                *last = !(0xffu8 >> used);
            }
        }
        Bitfield {
            bytes,
            len,
            ones: len,
        }
    }

    /// Number of bytes that hold `len` bits.
    pub fn byte_len(len: u32) -> usize {
        usize::try_from(len.div_ceil(8)).unwrap_or(usize::MAX)
    }

    /// Decodes `bytes`; `None` when the length is wrong or a spare bit is set.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Option<Self> {
        if bytes.len() != Self::byte_len(len) {
            return None;
        }
        let used = len % 8;
        if used != 0 {
            let spare = 0xffu8 >> used;
            if bytes.last().is_some_and(|b| b & spare != 0) {
                return None;
            }
        }
        let ones = bytes.iter().map(|b| b.count_ones()).sum();
        Some(Bitfield {
            bytes: bytes.to_vec(),
            len,
            ones,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces in the set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// True when every piece is in the set (always for zero pieces).
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    fn locate(&self, index: u32) -> Option<(usize, u8)> {
        if index >= self.len {
            return None;
        }
        let byte = usize::try_from(index / 8).ok()?;
        Some((byte, 0x80 >> (index % 8)))
    }

    pub fn get(&self, index: u32) -> bool {
        self.locate(index)
            .and_then(|(byte, mask)| self.bytes.get(byte).map(|b| b & mask != 0))
            .unwrap_or(false)
    }

    /// Adds `index`; returns true when it was not there. Out of range: false.
    pub fn set(&mut self, index: u32) -> bool {
        let Some((byte, mask)) = self.locate(index) else {
            return false;
        };
        match self.bytes.get_mut(byte) {
            Some(b) if *b & mask == 0 => {
                *b |= mask;
                self.ones += 1;
                true
            }
            _ => false,
        }
    }

    /// Removes piece `index`; returns true when it was set.
    pub fn clear(&mut self, index: u32) -> bool {
        let Some((byte, mask)) = self.locate(index) else {
            return false;
        };
        match self.bytes.get_mut(byte) {
            Some(b) if *b & mask != 0 => {
                *b &= !mask;
                self.ones -= 1;
                true
            }
            _ => false,
        }
    }

    /// The pieces in the set, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// The pieces not in the set, ascending.
    pub fn zeros(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_cuts_pieces() {
        let l = PieceLayout::new(10, 4).expect("layout");
        assert_eq!(l.piece_count(), 3);
        assert_eq!(
            (0..4).map(|i| l.piece_len(i)).collect::<Vec<_>>(),
            [4, 4, 2, 0]
        );
        assert_eq!(l.piece_offset(2), 8);
        assert_eq!(l.piece_offset(u32::MAX), 10);

        let empty = PieceLayout::new(0, 4).expect("layout");
        assert_eq!(empty.piece_count(), 0);
        assert_eq!(empty.piece_len(0), 0);

        assert!(PieceLayout::new(10, 0).is_err());
        assert!(PieceLayout::new(10, MAX_PIECE_SIZE + 1).is_err());
        assert!(PieceLayout::new(u64::MAX, 1).is_err());
        let len = u64::from(u32::MAX) * MAX_PIECE_SIZE - 3;
        let big = PieceLayout::new(len, MAX_PIECE_SIZE).expect("layout");
        assert_eq!(big.piece_count(), u32::MAX);
        let last = big.piece_count() - 1;
        assert_eq!(big.piece_len(last), MAX_PIECE_SIZE - 3);
        assert_eq!(big.piece_offset(last) + big.piece_len(last), len);
        assert!(PieceLayout::new(len + 4, MAX_PIECE_SIZE).is_err());
    }

    #[test]
    fn files_start_at_new_pieces() {
        // Files of 10, 0, 4 and 1 bytes, pieces of 4: 0..3, none, 3, 4.
        let l = PieceLayout::from_sizes(&[10, 0, 4, 1], 4).expect("layout");
        assert_eq!(l.piece_count(), 5);
        assert_eq!(l.content_len(), 15);
        assert_eq!(
            (0..6).map(|i| l.piece_len(i)).collect::<Vec<_>>(),
            [4, 4, 2, 4, 1, 0]
        );
        assert_eq!(
            (0..6).map(|i| l.file_of_piece(i)).collect::<Vec<_>>(),
            [Some(0), Some(0), Some(0), Some(2), Some(3), None]
        );
        assert_eq!(l.file_pieces(0), 0..3);
        assert_eq!(l.file_pieces(1), 3..3);
        assert_eq!(l.file_pieces(2), 3..4);
        assert_eq!(l.file_pieces(3), 4..5);
        assert_eq!(l.file_pieces(4), 0..0);
        assert_eq!(l.file_offset(2), 12);
        assert_eq!(l.piece_offset(4), 16);
        assert_eq!(l.virtual_len(), 17);
        assert_eq!(l.locate(9), Some((0, 9)));
        assert_eq!(l.locate(10), None, "the gap after a short last piece");
        assert_eq!(l.locate(12), Some((2, 0)));
        assert_eq!(l.locate(16), Some((3, 0)));
        assert_eq!(l.locate(17), None);
        let empty = PieceLayout::from_sizes(&[0, 0], 4).expect("layout");
        assert_eq!((empty.piece_count(), empty.virtual_len()), (0, 0));
        assert_eq!(empty.file_of_piece(0), None);
        assert!(PieceLayout::from_sizes(&[u64::MAX, 1], MAX_PIECE_SIZE).is_err());
    }

    proptest! {
        #[test]
        fn pieces_tile_every_file(sizes in proptest::collection::vec(0u64..50, 0..8), ps in 1u64..9) {
            let l = PieceLayout::from_sizes(&sizes, ps).expect("layout");
            let mut piece = 0u32;
            for (f, &size) in sizes.iter().enumerate() {
                let mut covered = 0;
                for i in l.file_pieces(f) {
                    prop_assert_eq!(i, piece);
                    prop_assert_eq!(l.file_of_piece(i), Some(f));
                    prop_assert_eq!(l.piece_offset(i), l.file_offset(f) + covered);
                    prop_assert_eq!(l.locate(l.piece_offset(i)), Some((f, covered)));
                    covered += l.piece_len(i);
                    piece += 1;
                }
                prop_assert_eq!(covered, size);
            }
            prop_assert_eq!(piece, l.piece_count());
        }
    }

    #[test]
    fn bitfield_rejects_spare_bits_and_bad_lengths() {
        assert!(Bitfield::from_bytes(&[0x80], 1).is_some());
        assert!(Bitfield::from_bytes(&[0x40], 1).is_none());
        assert!(Bitfield::from_bytes(&[0, 0], 1).is_none());
        assert!(Bitfield::from_bytes(&[], 0).is_some());
        assert!(Bitfield::new(0).is_full());
        for n in 0..20 {
            let full = Bitfield::full(n);
            assert_eq!(Bitfield::from_bytes(full.as_bytes(), n), Some(full.clone()));
            assert_eq!(full.ones().count() as u32, n);
            assert!(full.is_full());
        }
    }

    proptest! {
        #[test]
        fn bitfield_round_trips(len in 0u32..200, picks in proptest::collection::vec(0u32..220, 0..50)) {
            let mut b = Bitfield::new(len);
            for &p in &picks {
                b.set(p);
            }
            let again = Bitfield::from_bytes(b.as_bytes(), len).expect("decodes");
            prop_assert_eq!(&again, &b);
            let ones: Vec<u32> = b.ones().collect();
            prop_assert_eq!(ones.len() as u32, b.count());
            prop_assert_eq!(b.count() + b.zeros().count() as u32, len);
            for p in picks {
                prop_assert_eq!(b.get(p), p < len);
            }
        }
    }
}
