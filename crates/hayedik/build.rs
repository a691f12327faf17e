//! On Linux, links the `hayedik` binary with `hot-text.ld`: the functions a
//! sharer, a getter, a seeder and a tracker run go together at the start of
//! the code, so a process maps a few MB of it instead of nearly all of it
//! (docs/performance.md, "Code laid out by use"; `bench/hot-text.sh`
//! regenerates the list). The script only adds an output section
//! (`INSERT BEFORE .text`), so the linker's own layout stays as it is, with
//! GNU ld as with lld. `HAYEDIK_NO_HOT_TEXT=1` builds without it, for A/B
//! measurements.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-changed=hot-text.ld");
    println!("cargo::rerun-if-env-changed=HAYEDIK_NO_HOT_TEXT");
    // Set when the binary is linked with the script: the test that checks
    // its layout runs then (tests/it/layout.rs).
    println!("cargo::rustc-check-cfg=cfg(hot_text)");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let off = env::var_os("HAYEDIK_NO_HOT_TEXT").is_some_and(|v| !v.is_empty() && v != "0");
    if !linux || off {
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
