#!/usr/bin/env bash
# The browser test of `hayedik ui` and of the tracker's status page (issue
# 18): Debian's chromium, driven headless by playwright-core from npm,
# against a release build, on 127.0.0.1 only. See .ci/browser/ui.mjs for
# what it checks; it writes ui.png and tracker-page.png into target/browser/
# (into docs/ with HAYEDIK_BROWSER_SHOTS=docs).
#
# Installs what is missing: chromium, nodejs and npm (apt-get), and
# playwright-core (npm, into a cache folder outside the repository; never
# Playwright's own browser download). When chromium cannot be installed or
# started, this fails, unless HAYEDIK_BROWSER=skip, which makes it an
# explicit, loud SKIP (exit 0, never reported as passed).
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
started=$(date +%s)

skip_or_fail() {
  echo "=================================================================="
  echo "SKIP: browser test NOT RUN: $1"
  echo "=================================================================="
  if [ "${HAYEDIK_BROWSER:-}" = skip ]; then exit 0; fi
  echo "(set HAYEDIK_BROWSER=skip to make this an explicit skip)" >&2
  exit 1
}

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "-- apt-get install ${need[*]}"
  as_root apt-get update -qq || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || skip_or_fail "apt-get could not install ${need[*]}"
fi
chromium_bin=$(command -v chromium) || skip_or_fail "no chromium"

# playwright-core only (the driver, no browser), kept between runs.
pw_dir=${HAYEDIK_BROWSER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hayedik-browser}
if [ ! -f "$pw_dir/node_modules/playwright-core/package.json" ]; then
  echo "-- npm install playwright-core (into $pw_dir)"
  mkdir -p "$pw_dir"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$pw_dir" --no-audit --no-fund --silent playwright-core@1 \
    || skip_or_fail "npm could not install playwright-core"
fi

# Can this chromium start at all here (as root it needs --no-sandbox)?
if ! timeout 60 "$chromium_bin" --headless=new --no-sandbox --disable-gpu \
    --disable-background-networking --disable-component-update --no-first-run \
    --dump-dom about:blank >/dev/null 2>&1; then
  skip_or_fail "chromium ($chromium_bin) does not start on this machine"
fi

# The binary README's test command built (same features as the tests, so
# after .ci/run's test step this builds nothing; `cargo build -p hayedik`
# would build the whole crate again without the dev-dependencies' features,
# about 4 minutes of CI here).
cargo test --workspace --release --no-run --quiet
# Screenshots go to target/browser/; HAYEDIK_BROWSER_SHOTS=docs refreshes
# the ones README and docs/ui.md show.
shots="$PWD/target/browser"
[ "${HAYEDIK_BROWSER_SHOTS:-}" = docs ] && shots="$PWD/docs"
mkdir -p "$shots"
echo "-- browser test (chromium $("$chromium_bin" --version 2>/dev/null | awk '{print $2}'))"
HAYEDIK_BIN="$PWD/target/release/hayedik" \
CHROMIUM="$chromium_bin" \
PLAYWRIGHT_DIR="$pw_dir" \
SCREENSHOTS="$shots" \
  timeout 300 node .ci/browser/ui.mjs
echo "browser step took $(( $(date +%s) - started )) s"
