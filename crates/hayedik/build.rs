//! On Linux, links the `hayedik` binary with `hot-text.ld`: the functions a
//! sharer, a getter, a seeder and a tracker run go together at the start of
//! the code, so a process maps a few MB of it instead of nearly all of it
//! (docs/performance.md, "Code laid out by use"; `bench/hot-text.sh`
//! regenerates the list). The script only adds an output section
//! (`INSERT BEFORE .text`), so the linker's own layout stays as it is.
//!
//! lld (rustc's default on x86-64 Linux) and GNU ld take the script; mold
//! and gold reject it (wild, not tried, reads linker scripts only in part),
//! so it is left out when the build names one of them (in the rustflags, the
//! configured linker, or `mold -run`).
//! `HAYEDIK_NO_HOT_TEXT=1` builds without it too, for A/B measurements.

use std::env;
use std::path::{Path, PathBuf};

/// Linkers that cannot read the script's `SECTIONS ... INSERT`.
const OTHER_LINKERS: [&str; 4] = ["mold", "gold", "wild", "sold"];

/// Whether `path` (a linker, or a `-fuse-ld=` value) names one of
/// [`OTHER_LINKERS`]: `mold`, `ld.mold`, `/usr/bin/ld.gold`...
fn other_linker(path: &str) -> bool {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_prefix("ld.").unwrap_or(&name);
    let name = name.strip_suffix(".exe").unwrap_or(name);
    OTHER_LINKERS.contains(&name)
}

/// Whether the flags given to rustc choose one of [`OTHER_LINKERS`].
fn flags_choose_other_linker(flags: &str) -> bool {
    flags.split('\x1f').any(|flag| {
        ["fuse-ld=", "ld-path=", "linker="].iter().any(|key| {
            flag.find(key)
                .is_some_and(|at| other_linker(&flag[at + key.len()..]))
        })
    })
}

fn main() {
    println!("cargo::rerun-if-changed=hot-text.ld");
    for var in [
        "HAYEDIK_NO_HOT_TEXT",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_LINKER",
        "LD_PRELOAD",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // Set when the binary is linked with the script: the test that checks
    // its layout runs then (tests/it/layout.rs).
    println!("cargo::rustc-check-cfg=cfg(hot_text)");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let off = env::var_os("HAYEDIK_NO_HOT_TEXT").is_some_and(|v| !v.is_empty() && v != "0");
    let other = env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| flags_choose_other_linker(&f))
        || env::var("RUSTC_LINKER").is_ok_and(|l| other_linker(&l))
        // `mold -run cargo build` slips mold in under the usual linker.
        || env::var("LD_PRELOAD").is_ok_and(|p| p.contains("mold"));
    if !linux || off || other {
        return;
    }
    let Some(dir) = env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let script = PathBuf::from(dir).join("hot-text.ld");
    if script.is_file() {
        // `-T FILE` as two arguments of the compiler driver: no `-Wl,`
        // splitting at commas in the path.
        println!("cargo::rustc-link-arg-bin=hayedik=-T");
        println!("cargo::rustc-link-arg-bin=hayedik={}", script.display());
        println!("cargo::rustc-cfg=hot_text");
    }
}
