"""BBC News 5-way few-shot text classification with all-MiniLM-L6-v2: accuracy of the five
:class:`~fsl_jax.llm.finetune.FewShotTextClassifier` methods over random support draws, and their wall time.

Protocol (SetFit's): one fixed test set of ``--test-per-class`` articles per class (drawn with seed 0), and for each
of ``--draws`` draws a support set of K articles per class from the remaining ones (draw ``d`` uses seed ``d + 1``).
Accuracy is the mean over draws with a 95 % confidence interval (normal approximation). Wall time covers fit + test
prediction of every draw, compilation included (compiled functions are cached across draws; the frozen encoder's
test embeddings are computed once and reused by ``head`` and ``protonet``).

Usage::

    python benchmarks/text_accuracy.py                         # all methods, K = 8 and 16, 10 draws
    python benchmarks/text_accuracy.py --methods head setfit --shots 8 --draws 3

Prints a table and writes ``benchmarks/results/text_accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fsl_jax.data.text import bbc_news, few_shot_split  # noqa: E402
from fsl_jax.llm.finetune import METHODS, FewShotTextClassifier  # noqa: E402
from fsl_jax.report import mean_ci  # noqa: E402

# Per-method settings used for the table (the library defaults unless stated).
SETTINGS: dict[str, dict] = {
    "head": {},
    # the table's finetune: the defaults before benchmarks/text_corpora.py chose new ones
    "finetune": {"learning_rate": 1e-4, "epochs": 20, "layer_decay": 1.0, "early_stopping": True},
    # the table's setfit is the on-device pair sampler, 40 steps x 16 pairs (the default before SetFit's own pair
    # generation became it; benchmarks/text_corpora.py measures both)
    "setfit": {"setfit_sampling": "random", "steps": 40},
    "protonet": {},
    "anil": {},
}


def run(methods, shots_list, draws, test_per_class, max_length, out, progress):
    ds = bbc_news()
    rows = []
    import jax

    for shots in shots_list:
        for method in methods:
            accs, fit_s = [], []
            t0 = time.perf_counter()
            for d in range(draws):
                sx, sy, tx, ty = few_shot_split(ds, shots, seed=d + 1, test_per_class=test_per_class, test_seed=0)
                clf = FewShotTextClassifier(
                    "all-MiniLM-L6-v2", method, seed=d, max_length=max_length, progress=progress, **SETTINGS[method]
                )
                t_fit = time.perf_counter()
                clf.fit(sx, sy)
                fit_s.append(time.perf_counter() - t_fit)
                accs.append(clf.score(tx, ty))
                print(
                    f"  {method:9s} K={shots:2d} draw {d}: accuracy {100 * accs[-1]:.1f} %, fit {fit_s[-1]:.0f} s",
                    flush=True,
                )
            wall = time.perf_counter() - t0
            ci = mean_ci(accs)
            row = {
                "method": method,
                "shots": shots,
                "draws": draws,
                "accuracy_mean": ci.mean,
                "accuracy_ci95": ci.ci95,
                "accuracy_std": ci.std,
                "per_draw": accs,
                "wall_seconds": wall,
                "fit_seconds_mean": float(np.mean(fit_s)),
                "settings": SETTINGS[method],
                "fit_info_last_draw": {
                    k: v for k, v in clf.fit_info_.items() if isinstance(v, (int, float, str, dict)) or v is None
                },
            }
            rows.append(row)
            print(
                f"{method:9s} K={shots:2d}: {100 * ci.mean:.1f} +- {100 * ci.ci95:.1f} % over {draws} draws, "
                f"wall {wall:.0f} s",
                flush=True,
            )
            _write(out, rows, draws, test_per_class, max_length, jax)
    return rows


def _write(out, rows, draws, test_per_class, max_length, jax):
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    doc = {
        "benchmark": "BBC News 5-way few-shot text classification, all-MiniLM-L6-v2",
        "protocol": f"fixed test set of {test_per_class} per class (seed 0), {draws} support draws (seeds 1..{draws})",
        "max_length": max_length,
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores (shared), jax {jax.__version__} "
        f"{jax.default_backend()}",
        "rows": rows,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)


def table(rows) -> str:
    shots = sorted({r["shots"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["shots"]): r for r in rows}
    head = "| method | " + " | ".join(f"K={k} accuracy (%) | K={k} wall (s)" for k in shots) + " |"
    sep = "|---|" + "---|---|" * len(shots)
    lines = [head, sep]
    for m in methods:
        cells = []
        for k in shots:
            r = by.get((m, k))
            cells += (
                ["-", "-"]
                if r is None
                else [f"{100 * r['accuracy_mean']:.1f} +- {100 * r['accuracy_ci95']:.1f}", f"{r['wall_seconds']:.0f}"]
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--shots", nargs="+", type=int, default=[8, 16])
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "text_accuracy.json")
    )
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(args.methods, args.shots, args.draws, args.test_per_class, args.max_length, args.out, args.progress)
    print()
    print(
        f"BBC News 5-way, all-MiniLM-L6-v2, max_length {args.max_length}, test {args.test_per_class} per class, "
        f"mean +- 95% CI over {args.draws} draws; total {time.perf_counter() - t0:.0f} s"
    )
    print(table(rows))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
