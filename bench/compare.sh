#!/usr/bin/env bash
# hayedik side by side with aria2c, in the same run, on loopback.
#
#   bash bench/compare.sh                     # 1 GiB, 5 rounds
#   HAYEDIK_BENCH_BYTES=256M HAYEDIK_BENCH_RUNS=3 bash bench/compare.sh
#
# Installs aria2, mktorrent, opentracker, iperf3, curl, jq and python3 with apt-get if
# missing, builds the release binary (or uses $HAYEDIK_BIN), writes one file
# of random bytes (kept in page cache), then, in every round:
#   - iperf3: one TCP stream over loopback for a few seconds (the ceiling);
#   - TCP into a file: the file sent over one loopback connection and
#     written into a new file by a few lines of Python (the floor of any
#     download on this machine: no protocol, hashing or sync);
#   - 1 -> 1 and 3 -> 1 with hayedik and with aria2c, alternating which tool
#     goes first from one round to the next.
# aria2c peers find each other through Debian's opentracker on 127.0.0.1
# (HTTP announces; its whitelist lists the torrent's info hash); the torrent
# has the same piece size as hayedik's manifest (1 MiB up to 16 GiB) and the
# private flag (no DHT, no PEX). Seeders: aria2c -V --bt-seed-unverified
# --seed-ratio=0.0 on a complete copy; hayedik: `share`, and `get` into a
# directory that already holds a complete copy (it verifies, then seeds).
# The 3 -> 1 seeders use two copies made once. Every process is fresh in
# every round (trackers included).
#
# Measured: the wall time of the getter process from its start to its exit
# (aria2c --seed-time=0, hayedik get --no-seed), the same definition for both;
# after each run the output is compared with the source (cmp) and deleted.
# Printed: every run, then per scenario the medians (min..max) and the speed
# ratio hayedik/aria2c (= aria2c's time / hayedik's time), and hayedik's
# 1 -> 1 rate as a share of iperf3's.
#
# Environment (all optional): HAYEDIK_BENCH_BYTES (size: 1073741824, 256M,
# 1G; default 1G), HAYEDIK_BENCH_RUNS (rounds, default 5),
# HAYEDIK_BENCH_LIMIT (seconds any one process may take, default 300),
# HAYEDIK_BENCH_WARM (1: before every measured download, of either tool
# and of the TCP floor, write the file's size of scratch data and delete it,
# so that the download's page cache comes from memory the machine used just
# before; see "What writing new page cache costs" in docs/performance.md;
# default 0), HAYEDIK_BENCH_IPERF_SECS (default 3), HAYEDIK_BENCH_DIR (where the files
# go, default $TMPDIR or /tmp), HAYEDIK_BIN (a hayedik binary to use instead
# of building one), CARGO_TARGET_DIR (as for cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

BYTES_SPEC=${HAYEDIK_BENCH_BYTES:-1G}
RUNS=${HAYEDIK_BENCH_RUNS:-5}
LIMIT=${HAYEDIK_BENCH_LIMIT:-300}
IPERF_SECS=${HAYEDIK_BENCH_IPERF_SECS:-3}
WARM=${HAYEDIK_BENCH_WARM:-0}
BYTES=$(numfmt --from=iec "$BYTES_SPEC")

say() { printf '%s\n' "$*"; }
die() { say "bench/compare.sh: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}

# --- tools -----------------------------------------------------------------
missing=()
for pair in aria2c:aria2 mktorrent:mktorrent opentracker:opentracker \
            iperf3:iperf3 curl:curl jq:jq python3:python3 cmp:diffutils numfmt:coreutils; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  as_root apt-get update -qq || true
  # iperf3 asks whether to start a daemon: no questions.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "could not install ${missing[*]}"
fi

if [ -n "${HAYEDIK_BIN:-}" ]; then
  HAYEDIK=$HAYEDIK_BIN
else
  cargo build --release -q -p hayedik || die "cargo build failed"
  HAYEDIK=${CARGO_TARGET_DIR:-target}/release/hayedik
fi
HAYEDIK=$(realpath "$HAYEDIK")
[ -x "$HAYEDIK" ] || die "no hayedik binary at $HAYEDIK"

# --- processes: every one started here is stopped by the trap ---------------
WORK=$(mktemp -d "${HAYEDIK_BENCH_DIR:-${TMPDIR:-/tmp}}/hayedik-compare.XXXXXX")
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background under `timeout`, stdout to
# $WORK/NAME.out and stderr to $WORK/NAME.err; its pid goes in $LAST.
start() {
  local name=$1; shift
  # Emptied here, not by the background job's redirection, which may come
  # after a wait_for has read the previous run's file.
  : >"$WORK/$name.out"; : >"$WORK/$name.err"
  timeout -k 5 "$LIMIT" "$@" >>"$WORK/$name.out" 2>>"$WORK/$name.err" &
  LAST=$!
  PIDS+=("$LAST")
}

# stop PID...: SIGTERM (timeout passes it on), then wait at most 20 s each.
stop() {
  local p
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  local keep=() q
  for q in "${PIDS[@]}"; do
    for p in "$@"; do [ "$q" = "$p" ] && continue 2; done
    keep+=("$q")
  done
  PIDS=("${keep[@]}")
}

# wait_for FILE PATTERN PID WHAT: until FILE has a line matching PATTERN;
# fails if PID ends first or after $LIMIT seconds.
wait_for() {
  local file=$1 pattern=$2 pid=$3 what=$4 end=$((SECONDS + LIMIT))
  until grep -q -- "$pattern" "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { say "  $what ended: $(tail -n 3 "${file%.out}.err" 2>/dev/null)"; return 1; }
    [ $SECONDS -lt $end ] || { say "  $what: timed out"; return 1; }
    sleep 0.02
  done
}

# warm_pages: with HAYEDIK_BENCH_WARM=1, writes $BYTES of scratch data and
# deletes it (unmeasured), so that the next writer's page cache reuses
# pages this machine used a moment ago instead of pages it has not touched
# for a while (which, in a VM whose balloon reports free pages to the host,
# cost a host fault each on first touch).
warm_pages() {
  [ "$WARM" = 1 ] || return 0
  dd if=/dev/zero of="$WORK/warm.scratch" bs=1M count=$(( (BYTES + 1048575) / 1048576 )) status=none
  rm -f "$WORK/warm.scratch"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# timed NAME CMD...: runs CMD under `timeout` and waits for it; sets T to
# its wall time in seconds; fails when CMD fails. (No $(...) subshells around
# the runs: the processes they start must stay known to the trap.)
timed() {
  local name=$1; shift
  local t0 t1
  : >"$WORK/$name.out"; : >"$WORK/$name.err"
  t0=$(now)
  timeout -k 5 "$LIMIT" "$@" >>"$WORK/$name.out" 2>>"$WORK/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  local rc=0
  wait "$pid" || rc=$?
  t1=$(now)
  local keep=() q
  for q in "${PIDS[@]}"; do [ "$q" = "$pid" ] || keep+=("$q"); done
  PIDS=("${keep[@]}")
  if [ "$rc" != 0 ]; then
    say "  $name failed ($rc): $(tail -n 3 "$WORK/$name.err" "$WORK/$name.out" 2>/dev/null | tr '\n' ' ')" >&2
    return 1
  fi
  T=$(elapsed "$t0" "$t1")
}

free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 20000))
    if ! ss -Htuln "sport = :$p" | grep -q .; then echo "$p"; return; fi
  done
  die "no free port found"
}

# --- the content -------------------------------------------------------------
NAME=content.bin
mkdir -p "$WORK/src" "$WORK/seed1" "$WORK/seed2" "$WORK/ot"
say "hayedik vs aria2c on loopback: $((BYTES / 1048576)) MiB, $RUNS rounds"
say "  hayedik: $HAYEDIK ($("$HAYEDIK" --version))"
say "  aria2c: $(aria2c --version | head -n 1); opentracker (Debian); $(iperf3 --version | head -n 1)"
say "  $(nproc) CPUs; load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$WARM" = 1 ] && say "  HAYEDIK_BENCH_WARM=1: scratch data written and deleted before every measured download"
head -c "$BYTES" /dev/urandom >"$WORK/src/$NAME"
cp "$WORK/src/$NAME" "$WORK/seed1/$NAME"
cp "$WORK/src/$NAME" "$WORK/seed2/$NAME"

# The torrent: hayedik's piece size (choose_piece_size: 1 MiB, doubled until
# at most 16384 pieces), private, announcing to opentracker on OT_PORT.
piece_log=20
while [ $(( (BYTES + (1 << piece_log) - 1) >> piece_log )) -gt 16384 ] && [ $piece_log -lt 28 ]; do
  piece_log=$((piece_log + 1))
done
OT_PORT=$(free_port)
mktorrent -p -l "$piece_log" -a "http://127.0.0.1:$OT_PORT/announce" \
  -o "$WORK/content.torrent" "$WORK/src/$NAME" >/dev/null
INFO_HASH=$(aria2c -S "$WORK/content.torrent" | sed -n 's/^Info Hash: //p' | tr 'A-F' 'a-f')
[ ${#INFO_HASH} = 40 ] || die "cannot read the torrent's info hash"
# Started as root, opentracker chroots into its rootdir and becomes nobody,
# who must read the whitelist there.
chmod 755 "$WORK/ot"
echo "$INFO_HASH" >"$WORK/ot/whitelist.txt"
chmod 644 "$WORK/ot/whitelist.txt"
if [ "$(id -u)" = 0 ]; then wl=/whitelist.txt; else wl=$WORK/ot/whitelist.txt; fi
printf 'listen.tcp_udp 127.0.0.1:%s\ntracker.rootdir %s\naccess.whitelist %s\n' \
  "$OT_PORT" "$WORK/ot" "$wl" >"$WORK/ot/opentracker.conf"
SCRAPE="http://127.0.0.1:$OT_PORT/scrape?info_hash=$(sed 's/../%&/g' <<<"$INFO_HASH")"

# seeds_listed N: opentracker lists at least N complete peers.
seeds_listed() {
  local n
  n=$(curl -s --max-time 2 "$SCRAPE" | grep -ao '8:completei[0-9]*e' | tr -dc '0-9' || true)
  [ -n "$n" ] && [ "$n" -ge "$1" ]
}

# --- the scenarios: each sets T to the getter's wall time ------------------------
A2_COMMON=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false
           --enable-peer-exchange=false --summary-interval=0 --console-log-level=warn)

aria2c_run() {  # aria2c_run SEEDERS
  local seeders=$1 pids=() ot i end
  start opentracker opentracker -f "$WORK/ot/opentracker.conf"; ot=$LAST
  local dirs=("$WORK/src" "$WORK/seed1" "$WORK/seed2")
  for ((i = 0; i < seeders; i++)); do
    start "a2seed$i" aria2c -d "${dirs[$i]}" -V --bt-seed-unverified=true \
      --seed-ratio=0.0 --file-allocation=none "${A2_COMMON[@]}" "$WORK/content.torrent"
    pids+=("$LAST")
  done
  end=$((SECONDS + LIMIT))
  until seeds_listed "$seeders"; do
    [ $SECONDS -lt $end ] || { say "  aria2c seeders not listed in time" >&2; stop "${pids[@]}" "$ot"; return 1; }
    sleep 0.05
  done
  local rc=0
  warm_pages
  timed a2get aria2c -d "$WORK/out" --seed-time=0 --file-allocation=none \
    "${A2_COMMON[@]}" "$WORK/content.torrent" || rc=1
  stop "${pids[@]}" "$ot"
  check_output || rc=1
  return $rc
}

hayedik_run() {  # hayedik_run SEEDERS
  local seeders=$1 pids=() sharer ticket i
  start share "$HAYEDIK" share "$WORK/src/$NAME" --public-host 127.0.0.1 \
    --listen 127.0.0.1:0 --json
  sharer=$LAST; pids+=("$sharer")
  wait_for "$WORK/share.out" '"event":"ticket"' "$sharer" "hayedik share" >&2 || { stop "${pids[@]}"; return 1; }
  ticket=$(grep -m1 '"event":"ticket"' "$WORK/share.out" | jq -r .ticket)
  for ((i = 1; i < seeders; i++)); do
    start "hseed$i" "$HAYEDIK" get "$ticket" -o "$WORK/seed$i" --listen 127.0.0.1:0 --json
    pids+=("$LAST")
  done
  for ((i = 1; i < seeders; i++)); do
    wait_for "$WORK/hseed$i.out" '"event":"seeding"' "${pids[$i]}" "hayedik seeder $i" >&2 \
      || { stop "${pids[@]}"; return 1; }
  done
  local rc=0
  warm_pages
  timed hget "$HAYEDIK" get "$ticket" -o "$WORK/out" --listen 127.0.0.1:0 --no-seed --json || rc=1
  stop "${pids[@]}"
  check_output || rc=1
  return $rc
}

check_output() {
  local ok=0
  cmp -s "$WORK/src/$NAME" "$WORK/out/$NAME" || { say "  the output differs from the source" >&2; ok=1; }
  rm -rf "$WORK/out"
  sync
  return $ok
}

iperf_run() {  # sets T to iperf3's rate in MiB/s
  local port pid bps
  port=$(free_port)
  start iperf3s iperf3 -s -1 -p "$port" -B 127.0.0.1; pid=$LAST
  for _ in $(seq 100); do ss -Htln "sport = :$port" | grep -q . && break; sleep 0.02; done
  bps=$(timeout 60 iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECS" -J | jq '.end.sum_received.bits_per_second') || bps=
  stop "$pid"
  [ -n "$bps" ] && [ "$bps" != null ] || return 1
  T=$(awk -v b="$bps" 'BEGIN { printf "%.0f", b / 8 / 1048576 }')
}

# tcp_file_run: the bare floor of a download on this machine, with no
# protocol, no hashing and no durability: one process sends the file with
# sendfile(2) over one loopback TCP connection, another receives it with
# 256 KiB recv()s and write()s it into a new file. Sets T to its time in
# seconds (connect -> last write; the file is then deleted, unsynced).
tcp_file_run() {
  T=$(timeout "$LIMIT" python3 - "$WORK/src/$NAME" "$WORK/tcp-file.out" <<'PY'
import os, socket, sys, time
src, dst = sys.argv[1], sys.argv[2]
n = os.path.getsize(src)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
pid = os.fork()
if pid == 0:
    conn, _ = srv.accept()
    with open(src, "rb") as f:
        off = 0
        while off < n:
            off += os.sendfile(conn.fileno(), f.fileno(), off, n - off)
    conn.close()
    os._exit(0)
t0 = time.monotonic()
s = socket.create_connection(srv.getsockname())
fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
buf = memoryview(bytearray(256 << 10))
got = 0
while got < n:
    k = s.recv_into(buf)
    if k == 0:
        break
    os.write(fd, buf[:k])
    got += k
t1 = time.monotonic()
os.close(fd)
os.waitpid(pid, 0)
if got != n:
    sys.exit(f"received {got} of {n} bytes")
print(f"{t1 - t0:.3f}")
PY
) || { rm -f "$WORK/tcp-file.out"; return 1; }
  rm -f "$WORK/tcp-file.out"
  sync
}

mib() { awk -v b="$BYTES" -v t="$1" 'BEGIN { printf "%.0f", b / 1048576 / t }'; }

# --- rounds ----------------------------------------------------------------------
RESULTS=$WORK/results.tsv
: >"$RESULTS"
record() {  # record KEY VALUE
  printf '%s\t%s\n' "$1" "$2" >>"$RESULTS"
}
one() {  # one TOOL SEEDERS
  if "$1_run" "$2"; then
    record "$1 $2" "$T"
    local extra=""
    if [ "$1" = hayedik ]; then
      # The getter's own account: its done event's seconds (start -> done).
      extra=$(jq -r 'select(.event == "done") | .seconds' "$WORK/hget.out" 2>/dev/null | head -n 1)
      [ -n "$extra" ] && extra=$(printf ' (done at %.3f s)' "$extra")
    fi
    say "    $1 $2 -> 1: $T s ($(mib "$T") MiB/s)$extra"
  else
    say "    $1 $2 -> 1: FAILED"
  fi
}

for ((r = 1; r <= RUNS; r++)); do
  say "  round $r/$RUNS"
  if iperf_run; then record iperf "$T"; say "    iperf3: $T MiB/s"; else say "    iperf3: FAILED"; fi
  warm_pages
  if tcp_file_run; then record tcpfile "$T"; say "    TCP into a file: $T s ($(mib "$T") MiB/s)"; else say "    TCP into a file: FAILED"; fi
  if [ $((r % 2)) = 1 ]; then order=(hayedik aria2c); else order=(aria2c hayedik); fi
  for seeders in 1 3; do
    for tool in "${order[@]}"; do one "$tool" "$seeders"; done
  done
done

# --- summary -----------------------------------------------------------------------
stats() {  # stats KEY: "median min max" of the recorded values, or nothing
  awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$RESULTS" | sort -g | awk '
    { v[NR] = $1 } END {
      if (NR == 0) exit
      m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "%s %s %s", m, v[1], v[NR]
    }'
}

say ""
say "summary: $((BYTES / 1048576)) MiB, medians of $RUNS rounds (min..max), getter start -> exit"
printf '  %-8s %-28s %-28s %s\n' scenario "hayedik" "aria2c" "speed hayedik/aria2c"
for seeders in 1 3; do
  read -r hm hlo hhi <<<"$(stats "hayedik $seeders")" || true
  read -r am alo ahi <<<"$(stats "aria2c $seeders")" || true
  h="-"; a="-"; ratio="-"
  [ -n "${hm:-}" ] && h=$(printf '%.2f s (%.2f..%.2f) %s MiB/s' "$hm" "$hlo" "$hhi" "$(mib "$hm")")
  [ -n "${am:-}" ] && a=$(printf '%.2f s (%.2f..%.2f) %s MiB/s' "$am" "$alo" "$ahi" "$(mib "$am")")
  [ -n "${hm:-}" ] && [ -n "${am:-}" ] && ratio=$(awk -v a="$am" -v h="$hm" 'BEGIN { printf "%.2fx", a / h }')
  printf '  %-8s %-28s %-28s %s\n' "$seeders -> 1" "$h" "$a" "$ratio"
  unset hm hlo hhi am alo ahi
done
read -r im ilo ihi <<<"$(stats iperf)" || true
if [ -n "${im:-}" ]; then
  say "  iperf3 one loopback TCP stream: $im MiB/s ($ilo..$ihi)"
  read -r hm _ _ <<<"$(stats "hayedik 1")" || true
  [ -n "${hm:-}" ] && say "  hayedik 1 -> 1 at $(mib "$hm") MiB/s = $(awk -v r="$(mib "$hm")" -v i="$im" 'BEGIN { printf "%.0f", 100 * r / i }')% of iperf3"
fi
read -r tm tlo thi <<<"$(stats tcpfile)" || true
if [ -n "${tm:-}" ]; then
  say "  TCP into a file (sendfile -> recv -> write, no hashing, no sync): $tm s ($tlo..$thi), $(mib "$tm") MiB/s"
  read -r hm _ _ <<<"$(stats "hayedik 1")" || true
  [ -n "${hm:-}" ] && say "  hayedik 1 -> 1 takes $(awk -v h="$hm" -v t="$tm" 'BEGIN { printf "%.2f", h / t }')x that time"
fi
