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
# FERRY_SEND_ARGS adds arguments to every `ferry send` (e.g. "--zstd-level 0");
# FERRY_SEND_WRAP puts a command before `ferry send` (e.g. "strace -c -f -o
# /tmp/send.strace").
#
# By default the appliance only replicates (--no-build): it writes the tree
# into a directory beneath its state directory, on the bench's file system.
# BENCH_TARGET=laid-out measures the real path instead: the appliance is
# given a target file (a sparse image of 4 GiB on the bench's file system,
# made again for each initial copy) as disk 0, lays it out from the
# sender's layout (partition table, mkfs.ext4 with the source's UUID, loop
# device, mount: all inside ferry's initial copy) and writes the tree into
# it; the sender passes --no-wait, so the round stays open and Processing
# (repair, verify, boot test) is not part of the figures. rsync still writes
# into a directory of the bench's file system: ferry writes through one
# more file system and loop device than rsync does.
# Besides wall times, the CPU seconds (user + system) of both sides of each
# tool are printed: ferry send and ferry serve (its process), the rsync
# client and the rsync daemon (the children it forked for the connection).
#
# usage: scripts/bench-files.sh [WORK_DIR=/dev/shm/ferry-bench-files] [ROUNDS=3]
# needs root (loop device, mount), rsync, zstd, e2fsprogs.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/dev/shm/ferry-bench-files}
rounds=${2:-3}
# shellcheck disable=SC2206
send_extra=(${FERRY_SEND_ARGS:-})
# shellcheck disable=SC2206
send_wrap=(${FERRY_SEND_WRAP:-})
port=${BENCH_PORT:-19873}
data_port=${BENCH_DATA_PORT:-19704}
target_mode=${BENCH_TARGET:-tree}
case "$target_mode" in
    tree | laid-out) ;;
    *) echo "BENCH_TARGET is tree (the default) or laid-out, not $target_mode"; exit 1 ;;
esac
for t in rsync zstd mkfs.ext4 losetup sfdisk /usr/bin/time; do command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y rsync zstd e2fsprogs mount)"; exit 1; }; done
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
    umount "$work/check" 2>/dev/null || true
    release_target
    umount "$mnt" 2>/dev/null || true
    rm -f "$img"
}
# The loop devices left on the laid-out target (the appliance detaches its
# own when it lets the target go; this is for an interrupted bench).
release_target() {
    [ -f "${target:-}" ] || return 0
    local dev
    for dev in $(losetup -j "$target" -O NAME -n 2>/dev/null); do
        umount "$dev" 2>/dev/null || true
        losetup -d "$dev" 2>/dev/null || true
    done
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

# rsync daemon on loopback, writing as root with numeric ids, chrooted into
# its module: without the chroot it sanitizes symlink targets (an absolute
# target loses its leading /), and its copy would differ from the source.
dst_rsync=$mnt/rsync-dst
mkdir -p "$dst_rsync"
cat > "$work/rsyncd.conf" <<EOF
pid file = $work/rsyncd.pid
use chroot = yes
munge symlinks = no
numeric ids = yes
[bench]
path = $dst_rsync
read only = no
uid = root
gid = root
EOF
rsync --daemon --no-detach --address=127.0.0.1 --port="$port" --config="$work/rsyncd.conf" &
rsyncd_pid=$!
pids+=("$rsyncd_pid")

printf '[[disk]]\ntable = "mbr"\n[[disk.partition]]\nsize = "rest"\ntype = "linux"\nfs = "ext4"\nmount = "/"\n' > "$work/layout.toml"
state=$mnt/ferry-state
target=$mnt/ferry-target.img
serve_pid=
serve_args=(--no-build)
send_mode=()
if [ "$target_mode" = laid-out ]; then
    printf 'token = "bench-files-token-0123456789abcdef"\n[[disk]]\nindex = 0\ntarget = "%s"\n' "$target" > "$work/ferry.toml"
    serve_args=(--config "$work/ferry.toml")
    send_mode=(--no-wait)
fi
# A fresh appliance with its state (and so its tree) on the same file
# system; for a laid-out target, a new empty target file.
start_ferry() {
    [ -n "$serve_pid" ] && { kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; }
    rm -rf "$state" "$work/serve.out"
    if [ "$target_mode" = laid-out ]; then
        release_target
        rm -f "$target"
        truncate -s 4G "$target"
    fi
    "$ferry" serve --data-listen "127.0.0.1:$data_port" --control-listen 127.0.0.1:0 \
        --state-dir "$state" --incremental "${serve_args[@]}" > "$work/serve.out" 2> "$work/serve.log" &
    serve_pid=$!
    pids+=("$serve_pid")
    for _ in $(seq 100); do grep -q '^control-listen' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
    if [ "$target_mode" = laid-out ]; then
        token=bench-files-token-0123456789abcdef
    else
        token=$(cat "$state/token")
    fi
    fp=$(cat "$state/tls/fingerprint")
}

# The source read once, so that neither run pays for a cold cache alone.
tar -cf - -C "$src" . | cat > /dev/null

now() { date +%s.%N; }
# CPU seconds a process used, its reaped children's included (fields 14 to
# 17 of /proc/PID/stat, in clock ticks).
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{sub(/^.*\) /, ""); printf "%.2f", ($12 + $13 + $14 + $15) / t}' "/proc/$1/stat"; }

# Each run starts with the previous one's writes on disk and a moment of
# quiet, so that neither pays for the other's writeback.
settle() { sync; sleep 2; }
run_rsync() {
    settle
    local t0 c0; t0=$(now); c0=$(cpu_of "$rsyncd_pid")
    /usr/bin/time -f '%U %S' -o "$work/client.cpu" rsync -aHAX --numeric-ids "$src/" "rsync://127.0.0.1:$port/bench/"
    sync
    cpu_line rsync "${1:-extra}" "$(awk '{printf "%.2f", $1 + $2}' "$work/client.cpu")" "$(echo "$(cpu_of "$rsyncd_pid") - $c0" | bc)"
    echo "$(now) - $t0" | bc
}
# "TOOL RUN sender-seconds receiver-seconds", to the log of CPU seconds.
cpu_line() { echo "$1 $2 $3 $4" >> "$work/cpu.log"; }
run_ferry() {
    settle
    local t0 c0; t0=$(now); c0=$(cpu_of "$serve_pid")
    /usr/bin/time -f '%U %S' -o "$work/client.cpu" "${send_wrap[@]}" "$ferry" send --mode file --root "$src" --layout "$work/layout.toml" \
        --to "127.0.0.1:$data_port" --token "$token" --fingerprint "$fp" "${send_mode[@]}" "${send_extra[@]}" 2> "$work/send.log"
    sync
    cpu_line ferry "${1:-extra}" "$(awk '{printf "%.2f", $1 + $2}' "$work/client.cpu")" "$(echo "$(cpu_of "$serve_pid") - $c0" | bc)"
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
rm -f "$work/cpu.log"
for round in $(seq "$rounds"); do
    echo "round $round of $rounds..."
    if [ $((round % 2)) = 1 ]; then
        clean; r1=$(run_rsync initial); r2=$(run_rsync rerun)
        clean; f1=$(run_ferry initial); f2=$(run_ferry rerun)
        last=ferry
    else
        clean; f1=$(run_ferry initial); f2=$(run_ferry rerun)
        clean; r1=$(run_rsync initial); r2=$(run_rsync rerun)
        last=rsync
    fi
    echo "  initial: rsync $r1 s, ferry $f1 s; rerun: rsync $r2 s, ferry $f2 s"
    R1+=("$r1"); F1+=("$f1"); R2+=("$r2"); F2+=("$f2")
done
r1=$(median "${R1[@]}"); f1=$(median "${F1[@]}"); r2=$(median "${R2[@]}"); f2=$(median "${F2[@]}")

# Both copies, for the comparison: the last round left one of them.
if [ "$last" = rsync ]; then run_ferry > /dev/null; else run_rsync > /dev/null; fi
compare=(rsync -aHAXn --checksum --itemize-changes --numeric-ids --delete)
if [ "$target_mode" = laid-out ]; then
    # The target's file system, mounted read-only once the appliance has
    # let it go (its lost+found is mkfs's, not the source's).
    for _ in $(seq 600); do [ -z "$(losetup -j "$target")" ] && break; sleep 0.1; done
    [ -z "$(losetup -j "$target")" ] || { echo "the appliance did not let the target go"; exit 1; }
    start=$(sfdisk -J "$target" | grep -o '"start": *[0-9]*' | head -1 | grep -o '[0-9]*$')
    dev=$(losetup -f --show -r -o $((start * 512)) "$target")
    mkdir -p "$work/check"
    mount -o ro "$dev" "$work/check"
    diff_ferry=$("${compare[@]}" --exclude=/lost+found "$src/" "$work/check/" | wc -l)
    umount "$work/check"
    losetup -d "$dev"
else
    diff_ferry=$("${compare[@]}" "$src/" "$state/trees/tree-0/" | wc -l)
fi
diff_rsync=$("${compare[@]}" "$src/" "$dst_rsync/" | wc -l)
printf '\nmedians of %s rounds (ferry onto %s)\n%-18s %10s %10s %8s %6s\n' "$rounds" "$([ "$target_mode" = laid-out ] && echo "a laid-out target file" || echo "a directory, --no-build")" "" "rsync s" "ferry s" "ratio" "goal"
printf '%-18s %10.2f %10.2f %8.2f %6s\n' "initial copy" "$r1" "$f1" "$(echo "$f1 / $r1" | bc -l)" "0.70"
printf '%-18s %10.2f %10.2f %8.2f %6s\n' "no-change rerun" "$r2" "$f2" "$(echo "$f2 / $r2" | bc -l)" "1.00"
printf '\nCPU seconds (user + system), medians: sender / receiver\n'
for run in initial rerun; do
    line="  $run:"
    for tool in rsync ferry; do
        s=$(median $(awk -v t=$tool -v r=$run '$1 == t && $2 == r {print $3}' "$work/cpu.log"))
        d=$(median $(awk -v t=$tool -v r=$run '$1 == t && $2 == r {print $4}' "$work/cpu.log"))
        line+=" $tool $s / $d;"
    done
    echo "${line%;}"
done
echo "differences from the source (rsync -n --checksum --delete): ferry $diff_ferry, rsync $diff_rsync"
if [ "$diff_rsync" != 0 ]; then
    echo "the first of rsync's own:"
    "${compare[@]}" "$src/" "$dst_rsync/" | head -5
fi
