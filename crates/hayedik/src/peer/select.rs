//! `get --only GLOB`: which entries of a manifest a set of patterns selects,
//! with gitignore's rules (through `globset`).
//!
//! Patterns are matched against paths inside the shared folder, as `ls`
//! prints them (`docs/readme.txt`, not `share/docs/readme.txt`; the folder's
//! own name in front is accepted too). A pattern without a `/` matches a
//! name at any depth (`*.txt` matches `docs/readme.txt`); one with a `/`
//! (other than a trailing one) is anchored at the top (`docs/*.md`; a
//! leading `/` anchors too). `*` and `?` stay within a name; `**` crosses
//! folders. A pattern that matches a folder selects everything in it. For a
//! single shared file, the pattern is matched against its name. A pattern
//! that matches nothing is an error, so a typo does not silently download
//! nothing.

use anyhow::{anyhow, bail};
use globset::{GlobBuilder, GlobMatcher};
use hayedik_proto::manifest::Manifest;

use crate::events::{ErrorKind, Failure};

/// One compiled `--only` pattern.
#[derive(Debug, Clone)]
pub struct Rule {
    matcher: GlobMatcher,
}

/// Compiles `pattern` with the rules above.
pub fn compile(pattern: &str) -> anyhow::Result<Rule> {
    let p = pattern.trim();
    let p = p.strip_prefix("./").unwrap_or(p);
    let p = p.trim_end_matches('/');
    if p.is_empty() || p == "/" {
        bail!("--only needs a pattern, e.g. '*.txt' or 'docs/**'");
    }
    let anchored = p.starts_with('/') || p.contains('/');
    let p = p.trim_start_matches('/');
    let glob = if anchored || p.starts_with("**") {
        p.to_string()
    } else {
        format!("**/{p}")
    };
    let matcher = GlobBuilder::new(&glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| anyhow!("--only '{pattern}' is not a valid pattern: {}", e.kind()))?
        .compile_matcher();
    Ok(Rule { matcher })
}

/// Per manifest entry, whether `only` selects it (every entry when empty).
pub fn select(manifest: &Manifest, only: &[String]) -> anyhow::Result<Vec<bool>> {
    if only.is_empty() {
        return Ok(vec![true; manifest.files.len()]);
    }
    let rules = only
        .iter()
        .map(|p| compile(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut used = vec![false; rules.len()];
    let top = manifest.top_name();
    let single = manifest.is_single_file();
    let wanted = manifest
        .files
        .iter()
        .map(|f| {
            let inner = if single {
                f.path.as_str()
            } else {
                inner_path(top, &f.path)
            };
            // The path and each folder above it, inside the share and
            // with the share's name in front.
            let mut candidates = vec![inner, f.path.as_str()];
            let mut p = f.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                candidates.push(parent);
                let parent_inner = inner_path(top, parent);
                if parent_inner != parent {
                    candidates.push(parent_inner);
                }
                p = parent;
            }
            candidates.retain(|c| !c.is_empty());
            let mut hit = false;
            for (i, rule) in rules.iter().enumerate() {
                if candidates.iter().any(|c| rule.matcher.is_match(c)) {
                    used[i] = true;
                    hit = true;
                }
            }
            hit
        })
        .collect();
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(Failure::error(
            ErrorKind::Input,
            format!(
                "--only {:?} matches nothing in this share; {}",
                only[i],
                hint(manifest)
            ),
        ));
    }
    Ok(wanted)
}

/// The path of `path` inside the share `top` ("" for the top itself).
fn inner_path<'a>(top: &str, path: &'a str) -> &'a str {
    match path.strip_prefix(top) {
        Some("") => "",
        Some(rest) => rest.strip_prefix('/').unwrap_or(path),
        None => path,
    }
}

/// What patterns would work for this share, from its own entries.
fn hint(manifest: &Manifest) -> String {
    let top = manifest.top_name();
    if manifest.is_single_file() {
        return format!(
            "this share is one file, '{top}': --only is for shared folders (run without it)"
        );
    }
    let inner: Vec<&str> = manifest
        .files
        .iter()
        .map(|f| inner_path(top, &f.path))
        .filter(|p| !p.is_empty())
        .collect();
    let mut examples = Vec::new();
    if let Some(ext) = inner
        .iter()
        .filter_map(|p| p.rsplit('/').next()?.rsplit_once('.').map(|(_, e)| e))
        .find(|e| !e.is_empty())
    {
        examples.push(format!("'*.{ext}'"));
    }
    if let Some((dir, _)) = inner.iter().find_map(|p| p.split_once('/')) {
        examples.push(format!("'{dir}/**'"));
    }
    if examples.is_empty() {
        if let Some(first) = inner.first() {
            examples.push(format!("'{first}'"));
        }
    }
    let sample: Vec<&str> = inner.iter().take(5).copied().collect();
    format!(
        "it holds {} entries such as {} (see `hayedik ls TICKET`); patterns match paths inside '{top}' as gitignore does, e.g. {}",
        manifest.files.len(),
        sample.join(", "),
        examples.join(" or ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hayedik_proto::manifest::FileEntry;

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            files: paths
                .iter()
                .map(|p| FileEntry::file(*p, 1, false))
                .collect(),
            piece_size: 1 << 16,
            pieces: vec![[0u8; 32]],
        }
    }

    fn picked(m: &Manifest, only: &[&str]) -> Vec<String> {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        let w = select(m, &only).unwrap();
        m.files
            .iter()
            .zip(w)
            .filter(|(_, w)| *w)
            .map(|(f, _)| f.path.clone())
            .collect()
    }

    #[test]
    fn gitignore_rules() {
        let m = manifest(&[
            "share/a.txt",
            "share/docs/readme.txt",
            "share/docs/guide.md",
            "share/docs/deep/x.md",
            "share/src/main.rs",
        ]);
        assert_eq!(
            picked(&m, &["*.txt"]),
            ["share/a.txt", "share/docs/readme.txt"]
        );
        assert_eq!(picked(&m, &["docs/*.md"]), ["share/docs/guide.md"]);
        assert_eq!(
            picked(&m, &["docs/**/*.md"]),
            ["share/docs/guide.md", "share/docs/deep/x.md"]
        );
        assert_eq!(picked(&m, &["/a.txt"]), ["share/a.txt"]);
        assert_eq!(picked(&m, &["src"]), ["share/src/main.rs"]);
        assert_eq!(picked(&m, &["deep/"]), ["share/docs/deep/x.md"]);
        assert_eq!(picked(&m, &["share/src/**"]), ["share/src/main.rs"]);
        // Anchored: docs/*.md is not src/docs/*.md, and * stays in a name.
        assert!(select(&m, &["*/x.md".into()]).is_err());
        let e = select(&m, &["*.pdf".into()]).unwrap_err().to_string();
        assert!(e.contains("'*.txt'") && e.contains("'docs/**'"), "{e}");
    }

    #[test]
    fn a_single_file_matches_its_name_and_hints_so() {
        let m = manifest(&["report.pdf"]);
        assert_eq!(picked(&m, &["*.pdf"]), ["report.pdf"]);
        let e = select(&m, &["docs/*.md".into()]).unwrap_err().to_string();
        assert!(e.contains("one file") && !e.contains("e.g."), "{e}");
        assert!(compile("").is_err());
        assert!(compile("[").is_err());
    }
}
