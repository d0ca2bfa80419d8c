#!/usr/bin/env bash
# Benchmark of block-mode transfer over loopback, against what a user would
# otherwise do, all in one run on the same file system:
#   dd      : dd if=SRC of=TARGET bs=4M conv=fdatasync
#   zstd|nc : zstd -1 < SRC | nc  →  nc -l | zstd -d > TARGET; sync
#   ferry   : ferry send → ferry serve (TLS, hashing, ledger, verification)
# Prints wall times, ferry's ratio to each baseline and the receiver's peak RSS.
#
# usage: scripts/bench-transfer.sh [SIZE_GIB=4] [WORK_DIR=./target/bench]
set -euo pipefail
cd "$(dirname "$0")/.."
size_gib=${1:-4}
work=${2:-./target/bench}
port=${BENCH_PORT:-19703}
mkdir -p "$work"
work=$(cd "$work" && pwd)
for t in zstd nc python3; do command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y zstd netcat-openbsd)"; exit 1; }; done
cargo build --release --quiet
ferry=$PWD/target/release/ferry

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
cat "$src" > /dev/null  # every run reads the source from the page cache

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

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

rm -rf "$work/state"
"$ferry" serve --no-build --state-dir "$work/state" --data-listen "127.0.0.1:$port" --control-listen 127.0.0.1:0 > "$work/serve.out" 2> "$work/serve.log" &
srv=$!
trap 'kill $srv 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q '^control-listen:' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
t0=$(now)
"$ferry" send --to "127.0.0.1:$port" --token "$(cat "$work/state/token")" \
    --fingerprint "$(cat "$work/state/tls/fingerprint")" --disk "$src" --report "$work/report.json" 2> "$work/send.log"
t1=$(now); t_ferry=$(elapsed "$t0" "$t1")
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$srv/status")
cmp -s "$src" "$work/state/disks/disk-0.img" || { echo "ferry copy differs"; exit 1; }
kill "$srv"; wait "$srv" 2>/dev/null || true
trap - EXIT

python3 - "$t_dd" "$t_nc" "$t_ferry" "$rss_kib" "$size_gib" "$work/report.json" <<'PY'
import json, sys
dd, nc, fe, rss, gib = map(float, sys.argv[1:6])
rep = json.load(open(sys.argv[6]))["disks"][0]
print(f"source: {gib:.0f} GiB mixed (1/4 random, 1/4 text, 1/2 zero)")
print(f"dd conv=fdatasync : {dd:7.2f} s  {gib*1024/dd:7.1f} MiB/s")
print(f"zstd -1 | nc      : {nc:7.2f} s  {gib*1024/nc:7.1f} MiB/s")
print(f"ferry send/serve  : {fe:7.2f} s  {gib*1024/fe:7.1f} MiB/s  (wire {rep['wire_bytes']/2**20:.0f} MiB, zero-skipped {rep['zero_skipped_bytes']/2**20:.0f} MiB)")
print(f"ratio ferry/dd      = {fe/dd:.2f}")
print(f"ratio ferry/zstd|nc = {fe/nc:.2f}")
print(f"receiver peak RSS   = {rss/1024:.0f} MiB")
PY
