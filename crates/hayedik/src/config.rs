//! The user's config file: `config.toml` in the config directory
//! ([`crate::dirs::config_dir`]). Today it holds the DHT's settings:
//!
//! ```toml
//! dht = true                              # like --dht on every share and get
//! dht_bootstrap = ["10.0.0.5:6881"]       # like --dht-bootstrap (implies dht)
//! ```
//!
//! A missing file is an empty config. A file that cannot be read or parsed,
//! or that names a key this version does not know, is an error (the binary
//! exits 2, as for a usage error), never silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's name inside the config directory.
pub const FILE_NAME: &str = "config.toml";
/// Larger files are refused (the config is a few lines).
const MAX_BYTES: u64 = 64 * 1024;

/// What the config file says (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Turn the DHT on (true) or leave it off (false) for `share` and `get`.
    pub dht: Option<bool>,
    /// Bootstrap nodes (`HOST:PORT`) instead of the public ones.
    #[serde(default)]
    pub dht_bootstrap: Vec<String>,
}

/// A config file that is there but unusable.
#[derive(Debug, thiserror::Error)]
#[error("the config file {path} is unusable: {why}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub why: String,
}

/// The config file's path, when there is a config directory.
pub fn path() -> Option<PathBuf> {
    crate::dirs::config_dir().map(|d| d.join(FILE_NAME))
}

/// Reads the user's config file (an empty config when there is none).
pub fn load() -> Result<Config, ConfigError> {
    match path() {
        Some(p) => load_from(&p),
        None => Ok(Config::default()),
    }
}

/// Reads `path` (an empty config when it does not exist).
pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
    let err = |why: String| ConfigError {
        path: path.to_path_buf(),
        why,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(err(e.to_string())),
    };
    if meta.len() > MAX_BYTES {
        return Err(err(format!("larger than {MAX_BYTES} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
    parse(&text).map_err(err)
}

/// Parses the text of a config file.
pub fn parse(text: &str) -> Result<Config, String> {
    let config: Config = toml::from_str(text).map_err(|e| e.message().to_string())?;
    for b in &config.dht_bootstrap {
        crate::dht::parse_bootstrap(b).map_err(|e| format!("dht_bootstrap: {e}"))?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_dht_keys_and_refuses_the_rest() {
        assert_eq!(parse("").unwrap(), Config::default());
        let c = parse("dht = true\ndht_bootstrap = [\"127.0.0.1:6881\"]\n").unwrap();
        assert_eq!(c.dht, Some(true));
        assert_eq!(c.dht_bootstrap, vec!["127.0.0.1:6881".to_string()]);
        assert!(parse("dht = \"yes\"").is_err());
        assert!(parse("dth = true").is_err(), "a typo is an error");
        assert!(parse("dht_bootstrap = [\"nowhere\"]").is_err());
        assert!(parse("dht = [").is_err());
    }

    #[test]
    fn missing_is_empty_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        assert_eq!(load_from(&p).unwrap(), Config::default());
        std::fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
        let e = load_from(&p).unwrap_err();
        assert!(e.to_string().contains("config.toml"), "{e}");
    }
}
