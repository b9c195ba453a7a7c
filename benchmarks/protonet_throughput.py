"""Prototypical-network meta-training throughput: fsl_jax vs plain PyTorch, same machine, same run.

    bash benchmarks/setup_bench_env.sh                 # once: .venv-bench with torch 2.13.0 CPU
    python benchmarks/protonet_throughput.py --quick   # ~3 min on a 2-core CPU
    python benchmarks/protonet_throughput.py --torch-python /path/to/python

Workloads: Conv-4 encoder (64 channels, batch norm with the statistics of the batch at hand, 28x28x1 inputs, 64-d
embedding), squared-Euclidean ProtoNet loss, Adam(1e-3) outer update in every step, random images.
  5way   5-way 5-shot 15-query, meta-batch 8 tasks (800 images a step)
  60way  60-way 5-shot 5-query, one task (600 images a step; Snell et al.'s Omniglot training episode)

Implementations, each in its own subprocess:
  fsl_jax        ``fj.make_meta_step(fj.protonet(Conv4()), adam)``: one jitted step, tasks vmap-ed; Conv4's automatic
                 convolution path (im2col + matmul on CPU)
  fsl_jax[xla]   the same with ``Conv4(conv_impl="xla")`` (XLA's convolution)
  torch          eager PyTorch: ``nn.Conv2d`` encoder, a Python loop over the tasks, ``loss.backward()``, Adam
Like fsl_jax's learner, every implementation embeds each task's support set and query set in separate encoder calls
(so batch norm uses each set's own statistics). Before timing, each implementation computes the gradient of one small
float64 problem (same weights and tasks); one that differs from fsl_jax's by more than 1e-6 (relative) is not timed.

Prints a markdown table; writes benchmarks/results/protonet_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from maml_throughput import (  # noqa: E402
    _flax_to_torch,
    _random_tasks,
    fmt,
    header,
    machine_info,
    peak_rss_mb,
    relative_error,
)

RESULTS = os.path.join(HERE, "results")
WORKLOADS = {
    "5way": dict(ways=5, shots=5, queries=15, meta_batch=8, channels=64, image=28, outer_lr=1e-3),
    "60way": dict(ways=60, shots=5, queries=5, meta_batch=1, channels=64, image=28, outer_lr=1e-3),
}
GRADCHECK = dict(ways=3, shots=2, queries=2, meta_batch=2, channels=8, image=28, outer_lr=1e-3)
IMPLS = ("fsl_jax", "fsl_jax[xla]", "torch")
GRAD_TOL = 1e-6


def random_tasks(cfg: dict, seed: int, dtype) -> dict:
    """NHWC images, labels grouped by class (fsl_jax's layout): the MAML benchmark's Conv-4 task generator."""
    return _random_tasks({**cfg, "workload": "conv"}, np.random.default_rng(seed), dtype)


# ======================================================================================================= fsl_jax side


def fsl_worker(spec: dict) -> dict:
    import jax

    if spec["mode"] == "gradcheck":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax

    import fsl_jax as fj

    cfg = spec["cfg"]
    dtype = jnp.float64 if spec["mode"] == "gradcheck" else jnp.float32
    conv_impl = "xla" if spec["impl"] == "fsl_jax[xla]" else "auto"
    learner = fj.protonet(fj.models.Conv4(hidden=cfg["channels"], conv_impl=conv_impl, dtype=dtype), cfg["ways"])
    arrays = random_tasks(cfg, 0, np.float64 if spec["mode"] == "gradcheck" else np.float32)
    tasks = fj.Task(**{k: jnp.asarray(v) for k, v in arrays.items()})
    params = learner.init(jax.random.key(0), fj.task_at(tasks, 0))
    if spec["mode"] == "gradcheck":
        from fsl_jax.train import batch_grads

        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        grads, _, _ = batch_grads(learner, params, tasks, jax.random.key(1))
        out = {f"param/{k}": v for k, v in _flax_to_torch(params["params"]).items()}
        out.update({f"data/{k}": v for k, v in arrays.items()})
        out.update({f"grad/{k}": v for k, v in _flax_to_torch(grads["params"]).items()})
        np.savez(spec["npz_out"], **out)
        return {"ok": True}

    tx = optax.adam(cfg["outer_lr"])
    state = fj.TrainState.create(learner, params, tx)
    step = fj.make_meta_step(learner, tx)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = step.lower(state, tasks, key).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, metrics = compiled(state, tasks, key)
    jax.block_until_ready((state, metrics))
    first = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        state, metrics = compiled(state, tasks, key)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        state, metrics = compiled(state, tasks, key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    if not bool(metrics["finite"]):
        raise FloatingPointError("non-finite loss or gradient")
    return {
        "compile_s": compile_s,
        "first_step_s": first,
        "step_s": statistics.median(times),
        "step_times_s": times,
        "peak_rss_mb": peak_rss_mb(),
    }


# ========================================================================================================= torch side


def torch_worker(spec: dict) -> dict:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    from maml_peers_torch import ConvBlock

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cfg = spec["cfg"]
    gradcheck = spec["mode"] == "gradcheck"
    dtype = torch.float64 if gradcheck else torch.float32

    class Encoder(tnn.Module):
        """fsl_jax.models.Conv4(num_classes=None, norm="batch"), NCHW, flattened channels-last like Flax."""

        def __init__(self, hidden):
            super().__init__()
            for i in range(4):
                setattr(self, f"block{i}", ConvBlock(1 if i == 0 else hidden, hidden))

        def forward(self, x):
            for i in range(4):
                x = getattr(self, f"block{i}")(x)
            return x.permute(0, 2, 3, 1).flatten(1)

    torch.manual_seed(0)
    model = Encoder(cfg["channels"]).to(dtype)
    if gradcheck:
        data = np.load(spec["npz_in"])
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(data[f"param/{name}"]))
        arrays = {k: data[f"data/{k}"] for k in ("support_x", "support_y", "query_x", "query_y")}
    else:
        arrays = random_tasks(cfg, 0, np.float32)
    sx, qx = (
        torch.from_numpy(np.ascontiguousarray(arrays[k].transpose(0, 1, 4, 2, 3))).to(dtype)
        for k in ("support_x", "query_x")
    )
    sy, qy = (torch.from_numpy(arrays[k].astype(np.int64)) for k in ("support_y", "query_y"))
    ways = cfg["ways"]

    def meta_loss():
        total = 0.0
        for t in range(sx.shape[0]):
            support = model(sx[t])
            onehot = F.one_hot(sy[t], ways).to(dtype)
            protos = onehot.T @ support / onehot.sum(0)[:, None]
            logits = -(model(qx[t])[:, None, :] - protos[None]).square().sum(-1)
            total = total + F.cross_entropy(logits, qy[t])
        return total / sx.shape[0]

    if gradcheck:
        meta_loss().backward()
        np.savez(spec["npz_out"], **{f"grad/{k}": p.grad.detach().numpy() for k, p in model.named_parameters()})
        return {"ok": True}

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["outer_lr"])

    def step():
        optimizer.zero_grad(set_to_none=True)
        meta_loss().backward()
        optimizer.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "compile_s": None,
        "first_step_s": first,
        "step_s": statistics.median(times),
        "step_times_s": times,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# ======================================================================================================= orchestrator


def run_worker(args, impl: str, spec: dict, label: str) -> dict:
    payload = json.dumps({**spec, "impl": impl, "threads": args.threads})
    python = sys.executable if impl.startswith("fsl_jax") else args.torch_python
    flag = "--fsl-worker" if impl.startswith("fsl_jax") else "--torch-worker"
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    print(f"  {label} ...", end="", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [python, os.path.abspath(__file__), flag, payload],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        print(f" timed out after {args.timeout} s")
        return {"error": f"timed out after {args.timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        print(f" FAILED (exit {proc.returncode}): {tail}")
        return {"error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1][len("RESULT ") :])
    if "step_s" in result:
        print(
            f" {result['step_s'] * 1e3:.1f} ms/step, peak RSS {result['peak_rss_mb']:.0f} MB "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    else:
        print(f" done ({time.perf_counter() - t0:.0f} s)")
    return result


def gradient_check(args, impls) -> dict:
    print("Gradient check (float64, same weights and tasks; reference: fsl_jax):")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = os.path.join(tmp, "fsl_jax.npz")
        res = run_worker(args, "fsl_jax", {"mode": "gradcheck", "cfg": GRADCHECK, "npz_out": ref_path}, "fsl_jax")
        if "error" in res:
            return {impl: {"ok": False, "error": res["error"]} for impl in impls}
        data = np.load(ref_path)
        ref = {k[len("grad/") :]: data[k] for k in data.files if k.startswith("grad/")}
        for impl in impls:
            out = os.path.join(tmp, f"{impl}.npz")
            if impl == "fsl_jax":
                report[impl] = {"ok": True, "rel_err": 0.0, "reference": True}
                continue
            spec = {"mode": "gradcheck", "cfg": GRADCHECK, "npz_in": ref_path, "npz_out": out}
            if impl == "fsl_jax[xla]":  # its own gradient, same weights (same init key and shapes)
                spec.pop("npz_in")
            res = run_worker(args, impl, spec, impl)
            if "error" in res:
                report[impl] = {"ok": False, "error": res["error"]}
                continue
            got = np.load(out)
            err, worst = relative_error({k[len("grad/") :]: got[k] for k in got.files if k.startswith("grad/")}, ref)
            report[impl] = {"ok": err <= GRAD_TOL, "rel_err": err, "worst": worst}
            print(f"    {impl:14s} max rel err {err:.2e}  {'ok' if err <= GRAD_TOL else 'REFUSED'}")
    return report


def table(rows: list[dict]) -> str:
    lines = header(
        "| workload | impl | images/step | compile s | median step ms | steps/s | images/s | vs torch | peak RSS MB |"
    )
    for r in rows:
        res = r["result"]
        if "step_s" not in res:
            lines.append(f"| {r['workload']} | {r['impl']} | {r['images']} | {res.get('error', '')[:60]} | | | | | |")
            continue
        lines.append(
            f"| {r['workload']} | {r['impl']} | {r['images']} | {fmt(res.get('compile_s'))} | "
            f"{res['step_s'] * 1e3:.1f} | {1 / res['step_s']:.2f} | {r['images'] / res['step_s']:.0f} | "
            f"{fmt(r.get('speedup_vs_torch'), '.2f')}x | {res['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer timed steps")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--torch-python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--out", default=os.path.join(RESULTS, "protonet_throughput.json"))
    p.add_argument("--fsl-worker", help=argparse.SUPPRESS)
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fsl_worker or args.torch_worker:
        spec = json.loads(args.fsl_worker or args.torch_worker)
        result = fsl_worker(spec) if args.fsl_worker else torch_worker(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    impls = [i for i in args.impls.split(",") if i]
    for impl in impls:
        if impl not in IMPLS:
            p.error(f"--impls: unknown implementation {impl!r}; choose from {IMPLS}")
    if "torch" in impls and not os.path.exists(args.torch_python):
        print(f"no bench interpreter at {args.torch_python} (run: bash benchmarks/setup_bench_env.sh): torch skipped")
        impls.remove("torch")
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"--workloads: unknown workload {w!r}; choose from {tuple(WORKLOADS)}")
    steps, warmup = (5, 2) if args.quick else (20, 3)
    t_start = time.perf_counter()
    grads = gradient_check(args, impls)
    rows = []
    print("Timing:")
    for w in workloads:
        cfg = WORKLOADS[w]
        images = cfg["meta_batch"] * cfg["ways"] * (cfg["shots"] + cfg["queries"])
        by_impl = {}
        for impl in impls:
            if not grads.get(impl, {}).get("ok"):
                res = {"error": f"not timed: gradient check failed ({grads.get(impl)})"}
            else:
                res = run_worker(
                    args, impl, {"mode": "time", "cfg": cfg, "steps": steps, "warmup": warmup}, f"{w} {impl}"
                )
            by_impl[impl] = res
            rows.append({"workload": w, "impl": impl, "config": cfg, "images": images, "result": res})
        torch_s = by_impl.get("torch", {}).get("step_s")
        for r in rows:
            if r["workload"] == w and torch_s and "step_s" in r["result"]:
                r["speedup_vs_torch"] = torch_s / r["result"]["step_s"]
    md = table(rows)
    print()
    print(md)
    doc = {
        "benchmark": "ProtoNet Conv-4 meta-training step (forward + backward + Adam)",
        "quick": args.quick,
        "command": "python benchmarks/protonet_throughput.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(None),
        "gradient_check": grads,
        "rows": rows,
        "total_seconds": time.perf_counter() - t_start,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    with open(os.path.splitext(args.out)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(md + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
