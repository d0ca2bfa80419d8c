#!/usr/bin/env bash
# Benchmark of ferry over a long link: the same random source sent over
# loopback, through a relay that delays every byte by 50 ms each way and
# holds at most 4 MiB in flight per connection (a TCP window over a 100 ms
# round trip), with the data streams the sender picks, and with one stream.
# Prints the rates and the ratio of ferry's throughput over the long link to
# loopback's (goal: at least 0.80; the throughput is the difference between
# a large source and a small one, without the fixed round trips of the
# set-up), the whole-transfer ratio, and what one stream alone reaches.
#
# usage: scripts/bench-wan.sh [SIZE_MIB=1024]
# FERRY_WAN_ARGS adds arguments to the send over the long link (e.g. "--streams 16").
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY_WAN_MIB=${1:-1024} cargo test --release --quiet --test it -- wan:: --ignored --nocapture \
    wan_throughput_against_loopback 2>&1 | grep -v '^$\|^\.$\|^running\|^test \|^test result'
