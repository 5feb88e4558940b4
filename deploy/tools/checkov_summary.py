#!/usr/bin/env python3
"""Summarise checkov's JSON report (run by deploy/check.sh).

    checkov_summary.py RESULTS.json README.md FRAMEWORK...

Prints passed/failed/skipped per framework, every failed check, and every
skipped check with its reason. Fails when a check failed, a file could not be
parsed, a FRAMEWORK scanned nothing, or a skipped check is not listed in
README.md's lint-exceptions table (every exception must be documented there).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter


def main() -> int:
    results_path, readme_path, expected = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(results_path) as f:
        reports = json.load(f)
    if isinstance(reports, dict):
        reports = [reports]
    readme = open(readme_path).read()
    documented = set(re.findall(r"\|\s*`?(CKV2?_[A-Z0-9_]+)`?\s*\|", readme))

    bad = False
    scanned = {r.get("check_type") for r in reports if (r.get("summary") or {}).get("resource_count")}
    for fw in expected:
        if fw not in scanned:
            print(f"  checkov {fw}: scanned no resources (expected some)")
            bad = True
    for rep in reports:
        fw = rep.get("check_type", "?")
        s = rep.get("summary", {})
        res = rep.get("results", {})
        print(f"  checkov {fw:<10} resources {s.get('resource_count', 0):>3}: passed {s.get('passed', 0)}, "
              f"failed {s.get('failed', 0)}, skipped {s.get('skipped', 0)}, "
              f"parsing errors {s.get('parsing_errors', 0)}")
        for c in res.get("failed_checks", []):
            lines = c.get("file_line_range") or []
            print(f"    FAILED {c['check_id']} {c.get('check_name', '')}\n"
                  f"           {c.get('resource')} in {c.get('file_path')}:{'-'.join(map(str, lines))}")
            bad = True
        if s.get("parsing_errors"):
            for p in rep.get("results", {}).get("parsing_errors", []) or []:
                print(f"    PARSING ERROR {p}")
            bad = True
        skipped = Counter()
        for c in res.get("skipped_checks", []):
            reason = (c.get("check_result") or {}).get("suppress_comment", "").strip()
            skipped[(c["check_id"], reason)] += 1
        for (cid, reason), n in sorted(skipped.items()):
            mark = "" if cid in documented else "  <-- NOT DOCUMENTED in deploy/README.md"
            print(f"    skipped {cid} x{n}: {reason}{mark}")
            if cid not in documented:
                bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
