"""Which XLA:CPU flags speed up the Conv-4 second-order MAML step? One subprocess per (flags, convolution path).

    python benchmarks/xla_cpu_flags.py                   # ~15 min on a 2-core CPU
    python benchmarks/xla_cpu_flags.py --meta-batch 4 --steps 2

The workload is ``benchmarks/maml_throughput.py``'s Conv-4 (64 channels, batch-statistics norm, 5-way 1-shot, 15
queries, 5 inner steps, second order, Adam), at a smaller meta-batch (default 8) so that every setting is timed in
about a minute. Each setting runs the convolution paths of ``fj.models.Conv4``: ``im2col`` (shifted slices +
matrix product, the CPU default) and ``xla`` (``lax.conv_general_dilated``, which ``vmap`` over per-task weights turns
into a grouped convolution; timed only under the settings that could change convolutions unless ``--all``). The
meta-loss of the first step is compared with the default setting's: a flag that
changes it by more than 1e-4 (relative) is marked. Flags that this jaxlib does not know make the subprocess fail,
which the table shows.

Prints a markdown table; writes benchmarks/results/xla_cpu_flags.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn custom call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xnn fusion dot+eltwise+reduce": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "xnn graph fusion greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "ynn individual dot+conv": "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",
    "no xnnpack": "--xla_cpu_use_xnnpack=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
}
# The XLA convolution path is slow (tens of seconds a step): time it only where a flag could change convolutions.
XLA_CONV_SETTINGS = ("default", "onednn", "onednn custom call", "ynn individual dot+conv")


def conv_maml_step(meta_batch: int, conv_impl: str = "im2col", task_chunk: int | None = None, donate: bool = True):
    """The Conv-4 second-order MAML workload on random images: ``(step, state, tasks, key)`` for ``step(state, tasks,
    key)``. Shared with ``benchmarks/profile_maml_step.py``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import fsl_jax as fj

    b = meta_batch
    model = fj.models.Conv4(num_classes=5, hidden=64, norm="batch", conv_impl=conv_impl)
    learner = fj.maml(model, "xent", inner_lr=0.4, inner_steps=5)
    rng = np.random.default_rng(0)
    tasks = fj.Task(
        jnp.asarray(rng.uniform(0, 1, (b, 5, 28, 28, 1)), jnp.float32),
        jnp.tile(jnp.arange(5, dtype=jnp.int32), (b, 1)),
        jnp.asarray(rng.uniform(0, 1, (b, 75, 28, 28, 1)), jnp.float32),
        jnp.tile(jnp.repeat(jnp.arange(5, dtype=jnp.int32), 15), (b, 1)),
    )
    tx = optax.adam(1e-3)
    state = fj.TrainState.create(learner, learner.init(jax.random.key(0), fj.task_at(tasks, 0)), tx)
    step = fj.make_meta_step(learner, tx, task_chunk=task_chunk, donate=donate)
    return step, state, tasks, jax.random.key(1)


def worker(spec: dict) -> dict:
    import jax

    step, state, tasks, key = conv_maml_step(spec["meta_batch"], spec["conv_impl"], spec.get("task_chunk"))
    t0 = time.perf_counter()
    compiled = step.lower(state, tasks, key).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, tasks, key)
    loss = float(metrics["loss"])
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        state, metrics = compiled(state, tasks, key)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    import resource

    return {
        "compile_s": compile_s,
        "step_s": statistics.median(times),
        "times": times,
        "first_loss": loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    p.add_argument("--conv-impls", default="im2col,xla")
    p.add_argument("--all", action="store_true", help="time the xla path under every setting")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--out", default=os.path.join(HERE, "results", "xla_cpu_flags.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    names = [n for n in args.settings.split(",") if n]
    for n in names:
        if n not in SETTINGS:
            p.error(f"--settings: unknown setting {n!r}; choose from {list(SETTINGS)}")
    rows, ref = [], {}
    for name in names:
        for impl in args.conv_impls.split(","):
            if impl == "xla" and name not in XLA_CONV_SETTINGS and not args.all:
                continue
            env = dict(
                os.environ,
                JAX_PLATFORMS="cpu",
                XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + SETTINGS[name]).strip(),
            )
            spec = {"meta_batch": args.meta_batch, "steps": args.steps, "conv_impl": impl}
            print(f"  {name:32s} {impl:7s} ...", end="", flush=True)
            try:
                proc = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=ROOT,
                    timeout=args.timeout,
                )
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not lines:
                    res = {"error": (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]}
                else:
                    res = json.loads(lines[-1][len("RESULT ") :])
            except subprocess.TimeoutExpired:
                res = {"error": f"timed out after {args.timeout} s"}
            if "step_s" in res:
                ref.setdefault(impl, res["first_loss"])
                res["loss_rel_diff"] = abs(res["first_loss"] - ref[impl]) / abs(ref[impl])
                print(
                    f" {res['step_s']:.2f} s/step, compile {res['compile_s']:.0f} s, loss diff "
                    f"{res['loss_rel_diff']:.1e}"
                )
            else:
                print(f" FAILED: {res['error']}")
            rows.append({"setting": name, "xla_flags": SETTINGS[name], "conv_impl": impl, "result": res})
    base = {r["conv_impl"]: r["result"].get("step_s") for r in rows if r["setting"] == "default"}
    lines = [
        "| setting | XLA_FLAGS | conv path | s/step | vs default | compile s | peak RSS MB | loss rel. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        res = r["result"]
        if "step_s" not in res:
            lines.append(
                f"| {r['setting']} | `{r['xla_flags']}` | {r['conv_impl']} | failed: {res['error'][:60]} | | | | |"
            )
            continue
        speed = base.get(r["conv_impl"]) / res["step_s"] if base.get(r["conv_impl"]) else float("nan")
        flag = "" if res["loss_rel_diff"] <= 1e-4 else " (changed)"
        lines.append(
            f"| {r['setting']} | `{r['xla_flags']}` | {r['conv_impl']} | {res['step_s']:.2f} | {speed:.2f}x "
            f"| {res['compile_s']:.0f} | {res['peak_rss_mb']:.0f} | {res['loss_rel_diff']:.1e}{flag} |"
        )
    table = "\n".join(lines)
    print(f"\nConv-4 second-order MAML, meta-batch {args.meta_batch}, median of {args.steps} steps\n")
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "command": "python benchmarks/xla_cpu_flags.py",
                "meta_batch": args.meta_batch,
                "rows": rows,
                "table": table,
            },
            f,
            indent=2,
        )
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
