//! The swarm port each shared content had at each tracker, kept in the data
//! directory ([`crate::dirs::data_dir`]), so that sharing the same content
//! again asks the tracker for the same port and prints the same ticket.
//!
//! One small file per (tracker, swarm key): `DATA/swarms/NAME`, NAME being
//! 32 hex digits of `BLAKE3::derive_key("hayedik remembered swarm v1",
//! tracker || 0 || swarm key)`, holding the port in decimal. Neither the root
//! nor the swarm key is written. Files are replaced atomically (a temporary
//! file renamed over the old one), so a crash leaves the old port or the new
//! one; anything unreadable is treated as "nothing remembered". What is
//! remembered is only a wish: the tracker decides (a port held by another
//! swarm gets another port, which is then remembered instead).
//!
//! It also keeps the manifest of each content this machine shared or
//! downloaded (`DATA/manifests/NAME`, NAME from `BLAKE3::derive_key("hayedik
//! remembered manifest v1", root)`), so that `get` into a folder that holds a
//! complete copy can verify it and serve it even when no peer is left to
//! send the manifest (it is verified against the ticket's root on load,
//! like one from a peer).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The tracker name used for the tracker embedded in `share`.
pub const EMBEDDED: &str = "embedded";

fn file_in(dir: &Path, tracker: &str, key: &[u8; 32]) -> PathBuf {
    let mut hasher = blake3::Hasher::new_derive_key("hayedik remembered swarm v1");
    hasher.update(tracker.as_bytes());
    hasher.update(&[0]);
    hasher.update(key);
    let hash = hasher.finalize();
    let name = hayedik_proto::hex::encode(&hash.as_bytes()[..16]);
    dir.join("swarms").join(name)
}

/// The port remembered in `dir` for `key` at `tracker`.
pub fn recall_in(dir: &Path, tracker: &str, key: &[u8; 32]) -> Option<u16> {
    let text = std::fs::read_to_string(file_in(dir, tracker, key)).ok()?;
    text.trim().parse::<u16>().ok().filter(|&p| p != 0)
}

/// Remembers `port` in `dir` for `key` at `tracker`.
pub fn remember_in(dir: &Path, tracker: &str, key: &[u8; 32], port: u16) -> std::io::Result<()> {
    let path = file_in(dir, tracker, key);
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent"))?;
    std::fs::create_dir_all(parent)?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    writeln!(tmp, "{port}")?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// [`recall_in`] the user's data directory.
pub fn recall(tracker: &str, key: &[u8; 32]) -> Option<u16> {
    recall_in(&crate::dirs::data_dir()?, tracker, key)
}

/// [`remember_in`] the user's data directory; a failure is only logged
/// (sharing works without it, the next ticket may differ).
pub fn remember(tracker: &str, key: &[u8; 32], port: u16) {
    let Some(dir) = crate::dirs::data_dir() else {
        return;
    };
    if let Err(e) = remember_in(&dir, tracker, key, port) {
        tracing::warn!(
            "cannot remember the swarm port in {}: {e}; a later share may print another ticket",
            dir.display()
        );
    }
}

fn manifest_file_in(dir: &Path, root: &[u8; 32]) -> PathBuf {
    let hash = blake3::derive_key("hayedik remembered manifest v1", root);
    dir.join("manifests")
        .join(hayedik_proto::hex::encode(&hash[..16]))
}

/// The manifest remembered in `dir` for `root`, verified against it.
pub fn recall_manifest_in(
    dir: &Path,
    root: &[u8; 32],
) -> Option<(hayedik_proto::manifest::Manifest, Vec<u8>)> {
    use std::io::Read;
    let file = std::fs::File::open(manifest_file_in(dir, root)).ok()?;
    let limit = hayedik_proto::manifest::MAX_MANIFEST_BYTES as u64;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > limit {
        return None;
    }
    let manifest = hayedik_proto::manifest::Manifest::verify(&bytes, root).ok()?;
    Some((manifest, bytes))
}

/// Remembers a manifest (already verified against `root`) in `dir`.
pub fn remember_manifest_in(dir: &Path, root: &[u8; 32], bytes: &[u8]) -> std::io::Result<()> {
    let path = manifest_file_in(dir, root);
    if path.exists() {
        return Ok(());
    }
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent"))?;
    std::fs::create_dir_all(parent)?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// [`recall_manifest_in`] the user's data directory.
pub fn recall_manifest(root: &[u8; 32]) -> Option<(hayedik_proto::manifest::Manifest, Vec<u8>)> {
    recall_manifest_in(&crate::dirs::data_dir()?, root)
}

/// [`remember_manifest_in`] the user's data directory; failures are only
/// logged.
pub fn remember_manifest(root: &[u8; 32], bytes: &[u8]) {
    let Some(dir) = crate::dirs::data_dir() else {
        return;
    };
    if let Err(e) = remember_manifest_in(&dir, root, bytes) {
        tracing::warn!("cannot keep the manifest in {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn remembers_per_tracker_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(recall_in(d, EMBEDDED, &[1; 32]), None);
        remember_in(d, EMBEDDED, &[1; 32], 7411).unwrap();
        remember_in(d, "tracker.example:7410", &[1; 32], 9000).unwrap();
        assert_eq!(recall_in(d, EMBEDDED, &[1; 32]), Some(7411));
        assert_eq!(recall_in(d, "tracker.example:7410", &[1; 32]), Some(9000));
        assert_eq!(recall_in(d, EMBEDDED, &[2; 32]), None);
        remember_in(d, EMBEDDED, &[1; 32], 7412).unwrap();
        assert_eq!(recall_in(d, EMBEDDED, &[1; 32]), Some(7412));
        // The key never appears in a name or a file.
        for entry in std::fs::read_dir(d.join("swarms")).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            assert_eq!(name.len(), 32);
            assert!(!name.contains(&hayedik_proto::hex::encode(&[1; 32])[..8]));
        }
    }

    #[test]
    fn manifests_are_verified_on_load() {
        use hayedik_proto::manifest::{FileEntry, Manifest};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let m = Manifest::new(
            vec![FileEntry::file("a.bin", 5, false)],
            1 << 16,
            vec![hayedik_proto::manifest::hash_piece(b"hello")],
        )
        .unwrap();
        let bytes = m.encode();
        let root = m.root();
        assert!(recall_manifest_in(d, &root).is_none());
        remember_manifest_in(d, &root, &bytes).unwrap();
        assert_eq!(recall_manifest_in(d, &root).unwrap().1, bytes);
        // Another root finds nothing; a damaged file is not believed.
        assert!(recall_manifest_in(d, &[9; 32]).is_none());
        let path = manifest_file_in(d, &root);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(recall_manifest_in(d, &root).is_none());
    }

    #[test]
    fn damaged_files_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        remember_in(d, EMBEDDED, &[1; 32], 7411).unwrap();
        let path = file_in(d, EMBEDDED, &[1; 32]);
        for junk in ["", "0", "70000", "port", "\u{0}\u{1}"] {
            std::fs::write(&path, junk).unwrap();
            assert_eq!(recall_in(d, EMBEDDED, &[1; 32]), None, "{junk:?}");
        }
    }
}
