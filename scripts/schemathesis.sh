#!/usr/bin/env bash
# Fuzz Tern's public and admin APIs and the callback resolver with schemathesis, from
# their own OpenAPI documents, against a running Tern (run by `make test`).
#
# Installs the pinned schemathesis into .tools/schemathesis-<version> (a venv) if it
# is missing, builds the binaries (dev profile unless TERN_PROFILE says otherwise),
# starts nats-server, the four services and a sink receiver (`ternctl listen`) on
# ports apart from `make run`'s (store and logs in .tern/schemathesis/), then runs
# `st run` against GET /openapi.json of the ingress (API key), of the admin listener
# (admin token) and of the callback resolver (no credentials: the callback id is
# one, and a generated id is unknown, so 404). Every operation is exercised with
# generated valid and invalid input; the checks are: no 5xx, every status
# documented, every response body and Content-Type as documented.
#
# Tern calls the URLs it is given, so scripts/schemathesis/tern_hooks.py points
# every generated http(s) URL at the sink before the request is sent: the whole
# system runs (tasks are scheduled and delivered, proxied calls made) and nothing
# leaves the machine.
#
# Knobs: TERN_FUZZ_EXAMPLES (examples per operation and phase, 25),
# TERN_FUZZ_MAX_TIME (seconds for all three: 7/12 to the public API, 1/4 to the admin
# API, 1/6 to the resolver; 120; fuzzing repeats until its share is spent),
# TERN_FUZZ_SEED, TERN_TOOLS_DIR (.tools),
# TERN_FUZZ_PORT_BASE (first of the ports used, 18080), and those of scripts/lib.sh.
# Extra arguments go to every `st run`.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${TERN_TOOLS_DIR:-$root/.tools}"
venv="$tools/schemathesis-$SCHEMATHESIS_VERSION"
st="$venv/bin/st"

say() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

install_schemathesis() {
    [[ -x "$st" && -f "$venv/.installed" ]] && return 0
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to install schemathesis"
    mkdir -p "$tools"
    exec 9>"$tools/.schemathesis.lock"
    flock 9
    # Another run may have finished the install while we waited.
    if [[ ! -f "$venv/.installed" ]]; then
        say "installing schemathesis $SCHEMATHESIS_VERSION into ${venv#"$root"/}"
        # A venv's scripts name its folder, so it is built in place; the marker says
        # it is complete.
        rm -rf "$venv"
        python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore "$venv/bin/python" -m pip install --quiet \
            --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2 ||
            { rm -rf "$venv"; die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"; }
        touch "$venv/.installed"
    fi
    exec 9>&-
}

install_schemathesis

# Ports apart from `make run`'s, so both can run at once.
base="${TERN_FUZZ_PORT_BASE:-18080}"
export TERN_NATS__URL="nats://127.0.0.1:$((base + 142))"
export TERN_NATS_HTTP_PORT=$((base + 143))
export TERN_INGRESS__LISTEN="127.0.0.1:$base"
export TERN_INGRESS__PUBLIC_URL="http://127.0.0.1:$base"
export TERN_INGRESS__ADMIN_LISTEN="127.0.0.1:$((base + 1))"
export TERN_RESOLVER__LISTEN="127.0.0.1:$((base + 2))"
export TERN_RESOLVER__PUBLIC_URL="http://127.0.0.1:$((base + 2))"
export TERN_INGRESS__OPS_LISTEN="127.0.0.1:$((base + 10))"
export TERN_SCHEDULER__OPS_LISTEN="127.0.0.1:$((base + 11))"
export TERN_WORKER__OPS_LISTEN="127.0.0.1:$((base + 12))"
export TERN_RESOLVER__OPS_LISTEN="127.0.0.1:$((base + 13))"
export TERN_RECEIVER_PORT=$((base + 20))
# The fuzzer is one client sending as fast as it can: no per-key rate limit, and a
# per-address callback limit it never reaches (it would hide every other answer
# behind 429s). A synchronous proxied call answers within seconds, not the default
# two minutes.
export TERN_INGRESS__RATE_LIMITS__BUSINESS=0
export TERN_RESOLVER__RATE_LIMIT=1000000
export TERN_PROXY__SYNC_DEADLINE=10s
export TERN_LOG__FORMAT=pretty
export TERN_PROFILE="${TERN_PROFILE:-dev}"

# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
tern_install_traps
tern_check_ports --receiver
"$TERN_ROOT/scripts/nats-server.sh" >/dev/null
tern_build
tern_start_system --store .tern/schemathesis/nats --logs .tern/schemathesis/logs --receiver --fresh

export TERN_FUZZ_SINK="http://127.0.0.1:$TERN_RECEIVER_PORT/fuzz"
export SCHEMATHESIS_HOOKS=tern_hooks
export PYTHONPATH="$TERN_ROOT/scripts/schemathesis${PYTHONPATH:+:$PYTHONPATH}"

examples="${TERN_FUZZ_EXAMPLES:-25}"
max_time="${TERN_FUZZ_MAX_TIME:-120}"
seed=()
if [[ -n "${TERN_FUZZ_SEED:-}" ]]; then seed=(--seed "$TERN_FUZZ_SEED"); fi

# st_run NAME URL TOKEN SECONDS [ARGS...]; an empty TOKEN sends no Authorization.
st_run() {
    local name="$1" url="$2" token="$3" seconds="$4"
    shift 4
    local auth=()
    if [[ -n "$token" ]]; then auth=(--header "Authorization: Bearer $token"); fi
    tern_say "schemathesis: $name ($url/openapi.json), at most ${seconds}s"
    # One worker: CPython 3.11's parser is not thread-safe in what hypothesis asks of
    # it ("AST constructor recursion depth mismatch"), and Tern shares the 2 cores.
    # st keeps its crash cache in its working directory: .tern/schemathesis/.
    (cd "$TERN_ROOT/.tern/schemathesis" && "$st" --no-color run "$url/openapi.json" \
        "${auth[@]+"${auth[@]}"}" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --phases examples,coverage,fuzzing \
        --max-examples "$examples" \
        --max-time "$seconds" \
        --workers 1 \
        --request-timeout 20 \
        --generation-database none \
        --suppress-health-check all \
        --warnings off \
        "${seed[@]+"${seed[@]}"}" \
        "$@")
}

status=0
st_run "public API" "$(tern_ingress_url)" "$TERN_DEV_API_KEY" $((max_time * 7 / 12)) "$@" || status=1
st_run "admin API" "$(tern_admin_url)" "$(tern_cfg_required ingress admin_token)" $((max_time / 4)) "$@" || status=1
st_run "callback resolver" "$(tern_resolver_url)" "" $((max_time / 6)) "$@" || status=1
tern_check_children || status=1
if ((status != 0)); then
    tern_warn "schemathesis found failures; service logs: .tern/schemathesis/logs/"
fi
exit "$status"
