//! The content manifest: file names, sizes, piece size and piece hashes, and
//! the content root that a ticket names.
//!
//! The root is `blake3(encode(manifest))`, so a manifest fetched from any peer
//! is checked against the ticket with [`Manifest::verify`] before it is used,
//! and every name, size and piece hash is covered by that one check. Each
//! piece is then checked against its hash ([`hash_piece`]) before it is
//! written as good or served on.
//!
//! A manifest describes one file or one folder tree: every path starts with
//! the same first component (the shared file's name, or the shared folder's),
//! and a folder entry stands for an empty folder (folders that hold something
//! are implied by the paths beneath them).
//!
//! Pieces are aligned per file: every file starts at a new piece, and a file's
//! last piece may be short, so one changed file does not shift the pieces of
//! the others. An empty file or a folder has no pieces.
//!
//! The encoding is canonical (one manifest, one byte string) and every count
//! is bounded before anything is allocated. Byte layout: `docs/peer-protocol.md`.

use std::ops::Range;

use crate::codec::{Reader, Short, Writer};

/// `HYDKMAN`, the first bytes of an encoded manifest.
pub const MAGIC: [u8; 7] = *b"HYDKMAN";
/// The manifest format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// No encoded manifest is larger than this (also bounds the peer frame that
/// carries one).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// More piece hashes than this cannot fit in [`MAX_MANIFEST_BYTES`].
pub const MAX_PIECES: u32 = (MAX_MANIFEST_BYTES / 32) as u32;
/// At most this many files in one manifest.
pub const MAX_FILES: u32 = 65_536;
/// Smallest piece size a manifest may declare (decode bound).
pub const MIN_PIECE_SIZE: u32 = 1 << 10;
/// Largest piece size a manifest may declare: bounds what a peer may have to
/// hold to verify one piece.
pub const MAX_PIECE_SIZE: u32 = 1 << 28;
/// The smallest piece size [`choose_piece_size`] picks.
pub const PREFERRED_MIN_PIECE_SIZE: u32 = 1 << 20;
/// [`choose_piece_size`] grows the piece size until the count is at most this.
pub const TARGET_MAX_PIECES: u64 = 16_384;
/// Longest path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Most components in a path.
pub const MAX_PATH_DEPTH: usize = 64;

/// Fixed bytes before the file entries: magic, version, piece size, file count.
const PREFIX_LEN: usize = 7 + 1 + 4 + 4;
/// Smallest encoded file entry: path length, one path byte, size, flags.
const MIN_ENTRY_LEN: usize = 2 + 1 + 8 + 1;
/// Flag bit: the file is executable (mode 0o755 on Unix when written).
const FLAG_EXECUTABLE: u8 = 1;
/// Flag bit: the entry is an (empty) folder, with size 0 and no pieces.
const FLAG_DIRECTORY: u8 = 2;

/// One file (or empty folder) of the content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileEntry {
    /// Relative, `/`-separated, checked by [`validate_path`]; for a single
    /// shared file, just its name; in a folder share, `FOLDER/...`.
    pub path: String,
    pub size: u64,
    /// Written with the executable bit where the platform has one.
    pub executable: bool,
    /// An empty folder: `size` is 0 and `executable` false.
    pub directory: bool,
}

impl FileEntry {
    /// A regular file.
    pub fn file(path: impl Into<String>, size: u64, executable: bool) -> Self {
        FileEntry {
            path: path.into(),
            size,
            executable,
            directory: false,
        }
    }

    /// An empty folder.
    pub fn folder(path: impl Into<String>) -> Self {
        FileEntry {
            path: path.into(),
            size: 0,
            executable: false,
            directory: true,
        }
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.executable {
            flags |= FLAG_EXECUTABLE;
        }
        if self.directory {
            flags |= FLAG_DIRECTORY;
        }
        flags
    }
}

/// What a ticket's root stands for: the files and the hash of every piece.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Manifest {
    pub files: Vec<FileEntry>,
    /// A power of two in `MIN_PIECE_SIZE..=MAX_PIECE_SIZE`.
    pub piece_size: u32,
    /// `blake3` of each piece, file by file, in order.
    pub pieces: Vec<[u8; 32]>,
}

/// Where a piece lies: in which file, at which byte offset, how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceLocation {
    /// Index into [`Manifest::files`].
    pub file: usize,
    /// Byte offset of the piece within that file.
    pub offset: u64,
    pub len: u32,
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("the path is more than {MAX_PATH_DEPTH} levels deep")]
    TooDeep,
    #[error("the path is absolute (it starts with '/')")]
    Absolute,
    #[error("the path has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    #[error("the path has a '.' or '..' component")]
    DotComponent,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains ':' (a drive prefix or stream name on Windows)")]
    Colon,
    #[error("the path contains a NUL or control character")]
    Control,
    #[error("a path component is longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong,
    #[error("a path component ends with a dot or a space")]
    TrailingDotOrSpace,
    #[error("a path component is a reserved device name on Windows (CON, NUL, COM1, ...)")]
    Reserved,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {len} bytes, more than the limit of {MAX_MANIFEST_BYTES}")]
    TooLarge { len: usize },
    #[error("manifest ends early")]
    Truncated,
    #[error("manifest has bytes after its last piece hash")]
    TrailingBytes,
    #[error("not a hayedik manifest (bad magic)")]
    BadMagic,
    #[error("unsupported manifest version {0} (this program reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("piece size {0} is not a power of two in {MIN_PIECE_SIZE}..={MAX_PIECE_SIZE}")]
    BadPieceSize(u32),
    #[error("manifest lists {0} files (allowed: 1..={MAX_FILES})")]
    FileCount(u64),
    #[error("file {index}: path is not UTF-8")]
    PathNotUtf8 { index: usize },
    #[error("file {index} ({path:?}): {source}")]
    BadPath {
        index: usize,
        path: String,
        source: PathError,
    },
    #[error("file {index}: unknown flag bits {flags:#04x}")]
    BadFlags { index: usize, flags: u8 },
    #[error("folder entry {index} ({path:?}) has a size or the executable flag")]
    BadFolder { index: usize, path: String },
    #[error("path {path:?} appears twice, or is both a file and a folder")]
    DuplicatePath { path: String },
    #[error(
        "paths {first:?} and {other:?} do not start with the same name \
         (a manifest holds one file or one folder)"
    )]
    SeveralTops { first: String, other: String },
    #[error("total size of the files does not fit in 64 bits")]
    SizeOverflow,
    #[error("manifest has {found} piece hashes, the file sizes need {expected}")]
    PieceCount { expected: u64, found: u64 },
    #[error("manifest does not match the ticket's root")]
    RootMismatch,
}

impl Manifest {
    /// A checked manifest: the same checks as [`Manifest::decode`].
    pub fn new(
        files: Vec<FileEntry>,
        piece_size: u32,
        pieces: Vec<[u8; 32]>,
    ) -> Result<Manifest, ManifestError> {
        let m = Manifest {
            files,
            piece_size,
            pieces,
        };
        m.validate()?;
        Ok(m)
    }

    /// Checks everything [`Manifest::decode`] checks, including the encoded
    /// size. A manifest built locally (by a sharer) must pass this before its
    /// root is published, or no peer will accept it.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_piece_size(self.piece_size)?;
        let count = self.files.len();
        if count == 0 || count > MAX_FILES as usize {
            return Err(ManifestError::FileCount(count as u64));
        }
        for (index, f) in self.files.iter().enumerate() {
            validate_path(&f.path).map_err(|source| ManifestError::BadPath {
                index,
                path: f.path.clone(),
                source,
            })?;
            check_folder(index, f)?;
        }
        check_tree(&self.files)?;
        let expected = expected_pieces(&self.files, self.piece_size)?;
        if expected != self.pieces.len() as u64 {
            return Err(ManifestError::PieceCount {
                expected,
                found: self.pieces.len() as u64,
            });
        }
        let len = self.encoded_len();
        if len > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len });
        }
        Ok(())
    }

    /// Length of [`Manifest::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let entries: usize = self.files.iter().map(|f| 2 + f.path.len() + 8 + 1).sum();
        PREFIX_LEN + entries + 4 + 32 * self.pieces.len()
    }

    /// The canonical encoding. Meaningful for a manifest that passes
    /// [`Manifest::validate`]; never panics on one that does not.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.put_bytes(&MAGIC);
        out.put_u8(VERSION);
        out.put_u32(self.piece_size);
        out.put_u32(clamp_u32(self.files.len()));
        for f in &self.files {
            // validate() bounds paths to MAX_PATH_BYTES, well under u16::MAX.
            out.put_u16(u16::try_from(f.path.len()).unwrap_or(u16::MAX));
            out.put_bytes(f.path.as_bytes());
            out.put_u64(f.size);
            out.put_u8(f.flags());
        }
        out.put_u32(clamp_u32(self.pieces.len()));
        for p in &self.pieces {
            out.put_bytes(p);
        }
        out
    }

    /// Decodes and checks a manifest; rejects anything that is not the
    /// canonical encoding of a valid manifest.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        let mut r = Reader::new(bytes);
        if r.array::<7>()? != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(ManifestError::UnsupportedVersion(version));
        }
        let piece_size = r.u32()?;
        check_piece_size(piece_size)?;
        let count = r.u32()?;
        if count == 0 || count > MAX_FILES {
            return Err(ManifestError::FileCount(count.into()));
        }
        // The entries must fit in what is left: checked before allocating.
        if (count as usize).saturating_mul(MIN_ENTRY_LEN) > r.remaining() {
            return Err(ManifestError::Truncated);
        }
        let mut files = Vec::with_capacity(count as usize);
        for index in 0..count as usize {
            let len = r.u16()?;
            let raw = r.bytes(len.into())?;
            let path = std::str::from_utf8(raw)
                .map_err(|_| ManifestError::PathNotUtf8 { index })?
                .to_owned();
            validate_path(&path).map_err(|source| ManifestError::BadPath {
                index,
                path: path.clone(),
                source,
            })?;
            let size = r.u64()?;
            let flags = r.u8()?;
            if flags & !(FLAG_EXECUTABLE | FLAG_DIRECTORY) != 0 {
                return Err(ManifestError::BadFlags { index, flags });
            }
            let entry = FileEntry {
                path,
                size,
                executable: flags & FLAG_EXECUTABLE != 0,
                directory: flags & FLAG_DIRECTORY != 0,
            };
            check_folder(index, &entry)?;
            files.push(entry);
        }
        check_tree(&files)?;
        let expected = expected_pieces(&files, piece_size)?;
        let found = r.u32()?;
        if u64::from(found) != expected {
            return Err(ManifestError::PieceCount {
                expected,
                found: found.into(),
            });
        }
        let hashes = r.rest();
        let want = expected * 32; // expected == found <= u32::MAX
        if (hashes.len() as u64) < want {
            return Err(ManifestError::Truncated);
        }
        if hashes.len() as u64 > want {
            return Err(ManifestError::TrailingBytes);
        }
        let pieces = hashes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Manifest {
            files,
            piece_size,
            pieces,
        })
    }

    /// Decodes `bytes` only if they hash to `expected_root`.
    pub fn verify(bytes: &[u8], expected_root: &[u8; 32]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        // blake3::Hash compares in constant time (not secret here, but free).
        if blake3::hash(bytes) != *expected_root {
            return Err(ManifestError::RootMismatch);
        }
        Manifest::decode(bytes)
    }

    /// The content root: `blake3(encode())`.
    pub fn root(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// The first component shared by every path: the shared file's name, or
    /// the shared folder's. Empty only for a manifest with no file.
    pub fn top_name(&self) -> &str {
        self.files
            .first()
            .map_or("", |f| f.path.split('/').next().unwrap_or(""))
    }

    /// True when the content is one file (not a folder).
    pub fn is_single_file(&self) -> bool {
        matches!(self.files.as_slice(), [f] if !f.directory && !f.path.contains('/'))
    }

    /// Sum of the file sizes (saturating; exact for a valid manifest).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |acc, f| acc.saturating_add(f.size))
    }

    /// Number of pieces (the number of hashes).
    pub fn piece_count(&self) -> u32 {
        clamp_u32(self.pieces.len())
    }

    /// The expected hash of piece `index`.
    pub fn piece_hash(&self, index: u32) -> Option<&[u8; 32]> {
        self.pieces.get(index as usize)
    }

    /// Length of piece `index`, or `None` past the last piece.
    pub fn piece_len(&self, index: u32) -> Option<u32> {
        self.piece_location(index).map(|l| l.len)
    }

    /// The file, offset and length of piece `index`, or `None` past the last
    /// piece. Linear in the number of files.
    pub fn piece_location(&self, index: u32) -> Option<PieceLocation> {
        if self.piece_size == 0 {
            return None;
        }
        let ps = u64::from(self.piece_size);
        let mut first = 0u64;
        for (file, f) in self.files.iter().enumerate() {
            let n = f.size.div_ceil(ps);
            let index = u64::from(index);
            if index < first.saturating_add(n) {
                let offset = (index - first) * ps;
                let len = (f.size - offset).min(ps) as u32; // <= piece_size
                return Some(PieceLocation { file, offset, len });
            }
            first = first.saturating_add(n);
        }
        None
    }

    /// The piece indexes of file `file` (empty for an empty file), or `None`
    /// for an index past the last file.
    pub fn file_pieces(&self, file: usize) -> Option<Range<u32>> {
        if self.piece_size == 0 || file >= self.files.len() {
            return None;
        }
        let ps = u64::from(self.piece_size);
        let first: u64 = self.files[..file]
            .iter()
            .fold(0u64, |acc, f| acc.saturating_add(f.size.div_ceil(ps)));
        let end = first.saturating_add(self.files[file].size.div_ceil(ps));
        Some(clamp_u32_u64(first)..clamp_u32_u64(end))
    }
}

impl From<Short> for ManifestError {
    fn from(_: Short) -> Self {
        ManifestError::Truncated
    }
}

/// The hash a piece must match: `blake3(piece bytes)`.
pub fn hash_piece(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// The piece size for content of `total_bytes`: a power of two, at least
/// [`PREFERRED_MIN_PIECE_SIZE`] (1 MiB), doubled until there are at most
/// [`TARGET_MAX_PIECES`] (16,384) pieces, and at most [`MAX_PIECE_SIZE`].
///
/// Why: 1 MiB pieces keep per-piece overhead (a hash, a bitfield bit, a
/// request round trip) small next to the data and let a piece be one block;
/// capping the count keeps the manifest small (16,384 hashes are 512 KiB, so
/// a 1 TiB file's manifest stays around 512 KiB and is fetched in one frame)
/// and the bitfield at 2 KiB. Content beyond 4 TiB gets more pieces, up to
/// what [`MAX_MANIFEST_BYTES`] holds.
pub fn choose_piece_size(total_bytes: u64) -> u32 {
    let mut size = PREFERRED_MIN_PIECE_SIZE;
    while size < MAX_PIECE_SIZE && total_bytes.div_ceil(u64::from(size)) > TARGET_MAX_PIECES {
        size *= 2;
    }
    size
}

/// `blake3::derive_key("hayedik swarm key v1", root)`: what the tracker and a
/// peer's Hello see instead of the root (PROTOCOL.md).
pub fn swarm_key(root: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("hayedik swarm key v1", root)
}

/// `blake3::derive_key("hayedik peer auth v1", root)`: the key of the peer
/// handshake's proofs ([`crate::peer::handshake_proof`]).
pub fn peer_auth_key(root: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("hayedik peer auth v1", root)
}

/// Checks that `path` is safe to join under a download directory on any
/// platform: relative, `/`-separated, no `.`/`..`, no backslash, colon or
/// control character, no Windows device name, no trailing dot or space, and
/// within the length and depth bounds.
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.contains(':') {
        return Err(PathError::Colon);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    let mut depth = 0;
    for c in path.split('/') {
        depth += 1;
        if depth > MAX_PATH_DEPTH {
            return Err(PathError::TooDeep);
        }
        validate_component(c)?;
    }
    Ok(())
}

fn validate_component(c: &str) -> Result<(), PathError> {
    if c.is_empty() {
        return Err(PathError::EmptyComponent);
    }
    if c == "." || c == ".." {
        return Err(PathError::DotComponent);
    }
    if c.len() > MAX_COMPONENT_BYTES {
        return Err(PathError::ComponentTooLong);
    }
    if c.ends_with('.') || c.ends_with(' ') {
        return Err(PathError::TrailingDotOrSpace);
    }
    if is_reserved(c) {
        return Err(PathError::Reserved);
    }
    Ok(())
}

/// Windows device names, with or without an extension, in any case.
fn is_reserved(component: &str) -> bool {
    let stem = component.split('.').next().unwrap_or(component);
    let stem = stem.trim_end_matches(' ').to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => {
            let (prefix, digit) = match stem.char_indices().nth(3) {
                Some((i, _)) => stem.split_at(i),
                None => return false,
            };
            (prefix == "COM" || prefix == "LPT")
                && matches!(
                    digit,
                    "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
                )
        }
    }
}

/// A valid path with a single component: what a single-file share's name is.
pub fn is_single_plain_name(name: &str) -> bool {
    !name.contains('/') && validate_path(name).is_ok()
}

fn check_piece_size(piece_size: u32) -> Result<(), ManifestError> {
    if piece_size.is_power_of_two() && (MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&piece_size) {
        Ok(())
    } else {
        Err(ManifestError::BadPieceSize(piece_size))
    }
}

/// The number of pieces the files need; errors when the sizes overflow.
fn expected_pieces(files: &[FileEntry], piece_size: u32) -> Result<u64, ManifestError> {
    let ps = u64::from(piece_size.max(1));
    let mut total = 0u64;
    let mut pieces = 0u64;
    for f in files {
        total = total
            .checked_add(f.size)
            .ok_or(ManifestError::SizeOverflow)?;
        // Cannot overflow: pieces <= total / ps + files.len() and total fits.
        pieces += f.size.div_ceil(ps);
    }
    Ok(pieces)
}

/// A folder entry has no size and no executable flag.
fn check_folder(index: usize, f: &FileEntry) -> Result<(), ManifestError> {
    if f.directory && (f.size != 0 || f.executable) {
        return Err(ManifestError::BadFolder {
            index,
            path: f.path.clone(),
        });
    }
    Ok(())
}

/// Rejects paths that do not start with the same first component, two
/// entries with the same path, and an entry whose path is also a folder of
/// another ("a" and "a/b"): no file system can hold those. An empty-folder
/// entry with something beneath it is refused the same way.
fn check_tree(files: &[FileEntry]) -> Result<(), ManifestError> {
    let top = |p: &str| p.split('/').next().unwrap_or("").to_owned();
    if let Some(first) = files.first() {
        let want = top(&first.path);
        if let Some(other) = files.iter().find(|f| top(&f.path) != want) {
            return Err(ManifestError::SeveralTops {
                first: first.path.clone(),
                other: other.path.clone(),
            });
        }
    }
    match first_conflict(files.iter().map(|f| f.path.as_str())) {
        Some(path) => Err(ManifestError::DuplicatePath {
            path: path.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Two paths that fold to the same name ignoring case (and Unicode case
/// folding as Rust's `to_lowercase` does it), or a path that is also a folder
/// of another once case is ignored: `Some((a, b))`. A manifest may hold
/// "README" and "readme" (it is valid on Linux); a download into a folder
/// whose file system ignores case must refuse it before writing anything.
pub fn find_case_collision(files: &[FileEntry]) -> Option<(String, String)> {
    let lower: Vec<String> = files.iter().map(|f| f.path.to_lowercase()).collect();
    let hit = first_conflict(lower.iter().map(String::as_str))?;
    let hit = hit.to_owned();
    // Report the two original paths involved.
    let mut involved = files.iter().zip(&lower).filter(|(_, l)| {
        **l == hit || hit.starts_with(&format!("{l}/")) || l.starts_with(&format!("{hit}/"))
    });
    let a = involved.next()?.0.path.clone();
    let b = involved
        .next()
        .map_or_else(|| a.clone(), |(f, _)| f.path.clone());
    Some((a, b))
}

/// The first path (in component order) that equals another or lies under
/// another: `None` when every path can coexist in one tree.
fn first_conflict<'a>(paths: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut sorted: Vec<&str> = paths.collect();
    // Component-wise order puts a path right before the paths under it.
    sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    sorted.windows(2).find_map(|pair| {
        let (a, b) = (pair[0], pair[1]);
        let under = b.starts_with(a) && b.as_bytes().get(a.len()) == Some(&b'/');
        (a == b || under).then_some(b)
    })
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn clamp_u32_u64(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
