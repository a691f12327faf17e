#!/usr/bin/env bash
# CI for the other systems (called by .ci/run after the main tests):
#   1. Windows (x86_64-pc-windows-gnu, mingw-w64): clippy on the library and
#      the binary, then the release binary;
#   2. macOS (x86_64-apple-darwin): clippy on the library and the binary, a
#      type check only (no Apple linker or SDK here; see below);
#   3. the Windows smoke test under Wine (.ci/wine-smoke.sh).
# The integration tests, the network lab and the benchmarks stay Linux-only.
# Each step prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
step() { echo "== $1"; STEP_START=$SECONDS; }
took() { echo "($(( SECONDS - STEP_START )) s)"; }

step "install: mingw-w64, Wine, clang, jq; the Windows and macOS Rust targets"
need=()
for cmd_pkg in x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64 clang:clang jq:jq; do
  cmd=${cmd_pkg%%:*}; pkg=${cmd_pkg#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
[ -x /usr/lib/wine/wine64 ] || need+=(wine wine64)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
rustup target add x86_64-pc-windows-gnu x86_64-apple-darwin
took

step "windows: cargo clippy --lib --bins --target x86_64-pc-windows-gnu"
cargo clippy --workspace --lib --bins --target x86_64-pc-windows-gnu -- -D warnings
took

step "windows: release build"
# Without the release profile's line tables (debug = 1): nothing here reads
# them. On two cores: 401 s in a CI run against 426 s with them (321 s
# once on an otherwise idle machine).
CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release -p hayedik --bin hayedik --target x86_64-pc-windows-gnu
took

step "macos: cargo clippy --lib --bins --target x86_64-apple-darwin (type check only)"
# blake3's assembly needs a C compiler that targets macOS: Debian's clang.
# ring (rustls' crypto) compiles C that includes Apple SDK headers, which
# are not here: its build script is overridden for this target (cargo's
# `links` override), so ring's C and assembly are NOT compiled for macOS;
# every Rust crate, ours included, is type-checked. Nothing is linked or run.
ring_version=$(cargo pkgid -p ring | sed 's/.*[@#]//')
ring_links="ring_core_${ring_version//./_}_"
CC_x86_64_apple_darwin=clang cargo clippy --workspace --lib --bins --target x86_64-apple-darwin \
  --config "target.x86_64-apple-darwin.${ring_links}.rustc-link-lib=[]" -- -D warnings
echo "(macOS: not linked, not run; ring's C and assembly not compiled for it)"
took

step "windows: smoke test under Wine (.ci/wine-smoke.sh)"
# The Linux binary as README's test command built it (same features: no rebuild).
cargo test --workspace --release --no-run
.ci/wine-smoke.sh target/release/hayedik target/x86_64-pc-windows-gnu/release/hayedik.exe
took
