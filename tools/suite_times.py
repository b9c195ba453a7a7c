"""Where the test suite's time goes, per file: wall seconds, XLA compilation, tracing / lowering, the rest.

Usage::

    FSL_JAX_SUITE_TIMES=/tmp/times make test     # each pytest worker writes /tmp/times/times-<worker>.json
    python tools/suite_times.py /tmp/times [--json out.json]

"The rest" is running compiled code, Python, and every process a test starts (whose compilation is not seen here).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections import defaultdict


def summarise(folder: str) -> dict:
    tests: dict[str, dict[str, float]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "times-*.json"))):
        with open(path) as f:
            tests.update(json.load(f))
    if not tests:
        raise SystemExit(f"no times-*.json in {folder!r}: run the suite with FSL_JAX_SUITE_TIMES={folder}")
    files: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for nodeid, rec in tests.items():
        row = files[nodeid.split("::")[0]]
        row["tests"] += 1
        for key in ("wall", "compile", "trace"):
            row[key] += rec.get(key, 0.0)
    for row in files.values():
        row["rest"] = row["wall"] - row["compile"] - row["trace"]
    total = {k: sum(r[k] for r in files.values()) for k in ("tests", "wall", "compile", "trace", "rest")}
    slowest = sorted(tests.items(), key=lambda kv: -kv[1]["wall"])[:20]
    return {
        "files": {k: dict(v) for k, v in sorted(files.items(), key=lambda kv: -kv[1]["wall"])},
        "total": total,
        "slowest_tests": {k: v for k, v in slowest},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    summary = summarise(args.folder)
    print("| file | tests | wall s | XLA compile s | trace + lower s | rest s |\n|---|---|---|---|---|---|")
    for name, row in list(summary["files"].items()) + [("**all**", summary["total"])]:
        print(
            f"| {name} | {row['tests']:.0f} | {row['wall']:.1f} | {row['compile']:.1f} | {row['trace']:.1f} | "
            f"{row['rest']:.1f} |"
        )
    print("\nslowest tests (wall s):")
    for nodeid, rec in summary["slowest_tests"].items():
        print(f"  {rec['wall']:6.1f}  {nodeid}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
