#!/usr/bin/env python3
"""Check that every binary the Dockerfile builds is a workspace binary target.

    workspace_bins.py ROOT

Reads Cargo.toml's [workspace] members and each member's Cargo.toml (explicit
[[bin]] targets, or the package name when src/main.rs exists) and compares them
with the BINARIES build argument of the Dockerfile. Prints a warning for each
binary the Docker build would not find (`cargo build --bin X` would fail), and
for each of their packages missing from Cargo.lock (`--locked` would fail);
exits 0 either way unless --strict is given.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def workspace_bins(root: Path) -> dict[str, tuple[str, str]]:
    """Binary name -> (crate folder, package name)."""
    ws = tomllib.loads((root / "Cargo.toml").read_text())
    bins: dict[str, tuple[str, str]] = {}
    for member in ws.get("workspace", {}).get("members", []):
        for crate in sorted(root.glob(member)):
            manifest = crate / "Cargo.toml"
            if not manifest.exists():
                continue
            pkg = tomllib.loads(manifest.read_text())
            where = (str(crate.relative_to(root)), pkg["package"]["name"])
            explicit = pkg.get("bin", [])
            for b in explicit:
                bins[b["name"]] = where
            if not explicit and (crate / "src/main.rs").exists():
                bins[pkg["package"]["name"]] = where
            for extra in sorted((crate / "src/bin").glob("*.rs")):
                bins[extra.stem] = where
    return bins


def main() -> int:
    root = Path(sys.argv[1])
    strict = "--strict" in sys.argv
    m = re.search(r'^ARG BINARIES="([^"]*)"', (root / "Dockerfile").read_text(), re.M)
    if not m:
        print("  error: Dockerfile has no ARG BINARIES=\"...\" line")
        return 1
    wanted = m.group(1).split()
    have = workspace_bins(root)
    lock = root / "Cargo.lock"
    locked = {p["name"] for p in tomllib.loads(lock.read_text()).get("package", [])} if lock.exists() else set()
    problems = 0
    for b in wanted:
        if b not in have:
            crate = root / "crates" / b
            hint = f" ({crate.relative_to(root)} exists but is not in [workspace] members)" if crate.exists() else ""
            print(f"  WARNING: the Dockerfile builds `{b}`, which is no workspace binary{hint}: "
                  f"`docker build` would fail at `cargo build --bin {b}`")
            problems += 1
            continue
        folder, package = have[b]
        print(f"  {b:<24} {folder:<26} package {package}")
        if package not in locked:
            print(f"  WARNING: package `{package}` is missing from Cargo.lock: `cargo build --locked` in the "
                  f"Dockerfile fails until an updated Cargo.lock is committed (any cargo build updates it)")
            problems += 1
    return 1 if (problems and strict) else 0


if __name__ == "__main__":
    sys.exit(main())
