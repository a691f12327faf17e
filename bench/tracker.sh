#!/usr/bin/env bash
# The tracker benchmark: installs Debian's opentracker if it is missing, then
# runs `cargo bench --bench tracker`, which prints figures and asserts nothing
# (docs/benchmarks.md says what is measured and how to read it).
#
# Environment (all optional): HAYEDIK_BENCH_SECS (measured seconds per phase,
# default 5), HAYEDIK_BENCH_WINDOW (announces in flight per socket, default 2),
# HAYEDIK_BENCH_HANDSHAKES (handshakes in flight per socket, default 4),
# HAYEDIK_BENCH_MAX_SWARMS (cap on swarms created, default 20000),
# HAYEDIK_BENCH_SWARMS (swarm counts of phase (c), default 1000,10000),
# HAYEDIK_BENCH_BASELINE (another hayedik binary, e.g. main's, measured beside
# this build in every phase: A/B in one run), HAYEDIK_BENCH_ROUNDS (default 3),
# HAYEDIK_BENCH_BIN (the hayedik binary measured as this build, e.g. a
# `cargo build --release`), HAYEDIK_BENCH_OPENTRACKER=0 (skip opentracker),
# HAYEDIK_BENCH_FLOOR=0 (skip both floors: one socket, or one per swarm,
# answering every request unparsed, the kernel's part of an announce on its
# own), HAYEDIK_BENCH_NICE=0 (do not
# raise the priority of the tracker and the generator).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}

if [ "${HAYEDIK_BENCH_OPENTRACKER:-1}" != 0 ] && ! command -v opentracker >/dev/null 2>&1; then
  # Before `apt-get update` the package lists may not know it yet.
  if ! apt-cache policy opentracker 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    as_root apt-get update -qq || true
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opentracker \
    || echo "bench/tracker.sh: could not install opentracker; hayedik's figures only" >&2
fi

exec cargo bench -p hayedik --bench tracker "$@"
