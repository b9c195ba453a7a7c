"""Memory and time of second-order meta-gradients as the inner loop grows: MAML, remat schedules, FOMAML, iMAML.

    python benchmarks/maml_memory.py                                  # 5 / 20 / 100 inner steps, ~20 min on 2 cores
    python benchmarks/maml_memory.py --inner-steps 5,20 --contenders maml,maml_sqrt,imaml --repeats 2

Workload: Conv-4 (64 channels, batch-statistics norm, im2col convolutions on CPU), 5-way 1-shot, 15 queries per
class, 28 x 28 x 1 random images, meta-batch 4 (vmap over the 4 tasks), inner learning rate 0.1, Adam. For each
contender and number of inner steps the jitted meta-step (``fj.make_meta_step``) is compiled once; memory is XLA's
compile-time ``memory_analysis()`` of that step (``temp``: the scratch the program allocates, which is where stored
activations live; ``peak`` = temp + arguments + outputs - aliased); time is the median of ``--repeats`` steps after a
warm-up step. Contenders:

- ``maml``: second order, nothing recomputed (``remat=False``);
- ``maml_step``: ``remat=True`` (every inner step checkpointed);
- ``maml_sqrt``: ``remat="sqrt"`` (nested: blocks of about sqrt(n) checkpointed steps);
- ``fomaml``: first order;
- ``imaml``: ``fj.imaml(lam=1.0, cg_steps=5)``.

Writes benchmarks/results/maml_memory.json and prints a markdown table with the targets of the remat schedule
(<= 0.5x MAML's memory at <= 1.4x its time, 20 steps) and of iMAML (memory within 10 % from 5 to 100 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = ("maml", "maml_step", "maml_sqrt", "fomaml", "imaml")


def build(name: str, steps: int, hidden: int):
    import fsl_jax as fj

    model = fj.models.Conv4(num_classes=5, hidden=hidden, norm="batch")
    if name == "imaml":
        return fj.imaml(model, "xent", inner_lr=0.1, inner_steps=steps, lam=1.0, cg_steps=5)
    remat = {"maml": False, "maml_step": True, "maml_sqrt": "sqrt", "fomaml": False}[name]
    return fj.maml(model, "xent", inner_lr=0.1, inner_steps=steps, first_order=name == "fomaml", remat=remat)


def measure(name: str, steps: int, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import fsl_jax as fj

    b = args.meta_batch
    rng = np.random.default_rng(0)
    tasks = fj.Task(
        jnp.asarray(rng.uniform(0, 1, (b, 5, 28, 28, 1)), jnp.float32),
        jnp.tile(jnp.arange(5, dtype=jnp.int32), (b, 1)),
        jnp.asarray(rng.uniform(0, 1, (b, 75, 28, 28, 1)), jnp.float32),
        jnp.tile(jnp.repeat(jnp.arange(5, dtype=jnp.int32), 15), (b, 1)),
    )
    learner = build(name, steps, args.hidden)
    tx = optax.adam(1e-3)
    state = fj.TrainState.create(learner, learner.init(jax.random.key(0), fj.task_at(tasks, 0)), tx)
    step = fj.make_meta_step(learner, tx, donate=False)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = step.lower(state, tasks, key).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(state, tasks, key))  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        new_state, metrics = compiled(state, tasks, key)
        jax.block_until_ready((new_state, metrics))
        times.append(time.perf_counter() - t0)
    peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    return {
        "contender": name,
        "inner_steps": steps,
        "temp_mb": mem.temp_size_in_bytes / 2**20,
        "peak_mb": peak / 2**20,
        "step_s": statistics.median(times),
        "times_s": times,
        "compile_s": compile_s,
        "loss": float(metrics["loss"]),
        "finite": bool(metrics["finite"]),
    }


def table(rows: list[dict], steps_list: list[int]) -> str:
    by = {(r["contender"], r["inner_steps"]): r for r in rows}
    head = "| contender | " + " | ".join(f"{n} steps: peak MB / s per step" for n in steps_list) + " |"
    lines = [head, "|" + "---|" * (len(steps_list) + 1)]
    for name in dict.fromkeys(r["contender"] for r in rows):
        cells = []
        for n in steps_list:
            r = by.get((name, n))
            cells.append(f"{r['peak_mb']:.0f} / {r['step_s']:.2f}" if r else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    by = {(r["contender"], r["inner_steps"]): r for r in rows}
    out = []
    base = by.get(("maml", 20))
    for name in ("maml_step", "maml_sqrt"):
        r = by.get((name, 20))
        if base and r:
            mem, tim = r["peak_mb"] / base["peak_mb"], r["step_s"] / base["step_s"]
            ok = mem <= 0.5 and tim <= 1.4
            out.append(
                f"{name} at 20 steps: {mem:.2f}x MAML's peak memory at {tim:.2f}x its time "
                f"(target <= 0.5x at <= 1.4x): {'reached' if ok else 'not reached'}"
            )
    lo, hi = by.get(("imaml", 5)), by.get(("imaml", 100))
    if lo and hi:
        growth = hi["peak_mb"] / lo["peak_mb"] - 1
        out.append(
            f"imaml peak memory from 5 to 100 steps: {100 * growth:+.1f} % (target within 10 %): "
            f"{'reached' if abs(growth) <= 0.10 else 'not reached'}"
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inner-steps", default="5,20,100")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results", "maml_memory.json"))
    args = p.parse_args(argv)
    steps_list = [int(s) for s in args.inner_steps.split(",")]
    names = args.contenders.split(",")
    bad = [n for n in names if n not in CONTENDERS]
    if bad or any(s < 1 for s in steps_list) or args.repeats < 1:
        p.error(f"--contenders must be among {CONTENDERS} (got {bad}), --inner-steps and --repeats positive")
    import jax

    rows = []
    for steps in steps_list:
        for name in names:
            row = measure(name, steps, args)
            rows.append(row)
            print(
                f"{name:10s} {steps:4d} steps: peak {row['peak_mb']:8.1f} MB (temp {row['temp_mb']:8.1f}), "
                f"{row['step_s']:.3f} s/step, compile {row['compile_s']:.1f} s",
                flush=True,
            )
    text = table(rows, steps_list)
    notes = verdicts(rows)
    print(text)
    print("\n".join(notes))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "command": "python benchmarks/maml_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "jax": jax.__version__,
                    "backend": jax.default_backend(),
                },
                "workload": {
                    "model": f"Conv-4, {args.hidden} channels, batch norm",
                    "ways": 5,
                    "shots": 1,
                    "queries": 15,
                    "meta_batch": args.meta_batch,
                },
                "rows": rows,
                "table": text,
                "verdicts": notes,
            },
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
