#!/usr/bin/env bash
# Benchmark of `ferry send --consistency freeze` on a live file system, with
# the change tracker and without it (--no-track), in one run on the same
# source: a loop-mounted ext4 of SIZE_GIB (default 16), FILL_GIB of it
# (default 11) filled with data, written all along at a steady WRITE_MIBS
# (default 8 MiB/s, 64 KiB writes each followed by fdatasync) while it is
# sent to a `ferry serve` on loopback. Caches are dropped before each send.
# Prints per run: each pass's bytes read, changed and written meanwhile,
# the time the file system stayed frozen, the sender's CPU-seconds, and the
# writer's fdatasync latency (p50, p99) — the tracker's cost to the source.
#
# Then the writer alone for WRITER_SECS (default 30) twice: without tracing,
# and with the tracker's tracepoints enabled on the disk and drained — the
# kernel-side cost of tracking to the writes it follows.
#
# usage: scripts/bench-freeze.sh [SIZE_GIB=16] [FILL_GIB=11] [WORK_DIR=./target/bench-freeze]
# FERRY_SEND_ARGS adds arguments to both sends (e.g. "--chunk-size 262144").
# Needs root (loop devices, mounts, FIFREEZE, the kernel's trace buffers).
set -euo pipefail
cd "$(dirname "$0")/.."
size_gib=${1:-16}
fill_gib=${2:-11}
work=${3:-./target/bench-freeze}
rate=${WRITE_MIBS:-8}
port=${BENCH_PORT:-19713}
writer_secs=${WRITER_SECS:-30}
# shellcheck disable=SC2206
send_extra=(${FERRY_SEND_ARGS:-})
[ "$(id -u)" = 0 ] || { echo "run as root: loop devices, mounts and FIFREEZE"; exit 1; }
mkdir -p "$work"
work=$(cd "$work" && pwd)
if [ -z "${FERRY_BIN:-}" ]; then cargo build --release --quiet; fi
ferry=${FERRY_BIN:-$PWD/target/release/ferry}
img=$work/live.img
mnt=$work/mnt
mkdir -p "$mnt"

srv= writer=
cleanup() {
    [ -n "$writer" ] && kill "$writer" 2>/dev/null || true
    [ -n "$srv" ] && kill "$srv" 2>/dev/null || true
    fsfreeze -u "$mnt" 2>/dev/null || true
    umount "$mnt" 2>/dev/null || true
}
trap cleanup EXIT

marker=$work/live.filled-$size_gib-$fill_gib
if [ ! -f "$marker" ]; then
    echo "making a ${size_gib} GiB ext4 with ${fill_gib} GiB of data (kept for the next run)..."
    rm -f "$img" "$work"/live.filled-*
    truncate -s "${size_gib}G" "$img"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img"
    mount -o loop "$img" "$mnt"
    for i in $(seq "$fill_gib"); do
        head -c 1G /dev/urandom > "$mnt/fill-$i"
    done
    mkdir -p "$mnt/live"
    sync
    touch "$marker"
else
    mount -o loop "$img" "$mnt"
fi

# The steady writer: 64 KiB every 64/RATE ms, each followed by fdatasync,
# round 64 files of 8 MiB; logs each write's latency in µs.
start_writer() { # LOG
    python3 - "$mnt/live" "$rate" "$1" <<'PY' &
import os, sys, time
d, rate, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
block = os.urandom(64 << 10)
period = (64 / 1024) / rate
files = [os.open(os.path.join(d, "w%02d" % i), os.O_WRONLY | os.O_CREAT, 0o644) for i in range(64)]
out = open(log, "w")
k, nxt = 0, time.monotonic()
while True:
    fd = files[k % 64]
    off = ((k // 64) % 128) * len(block)
    t0 = time.monotonic()
    os.pwrite(fd, block, off)
    os.fdatasync(fd)
    out.write("%d\n" % ((time.monotonic() - t0) * 1e6)); out.flush()
    k += 1
    nxt += period
    time.sleep(max(0.0, nxt - time.monotonic()))
PY
    writer=$!
}

send_run() { # NAME EXTRA...
    local name=$1; shift
    rm -rf "$work/state"
    "$ferry" serve --no-build --state-dir "$work/state" --data-listen "127.0.0.1:$port" \
        --control-listen 127.0.0.1:0 > "$work/serve.out" 2> "$work/serve-$name.log" &
    srv=$!
    for _ in $(seq 100); do grep -q '^control-listen:' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
    sync; echo 3 > /proc/sys/vm/drop_caches
    start_writer "$work/writer-$name.log"
    sleep 2
    echo "sending ($name)..."
    /usr/bin/time -f '%U %S' -o "$work/send-$name.cpu" "$ferry" send --to "127.0.0.1:$port" \
        --token "$(cat "$work/state/token")" --fingerprint "$(cat "$work/state/tls/fingerprint")" \
        --consistency freeze --disk "$img" --report "$work/report-$name.json" "$@" "${send_extra[@]}" \
        2> "$work/send-$name.log" || { cat "$work/send-$name.log"; exit 1; }
    kill "$writer"; wait "$writer" 2>/dev/null || true; writer=
    kill "$srv"; wait "$srv" 2>/dev/null || true; srv=
    rm -rf "$work/state"
}

send_run untracked --no-track
send_run tracked

# The writer alone, then beside the tracker's tracepoints (the same events,
# filtered to the loop device, drained by cat as the sender's thread does).
loopdev=$(losetup -j "$img" | cut -d: -f1 | head -1)
dev=$(cat "/sys/class/block/$(basename "$loopdev")/dev")
kdev=$(( (${dev%%:*} << 20) | ${dev##*:} ))
echo "the writer alone, ${writer_secs} s without tracing and ${writer_secs} s traced..."
start_writer "$work/writer-alone.log"; sleep "$writer_secs"; kill "$writer"; wait "$writer" 2>/dev/null || true; writer=
tracing=/sys/kernel/tracing
[ -d "$tracing/instances" ] || mount -t tracefs nodev "$tracing"
inst=$tracing/instances/bench-freeze-$$
mkdir "$inst"
echo 2048 > "$inst/buffer_size_kb"
for e in block_bio_queue block_rq_complete block_bio_complete; do
    [ -d "$inst/events/block/$e" ] || continue
    echo "dev == $kdev" > "$inst/events/block/$e/filter"
    echo 1 > "$inst/events/block/$e/enable"
done
/usr/bin/time -f '%U %S' -o "$work/drain.cpu" cat "$inst/trace_pipe" > "$work/trace.txt" &
drain=$!
start_writer "$work/writer-traced.log"; sleep "$writer_secs"; kill "$writer"; wait "$writer" 2>/dev/null || true; writer=
echo 0 > "$inst/events/enable"; sleep 0.2
pkill -P "$drain" cat 2>/dev/null || true; wait "$drain" 2>/dev/null || true
rmdir "$inst"
events=$(wc -l < "$work/trace.txt"); rm -f "$work/trace.txt"

python3 - "$work" "$size_gib" "$fill_gib" "$rate" <<'PY'
import json, sys
work, size, fill, rate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
gib, mib = float(1 << 30), float(1 << 20)
print(f"\n{size} GiB ext4, {fill} GiB of data, written at {rate} MiB/s (64 KiB + fdatasync) during the send")
res = {}
for name in ("untracked", "tracked"):
    r = json.load(open(f"{work}/report-{name}.json"))
    d = r["consistency"]["disks"][0]
    u, s = map(float, open(f"{work}/send-{name}.cpu").read().split())
    lat = sorted(int(x) for x in open(f"{work}/writer-{name}.log") if x.strip())
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
    frozen = d["frozen"][0]["frozen_seconds"]
    res[name] = (frozen, d["passes"], u + s)
    print(f"\n{name}: frozen {frozen:.2f} s; sender {u + s:.1f} CPU-s in {r['seconds']:.1f} s; "
          f"writer fdatasync p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms over {len(lat)} writes")
    print("  pass  frozen  read GiB  changed MiB  written MiB  seconds  how")
    for q in d["passes"]:
        how = "tracked" if q.get("tracked") else ("whole disk: " + q["whole_disk_because"] if "whole_disk_because" in q else "whole disk")
        w = q.get("written_bytes")
        print(f"  {q['pass']:>4}  {'yes' if q['frozen'] else 'no':>6}  {q['read_bytes'] / gib:8.2f}  "
              f"{q['changed_bytes'] / mib:11.1f}  {'' if w is None else f'{w / mib:11.1f}':>11}  {q['seconds']:7.2f}  {how}")
(fu, pu, cu), (ft, pt, ct) = res["untracked"], res["tracked"]
last = pt[-1]
ratio = last["read_bytes"] / max(1, last.get("written_bytes") or 1)
print(f"\nfrozen: {fu:.2f} s without the tracker, {ft:.2f} s with it ({fu / max(ft, 1e-3):.1f}x shorter)")
print(f"frozen pass read {last['read_bytes'] / mib:.1f} MiB for {(last.get('written_bytes') or 0) / mib:.1f} MiB written "
      f"since the pass before began ({ratio:.2f}x)")
print(f"bytes read, all passes: {sum(q['read_bytes'] for q in pu) / gib:.2f} GiB without, {sum(q['read_bytes'] for q in pt) / gib:.2f} GiB with")
PY
python3 - "$work" "$writer_secs" "$events" <<'PY'
import sys
work, secs, events = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
def stats(name):
    lat = sorted(int(x) for x in open(f"{work}/writer-{name}.log") if x.strip())
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
    return len(lat), p(0.5), p(0.99)
n0, a50, a99 = stats("alone")
n1, t50, t99 = stats("traced")
try:
    u, s = map(float, open(f"{work}/drain.cpu").read().split())
    drain = f"{u + s:.2f} CPU-s to drain {events} events"
except Exception:
    drain = f"{events} events"
print(f"\nthe writer alone ({secs:.0f} s each): fdatasync p50 {a50:.2f} ms, p99 {a99:.2f} ms ({n0} writes) untraced; "
      f"p50 {t50:.2f} ms, p99 {t99:.2f} ms ({n1} writes) traced; {drain}")
PY
