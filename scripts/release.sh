#!/usr/bin/env bash
# Builds the release of ferry that goes to source servers:
#   dist/ferry-<version>-x86_64-linux.tar.gz   the binary, its licences, a README
#   dist/SHA256SUMS                             naming the tarball
#   dist/ferry-<version>-x86_64-linux/          the same files, unpacked
#
# The servers people migrate are old (CentOS 7: glibc 2.17, Linux 3.10), so
# the binary is linked against glibc 2.17's symbols: zig's C toolchain
# carries the headers and stub libraries of every glibc release, and
# cargo-zigbuild makes it cargo's linker and C compiler (the C and assembly
# of zstd, ring and blake3 are built by it too). Both come from the Python
# package registry, pinned below, into a virtual environment under
# FERRY_TOOLS (default ~/.cache/ferry-release). The build is checked before
# it is packed: no glibc symbol newer than 2.17, no dynamic library but
# glibc's own.
#
# The appliance runs the same binary (scripts/bake-appliance.sh takes it
# from dist/), so one build is tested on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

ZIG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.1
TRIPLE=x86_64-unknown-linux-gnu
GLIBC=2.17
PROFILE=dist

die() { echo "release.sh: $*" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"
name="ferry-$version-x86_64-linux"

# -- the toolchain: cargo-zigbuild and zig, where they are not on PATH
if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1 \
    || ! { command -v zig >/dev/null 2>&1 || python3 -c 'import ziglang' 2>/dev/null; }; then
    tools=${FERRY_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ferry-release}
    venv="$tools/venv-zig$ZIG_VERSION-zigbuild$ZIGBUILD_VERSION"
    if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
        echo "release.sh: installing ziglang $ZIG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION into $venv" >&2
        rm -rf "$venv.tmp"
        python3 -m venv "$venv.tmp" || die "python3 -m venv failed (install python3-venv)"
        "$venv.tmp/bin/pip" install -q "ziglang==$ZIG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" \
            || die "pip could not install ziglang and cargo-zigbuild"
        rm -rf "$venv" && mv "$venv.tmp" "$venv"
    fi
    export PATH="$venv/bin:$PATH"
fi

# -- the build, in cargo's own environment only: run from a test (which
# cargo starts with CARGO_MANIFEST_DIR and the like set), the variables that
# build scripts watch would differ from a shell's, and the whole release
# would be built again for nothing.
for v in $(compgen -e); do
    case $v in
        CARGO_HOME | CARGO_TARGET_DIR | CARGO_NET_* | CARGO_HTTP_* | CARGO_REGISTRIES_* | CARGO_TERM_*) ;;
        CARGO | CARGO_* | OUT_DIR | RUSTC_WRAPPER | RUSTFLAGS) unset "$v" ;;
    esac
done
cargo zigbuild --locked --profile "$PROFILE" --target "$TRIPLE.$GLIBC" >&2
bin="${CARGO_TARGET_DIR:-$repo/target}/$TRIPLE/$PROFILE/ferry"
[ -x "$bin" ] || die "the build left no binary at $bin"

# -- the checks: glibc symbols and dynamic libraries
newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
[ -n "$newest" ] || die "objdump found no glibc symbol versions in $bin"
if [ "$(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -n1)" != "$GLIBC" ]; then
    die "$bin needs GLIBC_$newest, newer than $GLIBC: it would not start on the oldest supported servers"
fi
libs=$(objdump -p "$bin" | awk '$1 == "NEEDED" { print $2 }' | sort | tr '\n' ' ')
for lib in $libs; do
    case $lib in
        libc.so.6|libm.so.6|libpthread.so.0|libdl.so.2|librt.so.1|ld-linux-x86-64.so.2) ;;
        *) die "$bin needs $lib, which old servers may not have" ;;
    esac
done

# -- the tree: binary, licences, README; one release.sh at a time, and
# nothing rewritten when the release is up to date (a test may be running
# the binary of dist/)
out="$repo/dist"
mkdir -p "$out"
exec 8>"$out/.release.lock"
flock 8
tarball="$out/$name.tar.gz"
if cmp -s "$bin" "$out/$name/ferry" && [ -s "$out/SHA256SUMS" ] \
    && [ "$tarball" -nt "$0" ] && [ "$tarball" -nt "$repo/scripts/licences.py" ] \
    && (cd "$out" && sha256sum --quiet -c SHA256SUMS 2>/dev/null); then
    echo "release.sh: $tarball is up to date" >&2
    echo "$tarball"
    exit 0
fi
stage=$(mktemp -d "$out/.stage-XXXXXX")/$name
mkdir -p "$stage"
cp "$bin" "$stage/ferry"
chmod 0755 "$stage/ferry"

# The licence texts of every crate linked into the binary: the normal
# dependencies of ferry for the target, as cargo resolves them.
cargo metadata --locked --format-version 1 --filter-platform "$TRIPLE" 2>/dev/null \
    | python3 "$repo/scripts/licences.py" >"$stage/LICENSES.txt"

size_mb=$(( ($(stat -c %s "$stage/ferry") + 524287) / 1048576 ))
cat >"$stage/README.txt" <<EOF
ferry $version: the sender for the source server
==================================================

This is the program that runs on the server you migrate. It reads the
server's disks (block mode) or files (file mode) and streams them to the
ferry appliance on the intermediate instance (ports 8080 and 8703).

It runs on x86_64 Linux 3.10 or newer with glibc 2.17 or newer: CentOS/RHEL 7
and later, SLES 12 and later, Ubuntu 16.04 and later, Debian 9 and later.
It needs nothing else installed. The binary is ${size_mb} MB.

1. Check the download against the SHA-256 the control plane gave you (also
   in the appliance's GET /v1/identity as sender.sha256):
       sha256sum $name.tar.gz
2. Unpack and see whether the server is ready (as root):
       tar -xzf $name.tar.gz && cd $name
       ./ferry check
3. Send (as root), with the appliance's address, the job token and the TLS
   fingerprint the control plane gave you (the token from the environment
   keeps it out of the process list):
       export FERRY_TOKEN=JOB_TOKEN
       ./ferry send --to APPLIANCE:8703 --fingerprint FINGERPRINT --disk /dev/sda
   or, file by file:
       ./ferry send --mode file --to APPLIANCE:8703 --fingerprint FINGERPRINT

./ferry send --help and ./ferry check --help explain every option.
LICENSES.txt holds the licences of the code this binary carries; it links
the server's own glibc at run time.
EOF

# -- the tarball: reproducible (sorted names, fixed owner and time, no gzip
# timestamp), and its checksum; then the unpacked tree takes its place
mtime=$(git log -1 --format=%ct 2>/dev/null || echo 0)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -C "$(dirname "$stage")" -cf - "$name" | gzip -n -9 >"$tarball.tmp"
rm -rf "$out/$name"
mv "$stage" "$out/$name"
rmdir "$(dirname "$stage")"
mv "$tarball.tmp" "$tarball"
(cd "$out" && sha256sum "$name.tar.gz" >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
echo "release.sh: $tarball ($(stat -c %s "$tarball") bytes; binary ${size_mb} MB, needs GLIBC_$newest at most)" >&2
echo "$tarball"
