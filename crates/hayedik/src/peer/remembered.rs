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
