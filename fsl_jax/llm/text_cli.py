"""The ``fsl-jax text`` subcommand: few-shot text classification over several random support draws.

For each of ``--draws`` draws it samples ``--shots`` support texts per class, fits a
:class:`~fsl_jax.llm.finetune.FewShotTextClassifier` (``--method``) and scores it on held-out test texts; then it prints
a per-class classification report (pooled over all draws) and the accuracy mean +- 95 % CI over draws, and writes
``results.json`` to ``--out``.

Test set: with ``--test-per-class N`` one test set of ``N`` texts per class is drawn once (from ``--seed``) and kept
for every draw, the support sets coming from the remaining texts (SetFit's protocol; it also lets the frozen-encoder
methods reuse cached test embeddings). Without it, each draw tests on every text outside its support set.

Wiring (in ``fsl_jax/cli.py``)::

    from fsl_jax.llm.text_cli import add_text_parser, run_text
    add_text_parser(sub)                  # in build_parser(), with the other subcommands
    commands["text"] = run_text           # in main()
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

__all__ = ["add_text_parser", "run_text"]


def add_text_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``text`` subcommand to an ``argparse`` sub-parser collection and returns its parser.

    Example:
        >>> parser = argparse.ArgumentParser(prog="fsl-jax")
        >>> p = add_text_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["text", "--method", "setfit", "--shots", "4"]).shots
        4
    """
    from fsl_jax.llm.finetune import METHODS

    p = subparsers.add_parser(
        "text",
        help="few-shot text classification with BERT (head / finetune / setfit / protonet / anil / auto)",
        description="Fits a few-shot text classifier on --draws random support sets of --shots texts per class and "
        "reports test accuracy (mean +- 95 % CI over draws) and per-class precision / recall / F1.",
    )
    p.add_argument(
        "--method",
        "--learner",
        dest="method",
        choices=METHODS,
        default="head",
        help="few-shot method (default: head); --learner is the same flag, as in 'fsl-jax train'",
    )
    p.add_argument(
        "--data",
        default="bbc",
        help="'bbc' (bundled BBC News, 5 topics) or a .csv / .tsv / .jsonl / .json file (default: bbc)",
    )
    p.add_argument("--text-column", default="text", help="text column of --data files (default: text)")
    p.add_argument("--label-column", default="label", help="label column of --data files (default: label)")
    p.add_argument(
        "--backbone", default="all-MiniLM-L6-v2", help="BERT folder or 'all-MiniLM-L6-v2' (default: all-MiniLM-L6-v2)"
    )
    p.add_argument("--shots", type=int, default=8, help="support texts per class (default 8)")
    p.add_argument("--draws", type=int, default=10, help="random support draws (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help="fixed test texts per class (default: every text outside the support set)",
    )
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")
    p.add_argument("--steps", type=int, default=None, help="finetune / setfit steps (default: per method)")
    p.add_argument("--learning-rate", type=float, default=None, help="encoder learning rate (default: per method)")
    p.add_argument("--batch-size", type=int, default=16, help="texts (finetune) or pairs (setfit) per step")
    p.add_argument(
        "--num-iterations", type=int, default=None, help="setfit: rounds of pair generation (default 20, SetFit's)"
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="auto: seconds per fit, cross-validation included (default: no limit)",
    )
    p.add_argument(
        "--meta-train-steps",
        type=int,
        default=None,
        help="protonet / anil episodic meta-training steps (default: protonet 0, anil 10)",
    )
    p.add_argument("--out", default=None, help="folder for results.json (default: none written)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def run_text(args: argparse.Namespace) -> int:
    """Runs the ``text`` subcommand; returns the exit status (0).

    Raises:
      ValueError / FileNotFoundError: bad flags or data (``fsl-jax``'s ``main`` turns them into one-line errors).
    """
    import numpy as np
    from fsl_jax._progress import progress

    from fsl_jax.data.text import bbc_news, few_shot_split, load_text_file
    from fsl_jax.llm.finetune import FewShotTextClassifier
    from fsl_jax.report import classification_report, mean_ci

    _positive(args, "shots", "draws", "test_per_class", "max_length", "steps", "batch_size", "num_iterations")
    if args.time_budget is not None and not args.time_budget > 0:
        raise ValueError(f"--time-budget must be > 0, got {args.time_budget}")
    if args.meta_train_steps is not None and args.meta_train_steps < 0:
        raise ValueError(f"--meta-train-steps must be >= 0, got {args.meta_train_steps}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be > 0, got {args.learning_rate}")
    if args.data == "bbc":
        dataset, data_name = bbc_news(), "BBC News"
    else:
        dataset, data_name = load_text_file(args.data, args.text_column, args.label_column), os.path.basename(args.data)
    show_progress = not args.no_progress
    fixed_test = args.test_per_class is not None
    settings = dict(
        method=args.method,
        max_length=args.max_length,
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        meta_train_steps=args.meta_train_steps,
        time_budget=args.time_budget,
    )
    if args.num_iterations is not None:
        settings["num_iterations"] = args.num_iterations
    print(
        f"{data_name}: {len(dataset)} texts, {len(dataset.label_names)} classes; method {args.method}, "
        f"{args.shots} shots per class, {args.draws} draws"
        + (f", fixed test set of {args.test_per_class} per class" if fixed_test else "")
    )

    accuracies, fit_seconds, draws = [], [], []
    pooled_true: list = []
    pooled_pred: list = []
    t_start = time.perf_counter()
    bar = progress(range(args.draws), desc=f"text {args.method}", disable=not show_progress)
    for d in bar:
        support_x, support_y, test_x, test_y = few_shot_split(
            dataset,
            args.shots,
            seed=args.seed * 100_003 + d + 1,
            test_per_class=args.test_per_class,
            test_seed=args.seed if fixed_test else None,
        )
        clf = FewShotTextClassifier(args.backbone, seed=args.seed + d, progress=show_progress, **settings)
        t0 = time.perf_counter()
        clf.fit(support_x, support_y)
        fit_s = time.perf_counter() - t0
        predictions = list(clf.predict(test_x))
        accuracy = float(np.mean([p == t for p, t in zip(predictions, test_y)]))
        accuracies.append(accuracy)
        fit_seconds.append(fit_s)
        pooled_true += list(test_y)
        pooled_pred += predictions
        draws.append(
            {
                "draw": d,
                "accuracy": accuracy,
                "fit_seconds": fit_s,
                "seconds": time.perf_counter() - t0,
                "support_size": len(support_x),
                "test_size": len(test_x),
            }
        )
        bar.set_postfix(acc=f"{accuracy:.3f}")
    bar.close()
    total_s = time.perf_counter() - t_start

    def as_text(values):
        return [v if isinstance(v, (str, int)) and not isinstance(v, bool) else str(v) for v in values]

    names = list(dataset.label_names)
    labels = as_text(names)
    report = classification_report(
        as_text(pooled_true), as_text(pooled_pred), labels=labels, label_names=[str(n) for n in names]
    )
    ci = mean_ci(accuracies)
    print()
    print(f"per-class scores, pooled over {args.draws} draws ({len(pooled_true)} test predictions):")
    print(report.to_string(digits=3))
    ci_text = f"{100 * ci.mean:.2f} +- {100 * ci.ci95:.2f} %" if args.draws > 1 else f"{100 * ci.mean:.2f} %"
    print(
        f"accuracy over {args.draws} draws: {ci_text} (95% CI); per draw: "
        + ", ".join(f"{100 * a:.1f}" for a in accuracies)
    )
    print(f"time: {total_s:.1f} s in total, fit {np.mean(fit_seconds):.1f} s per draw on average")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        result = {
            "data": args.data,
            "backbone": args.backbone,
            "shots": args.shots,
            "draws": args.draws,
            "seed": args.seed,
            "test_per_class": args.test_per_class,
            "settings": settings,
            "accuracy": {
                "mean": ci.mean,
                "ci95": None if args.draws == 1 else ci.ci95,
                "std": None if args.draws == 1 else ci.std,
                "per_draw": accuracies,
            },
            "seconds": total_s,
            "draw_details": draws,
            "label_names": [str(n) for n in names],
            "report": report.as_dict(),
            "confusion_matrix": report.confusion_matrix.tolist(),
        }
        path = os.path.join(args.out, "results.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"results: {os.path.abspath(path)}")
    return 0
