"""In-context few-shot classification: accuracy vs. number of demonstrations, beside ProtoNet on the same episodes.

    python benchmarks/icl_accuracy.py                      # 1000 meta-steps (a few minutes on a 2-core CPU)
    python benchmarks/icl_accuracy.py --steps 300 --episodes 500

Meta-trains a small GPT-2-style transformer from scratch (:func:`fsl_jax.llm.icl.meta_train_icl`: n_embd 128,
4 layers, 4 heads) on 5-way episodes over random Gaussian class prototypes with 1..5 shots and permuted labels, so
it has to classify the queries from the demonstrations in its context alone. Then, for 1..5 shots, it scores
``--episodes`` fresh test episodes and the nearest-class-mean rule (ProtoNet with the identity encoder) on the
**same** episodes: accuracy mean +- 95 % CI, and the paired difference. Writes
``benchmarks/results/icl_accuracy.json`` and ``icl_accuracy.png``.
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
from fsl_jax.llm.icl import evaluate_icl, meta_train_icl

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="meta-training steps (default 1000)")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop training after this wall time")
    parser.add_argument("--meta-batch", type=int, default=32, help="episodes per meta-step (default 32)")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--max-shots", type=int, default=5)
    parser.add_argument("--dim", type=int, default=16, help="input dimension (default 16)")
    parser.add_argument("--noise", type=float, default=1.2, help="within-class standard deviation (default 1.2)")
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes per shot count (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=RESULTS, help="output folder (default benchmarks/results)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores); python {sys.version.split()[0]}"
    )
    result = meta_train_icl(
        jax.random.key(args.seed),
        ways=args.ways,
        max_shots=args.max_shots,
        dim=args.dim,
        noise=args.noise,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        steps=args.steps,
        meta_batch=args.meta_batch,
        learning_rate=args.learning_rate,
        max_seconds=args.max_seconds,
        progress=not args.no_progress,
    )
    print(
        f"trained {result.steps} meta-steps ({result.steps * args.meta_batch} episodes) in {result.seconds:.1f} s "
        f"(compilation included); last logged train accuracy "
        f"{result.history.metrics[-1]['accuracy']:.3f}"
    )

    rows, curves = [], {"ICL transformer": {}, "ProtoNet (nearest class mean)": {}}
    t0 = time.perf_counter()
    for shots in range(1, args.max_shots + 1):
        accs = evaluate_icl(
            result.model,
            result.params,
            ways=args.ways,
            shots=shots,
            episodes=args.episodes,
            key=jax.random.key(10_000 + args.seed),
            batch_size=min(200, args.episodes),
            **result.episode_kwargs,
        )
        icl, proto = fj.mean_ci(accs["icl"]), fj.mean_ci(accs["protonet"])
        diff = fj.mean_ci(accs["icl"] - accs["protonet"])
        curves["ICL transformer"][shots] = (icl.mean, icl.ci95)
        curves["ProtoNet (nearest class mean)"][shots] = (proto.mean, proto.ci95)
        rows.append(
            {
                "shots": shots,
                "icl": {"mean": icl.mean, "ci95": icl.ci95},
                "protonet": {"mean": proto.mean, "ci95": proto.ci95},
                "difference": {"mean": diff.mean, "ci95": diff.ci95},
            }
        )
    eval_s = time.perf_counter() - t0

    print(
        f"\n{args.ways}-way, {args.episodes} test episodes per row (the same episodes for both), accuracy % +- 95% CI:"
    )
    print(f"{'shots':>5} | {'ICL transformer':>16} | {'ProtoNet (NCM)':>16} | {'ICL - ProtoNet':>16}")
    print("-" * 63)
    for r in rows:
        f = lambda v: f"{100 * v['mean']:6.2f} +- {100 * v['ci95']:4.2f}"
        print(f"{r['shots']:>5} | {f(r['icl']):>16} | {f(r['protonet']):>16} | {f(r['difference']):>16}")
    print(f"evaluation: {eval_s:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    png = fj.plot_accuracy_vs_shots(
        curves,
        os.path.join(args.out, "icl_accuracy.png"),
        title=f"In-context {args.ways}-way classification (Gaussian prototypes)",
    )
    summary = {
        "settings": vars(args),
        "train_steps": result.steps,
        "train_seconds": result.seconds,
        "eval_seconds": eval_s,
        "episode_kwargs": result.episode_kwargs,
        "rows": rows,
        "history": {"steps": result.history.steps, "metrics": result.history.metrics},
        "platform": {"jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count()},
    }
    path = os.path.join(args.out, "icl_accuracy.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
