#!/usr/bin/env bash
# Windows smoke test under Wine: the Windows build of hayedik (hayedik.exe)
# and the Linux build play tracker, sharer and getter against each other on
# loopback, in every combination that involves Windows, with a file and with
# a folder; every download is compared byte for byte with its source, and
# the --json events of both builds are compared. Then a Windows `get` is
# interrupted (Ctrl-C), meets its part file held by another program, and
# is resumed, and another is stopped by Ctrl-Break; a Windows `share` meets
# a file another program holds; a Windows `get` meets two names that differ
# only in case, and a hard link at its part file's name.
#
#   .ci/wine-smoke.sh LINUX_HAYEDIK WINDOWS_HAYEDIK_EXE
#
# Needs wine64 (Debian's `wine64`), x86_64-w64-mingw32-gcc (for the
# bcryptprimitives.dll stand-in, see .ci/wine/bcryptprimitives.c, and the
# helpers .ci/wine/ctrlbreak.c and hold.c) and jq.
# Each part prints PASS, FAIL or SKIP; a part Wine cannot run is SKIP, never
# PASS. Exit status: 1 when a part failed, else 0 (skips are listed at the
# end). Everything runs in a temporary directory (its own WINEPREFIX) that is
# removed on exit, and every process started here is stopped.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 LINUX_HAYEDIK WINDOWS_HAYEDIK_EXE" >&2
  exit 2
fi
LIN=$(realpath "$1")
WIN_EXE=$(realpath "$2")
HERE=$(cd "$(dirname "$0")" && pwd)

WINE64=${WINE64:-/usr/lib/wine/wine64}
[ -x "$WINE64" ] || WINE64=$(command -v wine64 || true)
for tool in jq x86_64-w64-mingw32-gcc; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/hayedik-wine.XXXXXX)
export WINEPREFIX=$WORK/prefix
# A fresh prefix never tries to download Mono or Gecko; no debug chatter.
export WINEDLLOVERRIDES="mscoree,mshtml=;bcryptprimitives=n"
export WINEDEBUG=-all
export WINELOADER=$WINE64

cleanup() {
  # Only this shell's own background jobs still running (never a PID that
  # may have been reused by another process).
  local pid
  for pid in $(jobs -p); do kill -KILL "$pid" 2>/dev/null || true; done
  if [ -n "$WINE64" ] && [ -d "$WINEPREFIX" ]; then
    timeout 20 "$(dirname "$WINE64")/wineserver64" -k 2>/dev/null \
      || timeout 20 wineserver -k 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PASSED=()
FAILED=()
SKIPPED=()
pass() { echo "PASS: $1"; PASSED+=("$1"); }
fail() { echo "FAIL: $1${2:+ ($2)}"; FAILED+=("$1"); }
skip() { echo "SKIP: $1${2:+ ($2)}"; SKIPPED+=("$1"); }

# ---- Wine and the Windows binary: can they run at all?
WINE_OK=1
why_not=""
if [ -z "$WINE64" ]; then
  WINE_OK=0; why_not="wine64 is not installed"
else
  mkdir -p "$WORK/bin"
  cp "$WIN_EXE" "$WORK/bin/hayedik.exe"
  x86_64-w64-mingw32-gcc -shared -O2 -Wall -Wextra -Werror \
    -o "$WORK/bin/bcryptprimitives.dll" "$HERE/wine/bcryptprimitives.c" -ladvapi32
  for helper in ctrlbreak hold; do
    x86_64-w64-mingw32-gcc -municode -O2 -Wall -Wextra -Werror \
      -o "$WORK/bin/$helper.exe" "$HERE/wine/$helper.c"
  done
  if ! timeout 120 "$WINE64" wineboot --init >"$WORK/wineboot.log" 2>&1; then
    WINE_OK=0; why_not="wineboot failed or timed out: $(tail -n 3 "$WORK/wineboot.log" | tr '\n' ' ')"
  elif ! version=$(cd "$WORK" && timeout 60 "$WINE64" "$WORK/bin/hayedik.exe" --version 2>&1); then
    WINE_OK=0; why_not="Wine could not start hayedik.exe: $version"
  else
    echo "wine: $("$WINE64" --version 2>/dev/null); hayedik.exe: $version"
  fi
fi

# run ROLE NAME ARGS...: starts hayedik as ROLE (lin|win) in the background,
# stdout to $WORK/NAME.out, stderr to $WORK/NAME.err; sets PID.
run() {
  local role=$1 name=$2
  shift 2
  if [ "$role" = win ]; then
    "$WINE64" "$WORK/bin/hayedik.exe" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  else
    "$LIN" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  fi
  PID=$!
}

# event FILE EVENT FIELD: FIELD of the last EVENT line in FILE (empty if none).
event() {
  jq -r --arg e "$2" --arg f "$3" 'select(.event == $e and has($f)) | .[$f] | tostring' "$1" \
    2>/dev/null | tail -n 1
}

# wait_event FILE EVENT FIELD PID: waits (30 s at most) for EVENT in FILE
# while PID lives; prints FIELD.
wait_event() {
  local i value
  for i in $(seq 300); do
    value=$(event "$1" "$2" "$3")
    if [ -n "$value" ]; then echo "$value"; return 0; fi
    kill -0 "$4" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# stop ROLE PID: asks the process to stop as a user would (Ctrl-C, which is
# SIGINT for the Linux build and for Wine, which turns it into a console
# Ctrl-C event) and waits for it (20 s at most); sets STATUS.
stop() {
  kill -INT "$2" 2>/dev/null || true
  local i
  for i in $(seq 200); do
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  local killed=0
  if kill -0 "$2" 2>/dev/null; then
    kill -KILL "$2" 2>/dev/null || true
    killed=1
  fi
  STATUS=0
  wait "$2" 2>/dev/null || STATUS=$?
  [ "$killed" = 0 ] || STATUS="still running 20 s after Ctrl-C, killed"
}

# ---- The content: one file, and a folder with nested, empty, non-ASCII and
# long-path entries (more than Windows' classic 260-character MAX_PATH once
# under the download directory).
mkdir -p "$WORK/src"
head -c 3000000 /dev/urandom >"$WORK/src/one file.bin"
tree=$WORK/src/tree
mkdir -p "$tree/sub/deeper" "$tree/empty dir"
head -c 1500000 /dev/urandom >"$tree/sub/a.bin"
head -c 1000 /dev/urandom >"$tree/sub/deeper/b.bin"
: >"$tree/empty.txt"
echo "déjà vu" >"$tree/café.txt"
long=$tree
for i in 1 2 3 4 5; do long=$long/$(printf 'long-folder-name-%02d-%040d' "$i" 0); done
mkdir -p "$long"
head -c 70000 /dev/urandom >"$long/at-the-end-of-a-long-path.bin"
# Large enough that a rate-capped download can be interrupted midway.
head -c 24000000 /dev/urandom >"$WORK/src/big.bin"
# Two names that differ in case only, for the case-folding check.
mkdir -p "$WORK/src/cases"
echo upper >"$WORK/src/cases/Name.txt"
echo lower >"$WORK/src/cases/name.txt"

# same SRC DST: byte-identical trees (or files), empty folders included.
same() {
  diff -r "$1" "$2" >/dev/null 2>&1 \
    && [ "$(cd "$1" 2>/dev/null && find . -type d | sort)" = "$(cd "$2" 2>/dev/null && find . -type d | sort)" ]
}

# transfer TRACKER SHARER GETTER CONTENT: one whole round.
transfer() {
  local t=$1 s=$2 g=$3 content=$4
  local label="tracker=$t sharer=$s getter=$g $content"
  local id="$t-$s-$g-$content" src=$WORK/src/$content
  [ "$content" = file ] && src="$WORK/src/one file.bin"
  if [ "$WINE_OK" = 0 ]; then skip "$label" "$why_not"; return; fi
  run "$t" "tracker-$id" tracker --listen 127.0.0.1:0 --json
  local tpid=$PID taddr
  if ! taddr=$(wait_event "$WORK/tracker-$id.out" listening addr "$tpid"); then
    fail "$label" "tracker did not listen: $(cat "$WORK/tracker-$id.err")"; stop "$t" "$tpid"; return
  fi
  run "$s" "share-$id" share "$src" --tracker "$taddr" --listen 127.0.0.1:0 --json
  local spid=$PID ticket
  if ! ticket=$(wait_event "$WORK/share-$id.out" ticket ticket "$spid"); then
    fail "$label" "no ticket: $(cat "$WORK/share-$id.err")"; stop "$s" "$spid"; stop "$t" "$tpid"; return
  fi
  mkdir -p "$WORK/dl-$id"
  local gstatus=0
  (cd "$WORK/dl-$id" && if [ "$g" = win ]; then
      timeout 120 "$WINE64" "$WORK/bin/hayedik.exe" get "$ticket" --no-seed --timeout 60 \
        --listen 127.0.0.1:0 --json
    else
      timeout 120 "$LIN" get "$ticket" --no-seed --timeout 60 --listen 127.0.0.1:0 --json
    fi >"$WORK/get-$id.out" 2>"$WORK/get-$id.err") || gstatus=$?
  stop "$s" "$spid"; local sstatus=$STATUS
  stop "$t" "$tpid"; local tstatus=$STATUS
  local got=$WORK/dl-$id/$(basename "$src")
  if [ "$gstatus" != 0 ]; then
    fail "$label" "get exited $gstatus: $(tail -n 2 "$WORK/get-$id.err")"
  elif [ "$(event "$WORK/get-$id.out" done bytes)" = "" ]; then
    fail "$label" "no done event"
  elif ! same "$src" "$got"; then
    fail "$label" "the download differs from its source"
  elif [ "$(ls -A "$WORK/dl-$id")" != "$(basename "$src")" ]; then
    fail "$label" "side files left: $(ls -A "$WORK/dl-$id" | tr '\n' ' ')"
  elif [ "$sstatus" != 0 ] || [ "$(event "$WORK/share-$id.out" stopped uploaded)" = "" ]; then
    fail "$label" "share did not stop cleanly on Ctrl-C (status $sstatus)"
  elif [ "$tstatus" != 0 ] || ! grep -q '"event":"stopped"' "$WORK/tracker-$id.out"; then
    fail "$label" "tracker did not stop cleanly on Ctrl-C (status $tstatus)"
  else
    pass "$label"
  fi
}

echo "== every combination with Windows in it, a file and a folder"
for t in lin win; do
  for s in lin win; do
    for g in lin win; do
      [ "$t$s$g" = linlinlin ] && continue
      for content in file tree; do
        transfer "$t" "$s" "$g" "$content"
      done
    done
  done
done

echo "== --json: the Windows build emits the same events with the same fields"
# shapes ROLE OS: each distinct (event, field names) pair that ROLE printed
# with --json on OS in the rounds above.
shapes() {
  local files=()
  case $1 in
    tracker) files=("$WORK"/tracker-"$2"-*.out) ;;
    share) files=("$WORK"/share-???-"$2"-*.out) ;;
    get) files=("$WORK"/get-???-???-"$2"-*.out) ;;
  esac
  jq -c '[.event, (keys_unsorted | sort)]' "${files[@]}" 2>/dev/null | sort -u || true
}
# Events whose coming depends on timing (a progress tick, the tracker's
# reachability answer racing a short get's exit) are compared only when
# both builds printed that event at least once: only_shared SHAPES OTHER
# leaves out of SHAPES the timed events OTHER has none of.
timed='^\["(progress|reachability)",'
only_shared() {
  local name
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    if grep -qE "$timed" <<<"$line"; then
      name=$(grep -oE '^\["[a-z_]+",' <<<"$line")
      grep -qF "$name" <<<"$2" || continue
    fi
    echo "$line"
  done <<<"$1"
}
for role in tracker share get; do
  label="--json events of $role: Windows = Linux"
  if [ "$WINE_OK" = 0 ]; then skip "$label" "$why_not"; continue; fi
  lin_all=$(shapes "$role" lin)
  win_all=$(shapes "$role" win)
  lin_shapes=$(only_shared "$lin_all" "$win_all" | sort -u)
  win_shapes=$(only_shared "$win_all" "$lin_all" | sort -u)
  if [ -z "$win_shapes" ]; then
    fail "$label" "no events from the Windows build"
  elif [ "$lin_shapes" != "$win_shapes" ]; then
    fail "$label" "$(diff <(echo "$lin_shapes") <(echo "$win_shapes") | grep '^[<>]' | tr '\n' ' ')"
  else
    pass "$label ($(echo "$win_shapes" | jq -r '.[0]' | sort -u | tr '\n' ' '))"
  fi
done

echo "== a Windows get interrupted by Ctrl-C, then resumed"
interrupt_resume() {
  local label="Windows get: Ctrl-C keeps the progress, the same command resumes"
  if [ "$WINE_OK" = 0 ]; then skip "$label" "$why_not"; return; fi
  run lin share-big share "$WORK/src/big.bin" --listen 127.0.0.1:0 --public-host 127.0.0.1 --json
  local spid=$PID ticket
  if ! ticket=$(wait_event "$WORK/share-big.out" ticket ticket "$spid"); then
    fail "$label" "no ticket: $(cat "$WORK/share-big.err")"; stop lin "$spid"; return
  fi
  mkdir -p "$WORK/dl-big"
  # A rate cap makes the download last long enough to be interrupted.
  (cd "$WORK/dl-big" && exec "$WINE64" "$WORK/bin/hayedik.exe" get "$ticket" --no-seed \
    --timeout 60 --max-download 4M --listen 127.0.0.1:0 --json >"$WORK/get-big1.out" 2>"$WORK/get-big1.err") &
  local gpid=$!
  local i done_bytes=0
  for i in $(seq 300); do
    done_bytes=$(event "$WORK/get-big1.out" progress bytes_done)
    [ "${done_bytes:-0}" -gt 0 ] 2>/dev/null && break
    kill -0 "$gpid" 2>/dev/null || break
    sleep 0.1
  done
  stop win "$gpid"
  local first=$STATUS complete
  complete=$(event "$WORK/get-big1.out" stopped complete)
  if [ "$first" != 130 ] || [ "$complete" != false ]; then
    fail "$label" "interrupted get: status $first (want 130), complete=$complete (want false): $(tail -n 2 "$WORK/get-big1.err")"
    stop lin "$spid"; return
  fi
  if [ -e "$WORK/dl-big/big.bin" ]; then
    fail "$label" "an interrupted download left a file under the final name"
    stop lin "$spid"; return
  fi
  # While another program holds the part file, the same command fails
  # with a clear error and keeps the progress.
  local held=0 hold_status=not-run
  (cd "$WORK/dl-big" && exec "$WINE64" "$WORK/bin/hold.exe" .big.bin.hayedik-part \
    "$WORK/part-held" >"$WORK/hold-part.out" 2>&1) &
  local hpid=$!
  for i in $(seq 300); do
    [ -e "$WORK/part-held" ] && break
    kill -0 "$hpid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -e "$WORK/part-held" ]; then
    held=1
    hold_status=0
    (cd "$WORK/dl-big" && timeout 120 "$WINE64" "$WORK/bin/hayedik.exe" get "$ticket" --no-seed \
      --timeout 60 --listen 127.0.0.1:0 --json >"$WORK/get-held.out" 2>"$WORK/get-held.err") \
      || hold_status=$?
  fi
  kill -KILL "$hpid" 2>/dev/null || true
  wait "$hpid" 2>/dev/null || true
  local held_label="Windows get: a part file another program holds gives a clear error, progress kept"
  if [ "$held" = 0 ]; then
    skip "$held_label" "the helper could not hold the file: $(cat "$WORK/hold-part.out")"
  elif [ "$hold_status" != 1 ] || [ -z "$(event "$WORK/get-held.out" error message)" ] \
    || grep -q panicked "$WORK/get-held.err" || [ ! -e "$WORK/dl-big/.big.bin.hayedik-part" ]; then
    fail "$held_label" "status $hold_status (want 1): $(tail -n 2 "$WORK/get-held.err")"
  else
    pass "$held_label ($(event "$WORK/get-held.out" error message))"
  fi
  local second=0
  (cd "$WORK/dl-big" && timeout 120 "$WINE64" "$WORK/bin/hayedik.exe" get "$ticket" --no-seed \
    --timeout 60 --listen 127.0.0.1:0 --json >"$WORK/get-big2.out" 2>"$WORK/get-big2.err") || second=$?
  stop lin "$spid"
  local reused
  reused=$(event "$WORK/get-big2.out" done reused)
  if [ "$second" != 0 ]; then
    fail "$label" "resumed get exited $second: $(tail -n 2 "$WORK/get-big2.err")"
  elif [ "${reused:-0}" -le 0 ] 2>/dev/null; then
    fail "$label" "the resumed get reused nothing (reused=$reused)"
  elif ! cmp -s "$WORK/src/big.bin" "$WORK/dl-big/big.bin"; then
    fail "$label" "the resumed download differs from its source"
  elif [ "$(ls -A "$WORK/dl-big")" != big.bin ]; then
    fail "$label" "side files left: $(ls -A "$WORK/dl-big" | tr '\n' ' ')"
  else
    pass "$label (reused $reused of 24000000 bytes)"
  fi
}
interrupt_resume

echo "== a Windows get stopped by Ctrl-Break (SIGTERM's counterpart)"
ctrl_break() {
  local label="Windows get: Ctrl-Break stops it with status 143, progress kept"
  if [ "$WINE_OK" = 0 ]; then skip "$label" "$why_not"; return; fi
  run lin share-brk share "$WORK/src/big.bin" --listen 127.0.0.1:0 --public-host 127.0.0.1 --json
  local spid=$PID ticket
  if ! ticket=$(wait_event "$WORK/share-brk.out" ticket ticket "$spid"); then
    fail "$label" "no ticket: $(cat "$WORK/share-brk.err")"; stop lin "$spid"; return
  fi
  mkdir -p "$WORK/dl-brk"
  (cd "$WORK/dl-brk" && exec timeout 150 "$WINE64" "$WORK/bin/ctrlbreak.exe" "$WORK/brk-now" \
    "$WORK/bin/hayedik.exe" get "$ticket" --no-seed --timeout 60 --max-download 4M \
    --listen 127.0.0.1:0 --json >"$WORK/get-brk.out" 2>"$WORK/get-brk.err") &
  local gpid=$!
  local i
  for i in $(seq 300); do
    [ "$(event "$WORK/get-brk.out" progress bytes_done)" -gt 0 ] 2>/dev/null && break
    kill -0 "$gpid" 2>/dev/null || break
    sleep 0.1
  done
  touch "$WORK/brk-now"
  local status=0
  wait "$gpid" || status=$?
  stop lin "$spid"
  local complete
  complete=$(event "$WORK/get-brk.out" stopped complete)
  if [ "$status" = 200 ] && grep -q GenerateConsoleCtrlEvent "$WORK/get-brk.err"; then
    skip "$label" "Wine cannot send Ctrl-Break here: $(grep ctrlbreak: "$WORK/get-brk.err")"
  elif [ "$status" != 143 ] || [ "$complete" != false ]; then
    fail "$label" "status $status (want 143), complete=$complete: $(tail -n 2 "$WORK/get-brk.err")"
  else
    pass "$label"
  fi
}
ctrl_break

echo "== a Windows share of a file another process holds"
held_file() {
  local label="Windows share: a file held open by another program gives a clear error"
  if [ "$WINE_OK" = 0 ]; then skip "$label" "$why_not"; return; fi
  cp "$WORK/src/one file.bin" "$WORK/held.bin"
  (cd "$WORK" && exec "$WINE64" "$WORK/bin/hold.exe" held.bin held-ready >"$WORK/hold.out" 2>&1) &
  local hpid=$!
  local i
  for i in $(seq 300); do
    [ -e "$WORK/held-ready" ] && break
    kill -0 "$hpid" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -e "$WORK/held-ready" ]; then
    skip "$label" "the helper could not hold the file: $(cat "$WORK/hold.out")"
    kill -KILL "$hpid" 2>/dev/null || true
    return
  fi
  local status=0
  (cd "$WORK" && timeout 60 "$WINE64" "$WORK/bin/hayedik.exe" share held.bin \
    --listen 127.0.0.1:0 --public-host 127.0.0.1 --json >"$WORK/share-held.out" 2>"$WORK/share-held.err") \
    || status=$?
  kill -KILL "$hpid" 2>/dev/null || true
  wait "$hpid" 2>/dev/null || true
  local message
  message=$(event "$WORK/share-held.out" error message)
  if [ "$status" != 1 ] || [ -z "$message" ] || grep -q panicked "$WORK/share-held.err" \
    || ! grep -q "another program holds it" <<<"$message"; then
    fail "$label" "status $status (want 1), error event '$message': $(tail -n 2 "$WORK/share-held.err")"
  else
    pass "$label ($message)"
  fi
}
held_file

echo "== a Windows get refuses names that differ only in case"
case_collision() {
  local label="Windows get: a share with Name.txt and name.txt is refused, nothing written"
  if [ "$WINE_OK" = 0 ]; then skip "$label" "$why_not"; return; fi
  run lin share-cases share "$WORK/src/cases" --listen 127.0.0.1:0 --public-host 127.0.0.1 --json
  local spid=$PID ticket
  if ! ticket=$(wait_event "$WORK/share-cases.out" ticket ticket "$spid"); then
    fail "$label" "no ticket: $(cat "$WORK/share-cases.err")"; stop lin "$spid"; return
  fi
  mkdir -p "$WORK/dl-cases"
  local status=0
  (cd "$WORK/dl-cases" && timeout 120 "$WINE64" "$WORK/bin/hayedik.exe" get "$ticket" --no-seed \
    --timeout 60 --listen 127.0.0.1:0 --json >"$WORK/get-cases.out" 2>"$WORK/get-cases.err") || status=$?
  stop lin "$spid"
  local message
  message=$(event "$WORK/get-cases.out" error message)
  if [ "$status" != 1 ] || [ -z "$message" ]; then
    fail "$label" "status $status (want 1), error event '$message': $(tail -n 2 "$WORK/get-cases.err")"
  elif [ -n "$(ls -A "$WORK/dl-cases")" ]; then
    fail "$label" "it wrote into the download directory: $(ls -A "$WORK/dl-cases" | tr '\n' ' ')"
  else
    pass "$label (error: $message)"
  fi
}
case_collision

echo "== a Windows get meets a hard link at its part file's name"
hard_link_part() {
  local label="Windows get: a part file with another name elsewhere (a hard link) is never written"
  if [ "$WINE_OK" = 0 ]; then skip "$label" "$why_not"; return; fi
  run lin share-hl share "$WORK/src/one file.bin" --listen 127.0.0.1:0 --public-host 127.0.0.1 --json
  local spid=$PID ticket
  if ! ticket=$(wait_event "$WORK/share-hl.out" ticket ticket "$spid"); then
    fail "$label" "no ticket: $(cat "$WORK/share-hl.err")"; stop lin "$spid"; return
  fi
  # Outside the download folder, the content's size, its first MiB right:
  # the most tempting file to reuse. Wine maps Windows files onto these, so
  # a Unix hard link is a Windows one (two names, one file).
  mkdir -p "$WORK/dl-hl"
  { head -c 1048576 "$WORK/src/one file.bin"; head -c 1951424 /dev/urandom; } >"$WORK/precious.bin"
  cp "$WORK/precious.bin" "$WORK/precious.copy"
  ln "$WORK/precious.bin" "$WORK/dl-hl/.one file.bin.hayedik-part"
  local status=0
  (cd "$WORK/dl-hl" && timeout 120 "$WINE64" "$WORK/bin/hayedik.exe" get "$ticket" --no-seed \
    --timeout 60 --listen 127.0.0.1:0 --json >"$WORK/get-hl.out" 2>"$WORK/get-hl.err") || status=$?
  stop lin "$spid"
  if [ "$status" != 0 ]; then
    fail "$label" "get exited $status: $(tail -n 2 "$WORK/get-hl.err")"
  elif ! cmp -s "$WORK/precious.bin" "$WORK/precious.copy"; then
    fail "$label" "the file outside the download folder was written through the link"
  elif ! cmp -s "$WORK/src/one file.bin" "$WORK/dl-hl/one file.bin"; then
    fail "$label" "the download differs from its source"
  elif ! grep -q "hard link" "$WORK/get-hl.out" "$WORK/get-hl.err"; then
    fail "$label" "it did not say why it left the part file: $(tail -n 2 "$WORK/get-hl.err")"
  else
    pass "$label"
  fi
}
hard_link_part

echo
echo "wine smoke: ${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped"
for s in "${SKIPPED[@]}"; do echo "  skipped (not run, not passed): $s"; done
for f in "${FAILED[@]}"; do echo "  failed: $f"; done
[ ${#FAILED[@]} -eq 0 ]
