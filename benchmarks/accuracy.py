"""Few-shot accuracy of every image learner on the offline glyph benchmark, beside the published Omniglot figures.

    python benchmarks/accuracy.py                       # 5-way 1-shot and 5-shot, 60 s of training per run
    python benchmarks/accuracy.py --seconds 30 --learners protonet,maml --episodes 600

Each learner meta-trains on the glyph "train" scripts for a fixed wall-time budget (the same for every learner, so
the table compares what each reaches on this machine in that time), then is evaluated on 600 test episodes drawn
from the unseen "test" scripts: accuracy mean +- 95 % CI. Writes benchmarks/results/accuracy.json and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax

import fsl_jax as fj
from fsl_jax.recipes import GRADIENT_BASED, IMAGE_LEARNERS, image_learner

# Omniglot 5-way 1-shot / 5-shot accuracy (%) as published (MAML, ProtoNet, Matching, Relation papers).
PUBLISHED = {
    "maml": (98.7, 99.9),
    "fomaml": (98.3, 99.2),
    "protonet": (98.8, 99.7),
    "matching_net": (98.1, 98.9),
    "relation_net": (99.6, 99.8),
    "maml++": (99.47, 99.93),
    "imaml": (99.50, 99.74),
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def run(name: str, shots: int, train, test, args) -> dict:
    ways, queries = args.ways, args.queries
    recipe = image_learner(name, ways)
    train_sampler = fj.data.DeviceSampler(train, ways, shots, queries)
    test_sampler = fj.data.DeviceSampler(test, ways, shots, queries)
    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    steps = 0
    if recipe.trainable:
        meta_batch = args.meta_batch_gradient if name in GRADIENT_BASED else args.meta_batch
        state, _ = fj.meta_train(
            recipe.learner,
            recipe.optimizer,
            train_sampler.sample,
            steps=args.max_steps,
            meta_batch=meta_batch,
            key=key,
            log_every=25,
            max_seconds=args.seconds,
            progress=not args.no_progress,
            desc=f"{name} {shots}-shot",
        )
        params, steps = state.params, int(state.step)
    else:
        params = recipe.learner.init(key, fj.task_at(test_sampler.sample(key, 1), 0))
    train_seconds = time.perf_counter() - t0
    result = fj.evaluate(recipe.learner, params, test_sampler, episodes=args.episodes, key=jax.random.key(10_000))
    return {
        "accuracy": result.mean,
        "ci95": result.ci95,
        "steps": steps,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - t0 - train_seconds,
    }


def table(results: dict, shots: list[int]) -> str:
    head = (
        "| learner | "
        + " | ".join(f"glyphs {k}-shot (%)" for k in shots)
        + " | meta-steps | Omniglot published 1 / 5-shot |"
    )
    lines = [head, "|" + "---|" * (len(shots) + 3)]
    for name, by_k in results.items():
        cells = [f"{100 * by_k[k]['accuracy']:.1f} +- {100 * by_k[k]['ci95']:.1f}" for k in shots]
        steps = " / ".join(str(by_k[k]["steps"]) for k in shots)
        pub = " / ".join(f"{v:.1f}" for v in PUBLISHED[name]) if name in PUBLISHED else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {steps} | {pub} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--learners", default=",".join(IMAGE_LEARNERS), help="comma-separated subset")
    p.add_argument("--shots", default="1,5")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--seconds", type=float, default=60.0, help="training wall-time budget per (learner, shots)")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--meta-batch", type=int, default=4, help="tasks per step, metric learners")
    p.add_argument("--meta-batch-gradient", type=int, default=4, help="tasks per step, gradient-based learners")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(RESULTS, "accuracy.json"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    names = [n for n in args.learners.split(",") if n]
    unknown = [n for n in names if n not in IMAGE_LEARNERS]
    if unknown:
        p.error(f"unknown learners {unknown}; choose from {IMAGE_LEARNERS}")
    shots = [int(k) for k in args.shots.split(",")]
    train, test = fj.data.glyphs("train").data, fj.data.glyphs("test").data
    started = time.perf_counter()
    results: dict = {}
    for name in names:
        results[name] = {}
        for k in shots:
            results[name][k] = run(name, k, train, test, args)
            r = results[name][k]
            print(
                f"{name} {k}-shot: {100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f} % after {r['steps']} steps "
                f"({r['train_seconds']:.0f} s training)",
                flush=True,
            )
    total = time.perf_counter() - started
    print(
        f"\n{args.ways}-way glyph episodes, {args.episodes} test episodes from unseen scripts, "
        f"{args.seconds:.0f} s training budget per run, {total / 60:.1f} min in total:\n"
    )
    print(table(results, shots))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "results": results,
                "published_omniglot": PUBLISHED,
                "config": vars(args),
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "backend": jax.default_backend()},
                "total_seconds": total,
            },
            f,
            indent=2,
        )
    curves = {name: {k: (v["accuracy"], v["ci95"]) for k, v in by_k.items()} for name, by_k in results.items()}
    fj.plot_accuracy_vs_shots(
        curves, os.path.splitext(args.out)[0] + ".png", title=f"glyphs {args.ways}-way: accuracy vs shots"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
