//! Where hayedik keeps the user's configuration and its own data.
//!
//! * The **config directory** holds what the user writes (`config.toml`).
//! * The **data directory** holds what hayedik remembers between runs (the
//!   swarm port each shared content had, so a re-share prints the same
//!   ticket).
//!
//! Both are the platform's (through `etcetera`: `$XDG_CONFIG_HOME/hayedik`
//! or `~/.config/hayedik` and `$XDG_DATA_HOME/hayedik` or
//! `~/.local/share/hayedik` on Linux and macOS, `%APPDATA%\hayedik\config`
//! and `%APPDATA%\hayedik\data` on Windows), unless the environment points
//! them elsewhere, first match wins:
//!
//! 1. `HAYEDIK_CONFIG_DIR`, `HAYEDIK_DATA_DIR`: that directory;
//! 2. `HAYEDIK_HOME`: its `config` and `data` subdirectories (one variable
//!    moves both: what the test harness sets, so tests never read the
//!    user's config nor share data with each other).
//!
//! An empty variable counts as unset. Nothing is created until something
//! is written.

use std::ffi::OsString;
use std::path::PathBuf;

use etcetera::AppStrategy;

/// Names the config directory.
pub const CONFIG_DIR_VAR: &str = "HAYEDIK_CONFIG_DIR";
/// Names the data directory.
pub const DATA_DIR_VAR: &str = "HAYEDIK_DATA_DIR";
/// Names a directory holding both, as `config` and `data`.
pub const HOME_VAR: &str = "HAYEDIK_HOME";

/// The config directory, or `None` when neither the environment nor the
/// platform names one (no home directory).
pub fn config_dir() -> Option<PathBuf> {
    resolve(var(CONFIG_DIR_VAR), var(HOME_VAR), "config", || {
        strategy().map(|s| s.config_dir())
    })
}

/// The data directory, or `None` as for [`config_dir`].
pub fn data_dir() -> Option<PathBuf> {
    resolve(var(DATA_DIR_VAR), var(HOME_VAR), "data", || {
        strategy().map(|s| s.data_dir())
    })
}

fn var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn strategy() -> Option<impl AppStrategy> {
    etcetera::choose_app_strategy(etcetera::AppStrategyArgs {
        top_level_domain: String::new(),
        author: String::new(),
        app_name: "hayedik".to_string(),
    })
    .ok()
}

/// The precedence rule, apart from the process environment.
fn resolve(
    specific: Option<OsString>,
    home: Option<OsString>,
    sub: &str,
    platform: impl FnOnce() -> Option<PathBuf>,
) -> Option<PathBuf> {
    if let Some(dir) = specific {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = home {
        return Some(PathBuf::from(home).join(sub));
    }
    platform()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let platform = || Some(PathBuf::from("/platform"));
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            resolve(s("/a"), s("/h"), "data", platform),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            resolve(None, s("/h"), "data", platform),
            Some(PathBuf::from("/h").join("data"))
        );
        assert_eq!(
            resolve(None, None, "data", platform),
            Some(PathBuf::from("/platform"))
        );
        assert_eq!(resolve(None, None, "config", || None), None);
    }

    #[cfg(unix)]
    #[test]
    fn platform_dirs_name_hayedik() {
        // Whatever the machine, the platform's choice ends in our name.
        if let Some(s) = strategy() {
            assert!(s.config_dir().ends_with("hayedik"));
            assert!(s.data_dir().ends_with("hayedik"));
        }
    }
}
