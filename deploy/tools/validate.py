#!/usr/bin/env python3
"""Validate rendered Tern manifests offline (run by deploy/check.sh).

    validate.py --nats-conf-dir DIR RENDERED.yaml...

For every rendered overlay (one multi-document YAML file each):

1. Schema: every built-in resource is validated strictly (unknown fields are
   errors) with kubernetes-validate against the Kubernetes JSON schemas it ships,
   for the oldest and the newest Kubernetes version we support. KEDA's
   ScaledObject (a CRD, absent from those schemas) is validated against the
   pydantic models generated from KEDA's CRDs (cloudcoil-models-keda), with
   unknown fields reported as errors too. Any other kind is an error: add a
   schema for it here before using it.
2. Tern invariants the schemas cannot see (ports agree with the TERN_* listen
   settings, probes hit the ops port, the worker's grace period exceeds
   worker.shutdown_grace, stream replicas fit the NATS cluster, max_payload,
   Service selectors and ports, NetworkPolicy coverage, the admin port stays
   internal, autoscalers own their replica counts, ...).

The NATS ConfigMap files are written to DIR/<overlay>/ so that check.sh can run
`nats-server -t` on them. Exit status 1 on any error.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# Oldest supported (native preStop sleep needs 1.30) and newest schema shipped.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

# Tern binary -> config section.
BINARIES = {
    "tern-ingress": "INGRESS",
    "tern-scheduler": "SCHEDULER",
    "tern-delivery-worker": "WORKER",
    "tern-callback-resolver": "RESOLVER",
}
# Secrets an operator creates before `kubectl apply` (overlays without generators).
EXTERNAL_SECRETS = {"tern-config", "tern-nats-auth", "tern-admin", "tern-tls"}
MIN_NATS_MAX_PAYLOAD = 4 * 1024 * 1024
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
CLUSTER_SCOPED = {"Namespace"}


def base_name(name: str) -> str:
    """Strips kustomize's generator hash suffix (tern-env-b4dg5fdg9d -> tern-env)."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]B?)?", text.strip(), re.I)
    if not m:
        raise ValueError(f"bad size {text!r}")
    unit = (m.group(2) or "").upper().rstrip("B")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def labels_match(selector: dict, labels: dict) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def unknown_paths(given, dumped, path="") -> list[str]:
    """Paths present in the input that the model dropped (unknown fields)."""
    out: list[str] = []
    if isinstance(given, dict):
        if not isinstance(dumped, dict):
            return [path or "/"]
        for k, v in given.items():
            if k not in dumped:
                out.append(f"{path}/{k}")
            else:
                out += unknown_paths(v, dumped[k], f"{path}/{k}")
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(given, dumped)):
            out += unknown_paths(a, b, f"{path}/{i}")
    return out


class Overlay:
    def __init__(self, path: Path):
        self.path = path
        self.name = path.stem
        self.errors: list[str] = []
        self.docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        self.builtin = 0
        self.crds: dict[str, int] = {}
        self.invariants = 0

    def err(self, msg: str) -> None:
        self.errors.append(msg)

    def check(self, ok: bool, msg: str) -> bool:
        """Counts one invariant; records msg when it does not hold."""
        self.invariants += 1
        if not ok:
            self.err(msg)
        return ok

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def named(self, kind: str, name: str) -> dict | None:
        for d in self.of_kind(kind):
            if base_name(d["metadata"]["name"]) == name or d["metadata"]["name"] == name:
                return d
        return None


# ---------------------------------------------------------------------------
# 1. Schemas


def validate_scaledobject(ov: Overlay, doc: dict) -> None:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject  # imported lazily: ~1s

    rid = f"ScaledObject/{doc['metadata'].get('name')}"
    try:
        model = ScaledObject.model_validate(doc)
    except Exception as e:  # pydantic.ValidationError
        ov.err(f"{rid}: does not match KEDA's ScaledObject schema: {e}")
        return
    dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = unknown_paths(doc, dumped)
    for p in unknown:
        ov.err(f"{rid}: unknown field {p} (not in KEDA's ScaledObject schema)")
    if not unknown:
        ov.crds["ScaledObject"] = ov.crds.get("ScaledObject", 0) + 1


CRD_VALIDATORS = {("keda.sh/v1alpha1", "ScaledObject"): validate_scaledobject}


def validate_schemas(ov: Overlay) -> None:
    seen = set()
    for doc in ov.docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        meta = doc.get("metadata") or {}
        rid = f"{kind}/{meta.get('name')}"
        if not kind or not api or not meta.get("name"):
            ov.err(f"{rid}: missing apiVersion, kind or metadata.name")
            continue
        key = (api, kind, meta.get("namespace"), meta["name"])
        if key in seen:
            ov.err(f"{rid}: defined twice")
        seen.add(key)
        if (api, kind) in CRD_VALIDATORS:
            CRD_VALIDATORS[(api, kind)](ov, doc)
            continue
        try:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
            ov.builtin += 1
        except SchemaNotFoundError:
            ov.err(f"{rid}: {api} {kind} has no schema (neither built-in nor a known CRD)")
        except ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "/"
            ov.err(f"{rid}: invalid for Kubernetes {e.version}: {e.message} at {where}")


# ---------------------------------------------------------------------------
# 2. Tern invariants


def pod_templates(ov: Overlay):
    for d in ov.docs:
        if d["kind"] in WORKLOAD_KINDS:
            yield d, d["spec"]["template"]


def tern_env(ov: Overlay) -> dict:
    cm = ov.named("ConfigMap", "tern-env")
    if not ov.check(cm is not None, "ConfigMap tern-env is missing"):
        return {}
    return cm.get("data") or {}


def resolve_nats_conf(files: dict, name: str, depth: int = 0) -> str:
    text = files[name]
    if depth > 5:
        return text

    def inline(m):
        return resolve_nats_conf(files, m.group(1), depth + 1)

    return re.sub(r'^\s*include\s+"?([^"\s]+)"?\s*$', inline, text, flags=re.M)


def check_invariants(ov: Overlay, conf_dir: Path) -> None:
    env = tern_env(ov)
    namespaces = {d["metadata"]["name"] for d in ov.of_kind("Namespace")}

    # Namespaces: one, declared, used by every namespaced resource.
    used = {d["metadata"].get("namespace") for d in ov.docs if d["kind"] not in CLUSTER_SCOPED}
    ov.check(len(used) == 1 and None not in used and used <= namespaces,
             f"every resource must be in the one declared namespace; found {sorted(map(str, used))}, "
             f"declared {sorted(namespaces)}")
    namespace = next(iter(used)) if len(used) == 1 else None

    # Pods: no API token, no service links (TERN_* collisions), one Tern image.
    tern_images = set()
    deployments = {}
    for w, tpl in pod_templates(ov):
        spec, name = tpl["spec"], w["metadata"]["name"]
        ov.check(spec.get("automountServiceAccountToken") is False,
                 f"{w['kind']}/{name}: automountServiceAccountToken must be false")
        ov.check(spec.get("enableServiceLinks") is False,
                 f"{w['kind']}/{name}: enableServiceLinks must be false (Service env vars "
                 f"like TERN_INGRESS_PORT share the TERN_ config prefix)")
        for c in spec["containers"]:
            binary = Path((c.get("command") or [""])[0]).name
            if binary in BINARIES:
                tern_images.add(c["image"])
                deployments[binary] = (w, c)
    ov.check(set(deployments) == set(BINARIES),
             f"expected one workload per Tern binary {sorted(BINARIES)}, found {sorted(deployments)}")
    ov.check(len(tern_images) == 1, f"all Tern services must run one image, found {sorted(tern_images)}")

    # Ports and probes agree with the TERN_* listen settings.
    for binary, (w, c) in deployments.items():
        section = BINARIES[binary]
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        rid = f"{w['kind']}/{w['metadata']['name']}"
        refs = {e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])}
        ov.check(any(r and base_name(r) == "tern-env" for r in refs), f"{rid}: must load envFrom tern-env")
        wanted = {"ops": f"TERN_{section}__OPS_LISTEN"}
        if section == "INGRESS":
            wanted.update(http="TERN_INGRESS__LISTEN", admin="TERN_INGRESS__ADMIN_LISTEN")
        if section == "RESOLVER":
            wanted.update(http="TERN_RESOLVER__LISTEN")
        for port_name, key in wanted.items():
            listen = env.get(key)
            if not ov.check(listen is not None, f"tern-env: {key} is missing ({rid} serves it)"):
                continue
            ov.check(listen.startswith("0.0.0.0:"), f"tern-env: {key}={listen} must bind 0.0.0.0 in a pod")
            ov.check(ports.get(port_name) == port_of(listen),
                     f"{rid}: container port '{port_name}' {ports.get(port_name)} != {key}={listen}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            ov.check(get.get("path") == path and get.get("port") in ("ops", ports.get("ops")),
                     f"{rid}: {probe} must GET {path} on the ops port")

    # Worker drains within its grace period.
    if "tern-delivery-worker" in deployments:
        w, _ = deployments["tern-delivery-worker"]
        grace = parse_duration(env.get("TERN_WORKER__SHUTDOWN_GRACE", "25s"))
        tgps = w["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        ov.check(tgps >= grace + 10,
                 f"tern-delivery-worker: terminationGracePeriodSeconds {tgps} must exceed "
                 f"worker.shutdown_grace {grace:g}s by 10s or more")

    # The ingress serves through its delay, then drains, within its grace period.
    if "tern-ingress" in deployments:
        i, _ = deployments["tern-ingress"]
        delay = parse_duration(env.get("TERN_INGRESS__SHUTDOWN_DELAY", "0s"))
        grace = parse_duration(env.get("TERN_INGRESS__SHUTDOWN_GRACE", "20s"))
        tgps = i["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        ov.check(tgps >= delay + grace + 5,
                 f"tern-ingress: terminationGracePeriodSeconds {tgps} must exceed "
                 f"ingress.shutdown_delay + shutdown_grace ({delay + grace:g}s) by 5s or more")

    # NATS: size, config, stream replicas, the URL Tern uses.
    nats = ov.named("StatefulSet", "nats")
    cm = ov.named("ConfigMap", "nats-config")
    if ov.check(nats is not None and cm is not None, "StatefulSet nats and ConfigMap nats-config must exist"):
        size = nats["spec"].get("replicas", 1)
        files = cm.get("data") or {}
        out = conf_dir / ov.name
        out.mkdir(parents=True, exist_ok=True)
        for fname, text in files.items():
            (out / fname).write_text(text)
        conf = resolve_nats_conf(files, "nats.conf") if "nats.conf" in files else ""
        m = re.search(r"^\s*max_payload\s*[:=]\s*(\S+)", conf, re.M)
        ov.check(m is not None and parse_size(m.group(1)) >= MIN_NATS_MAX_PAYLOAD,
                 f"nats.conf: max_payload must be >= 4 MiB (8MB recommended), found {m and m.group(1)}")
        ov.check(re.search(r"^\s*jetstream\s*[{:]", conf, re.M) is not None, "nats.conf: JetStream is not enabled")
        routes = re.findall(r"nats://(nats-\d+)\.", conf)
        if size > 1:
            ov.check(sorted(routes) == [f"nats-{i}" for i in range(size)],
                     f"nats.conf: cluster routes {routes} must name every pod nats-0..nats-{size - 1}")
        else:
            ov.check(not re.search(r"^\s*cluster\s*[{:]", conf, re.M),
                     "nats.conf: a single server must not have a cluster block")
        replicas = int(env.get("TERN_NATS__REPLICAS", "1"))
        ov.check(1 <= replicas <= size,
                 f"TERN_NATS__REPLICAS={replicas} must be between 1 and the NATS StatefulSet size {size}")
        ov.check(size in (1, 3, 5), f"NATS StatefulSet size {size}: use 1, 3 or 5 servers")
        url = env.get("TERN_NATS__URL", "")
        m = re.fullmatch(r"nats://([a-z0-9-]+)(?:\.[^:]*)?:(\d+)", url)
        svc = m and ov.named("Service", m.group(1))
        ov.check(bool(svc) and any(p["port"] == int(m.group(2)) for p in svc["spec"]["ports"]),
                 f"TERN_NATS__URL={url} must name a Service and port of this overlay")

    # Services select pods and their named target ports exist.
    for svc in ov.of_kind("Service"):
        sel = svc["spec"].get("selector") or {}
        rid = f"Service/{svc['metadata']['name']}"
        pods = [tpl for _, tpl in pod_templates(ov) if labels_match({"matchLabels": sel}, tpl["metadata"]["labels"])]
        if not ov.check(bool(sel) and bool(pods), f"{rid}: selector {sel} matches no pod template"):
            continue
        names = {p.get("name") for tpl in pods for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str):
                ov.check(tp in names, f"{rid}: targetPort '{tp}' is not a container port of the selected pods")

    # The admin API stays inside the cluster.
    admin = ov.named("Service", "tern-ingress-admin")
    if ov.check(admin is not None, "Service tern-ingress-admin is missing"):
        ov.check(admin["spec"].get("type", "ClusterIP") == "ClusterIP", "tern-ingress-admin must be ClusterIP")
    for ing in ov.of_kind("Ingress"):
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                backend = p["backend"].get("service", {})
                ov.check(backend.get("name") != "tern-ingress-admin"
                         and backend.get("port", {}).get("name") != "admin"
                         and backend.get("port", {}).get("number") != 8081,
                         f"Ingress/{ing['metadata']['name']} must not expose the admin API")
                ov.check(ov.named("Service", backend.get("name", "")) is not None,
                         f"Ingress/{ing['metadata']['name']}: backend Service {backend.get('name')} does not exist")
    for svc in ov.of_kind("Service"):
        if svc["spec"].get("type") in ("LoadBalancer", "NodePort"):
            ov.check(all(p.get("targetPort") != "admin" and p["port"] != 8081 for p in svc["spec"]["ports"]),
                     f"Service/{svc['metadata']['name']}: the admin port must not be exposed outside the cluster")

    # NetworkPolicies: default deny, every pod covered, admin port only for admin clients.
    nps = ov.of_kind("NetworkPolicy")
    ov.check(any(np["spec"].get("podSelector") == {} and "Ingress" in np["spec"].get("policyTypes", [])
                 and not np["spec"].get("ingress") for np in nps),
             "a default-deny ingress NetworkPolicy (podSelector {}) is required")
    for w, tpl in pod_templates(ov):
        labels = tpl["metadata"]["labels"]
        ov.check(any(np["spec"].get("podSelector") and labels_match(np["spec"]["podSelector"], labels)
                     for np in nps),
                 f"{w['kind']}/{w['metadata']['name']}: no NetworkPolicy admits any traffic to it")
    for np in nps:
        for rule in np["spec"].get("ingress") or []:
            ports = {p.get("port") for p in rule.get("ports") or []}
            if 8081 in ports or "admin" in ports:
                sources = rule.get("from") or []
                ov.check(bool(sources) and all(
                    (s.get("podSelector") or {}).get("matchLabels", {}).get("tern.dev/admin-client") == "true"
                    and "namespaceSelector" not in s and "ipBlock" not in s for s in sources),
                    f"NetworkPolicy/{np['metadata']['name']}: port 8081 only from tern.dev/admin-client pods")

    # Every workload has a PodDisruptionBudget.
    pdbs = ov.of_kind("PodDisruptionBudget")
    for w, tpl in pod_templates(ov):
        ov.check(any(labels_match(p["spec"]["selector"], tpl["metadata"]["labels"]) for p in pdbs),
                 f"{w['kind']}/{w['metadata']['name']}: no PodDisruptionBudget")

    # Autoscalers own replica counts; targets exist; at most one autoscaler each.
    scaled: dict[str, str] = {}
    for hpa in ov.of_kind("HorizontalPodAutoscaler") + ov.of_kind("ScaledObject"):
        ref = hpa["spec"]["scaleTargetRef"]
        rid = f"{hpa['kind']}/{hpa['metadata']['name']}"
        target = ov.named(ref.get("kind", "Deployment"), ref["name"])
        if ov.check(target is not None, f"{rid}: target {ref['name']} does not exist"):
            ov.check("replicas" not in target["spec"],
                     f"{rid}: {ref['name']} must not set spec.replicas (the autoscaler owns it)")
        ov.check(ref["name"] not in scaled, f"{ref['name']} has two autoscalers ({scaled.get(ref['name'])}, {rid})")
        scaled[ref["name"]] = rid
    for so in ov.of_kind("ScaledObject"):
        for t in so["spec"]["triggers"]:
            if t["type"] != "nats-jetstream":
                continue
            md = t["metadata"]
            ov.check(md.get("stream") == "TERN_READY" and md.get("consumer") == "delivery",
                     "KEDA trigger must watch stream TERN_READY, consumer delivery")
            host, _, port = md.get("natsServerMonitoringEndpoint", "").partition(":")
            ov.check(host == f"nats-headless.{namespace}.svc.cluster.local" and port == "8222",
                     f"KEDA natsServerMonitoringEndpoint {host}:{port} must be "
                     f"nats-headless.{namespace}.svc.cluster.local:8222")
            ov.check(int(md.get("lagThreshold", "10")) > 0, "KEDA lagThreshold must be positive")

    # Secrets: generated in this overlay, or one of the documented external ones.
    generated = {base_name(s["metadata"]["name"]) for s in ov.of_kind("Secret")}
    referenced = set()
    for _, tpl in pod_templates(ov):
        spec = tpl["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v:
                referenced.add(v["secret"]["secretName"])
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    referenced.add(e["secretRef"]["name"])
    for ing in ov.of_kind("Ingress"):
        for t in ing["spec"].get("tls", []):
            referenced.add(t["secretName"])
    for name in sorted(referenced):
        ov.check(base_name(name) in generated or name in EXTERNAL_SECRETS,
                 f"Secret {name} is referenced but neither generated nor documented (EXTERNAL_SECRETS)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nats-conf-dir", type=Path, required=True)
    ap.add_argument("rendered", type=Path, nargs="+")
    args = ap.parse_args()

    failed = False
    total = 0
    for path in args.rendered:
        ov = Overlay(path)
        validate_schemas(ov)
        check_invariants(ov, args.nats_conf_dir)
        total += len(ov.docs)
        crds = ", ".join(f"{n} {k}" for k, n in sorted(ov.crds.items())) or "none"
        status = "ok" if not ov.errors else f"{len(ov.errors)} ERROR(S)"
        print(f"  {ov.name:<9} {len(ov.docs):>3} resources: {ov.builtin} built-in valid "
              f"(Kubernetes {', '.join(v.rsplit('.', 1)[0] for v in K8S_VERSIONS)}, strict), "
              f"CRDs valid: {crds}; {ov.invariants} invariants checked: {status}")
        for e in ov.errors:
            print(f"    error: {e}")
        failed |= bool(ov.errors)
    print(f"  validated {total} resources in {len(args.rendered)} renderings: {'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
