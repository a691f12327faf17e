#!/usr/bin/env bash
# Regenerates crates/hayedik/hot-text.ld, the list of functions that a
# sharer, a getter, a seeder and a tracker run, which the linker places
# together at the start of the binary's code (docs/performance.md, "Code
# laid out by use").
#
# Why: a process maps the pages of the code it runs, and the kernel maps
# them in blocks of 64 KiB or more around each fault. With the code a
# sharer runs spread over the whole 12 MB text, nearly all of it ended up
# mapped; laid out together, it is a few MB.
#
# How: builds the release binary, runs the scenarios below under callgrind
# (valgrind; installed with apt-get if missing) on loopback, with a 16 MiB
# file, and collects every function of the binary that ran. A function is
# named by its symbol without the hash that rustc appends (`17h...E`), so
# the list keeps matching when the compiler or a dependency changes that
# hash; a generic function whose instances are many is named by the exact
# symbols of the instances that ran.
#
# A stale list costs memory, never correctness: a name that matches
# nothing is ignored by the linker. Run this after a dependency or
# toolchain update, or after moving code around; `--check` only reports how
# much of what ran lies in the hot section of the current build.
#
# Usage: bench/hot-text.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=crates/hayedik/hot-text.ld
CHECK=0
[ "${1:-}" = --check ] && CHECK=1

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}
if ! command -v valgrind >/dev/null 2>&1; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind \
    || { echo "bench/hot-text.sh: valgrind is needed and could not be installed" >&2; exit 1; }
fi

cargo build --release -p hayedik --bin hayedik
BIN=$ROOT/target/release/hayedik
RUSTC_V=$(rustc -V)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
# Config and data directories where a user's are (under HOME), but empty.
unset HAYEDIK_CONFIG_DIR HAYEDIK_DATA_DIR HAYEDIK_HOME XDG_CONFIG_HOME XDG_DATA_HOME
export HOME=$WORK/home
mkdir -p "$HOME"
head -c 16M /dev/urandom > "$WORK/file.bin"

# Runs the binary under callgrind in a subshell that becomes valgrind (so a
# signal sent to `$!` reaches it); its profile goes to $WORK/cg.NAME.
cg() {
  local name=$1; shift
  exec valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/cg.$name" \
    "$BIN" "$@" 2>>"$WORK/$name.err"
}
# Waits for a line matching $2 in file $1 (at most 60 s: valgrind is slow).
wait_for() {
  for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench/hot-text.sh: no '$2' in $1" >&2; cat "$1" "${1%.out}.err" >&2 || true; return 1
}
ticket() { sed -n 's/.*"ticket":"\([^"]*\)".*/\1/p' "$1" | head -1; }

# 1. A sharer with its embedded tracker, as a user runs it (human output),
#    stopped once it has printed its ticket; then the same share again, which
#    takes the same swarm port from the data directory: the sharer that serves.
cg share0 share "$WORK/file.bin" --public-host 127.0.0.1 --listen 127.0.0.1:0 \
  > "$WORK/share0.out" & P0=$!; PIDS+=($P0)
wait_for "$WORK/share0.out" 'hayedik://'
kill -INT "$P0"; wait "$P0" 2>/dev/null || true
STARTED=$SECONDS
cg share share "$WORK/file.bin" --public-host 127.0.0.1 --listen 127.0.0.1:0 --json \
  > "$WORK/share.out" & PIDS+=($!)
wait_for "$WORK/share.out" '"ticket"'
T=$(ticket "$WORK/share.out")
# 2. A getter that leaves; then, with the file out of the page cache (the
#    sharer reads from the disk), a getter that stays and seeds; then two
#    getters at once from both, one with human output.
(cg get get "$T" -o "$WORK/g1" --listen 127.0.0.1:0 --no-seed --json > "$WORK/get.out")
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' \
  "$WORK/file.bin"
cg seed get "$T" -o "$WORK/g2" --listen 127.0.0.1:0 --json > "$WORK/seed.out" & PIDS+=($!)
wait_for "$WORK/seed.out" '"event":"done"'
"$BIN" get "$T" -o "$WORK/g3" --listen 127.0.0.1:0 --no-seed --json > "$WORK/g3.out" & G3=$!
"$BIN" get "$T" -o "$WORK/g4" --listen 127.0.0.1:0 --no-seed > "$WORK/g4.out" 2>&1
wait "$G3"

# 3. A central tracker, and a sharer and a getter that use it.
cg tracker tracker --listen 127.0.0.1:0 --json > "$WORK/tracker.out" & PIDS+=($!)
wait_for "$WORK/tracker.out" '"addr"'
TR=$(sed -n 's/.*"addr":"\([^"]*\)".*/\1/p' "$WORK/tracker.out" | head -1)
cg share2 share "$WORK/file.bin" --tracker "$TR" --public-host 127.0.0.1 \
  --listen 127.0.0.1:0 --json > "$WORK/share2.out" & PIDS+=($!)
wait_for "$WORK/share2.out" '"ticket"'
"$BIN" get "$(ticket "$WORK/share2.out")" -o "$WORK/g5" --listen 127.0.0.1:0 --no-seed --json \
  > "$WORK/g5.out"

# Periodic work: the trackers' expiry (every 30 s) and the peers' second
# announce (after 60 s).
sleep $((STARTED + 65 - SECONDS > 0 ? STARTED + 65 - SECONDS : 0))
# Interrupting them runs their way out too (goodbyes, saving state).
for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
wait "${PIDS[@]}" 2>/dev/null || true
PIDS=()
for f in g1 g2 g3 g4 g5; do
  cmp -s "$WORK/file.bin" "$WORK/$f/file.bin" || { echo "bench/hot-text.sh: $f differs" >&2; exit 1; }
done

python3 - "$BIN" "$OUT" "$CHECK" "$RUSTC_V" "$WORK"/cg.* <<'PY'
import collections, fnmatch, re, subprocess, sys

binp, out, check, rustc, profiles = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5:]
HASH = re.compile(r"^(_ZN.*)17h[0-9a-f]{16}E$")
# ThinLTO's suffix for a promoted local function: it changes from build to build.
LLVM = re.compile(r"\.llvm\.\d+$")
# Instances above which a generic function is named by its exact symbols.
MANY = 4

ran = set()
for path in profiles:
    names = {}
    for line in open(path, errors="replace"):
        m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            ran.add(names[m.group(1)])

size = {}
at = {}
aliases = collections.defaultdict(set)
for line in subprocess.run(["nm", "-S", "--defined-only", binp], capture_output=True,
                           text=True, check=True).stdout.splitlines():
    f = line.split(" ", 3)
    if len(f) == 4 and f[2] in "tTwW":
        size[f[3]] = int(f[1], 16)
        at[f[3]] = int(f[0], 16)
        aliases[int(f[0], 16)].add(f[3])

def stem(sym):
    m = HASH.match(LLVM.sub("", sym))
    return m.group(1) if m else None

instances = collections.Counter(stem(s) for s in size if stem(s))
hot = sorted(ran & size.keys())
# Functions with the same code are merged, and the section keeps one name
# of several: name them all.
named = sorted({a for s in hot for a in aliases[at[s]]})

if check:
    secs = {}
    for line in subprocess.run(["readelf", "-SW", binp], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m:
            secs[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16))
    addr = {}
    for line in subprocess.run(["nm", "--defined-only", binp], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        f = line.split(" ", 2)
        if len(f) == 3 and f[1] in "tTwW":
            addr[f[2]] = int(f[0], 16)
    lo, n = secs.get(".text.hot", (0, 0))
    inside = [s for s in hot if lo <= addr[s] < lo + n]
    b_in = sum(size[s] for s in inside)
    b_all = sum(size[s] for s in hot)
    print(f"hot section: {n / 1048576:.2f} MiB of {secs['.text'][1] / 1048576 + n / 1048576:.2f} MiB of code")
    print(f"functions that ran: {len(hot)}, {b_all / 1048576:.2f} MiB; "
          f"in the hot section: {len(inside)}, {b_in / 1048576:.2f} MiB ({100 * b_in / max(b_all, 1):.0f}%)")
    sys.exit(0)

# Taken whole, every instance or variant (globs): small families where which
# one runs depends on the task types, the timing or the CPU (valgrind hides
# VAES and ADX); what is left of them outside the hot section faulted in
# natively (perf record -e page-faults -d).
WHOLE = [
    "_ZN5tokio7runtime4task3raw",  # a task's vtable shims: 50 KB
    "_ZN102_$LT$tokio..runtime..blocking..task..BlockingTask",
    "_ZN5tokio7runtime8blocking4pool14spawn_blocking",
    "_ZN4core3ptr*drop_in_place$LT$tokio..runtime..task..core..Cell$LT$tokio..runtime..blocking..task..BlockingTask",
    "_ZN5tokio7runtime4task7harness20Harness$LT$T$C$S$GT$8shutdown",  # 40 KB
    "_ZN4ring4aead7aes_gcm",  # AES-GCM's Rust side, every CPU's
    "fiat_25519_",
]
pats = {w + "*" for w in WHOLE}
for s in named:
    st = stem(s)
    if any(fnmatch.fnmatchcase(s, w + "*") for w in WHOLE):
        continue
    if st and instances[st] <= MANY:
        pats.add(st + "*")
    elif s.startswith("ring_core_"):
        # ring's C functions: the version out of the name, and every CPU
        # variant (`_adx`, `_nohw`, `_avx2`...) of one that ran.
        base = re.sub(r"^ring_core_\d+_\d+_\d+_", "ring_core_*_", s)
        pats.add(re.sub(r"_(adx|nohw|hw|avx2|avx|alt|ssse3)$", "", base) + "*")
    elif LLVM.search(s):
        pats.add(LLVM.sub("", s) + ".llvm.*")
    else:
        pats.add(s)
with open(out, "w") as o:
    o.write(f"""/* Generated by bench/hot-text.sh ({rustc}); do not edit.
 * The functions a sharer, a getter, a seeder and a tracker ran, placed
 * together before the rest of the code (docs/performance.md, "Code laid
 * out by use"). A name that matches nothing is ignored. */
SECTIONS
{{
  .text.hot : {{
    *(
""")
    for p in sorted(pats):
        o.write(f"      .text.{p}\n      .text.unlikely.{p}\n")
    # Assembly (ring's AES-GCM, P-256 and SHA, BLAKE3's SIMD) has one
    # `.text` per file and no function names to pick: about 180 KB in all,
    # taken whole, as the variant that runs depends on the CPU (valgrind
    # hides AVX-512).
    o.write("""      .text
    )
    /* X25519 with ADX (valgrind runs the other): 13 KB. */
    *libring-*.rlib:*curve25519_64_adx.o(.text .text.*)
  }
}
INSERT BEFORE .text;
""")
print(f"{out}: {len(pats)} names ({len(hot)} functions ran, "
      f"{sum(size[s] for s in hot) / 1048576:.2f} MiB)")
PY
