#!/usr/bin/env bash
# Benchmark of block-mode transfer over loopback, against what a user would
# otherwise do, all in one run on the same file system:
#   mixed source (SIZE_GIB, default 4: 1/4 random, 1/4 text, 1/2 zero)
#     dd      : dd if=SRC of=TARGET bs=4M conv=fdatasync
#     zstd|nc : zstd -1 < SRC | nc  →  nc -l | zstd -d > TARGET; sync
#     ferry   : ferry send → ferry serve (TLS, hashing, ledger, verification)
#   random source (RANDOM_GIB, default 2: incompressible)
#     nc|dd   : nc < SRC  →  nc -l | dd of=TARGET bs=4M conv=fdatasync
#     ferry   : the same source through ferry
#   two random disks at once (RANDOM_GIB/2 each)
#     2× nc|dd in parallel, against one `ferry send` of both disks
# Prints wall times, ferry's ratio to each baseline, the receiver's peak RSS,
# and the CPU-seconds per GiB of the sender and of the receiver, each
# measured on its own process (user + system time).
#
# usage: scripts/bench-transfer.sh [SIZE_GIB=4] [WORK_DIR=./target/bench] [RANDOM_GIB=2]
# FERRY_SEND_ARGS adds arguments to every `ferry send` (e.g. "--streams 1").
set -euo pipefail
cd "$(dirname "$0")/.."
size_gib=${1:-4}
work=${2:-./target/bench}
random_gib=${3:-2}
port=${BENCH_PORT:-19703}
mkdir -p "$work"
work=$(cd "$work" && pwd)
for t in zstd nc python3 dd; do command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y zstd netcat-openbsd)"; exit 1; }; done
# FERRY_BIN: another build of ferry to measure (an earlier version, say).
if [ -z "${FERRY_BIN:-}" ]; then cargo build --release --quiet; fi
ferry=${FERRY_BIN:-$PWD/target/release/ferry}
# shellcheck disable=SC2206
send_extra=(${FERRY_SEND_ARGS:-})

src=$work/src.img
if [ ! -f "$src" ] || [ "$(stat -c %s "$src")" != "$((size_gib << 30))" ]; then
    echo "making a ${size_gib} GiB mixed source (random, text and zero stripes; last quarter zero)..."
    python3 - "$src" "$size_gib" <<'PY'
import os, sys
path, gib = sys.argv[1], int(sys.argv[2])
mib = gib * 1024
text = b"".join(b"%08d a log line of a production server that compresses well\n" % i for i in range(20000))[: 1 << 20]
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for i in range(mib * 3 // 4):
        if i % 3 == 0:
            f.seek(i << 20); f.write(os.urandom(1 << 20))
        elif i % 3 == 1:
            f.seek(i << 20); f.write(text)
PY
fi
# Random sources: one of RANDOM_GIB, two halves of it for the two-disk run.
make_random() { # PATH MIB
    if [ ! -f "$1" ] || [ "$(stat -c %s "$1")" != "$(($2 << 20))" ]; then
        echo "making $2 MiB of random data in $(basename "$1")..."
        head -c "$(($2 << 20))" /dev/urandom > "$1"
    fi
}
rnd=$work/random.img
make_random "$rnd" $((random_gib * 1024))
make_random "$work/random-a.img" $((random_gib * 512))
make_random "$work/random-b.img" $((random_gib * 512))
# every run reads its sources from the page cache
cat "$src" "$rnd" "$work/random-a.img" "$work/random-b.img" > /dev/null

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }
# user + system CPU-seconds of a running process
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }

# nc | dd conv=fdatasync of the given sources to targets, in parallel
nc_dd() { # SRC... → prints wall seconds
    local i=0 t0 t1 pids=() p
    t0=$(now)
    for s in "$@"; do
        p=$((port + 10 + i))
        ( nc -l 127.0.0.1 "$p" | dd of="$work/ncdd-$i.img" bs=4M iflag=fullblock conv=fdatasync status=none ) &
        pids+=($!)
        i=$((i + 1))
    done
    sleep 0.3
    i=0
    for s in "$@"; do
        nc -N 127.0.0.1 $((port + 10 + i)) < "$s" &
        i=$((i + 1))
    done
    wait "${pids[@]}"
    t1=$(now)
    i=0
    for s in "$@"; do
        cmp -s "$s" "$work/ncdd-$i.img" || { echo "nc|dd copy differs" >&2; exit 1; }
        rm -f "$work/ncdd-$i.img"
        i=$((i + 1))
    done
    elapsed "$t0" "$t1"
}

# One ferry serve, one ferry send of the given disks. Sets: t_ferry (wall),
# cpu_send, cpu_recv (CPU-seconds), rss_kib (receiver's peak RSS).
ferry_run() { # NAME SRC...
    local name=$1; shift
    rm -rf "$work/state"
    "$ferry" serve --no-build --state-dir "$work/state" --data-listen "127.0.0.1:$port" --control-listen 127.0.0.1:0 > "$work/serve.out" 2> "$work/serve-$name.log" &
    srv=$!
    trap 'kill $srv 2>/dev/null || true' EXIT
    for _ in $(seq 100); do grep -q '^control-listen:' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
    local disks=() c0 t0 t1
    for s in "$@"; do disks+=(--disk "$s"); done
    c0=$(cpu_of "$srv")
    t0=$(now)
    /usr/bin/time -f '%U %S' -o "$work/send-$name.cpu" "$ferry" send --to "127.0.0.1:$port" --token "$(cat "$work/state/token")" \
        --fingerprint "$(cat "$work/state/tls/fingerprint")" "${disks[@]}" "${send_extra[@]}" \
        --report "$work/report-$name.json" 2> "$work/send-$name.log"
    t1=$(now); t_ferry=$(elapsed "$t0" "$t1")
    cpu_recv=$(python3 -c "print($(cpu_of "$srv") - $c0)")
    cpu_send=$(awk '{ print $1 + $2 }' "$work/send-$name.cpu")
    rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$srv/status")
    local i=0
    for s in "$@"; do
        cmp -s "$s" "$work/state/disks/disk-$i.img" || { echo "ferry copy of $s differs"; exit 1; }
        i=$((i + 1))
    done
    kill "$srv"; wait "$srv" 2>/dev/null || true
    trap - EXIT
}

rm -f "$work/dd.img"
t0=$(now)
dd if="$src" of="$work/dd.img" bs=4M conv=fdatasync status=none
t1=$(now); t_dd=$(elapsed "$t0" "$t1"); rm -f "$work/dd.img"

rm -f "$work/nc.img"
t0=$(now)
( nc -l 127.0.0.1 "$port" | zstd -d -q > "$work/nc.img" ) &
rx=$!
sleep 0.3
zstd -1 -q -c < "$src" | nc -N 127.0.0.1 "$port"
wait "$rx"
sync "$work/nc.img"
t1=$(now); t_nc=$(elapsed "$t0" "$t1")
cmp -s "$src" "$work/nc.img" || { echo "zstd|nc copy differs"; exit 1; }
rm -f "$work/nc.img"

ferry_run mixed "$src"
mixed=("$t_ferry" "$cpu_send" "$cpu_recv" "$rss_kib")

t_ncdd=$(nc_dd "$rnd")
ferry_run random "$rnd"
random=("$t_ferry" "$cpu_send" "$cpu_recv" "$rss_kib")

t_ncdd2=$(nc_dd "$work/random-a.img" "$work/random-b.img")
ferry_run two "$work/random-a.img" "$work/random-b.img"
two=("$t_ferry" "$cpu_send" "$cpu_recv" "$rss_kib")

python3 - "$size_gib" "$random_gib" "$t_dd" "$t_nc" "${mixed[@]}" "$t_ncdd" "${random[@]}" "$t_ncdd2" "${two[@]}" "$work/report-mixed.json" <<'PY'
import json, sys
a = sys.argv[1:]
gib, rgib = float(a[0]), float(a[1])
dd, nc = float(a[2]), float(a[3])
m = list(map(float, a[4:8]))
ncdd = float(a[8]); r = list(map(float, a[9:13]))
ncdd2 = float(a[13]); t = list(map(float, a[14:18]))
rep = json.load(open(a[18]))["disks"][0]
def row(name, secs, g):
    print(f"{name:<26}: {secs:7.2f} s  {g*1024/secs:7.1f} MiB/s")
def cpu(name, run, g):
    print(f"{name:<26}: sender {run[1]/g:.2f} CPU-s/GiB, receiver {run[2]/g:.2f} CPU-s/GiB, receiver peak RSS {run[3]/1024:.0f} MiB")
print(f"mixed source: {gib:.0f} GiB (1/4 random, 1/4 text, 1/2 zero)")
row("  dd conv=fdatasync", dd, gib)
row("  zstd -1 | nc", nc, gib)
row("  ferry send/serve", m[0], gib)
print(f"    (wire {rep['wire_bytes']/2**20:.0f} MiB, zero-skipped {rep['zero_skipped_bytes']/2**20:.0f} MiB)")
print(f"  ratio ferry/dd            = {m[0]/dd:.2f}")
print(f"  ratio ferry/zstd|nc       = {m[0]/nc:.2f}")
cpu("  ferry CPU", m, gib)
print(f"random source: {rgib:.0f} GiB (incompressible)")
row("  nc | dd conv=fdatasync", ncdd, rgib)
row("  ferry send/serve", r[0], rgib)
print(f"  ratio ferry/nc|dd         = {r[0]/ncdd:.2f}")
cpu("  ferry CPU", r, rgib)
print(f"two random disks at once: 2 × {rgib/2:g} GiB")
row("  2 × nc | dd in parallel", ncdd2, rgib)
row("  ferry send (both disks)", t[0], rgib)
print(f"  ratio ferry/2×nc|dd       = {t[0]/ncdd2:.2f}")
cpu("  ferry CPU", t, rgib)
PY
