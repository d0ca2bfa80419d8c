#!/usr/bin/env bash
# Benchmark of file mode over loopback against rsync, in one run, with the
# source and both targets on the same file system (ext4 on a loop device
# over a file in /dev/shm, so the machine's own disk is not measured):
#   initial copy of the Debian tree of scripts/rootfs.sh (plus a sparse
#   file of 1 GiB):
#     rsync : rsync -aHAX --numeric-ids SRC/ rsync://127.0.0.1/... (an rsync
#             daemon on loopback), then sync
#     ferry : ferry send --mode file --root SRC → ferry serve (TLS, hashes,
#             ledger, syncfs), then sync
#   no-change rerun: the same two commands again.
# Each of ROUNDS rounds (default 3) runs each tool's copy and rerun from an
# empty target (the other's removed and trimmed away, the appliance fresh),
# alternating which tool goes first; the medians are printed
# with ferry's ratios to rsync (goal: <= 0.7 on the initial copy, <= 1.0 on
# the rerun), and rsync checks that both copies equal the source.
# FERRY_SEND_ARGS adds arguments to every `ferry send` (e.g. "--zstd-level 0").
#
# usage: scripts/bench-files.sh [WORK_DIR=/dev/shm/ferry-bench-files] [ROUNDS=3]
# needs root (loop device, mount), rsync, zstd, e2fsprogs.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/dev/shm/ferry-bench-files}
rounds=${2:-3}
# shellcheck disable=SC2206
send_extra=(${FERRY_SEND_ARGS:-})
port=${BENCH_PORT:-19873}
data_port=${BENCH_DATA_PORT:-19704}
for t in rsync zstd mkfs.ext4 losetup; do command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y rsync zstd e2fsprogs mount)"; exit 1; }; done
if [ -z "${FERRY_BIN:-}" ]; then cargo build --release --quiet; fi
ferry=${FERRY_BIN:-$PWD/target/release/ferry}
tarball=$(FERRY_CACHE=${FERRY_CACHE:-/var/cache/ferry-test} scripts/rootfs.sh bios)

mkdir -p "$work"
mnt=$work/mnt
img=$work/fs.img
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    umount "$mnt" 2>/dev/null || true
    rm -f "$img"
}
trap cleanup EXIT
rm -f "$img"
truncate -s 6G "$img"
mkfs.ext4 -q -F "$img"
mkdir -p "$mnt"
mount -o loop "$img" "$mnt"

src=$mnt/src
mkdir -p "$src"
tar --numeric-owner --xattrs --xattrs-include='*' -I zstd -xpf "$tarball" -C "$src"
truncate -s 1G "$src/srv-sparse.img"
printf 'middle' | dd of="$src/srv-sparse.img" bs=1 seek=536870912 conv=notrunc status=none
files=$(find "$src" | wc -l)
bytes=$(du -sb "$src" | cut -f1)
echo "source: $files entries, $((bytes >> 20)) MiB apparent ($(du -sm "$src" | cut -f1) MiB allocated)"

# rsync daemon on loopback, writing as root with numeric ids.
dst_rsync=$mnt/rsync-dst
mkdir -p "$dst_rsync"
cat > "$work/rsyncd.conf" <<EOF
pid file = $work/rsyncd.pid
use chroot = no
munge symlinks = no
numeric ids = yes
[bench]
path = $dst_rsync
read only = no
uid = root
gid = root
EOF
rsync --daemon --no-detach --address=127.0.0.1 --port="$port" --config="$work/rsyncd.conf" &
pids+=($!)

printf '[[disk]]\ntable = "mbr"\n[[disk.partition]]\nsize = "rest"\ntype = "linux"\nfs = "ext4"\nmount = "/"\n' > "$work/layout.toml"
state=$mnt/ferry-state
serve_pid=
# A fresh appliance with its state (and so its tree) on the same file system.
start_ferry() {
    [ -n "$serve_pid" ] && { kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; }
    rm -rf "$state" "$work/serve.out"
    "$ferry" serve --data-listen "127.0.0.1:$data_port" --control-listen 127.0.0.1:0 \
        --state-dir "$state" --incremental --no-build > "$work/serve.out" 2> "$work/serve.log" &
    serve_pid=$!
    pids+=("$serve_pid")
    for _ in $(seq 100); do grep -q '^control-listen' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
    token=$(cat "$state/token")
    fp=$(cat "$state/tls/fingerprint")
}

# The source read once, so that neither run pays for a cold cache alone.
tar -cf - -C "$src" . | cat > /dev/null

now() { date +%s.%N; }
# Each run starts with the previous one's writes on disk and a moment of
# quiet, so that neither pays for the other's writeback.
settle() { sync; sleep 2; }
run_rsync() {
    settle
    local t0; t0=$(now)
    rsync -aHAX --numeric-ids "$src/" "rsync://127.0.0.1:$port/bench/"
    sync
    echo "$(now) - $t0" | bc
}
run_ferry() {
    settle
    local t0; t0=$(now)
    "$ferry" send --mode file --root "$src" --layout "$work/layout.toml" \
        --to "127.0.0.1:$data_port" --token "$token" --fingerprint "$fp" "${send_extra[@]}" 2> "$work/send.log"
    sync
    tail -1 "$work/send.log" | cut -c1-160 >&2
    echo "$(now) - $t0" | bc
}
command -v bc >/dev/null || { echo "missing bc (apt-get install -y bc)"; exit 1; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Each tool's copy and rerun run on their own: the other's target is
# removed first and its blocks given back (fstrim: the loop device punches
# them out of its backing file), so neither pays for the other's data.
clean() {
    rm -rf "$dst_rsync"; mkdir -p "$dst_rsync"
    start_ferry
    fstrim "$mnt" 2>/dev/null || true
}
R1=(); F1=(); R2=(); F2=()
for round in $(seq "$rounds"); do
    echo "round $round of $rounds..."
    if [ $((round % 2)) = 1 ]; then
        clean; r1=$(run_rsync); r2=$(run_rsync)
        clean; f1=$(run_ferry); f2=$(run_ferry)
    else
        clean; f1=$(run_ferry); f2=$(run_ferry)
        clean; r1=$(run_rsync); r2=$(run_rsync)
    fi
    echo "  initial: rsync $r1 s, ferry $f1 s; rerun: rsync $r2 s, ferry $f2 s"
    R1+=("$r1"); F1+=("$f1"); R2+=("$r2"); F2+=("$f2")
done
r1=$(median "${R1[@]}"); f1=$(median "${F1[@]}"); r2=$(median "${R2[@]}"); f2=$(median "${F2[@]}")

# Both copies, for the comparison: the last round left one of them.
if [ ! -d "$state/trees/tree-0" ]; then run_ferry > /dev/null; fi
if [ -z "$(ls -A "$dst_rsync")" ]; then run_rsync > /dev/null; fi
tree=$state/trees/tree-0
diff_ferry=$(rsync -aHAXn --checksum --itemize-changes --numeric-ids --delete "$src/" "$tree/" | wc -l)
diff_rsync=$(rsync -aHAXn --checksum --itemize-changes --numeric-ids --delete "$src/" "$dst_rsync/" | wc -l)
printf '\nmedians of %s rounds\n%-18s %10s %10s %8s %6s\n' "$rounds" "" "rsync s" "ferry s" "ratio" "goal"
printf '%-18s %10.2f %10.2f %8.2f %6s\n' "initial copy" "$r1" "$f1" "$(echo "$f1 / $r1" | bc -l)" "0.70"
printf '%-18s %10.2f %10.2f %8.2f %6s\n' "no-change rerun" "$r2" "$f2" "$(echo "$f2 / $r2" | bc -l)" "1.00"
echo "differences from the source (rsync -n --checksum --delete): ferry $diff_ferry, rsync $diff_rsync"
if [ "$diff_rsync" != 0 ]; then
    echo "the first of rsync's own:"
    rsync -aHAXn --checksum --itemize-changes --numeric-ids --delete "$src/" "$dst_rsync/" | head -5
fi
