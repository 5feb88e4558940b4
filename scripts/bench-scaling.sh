#!/usr/bin/env bash
# `make bench-scaling`: the throughput benchmark (scripts/bench.sh) with 1, 2 and 4
# delivery-worker processes against one NATS, each run against a freshly started
# system, then a table of delivered/s per worker count.
#
#   scripts/bench-scaling.sh [tern-bench arguments...]   (default: --tasks 20000 --concurrency 64)
#   TERN_SCALING_WORKERS="1 2 4 8" scripts/bench-scaling.sh
#
# Every worker is a separate process on the same durable consumer (`delivery`), as
# replicas are in a cluster. On one small machine the workers share its cores with
# NATS, the other services and tern-bench, so the curve shows how far adding workers
# helps there; on a cluster each replica brings its own. Outputs are kept in
# .tern/bench-scaling/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/../.tern/bench-scaling"
mkdir -p "$out"

counts="${TERN_SCALING_WORKERS:-1 2 4}"
args=("$@")
if ((${#args[@]} == 0)); then args=(--tasks 20000 --concurrency 64); fi

summary=()
for n in $counts; do
    echo
    echo "=== $n delivery worker(s): tern-bench ${args[*]}"
    log="$out/workers-$n.txt"
    rc=0
    TERN_WORKERS="$n" "$here/bench.sh" "${args[@]}" | tee "$log" || rc=$?
    # Later runs reuse the binaries built by the first.
    export TERN_SKIP_BUILD=1
    delivered="$(awk -F': *' '/^delivered\/s:/ { split($2, v, " "); print v[1] }' "$log")"
    accepted="$(awk -F': *' '/^accepted\/s:/ { split($2, v, " "); print v[1] }' "$log")"
    lost="$(awk -F': *' '/^lost:/ { print $2 }' "$log")"
    summary+=("$(printf '%-8s %-14s %-14s %-6s %s' "$n" "${delivered:-?}" "${accepted:-?}" "${lost:-?}" "$([[ $rc == 0 ]] && echo ok || echo "failed ($rc)")")")
done

echo
echo "=== scaling: delivered/s by delivery-worker processes (${args[*]})"
printf '%-8s %-14s %-14s %-6s %s\n' workers delivered/s accepted/s lost run
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
