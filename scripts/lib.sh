# shellcheck shell=bash
# Shared by scripts/run.sh and scripts/bench.sh (source it; do not run it).
#
# Starts a local nats-server with JetStream and the four Tern services in the
# background, waits until each answers GET /readyz with 200, and stops everything it
# started when the calling script exits (Ctrl-C, SIGTERM, an error, or normal exit).
#
#   source scripts/lib.sh
#   tern_install_traps                 # stop children on exit
#   tern_build                         # cargo build --release --bins (TERN_PROFILE)
#   tern_start_system --store .tern/nats --logs .tern/logs [--receiver] [--fresh]
#   ... use the system ...
#   (exit: everything is stopped, NATS last)
#
# Knobs (environment):
#   TERN_DEV_CONFIG      config file for the services      (config/dev.toml)
#   TERN_READY_TIMEOUT   seconds to wait for readiness     (90)
#   TERN_STOP_TIMEOUT    seconds to wait after SIGTERM     (35; services drain for up to 25)
#   TERN_NATS_HTTP_PORT  nats-server monitoring port       (8222)
#   TERN_RECEIVER_PORT   port of `ternctl listen`          (9999)
#   TERN_SKIP_BUILD=1    use the binaries already built
#   TERN_WORKERS         delivery-worker processes to start (1); the extra ones
#                        serve their ops endpoints on 127.0.0.1:9180, 9181, ...
#   TERN_PROFILE         cargo profile of the binaries     (release; dev for tests)
#   CARGO_TARGET_DIR     where cargo puts target/          (./target)
# The services read `--config <file>` plus TERN_<SECTION>__<KEY> overrides from the
# environment; those overrides are honoured here too when working out ports.

TERN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$TERN_ROOT" || exit 1

TERN_DEV_CONFIG="${TERN_DEV_CONFIG:-config/dev.toml}"
TERN_READY_TIMEOUT="${TERN_READY_TIMEOUT:-90}"
TERN_STOP_TIMEOUT="${TERN_STOP_TIMEOUT:-35}"
TERN_NATS_HTTP_PORT="${TERN_NATS_HTTP_PORT:-8222}"
TERN_RECEIVER_PORT="${TERN_RECEIVER_PORT:-9999}"
TERN_WORKERS="${TERN_WORKERS:-1}"
TERN_EXTRA_WORKER_OPS_PORT=9180
TERN_DEV_API_KEY="tern_dev_local_key_not_for_production"

TERN_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TERN_TARGET_DIR" == /* ]] || TERN_TARGET_DIR="$TERN_ROOT/$TERN_TARGET_DIR"
TERN_PROFILE="${TERN_PROFILE:-release}"
# cargo's `dev` profile builds into target/debug.
if [[ "$TERN_PROFILE" == dev ]]; then
    TERN_BIN_DIR="$TERN_TARGET_DIR/debug"
else
    TERN_BIN_DIR="$TERN_TARGET_DIR/$TERN_PROFILE"
fi

# service name | binary | config section holding ops_listen
TERN_SERVICES=(
    "ingress|tern-ingress|ingress"
    "scheduler|tern-scheduler|scheduler"
    "delivery-worker|tern-delivery-worker|worker"
    "callback-resolver|tern-callback-resolver|resolver"
)

# Children we started: parallel arrays (bash 3 compatible, no associative arrays).
_tern_names=()
_tern_pids=()
_tern_logs=()
_tern_aux_pids=() # log tailers and other helpers, stopped first and silently
_tern_stopping=0
_tern_force=0
_tern_color=0
if [[ -t 2 && -z "${NO_COLOR:-}" ]]; then _tern_color=1; fi

# ---------------------------------------------------------------- messages

tern_say() {
    if ((_tern_color)); then
        printf '\033[1;36m==>\033[0m %s\n' "$*" >&2
    else
        printf '==> %s\n' "$*" >&2
    fi
}

tern_warn() {
    if ((_tern_color)); then
        printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2
    else
        printf 'warning: %s\n' "$*" >&2
    fi
}

tern_die() {
    if ((_tern_color)); then
        printf '\033[1;31merror:\033[0m %s\n' "$*" >&2
    else
        printf 'error: %s\n' "$*" >&2
    fi
    exit 1
}

# ---------------------------------------------------------------- configuration

# tern_cfg SECTION KEY: the value from TERN_<SECTION>__<KEY> if set, else from the
# config file ([SECTION] or the first [[SECTION]] table). For an array, the first
# element. Prints nothing when absent.
tern_cfg() {
    local section="$1" key="$2" env_name
    env_name="TERN_$(printf '%s__%s' "$section" "$key" | tr '[:lower:]-' '[:upper:]_')"
    if [[ -n "${!env_name:-}" ]]; then
        printf '%s\n' "${!env_name}"
        return 0
    fi
    [[ -f "$TERN_DEV_CONFIG" ]] || tern_die "config file not found: $TERN_DEV_CONFIG"
    awk -v want="$section" -v key="$key" '
        /^[[:space:]]*\[/ {
            name = $0
            gsub(/[][[:space:]]/, "", name)
            sub(/#.*/, "", name)
            if (inside) exit
            inside = (name == want)
            next
        }
        inside {
            line = $0
            if (line !~ "^[[:space:]]*" key "[[:space:]]*=") next
            sub(/^[^=]*=[[:space:]]*/, "", line)
            if (match(line, /"[^"]*"/)) {
                print substr(line, RSTART + 1, RLENGTH - 2)
            } else if (match(line, /\047[^\047]*\047/)) {
                print substr(line, RSTART + 1, RLENGTH - 2)
            } else {
                sub(/[[:space:]]*#.*/, "", line)
                sub(/[[:space:]]+$/, "", line)
                print line
            }
            exit
        }
    ' "$TERN_DEV_CONFIG"
}

# tern_cfg_required SECTION KEY
tern_cfg_required() {
    local v
    v="$(tern_cfg "$1" "$2")"
    [[ -n "$v" ]] || tern_die "[$1] $2 is missing from $TERN_DEV_CONFIG"
    printf '%s\n' "$v"
}

# tern_addr ADDR: sets TERN_HOST and TERN_PORT to where a client can connect.
# Accepts host:port, [v6]:port, scheme://[user@]host:port[,more]; 0.0.0.0 / :: become
# loopback. Runs in the current shell so that a bad address stops the script.
tern_addr() {
    local a="$1" host port
    a="${a#*://}"
    a="${a%%,*}"
    a="${a##*@}"
    a="${a%%/*}"
    port="${a##*:}"
    host="${a%:*}"
    host="${host#[}"
    host="${host%]}"
    case "$host" in
        "" | 0.0.0.0) host=127.0.0.1 ;;
        ::) host=::1 ;;
    esac
    [[ "$port" =~ ^[0-9]+$ ]] || tern_die "cannot read a port from address '$1'"
    TERN_HOST="$host"
    TERN_PORT="$port"
}

# tern_cfg_addr SECTION KEY: tern_addr of a configured address.
tern_cfg_addr() {
    local v
    v="$(tern_cfg_required "$1" "$2")"
    tern_addr "$v"
}

# tern_url_host HOST: brackets around IPv6 literals.
tern_url_host() {
    case "$1" in
        *:*) printf '[%s]' "$1" ;;
        *) printf '%s' "$1" ;;
    esac
}

# ---------------------------------------------------------------- probes

# tern_http_status URL: prints the HTTP status code, 000 when there is no answer.
tern_http_status() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null --noproxy '*' --max-time 2 -w '%{http_code}' "$1" 2>/dev/null || true
    else
        python3 - "$1" <<'PY' 2>/dev/null || printf '000'
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=2) as r:
        print(r.status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")
PY
    fi
}

# tern_tcp_open HOST PORT: true when something accepts connections there.
tern_tcp_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# ---------------------------------------------------------------- processes

_tern_index_of() {
    local i
    for i in "${!_tern_names[@]}"; do
        if [[ "${_tern_names[i]}" == "$1" ]]; then
            printf '%s\n' "$i"
            return 0
        fi
    done
    return 1
}

_tern_name_of() {
    local i
    for i in "${!_tern_pids[@]}"; do
        if [[ "${_tern_pids[i]}" == "$1" ]]; then
            printf '%s\n' "${_tern_names[i]}"
            return 0
        fi
    done
    printf 'process\n'
}

# tern_spawn NAME LOGFILE CMD...: start CMD in the background, in its own process
# group (so a terminal Ctrl-C reaches only us and we stop things in order), with
# stdout+stderr appended to LOGFILE (the previous run's log is kept as LOGFILE.prev).
tern_spawn() {
    local name="$1" log="$2"
    shift 2
    mkdir -p "$(dirname "$log")"
    if [[ -s "$log" ]]; then mv -f "$log" "$log.prev"; fi
    : >"$log"
    set -m
    "$@" </dev/null >>"$log" 2>&1 &
    local pid=$!
    set +m
    _tern_names+=("$name")
    _tern_pids+=("$pid")
    _tern_logs+=("$log")
}

# Exported TERN_* variables without "__" are ours (dev.env, knobs, TERN_NATS_SERVER),
# not service configuration: keep them out of the services' environment so a strict
# config loader never sees them.
# Sets TERN_SERVICE_ENV to an `env -u ...` command prefix.
_tern_service_env() {
    local v
    TERN_SERVICE_ENV=(env)
    for v in $(compgen -e); do
        case "$v" in
            TERN_*__*) ;;
            TERN_*) TERN_SERVICE_ENV+=(-u "$v") ;;
        esac
    done
}

_tern_report_death() {
    local i="$1" rc=0
    wait "${_tern_pids[i]}" 2>/dev/null || rc=$?
    printf '\n' >&2
    tern_warn "${_tern_names[i]} exited (status $rc); its log: ${_tern_logs[i]}"
    if [[ -s "${_tern_logs[i]}" ]]; then
        printf -- '----- last lines of %s -----\n' "${_tern_logs[i]}" >&2
        tail -n 40 "${_tern_logs[i]}" >&2 || true
        printf -- '-----\n' >&2
    fi
}

# tern_wait_ready NAME DEADLINE http URL | tcp HOST PORT
# Polls until ready; fails loudly if the process dies or the deadline ($SECONDS) passes.
tern_wait_ready() {
    local name="$1" deadline="$2" kind="$3" i pid last=""
    shift 3
    i="$(_tern_index_of "$name")" || tern_die "internal: no child named $name"
    pid="${_tern_pids[i]}"
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            _tern_report_death "$i"
            tern_die "$name died before it was ready (log: ${_tern_logs[i]})"
        fi
        case "$kind" in
            http)
                last="$(tern_http_status "$1")"
                [[ "$last" == 200 ]] && return 0
                ;;
            tcp)
                tern_tcp_open "$1" "$2" && return 0
                ;;
        esac
        if ((SECONDS >= deadline)); then
            tern_die "$name is not ready after ${TERN_READY_TIMEOUT}s (${kind} ${*}${last:+ answered $last}); log: ${_tern_logs[i]}"
        fi
        sleep 0.2
    done
}

# _tern_stop_group PID...: SIGTERM, wait up to TERN_STOP_TIMEOUT, then SIGKILL; reap.
_tern_stop_group() {
    local pid alive deadline=$((SECONDS + TERN_STOP_TIMEOUT))
    [[ $# -gt 0 ]] || return 0
    for pid in "$@"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    while :; do
        alive=0
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || break
        if ((_tern_force || SECONDS >= deadline)); then
            for pid in "$@"; do
                if kill -0 "$pid" 2>/dev/null; then
                    if ((_tern_force)); then
                        tern_warn "killing $(_tern_name_of "$pid") (pid $pid): Ctrl-C pressed again"
                    else
                        tern_warn "$(_tern_name_of "$pid") (pid $pid) did not stop within ${TERN_STOP_TIMEOUT}s; killing it"
                    fi
                    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
                fi
            done
            break
        fi
        sleep 0.1 || true
    done
    for pid in "$@"; do
        wait "$pid" 2>/dev/null || true
    done
}

# tern_stop_all: stop helpers, then the services and receiver together, then NATS
# (last, so the services can nak or finish in-flight work while shutting down).
tern_stop_all() {
    ((_tern_stopping)) && return 0
    _tern_stopping=1
    # Never abort half-way: a failing command (or a `sleep` cut short by a second
    # Ctrl-C) must not leave processes behind.
    set +e
    # A second Ctrl-C while stopping skips the grace period.
    trap '_tern_force=1' INT TERM
    local pid i
    for pid in "${_tern_aux_pids[@]+"${_tern_aux_pids[@]}"}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${_tern_aux_pids[@]+"${_tern_aux_pids[@]}"}"; do
        wait "$pid" 2>/dev/null || true
    done
    _tern_aux_pids=()
    [[ ${#_tern_pids[@]} -gt 0 ]] || return 0
    local -a first=() last=()
    for i in "${!_tern_pids[@]}"; do
        if [[ "${_tern_names[i]}" == nats ]]; then
            last+=("${_tern_pids[i]}")
        else
            first+=("${_tern_pids[i]}")
        fi
    done
    tern_say "stopping the services"
    _tern_stop_group "${first[@]+"${first[@]}"}"
    if [[ ${#last[@]} -gt 0 ]]; then
        # NATS stops in milliseconds; let it close its store cleanly even after a
        # forced stop of the services (another Ctrl-C still forces it).
        _tern_force=0
        tern_say "stopping nats-server"
        _tern_stop_group "${last[@]}"
    fi
    _tern_names=()
    _tern_pids=()
    _tern_logs=()
}

# tern_report_rss LABEL: resident memory of every process this script started.
tern_report_rss() {
    local i kib total=0
    printf 'memory (%s):' "$1"
    for i in "${!_tern_pids[@]}"; do
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/${_tern_pids[i]}/status" 2>/dev/null || echo 0)
        kib=${kib:-0}
        total=$((total + kib))
        printf ' %s %d MiB,' "${_tern_names[i]}" $((kib / 1024))
    done
    printf ' total %d MiB\n' $((total / 1024))
}

# tern_cpu_snapshot: remember every started process's CPU time (user + system, in
# clock ticks) and the machine's busy time, for tern_report_cpu.
_tern_cpu_before=()
_tern_cpu_machine_before=0
_tern_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
_tern_machine_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
tern_cpu_snapshot() {
    local i
    _tern_cpu_before=()
    for i in "${!_tern_pids[@]}"; do
        _tern_cpu_before[i]=$(_tern_cpu_ticks "${_tern_pids[i]}")
    done
    _tern_cpu_machine_before=$(_tern_machine_busy)
}

# tern_report_cpu TASKS: CPU each started process spent since tern_cpu_snapshot, in
# seconds and in microseconds per task; "rest" is the machine's other busy time (the
# benchmark client and receiver, and whatever else runs).
tern_report_cpu() {
    local tasks=$1 i ticks hz ours=0 machine
    hz=$(getconf CLK_TCK)
    printf 'cpu over %d tasks:' "$tasks"
    for i in "${!_tern_pids[@]}"; do
        ticks=$(($(_tern_cpu_ticks "${_tern_pids[i]}") - ${_tern_cpu_before[i]:-0}))
        ours=$((ours + ticks))
        awk -v n="${_tern_names[i]}" -v t="$ticks" -v hz="$hz" -v k="$tasks" \
            'BEGIN { printf " %s %.2f s (%.0f us/task),", n, t / hz, t / hz * 1e6 / (k > 0 ? k : 1) }'
    done
    machine=$(($(_tern_machine_busy) - _tern_cpu_machine_before - ours))
    awk -v t="$machine" -v hz="$hz" -v k="$tasks" \
        'BEGIN { printf " rest %.2f s (%.0f us/task)\n", t / hz, t / hz * 1e6 / (k > 0 ? k : 1) }'
}

# tern_install_traps: stop every child on exit, whatever the reason.
tern_install_traps() {
    trap 'tern_stop_all' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

# tern_check_children: fails (after reporting) if a child has died.
tern_check_children() {
    local i
    for i in "${!_tern_pids[@]}"; do
        if ! kill -0 "${_tern_pids[i]}" 2>/dev/null; then
            _tern_report_death "$i"
            return 1
        fi
    done
    return 0
}

# ---------------------------------------------------------------- build

tern_build() {
    if [[ "${TERN_SKIP_BUILD:-0}" == 1 ]]; then
        tern_say "TERN_SKIP_BUILD=1: using the binaries in ${TERN_BIN_DIR#"$TERN_ROOT"/}"
    else
        command -v cargo >/dev/null 2>&1 || tern_die "cargo is not on PATH (install Rust: https://rustup.rs)"
        if [[ "$TERN_PROFILE" == release ]]; then
            tern_say "cargo build --release --bins"
            cargo build --release --bins
        else
            tern_say "cargo build --profile $TERN_PROFILE --bins"
            cargo build --profile "$TERN_PROFILE" --bins
        fi
    fi
    local entry bin
    for entry in "${TERN_SERVICES[@]}"; do
        IFS='|' read -r _ bin _ <<<"$entry"
        [[ -x "$TERN_BIN_DIR/$bin" ]] || tern_die "$TERN_BIN_DIR/$bin was not built"
    done
}

# ---------------------------------------------------------------- the system

# tern_check_ports [--receiver]: fail fast if anything already listens on a port we
# need (typically a `make run` still running elsewhere).
tern_check_ports() {
    local busy=0 entry name section
    _tern_check_port() { # WHAT (uses TERN_HOST/TERN_PORT)
        if tern_tcp_open "$TERN_HOST" "$TERN_PORT"; then
            tern_warn "$TERN_HOST:$TERN_PORT ($1) is already in use"
            busy=1
        fi
    }
    tern_cfg_addr nats url
    _tern_check_port "nats client port"
    tern_addr "127.0.0.1:$TERN_NATS_HTTP_PORT"
    _tern_check_port "nats monitoring port"
    tern_cfg_addr ingress listen
    _tern_check_port "ingress API"
    tern_cfg_addr resolver listen
    _tern_check_port "callback-resolver API"
    for entry in "${TERN_SERVICES[@]}"; do
        IFS='|' read -r name _ section <<<"$entry"
        tern_cfg_addr "$section" ops_listen
        _tern_check_port "$name ops/health port"
    done
    local i
    for ((i = 2; i <= TERN_WORKERS; i++)); do
        tern_addr "127.0.0.1:$(_tern_extra_worker_port "$i")"
        _tern_check_port "delivery-worker-$i ops/health port"
    done
    if [[ "${1:-}" == --receiver ]]; then
        tern_addr "127.0.0.1:$TERN_RECEIVER_PORT"
        _tern_check_port "webhook receiver (ternctl listen)"
    fi
    if ((busy)); then
        tern_die "ports are taken: is another 'make run' or 'make bench' running? (see: ss -ltnp)"
    fi
}

# The ops port of delivery-worker number N (2, 3, ...; the first uses the config's).
_tern_extra_worker_port() {
    printf '%s\n' $((TERN_EXTRA_WORKER_OPS_PORT + $1 - 2))
}

# tern_start_nats STORE_DIR CONF_FILE LOG_FILE
tern_start_nats() {
    local store="$1" conf="$2" log="$3" bin host port
    bin="$("$TERN_ROOT/scripts/nats-server.sh")"
    tern_cfg_addr nats url
    host="$TERN_HOST"
    port="$TERN_PORT"
    "$TERN_ROOT/scripts/nats.conf.sh" --store-dir "$store" --host "$host" --port "$port" \
        --http-port "$TERN_NATS_HTTP_PORT" --out "$conf"
    tern_say "starting $("$bin" --version 2>&1) on $host:$port (store ${store#"$TERN_ROOT"/}, monitoring :$TERN_NATS_HTTP_PORT)"
    tern_spawn nats "$log" "$bin" -c "$conf"
    tern_wait_ready nats $((SECONDS + TERN_READY_TIMEOUT)) http \
        "http://$(tern_url_host "$host"):$TERN_NATS_HTTP_PORT/healthz"
}

# tern_start_system --store DIR --logs DIR [--receiver] [--fresh]
#   --receiver  also start `ternctl listen` on TERN_RECEIVER_PORT (with the signing
#               secret of the first tenant) if ternctl was built
#   --fresh     delete the JetStream store first
tern_start_system() {
    local store="" logs="" receiver=0 fresh=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --store) store="$2"; shift 2 ;;
            --logs) logs="$2"; shift 2 ;;
            --receiver) receiver=1; shift ;;
            --fresh) fresh=1; shift ;;
            *) tern_die "internal: tern_start_system: unknown argument $1" ;;
        esac
    done
    [[ -n "$store" && -n "$logs" ]] || tern_die "internal: tern_start_system needs --store and --logs"
    [[ "$TERN_WORKERS" =~ ^[1-9][0-9]*$ ]] || tern_die "TERN_WORKERS must be a positive number, got '$TERN_WORKERS'"

    if ((receiver)); then
        tern_check_ports --receiver
    else
        tern_check_ports
    fi

    mkdir -p "$logs"
    if ((fresh)); then rm -rf "$store"; fi
    tern_start_nats "$store" "$(dirname "$store")/$(basename "$store").conf" "$logs/nats.log"

    local config_abs entry name bin section
    config_abs="$(cd "$(dirname "$TERN_DEV_CONFIG")" && pwd)/$(basename "$TERN_DEV_CONFIG")"
    _tern_service_env
    for entry in "${TERN_SERVICES[@]}"; do
        IFS='|' read -r name bin section <<<"$entry"
        tern_say "starting $name"
        tern_spawn "$name" "$logs/$name.log" "${TERN_SERVICE_ENV[@]}" "$TERN_BIN_DIR/$bin" --config "$config_abs"
    done
    # More delivery workers: replicas on the same consumers, each with its own ops port.
    local i
    for ((i = 2; i <= TERN_WORKERS; i++)); do
        tern_say "starting delivery-worker-$i"
        tern_spawn "delivery-worker-$i" "$logs/delivery-worker-$i.log" "${TERN_SERVICE_ENV[@]}" \
            TERN_WORKER__OPS_LISTEN="127.0.0.1:$(_tern_extra_worker_port "$i")" \
            "$TERN_BIN_DIR/tern-delivery-worker" --config "$config_abs"
    done

    if ((receiver)); then
        if [[ -x "$TERN_BIN_DIR/ternctl" ]]; then
            tern_say "starting webhook receiver (ternctl listen) on 127.0.0.1:$TERN_RECEIVER_PORT"
            # The secret goes by environment, not argv, so `ps` does not show it.
            tern_spawn receiver "$logs/receiver.log" \
                env TERN_SIGNING_SECRET="$(tern_signing_secret)" \
                "$TERN_BIN_DIR/ternctl" listen --host 127.0.0.1 --port "$TERN_RECEIVER_PORT"
        else
            tern_warn "$TERN_BIN_DIR/ternctl is missing (is crates/ternctl a workspace member?); no webhook receiver on :$TERN_RECEIVER_PORT"
        fi
    fi

    local deadline=$((SECONDS + TERN_READY_TIMEOUT))
    for entry in "${TERN_SERVICES[@]}"; do
        IFS='|' read -r name _ section <<<"$entry"
        tern_cfg_addr "$section" ops_listen
        tern_wait_ready "$name" "$deadline" http "http://$(tern_url_host "$TERN_HOST"):$TERN_PORT/readyz"
        tern_say "$name is ready"
    done
    for ((i = 2; i <= TERN_WORKERS; i++)); do
        tern_wait_ready "delivery-worker-$i" "$deadline" http \
            "http://127.0.0.1:$(_tern_extra_worker_port "$i")/readyz"
        tern_say "delivery-worker-$i is ready"
    done
    if _tern_index_of receiver >/dev/null; then
        tern_wait_ready receiver "$deadline" tcp 127.0.0.1 "$TERN_RECEIVER_PORT"
        tern_say "receiver is ready"
    fi
}

# The first signing secret of the first tenant (the dev tenant).
tern_signing_secret() {
    tern_cfg_required tenants signing_secrets
}

tern_ingress_url() {
    local url
    url="$(tern_cfg ingress public_url)"
    if [[ -z "$url" ]]; then
        tern_cfg_addr ingress listen
        url="http://$(tern_url_host "$TERN_HOST"):$TERN_PORT"
    fi
    printf '%s\n' "${url%/}"
}

tern_resolver_url() {
    tern_cfg_addr resolver listen
    printf 'http://%s:%s\n' "$(tern_url_host "$TERN_HOST")" "$TERN_PORT"
}

tern_admin_url() {
    tern_cfg_addr ingress admin_listen
    printf 'http://%s:%s\n' "$(tern_url_host "$TERN_HOST")" "$TERN_PORT"
}

# tern_write_env FILE: the dev environment as `source`-able shell.
tern_write_env() {
    local file="$1"
    mkdir -p "$(dirname "$file")"
    {
        printf '# Written by scripts/run.sh. Use it with: source %s\n' "${file#"$TERN_ROOT"/}"
        printf 'export TERN_URL=%q\n' "$(tern_ingress_url)"
        printf 'export TERN_API_KEY=%q\n' "$TERN_DEV_API_KEY"
        printf 'export TERN_SIGNING_SECRET=%q\n' "$(tern_signing_secret)"
        printf 'export TERN_RESOLVER_URL=%q\n' "$(tern_resolver_url)"
        printf 'export TERN_ADMIN_URL=%q\n' "$(tern_admin_url)"
        printf 'export TERN_ADMIN_TOKEN=%q\n' "$(tern_cfg_required ingress admin_token)"
        printf 'export TERN_RECEIVER_URL=%q\n' "http://127.0.0.1:$TERN_RECEIVER_PORT"
    } >"$file.tmp.$$"
    mv -f "$file.tmp.$$" "$file"
}

# tern_stream_logs: follow every child's log with a "name |" prefix (new lines only).
tern_stream_logs() {
    local i width=0 name color=0 n=0
    local -a colors=(36 32 33 35 34 31) awk=(awk)
    # mawk (Debian's default awk) buffers its input unless told otherwise.
    if awk -W version </dev/null 2>/dev/null | grep -qi mawk; then awk=(awk -W interactive); fi
    if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then color=1; fi
    for name in "${_tern_names[@]}"; do
        if ((${#name} > width)); then width=${#name}; fi
    done
    for i in "${!_tern_names[@]}"; do
        local prefix
        prefix="$(printf "%-${width}s |" "${_tern_names[i]}")"
        if ((color)); then
            prefix="$(printf '\033[%sm%s\033[0m' "${colors[n % ${#colors[@]}]}" "$prefix")"
        fi
        n=$((n + 1))
        # shellcheck disable=SC2016 # $0 is awk's, not the shell's
        tail -n 0 -F "${_tern_logs[i]}" 2>/dev/null > >("${awk[@]}" -v p="$prefix" '{ print p " " $0; fflush() }') &
        _tern_aux_pids+=("$!")
    done
}

# tern_wait_forever: return only on a signal (traps exit) or when a child dies.
tern_wait_forever() {
    while tern_check_children; do
        sleep 1 &
        wait $! 2>/dev/null || true
    done
    tern_die "a process died; stopping the rest"
}
