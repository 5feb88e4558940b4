#!/usr/bin/env bash
# `make bench`: start Tern in the background (fresh JetStream store in .tern/bench-nats,
# logs in .tern/bench-logs), run target/release/tern-bench against it, stop everything.
#
#   scripts/bench.sh [tern-bench arguments...]
#   make bench BENCH_ARGS='--tasks 100000 --concurrency 256 --payload-bytes 1024'
#
# --url and --api-key are filled in unless given. tern-bench runs its own receiver
# (--receiver-port), so no `ternctl listen` is started. The services log at
# RUST_LOG=warn unless RUST_LOG is set, so logging does not skew the numbers.
# After the run it prints the CPU every process spent, per task (tern_report_cpu).
# TERN_BENCH_MEMORY=1 prints every process's resident memory before and after;
# TERN_BENCH_THEN='<tern-bench arguments>' runs a second tern-bench against the same
# system afterwards (e.g. immediate tasks while a million delays are pending).
# The exit status is tern-bench's.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export RUST_LOG="${RUST_LOG:-warn}"
# The bench measures the system, not the per-key request limit of the dev tenant.
export TERN_INGRESS__RATE_LIMITS__BUSINESS="${TERN_INGRESS__RATE_LIMITS__BUSINESS:-0}"

tern_install_traps
tern_check_ports
"$TERN_ROOT/scripts/nats-server.sh" >/dev/null
tern_build
[[ -x "$TERN_BIN_DIR/tern-bench" ]] || tern_die "$TERN_BIN_DIR/tern-bench was not built"

tern_start_system --store .tern/bench-nats --logs .tern/bench-logs --fresh

args=()
have_url=0
have_key=0
for a in "$@"; do
    case "$a" in
        --url | --url=*) have_url=1 ;;
        --api-key | --api-key=*) have_key=1 ;;
    esac
done
if ((!have_url)); then args+=(--url "$(tern_ingress_url)"); fi
if ((!have_key)); then args+=(--api-key "$TERN_DEV_API_KEY"); fi

# The --tasks a tern-bench command line asks for (its default otherwise).
bench_tasks() {
    local n=20000
    while (($#)); do
        case "$1" in
            --tasks) n=${2:-$n}; shift ;;
            --tasks=*) n=${1#--tasks=} ;;
        esac
        shift
    done
    echo "$n"
}
memory() { if [[ "${TERN_BENCH_MEMORY:-0}" == 1 ]]; then tern_report_rss "$1"; fi; }
memory "idle, before the run"
tern_say "tern-bench ${args[*]} $*"
rc=0
tern_cpu_snapshot
"$TERN_BIN_DIR/tern-bench" "${args[@]}" "$@" || rc=$?
tern_report_cpu "$(bench_tasks "$@")"
memory "after the run"
if [[ -n "${TERN_BENCH_THEN:-}" ]] && ((rc == 0)); then
    read -r -a then_args <<<"$TERN_BENCH_THEN"
    tern_say "then: tern-bench ${args[*]} ${then_args[*]}"
    "$TERN_BIN_DIR/tern-bench" "${args[@]}" "${then_args[@]}" || rc=$?
    memory "after the second run"
fi
if ! tern_check_children; then
    tern_warn "a Tern process died during the benchmark; logs in .tern/bench-logs/"
    ((rc != 0)) || rc=1
fi
exit "$rc"
