#!/usr/bin/env bash
# `make bench` without BENCH_ARGS: every benchmark the issues ask for, each against a
# freshly started system (scripts/bench.sh), in this order:
#   1. throughput: 20,000 webhook tasks, 1 KiB, 64 concurrent clients
#   2. latency at 300 requests/s
#   3. delay lateness: 10,000 tasks due at the same second
#   4. delay lateness: 10,000 tasks spread evenly over a minute
#   5. memory of every process while 1,000,000 delayed tasks are pending, then 300/s
#      immediate tasks beside them
# About six minutes on a 2-core machine. Set TERN_BENCH_SKIP_MILLION=1 to leave out 5.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"

scenario() {
    echo
    echo "=== $1"
    shift
    "$here/bench.sh" "$@"
    # Later scenarios reuse the binaries built by the first.
    export TERN_SKIP_BUILD=1
}

scenario "throughput (saturated)" --tasks 20000 --concurrency 64
scenario "latency at 300 requests/s" --tasks 6000 --rate 300
scenario "delay lateness: 10,000 due at the same second" \
    --tasks 10000 --delay-start-ms 8000 --delay-spread-ms 0
scenario "delay lateness: 10,000 spread over a minute" \
    --tasks 10000 --delay-start-ms 8000 --delay-spread-ms 60000
if [[ "${TERN_BENCH_SKIP_MILLION:-0}" != 1 ]]; then
    TERN_BENCH_MEMORY=1 TERN_BENCH_THEN="--tasks 3000 --rate 300" scenario \
        "memory with 1,000,000 delayed tasks pending (due in 2 h), then 300/s immediate" \
        --tasks 1000000 --delay-start-ms 7200000 --no-wait --payload-bytes 64 --concurrency 64
fi
