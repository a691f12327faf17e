//! The page's folder browser: lists one folder on the server, the user's
//! home unless another path is typed. Names and sizes only: no file is
//! ever read or served.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Entries listed from one folder at most (the rest are counted).
pub const MAX_ENTRIES: usize = 2000;

/// One listed folder.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub path: PathBuf,
    pub parent: Option<PathBuf>,
    pub entries: Vec<Entry>,
    /// Entries not listed past [`MAX_ENTRIES`].
    pub more: usize,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub name: String,
    pub folder: bool,
    pub bytes: u64,
}

/// The user's home folder (`HOME`, or `USERPROFILE` on Windows).
pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// What a typed path means: `~` and relative paths start at the home
/// folder; an empty one is the home folder.
pub fn resolve(typed: &str) -> Result<PathBuf, String> {
    let typed = typed.trim();
    let home = home();
    let from_home = |rest: &str| -> Result<PathBuf, String> {
        let h = home
            .clone()
            .ok_or("no home folder is known (HOME is not set): type an absolute path")?;
        Ok(if rest.is_empty() { h } else { h.join(rest) })
    };
    if typed.is_empty() || typed == "~" {
        return from_home("");
    }
    if let Some(rest) = typed.strip_prefix("~/") {
        return from_home(rest);
    }
    let p = PathBuf::from(typed);
    if p.is_absolute() {
        Ok(p)
    } else {
        from_home(typed)
    }
}

/// Lists the folder `dir`: folders first, then files, by name.
pub fn list(dir: &Path) -> Result<Listing, String> {
    let read = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut entries = Vec::new();
    let mut more = 0;
    for entry in read.flatten() {
        if entries.len() >= MAX_ENTRIES {
            more += 1;
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        // Follows links, as the share and the download do for the path given.
        let meta = std::fs::metadata(entry.path()).ok();
        entries.push(Entry {
            name,
            folder: meta.as_ref().is_some_and(|m| m.is_dir()),
            bytes: meta
                .as_ref()
                .map_or(0, |m| if m.is_dir() { 0 } else { m.len() }),
        });
    }
    entries.sort_by(|a, b| b.folder.cmp(&a.folder).then_with(|| a.name.cmp(&b.name)));
    Ok(Listing {
        path: dir.to_path_buf(),
        parent: dir.parent().map(Path::to_path_buf),
        entries,
        more,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lists_folders_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), b"12").unwrap();
        std::fs::create_dir(dir.path().join("z")).unwrap();
        let l = list(dir.path()).unwrap();
        let names: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.folder))
            .collect();
        assert_eq!(names, [("z", true), ("b.txt", false)]);
        assert_eq!(l.entries[1].bytes, 2);
        assert!(list(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot list"));
    }

    #[test]
    fn typed_paths() {
        assert_eq!(resolve("/tmp").unwrap(), PathBuf::from("/tmp"));
        if let Some(h) = home() {
            assert_eq!(resolve("").unwrap(), h);
            assert_eq!(resolve("~/x").unwrap(), h.join("x"));
            assert_eq!(resolve("x/y").unwrap(), h.join("x/y"));
        }
    }
}
