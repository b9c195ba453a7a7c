"""The accelerator story in one run: meta-training steps per second in float32 and bfloat16 on whatever device JAX
finds, with each step's FLOPs and bytes from XLA's cost analysis and the roofline bound they imply on a GPU and a TPU.

    python benchmarks/accelerator.py                  # the real sizes; under 10 minutes on one GPU
    python benchmarks/accelerator.py --dry-run        # tiny sizes, a few seconds per workload (the test suite runs it)
    python benchmarks/accelerator.py --only conv_maml --dtypes bfloat16 --seconds 5

Workloads (every step: forward, backward through the inner loop, outer Adam update; inputs already on the device):
  conv_maml_mb{8,32,128}   Conv-4 (64 ch, batch statistics), 28x28x1, 5-way 1-shot 15-query, 5 inner steps, second
                           order; meta-batch 8 / 32 / 128 vmapped
  conv_maml_mb128_chunk32  the same at meta-batch 128 in task chunks of 32 (``make_meta_step(task_chunk=32)``)
  sinusoid_maml            MLP 40-40, meta-batch 25, 10-shot 10-query, 1 inner step, tasks sampled inside the step
  protonet                 Conv-4 encoder, 28x28x1, 5-way 5-shot 15-query, meta-batch 8
  minilm_finetune          MiniLM-L6 shapes (6 layers, 384 wide, 12 heads; random weights: the FLOPs are the same),
                           batch 32 x 64 tokens, AdamW, dropout on

Per workload and dtype: compile seconds, median step seconds (steps timed until ``--seconds`` have passed), steps/s,
GFLOP per step (the matrix products and convolutions of the step's jaxpr, each scan body counted as often as it runs:
``_flops.count_matmul_flops``), MB per step from ``compiled.cost_analysis()``, the achieved TFLOP/s, and the roofline
bound ``max(flops / peak_flops, bytes / bandwidth)`` on an H100 / H200 and a TPU v5e (peaks below). XLA's cost
analysis counts a loop body once (the MAML inner loop, task chunks): its FLOPs are kept beside ours as
``xla_cost_analysis_gflop``, and its bytes are a lower bound, so the roofline is an upper bound on steps/s.
Writes ``benchmarks/results/accelerator_<platform>.json`` and ``.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fsl_jax as fj  # noqa: E402 - after the path insert, so the script runs from a checkout
from fsl_jax.llm.text_models import BertClassifier  # noqa: E402
from fsl_jax.models.bert import BertConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _flops import count_matmul_flops  # noqa: E402 - the benchmarks folder, found from any working directory

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Dense peak FLOP/s and memory bandwidth from the vendors' data sheets. float32 matrix products on these GPUs run as
# TF32 on tensor cores under JAX's default precision; a TPU runs them as bfloat16 passes: the float32 peaks below are
# those rates.
HARDWARE = {
    "H100/H200 SXM": {"bfloat16": 989e12, "float32": 495e12, "bandwidth": 3.35e12},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12, "bandwidth": 0.82e12},
}
TARGET = ("conv_maml_mb32", "bfloat16", 1000.0)  # the aim on one H100-class GPU, steps/s


def _conv_tasks(key, meta_batch, ways, shots, queries, image):
    k1, k2 = jax.random.split(key)
    sx = jax.random.uniform(k1, (meta_batch, ways * shots, image, image, 1))
    qx = jax.random.uniform(k2, (meta_batch, ways * queries, image, image, 1))
    sy = jnp.tile(jnp.repeat(jnp.arange(ways), shots), (meta_batch, 1))
    qy = jnp.tile(jnp.repeat(jnp.arange(ways), queries), (meta_batch, 1))
    return fj.Task(sx, sy, qx, qy)


def conv_maml(dtype, *, meta_batch, task_chunk=None, hidden=64, image=28, inner_steps=5, queries=15, blocks=4):
    model = fj.models.Conv4(num_classes=5, hidden=hidden, blocks=blocks, dtype=dtype)
    learner = fj.maml(model, "xent", 0.4, inner_steps)
    tasks = _conv_tasks(jax.random.key(0), meta_batch, 5, 1, queries, image)
    return _meta_workload(learner, tasks, task_chunk)


def protonet(dtype, *, meta_batch=8, hidden=64, image=28, shots=5, queries=15, blocks=4):
    learner = fj.protonet(fj.models.Conv4(hidden=hidden, blocks=blocks, dtype=dtype), 5)
    tasks = _conv_tasks(jax.random.key(0), meta_batch, 5, shots, queries, image)
    return _meta_workload(learner, tasks, None)


def _meta_workload(learner, tasks, task_chunk):
    opt = optax.adam(1e-3)
    params = jax.jit(learner.init)(jax.random.key(1), fj.task_at(tasks, 0))
    state = fj.TrainState.create(learner, params, opt)
    step = fj.make_meta_step(learner, opt, task_chunk=task_chunk)
    return step, state, (tasks, jax.random.key(2))


def sinusoid_maml(dtype, *, meta_batch=25, hidden=(40, 40)):
    learner = fj.maml(fj.models.MLP(hidden, 1, dtype=dtype), "mse", 0.01, 1)
    source = functools.partial(fj.data.sinusoid_tasks, shots=10, queries=10)
    opt = optax.adam(1e-3)
    params = learner.init(jax.random.key(1), fj.task_at(source(jax.random.key(0), 1), 0))
    state = fj.TrainState.create(learner, params, opt)
    step = fj.make_meta_step(learner, opt, sampler=source, meta_batch=meta_batch)
    return step, state, (jax.random.key(2),)


MINILM = dict(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
)


def minilm_finetune(dtype, *, batch=32, length=64, config=None):
    config = BertConfig(**(config or MINILM))
    model = BertClassifier(config, 5, dtype=dtype)
    ids = jax.random.randint(jax.random.key(0), (batch, length), 1, config.vocab_size)
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, 5)
    params = jax.jit(model.init)(jax.random.key(2), ids)["params"]
    tx = optax.adamw(2e-5, weight_decay=0.01)

    def step(state, ids, labels, key):
        params, opt_state = state

        def loss_fn(p):
            logits = model.apply({"params": p}, ids, deterministic=False, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

    return jax.jit(step, donate_argnums=0), (params, tx.init(params)), (ids, labels, jax.random.key(3))


def workloads(dry_run: bool) -> dict[str, Callable]:
    if dry_run:  # tiny sizes: the same code paths in seconds
        tiny = dict(hidden=8, inner_steps=1, queries=2, image=16, blocks=2)
        return {
            "conv_maml_mb8": functools.partial(conv_maml, meta_batch=2, **tiny),
            "conv_maml_mb128_chunk32": functools.partial(conv_maml, meta_batch=4, task_chunk=2, **tiny),
            "sinusoid_maml": functools.partial(sinusoid_maml, meta_batch=2, hidden=(8,)),
            "protonet": functools.partial(protonet, meta_batch=2, hidden=8, image=16, shots=1, queries=2, blocks=2),
            "minilm_finetune": functools.partial(
                minilm_finetune,
                batch=2,
                length=8,
                config=dict(
                    MINILM,
                    vocab_size=100,
                    hidden_size=16,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=32,
                ),
            ),
        }
    return {
        "conv_maml_mb8": functools.partial(conv_maml, meta_batch=8),
        "conv_maml_mb32": functools.partial(conv_maml, meta_batch=32),
        "conv_maml_mb128": functools.partial(conv_maml, meta_batch=128),
        "conv_maml_mb128_chunk32": functools.partial(conv_maml, meta_batch=128, task_chunk=32),
        "sinusoid_maml": sinusoid_maml,
        "protonet": protonet,
        "minilm_finetune": minilm_finetune,
    }


def _cost(compiled) -> tuple[float, float]:
    analysis: Any = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return float(analysis.get("flops", float("nan"))), float(analysis.get("bytes accessed", float("nan")))


def measure(name: str, build: Callable, dtype_name: str, seconds: float, min_steps: int) -> dict:
    step, state, args = build(DTYPES[dtype_name])
    t0 = time.perf_counter()
    compiled = step.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    xla_flops, nbytes = _cost(compiled)
    # XLA's cost analysis counts a loop body once (the inner-loop scan, task chunks): the roofline uses matrix-product
    # FLOPs from the jaxpr with every scan body counted as often as it runs, and XLA's figure is kept beside it.
    flops, _ = count_matmul_flops(jax.make_jaxpr(step)(state, *args))
    flops = max(flops, 0.0)
    try:
        state, metrics = compiled(state, *args)  # warm-up: the first call allocates
        jax.block_until_ready(metrics)
    except jax.errors.JaxRuntimeError as exc:  # e.g. out of memory: the cost analysis still stands
        return _row(name, dtype_name, compile_s, flops, nbytes, xla_flops, error=str(exc).splitlines()[0][:160])
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        state, metrics = compiled(state, *args)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
        if len(times) >= 10_000:
            break
    loss = float(np.asarray(metrics["loss"]))
    return _row(name, dtype_name, compile_s, flops, nbytes, xla_flops, times=times, loss=loss)


def _row(name, dtype_name, compile_s, flops, nbytes, xla_flops, *, times=(), loss=float("nan"), error=None) -> dict:
    median = statistics.median(times) if times else float("nan")
    row: dict[str, Any] = {
        "workload": name,
        "dtype": dtype_name,
        "compile_s": compile_s,
        "steps_timed": len(times),
        "median_step_s": median,
        "steps_per_s": 1.0 / median,
        "gflop_per_step": flops / 1e9,
        "xla_cost_analysis_gflop": xla_flops / 1e9,
        "mb_per_step": nbytes / 1e6,
        "achieved_tflops": flops / median / 1e12,
        "loss_finite": bool(np.isfinite(loss)),
        "error": error,
        "roofline_steps_per_s": {},
    }
    for hw, peak in HARDWARE.items():
        bound = max(flops / peak[dtype_name], nbytes / peak["bandwidth"])
        row["roofline_steps_per_s"][hw] = 1.0 / bound if bound > 0 else float("nan")
    return row


def table(rows: list[dict], device: str) -> str:
    hws = list(HARDWARE)
    head = (
        "| workload | dtype | compile s | step ms | steps/s | GFLOP/step | MB/step | TFLOP/s | "
        + " | ".join(f"roofline steps/s {hw}" for hw in hws)
        + " |"
    )
    lines = [f"Device: {device}", "", head, "|" + "---|" * (8 + len(hws))]
    for r in rows:
        roof = " | ".join(f"{r['roofline_steps_per_s'][hw]:,.0f}" for hw in hws)
        if r.get("error"):
            timing = f"not run: {r['error'][:60]} | - | "
        else:
            timing = f"{1e3 * r['median_step_s']:.2f} | {r['steps_per_s']:,.1f} | "
        lines.append(
            f"| {r['workload']} | {r['dtype']} | {r['compile_s']:.1f} | {timing}{r['gflop_per_step']:.3f} | "
            f"{r['mb_per_step']:.1f} | {r['achieved_tflops']:.3f} | {roof} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes (seconds); nothing written to results/")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--only", default="", help="comma-separated workload name prefixes")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget per workload and dtype")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument(
        "--alternate-dtypes",
        action="store_true",
        help="run workload i in dtype i mod len(dtypes) only (the test suite's dry run: every code path, half the time)",
    )
    parser.add_argument("--out", help="JSON path (default benchmarks/results/accelerator_<platform>.json)")
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        parser.error(f"--dtypes: unknown {bad}; choose from {list(DTYPES)}")
    chosen = workloads(args.dry_run)
    if args.only:
        prefixes = [p.strip() for p in args.only.split(",") if p.strip()]
        chosen = {k: v for k, v in chosen.items() if any(k.startswith(p) for p in prefixes)}
        if not chosen:
            parser.error(f"--only {args.only!r} matches no workload of {list(workloads(args.dry_run))}")
    dev = jax.devices()[0]
    device = f"{dev.platform}: {dev.device_kind} x{jax.device_count()} (jax {jax.__version__}, {platform.machine()})"
    print(device, flush=True)
    rows = []
    seconds = 0.0 if args.dry_run else args.seconds
    min_steps = 1 if args.dry_run else args.min_steps
    for i, (name, build) in enumerate(chosen.items()):
        for dtype_name in [dtypes[i % len(dtypes)]] if args.alternate_dtypes else dtypes:
            row = measure(name, build, dtype_name, seconds, min_steps)
            rows.append(row)
            print(
                f"{name:26s} {dtype_name:8s} compile {row['compile_s']:6.1f} s  step {1e3 * row['median_step_s']:9.2f}"
                f" ms  {row['steps_per_s']:9.1f} steps/s  {row['gflop_per_step']:8.3f} GFLOP  "
                f"{row['achieved_tflops']:.3f} TFLOP/s",
                flush=True,
            )
    result = {"device": device, "dry_run": args.dry_run, "hardware_peaks": HARDWARE, "rows": rows}
    target = next((r for r in rows if (r["workload"], r["dtype"]) == TARGET[:2]), None)
    if target is not None:
        result["target"] = {"workload": TARGET[0], "dtype": TARGET[1], "aim_steps_per_s": TARGET[2]}
        result["target"]["measured_steps_per_s"] = target["steps_per_s"]
    out = args.out
    if out is None and not args.dry_run:
        out = os.path.join(RESULTS, f"accelerator_{dev.platform}.json")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.splitext(out)[0] + ".md", "w") as f:
            f.write(table(rows, device) + "\n")
        print(f"wrote {out}")
    print()
    print(table(rows, device))
    return result


if __name__ == "__main__":
    main()
