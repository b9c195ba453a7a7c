"""MAML meta-training throughput: fsl_jax vs PyTorch torch.func vs learn2learn, same machine, same run.

    bash benchmarks/setup_bench_env.sh                        # once: .venv-bench with torch 2.13.0 CPU (+ learn2learn)
    python benchmarks/maml_throughput.py --quick               # < 10 min on a 2-core CPU
    python benchmarks/maml_throughput.py                      # + meta-batch sweeps, fsl_jax memory options, plot
    python benchmarks/maml_throughput.py --torch-python /path/to/python --impls fsl_jax,torch_func

Workloads (second order, and first order):
  sinusoid  MLP 40-40, meta-batch 25, 10-shot / 10 query, 1 inner step, lr 0.01. fsl_jax samples the tasks inside its
            jitted step (``make_meta_step(..., sampler=partial(fj.data.sinusoid_tasks, ...))``); the torch peers
            sample them in torch every step.
  conv      Conv-4 (64 channels, batch norm with per-task batch statistics, no running statistics), 28x28x1, 5-way
            1-shot, 15 query per class, meta-batch 32, 5 inner steps, lr 0.4; random images of those shapes.
Every step includes the outer Adam(1e-3) update.

Each measurement runs in its own subprocess: fsl_jax with this interpreter, the torch peers
(``benchmarks/maml_peers_torch.py``) with ``--torch-python`` (default ``.venv-bench/bin/python``). Before timing, all
implementations compute the meta-gradient of one small float64 problem (same weights, exported from fsl_jax's Flax
params to torch layouts, same tasks); an implementation whose gradient differs from fsl_jax's by more than 1e-4
(relative) is not timed on that workload.

Writes benchmarks/results/maml_throughput.json (+ .md table, + a throughput-vs-meta-batch PNG in full mode).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _flops import count_matmul_flops  # noqa: E402 - the benchmarks folder, found from any working directory

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
PEERS = os.path.join(HERE, "maml_peers_torch.py")
IMPLS = ("fsl_jax", "torch_func", "torch_func_bn_ops", "learn2learn")
# torch_func_bn_ops differs from torch_func only in how batch norm is written: the sinusoid MLP has none.
ONLY_FOR = {"torch_func_bn_ops": ("conv",)}
GRAD_TOL = 1e-4
GRAD_FLOOR = 1e-3  # see relative_error

SINUSOID = dict(
    workload="sinusoid",
    hidden=[40, 40],
    shots=10,
    queries=10,
    inner_lr=0.01,
    inner_steps=1,
    meta_batch=25,
    outer_lr=1e-3,
)
CONV = dict(
    workload="conv",
    channels=64,
    ways=5,
    shots=1,
    queries=15,
    image=28,
    inner_lr=0.4,
    inner_steps=5,
    meta_batch=32,
    outer_lr=1e-3,
)
WORKLOADS = {"sinusoid": SINUSOID, "conv": CONV}
# The gradient check: the same workloads, shrunk (float64, 2 tasks, 8 units/channels), inner loop unchanged.
GRADCHECK_SHRINK = {"sinusoid": dict(hidden=[8, 8], meta_batch=2), "conv": dict(channels=8, meta_batch=2, queries=3)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ===================================================================================================== fsl_jax worker


def _flax_to_torch(params: dict) -> dict:
    """Flax params (MLP / Conv4) -> {torch parameter name: array in torch layout}."""
    out = {}

    def visit(tree, path):
        for key, value in tree.items():
            if isinstance(value, dict):
                visit(value, path + [key])
                continue
            value = np.asarray(value)
            if key == "kernel" and value.ndim == 4:  # conv HWIO -> OIHW
                name, value = "weight", value.transpose(3, 2, 0, 1)
            elif key == "kernel":  # dense [in, out] -> [out, in]
                name, value = "weight", value.T
            elif key == "scale":
                name = "weight"
            else:
                name = key
            out[".".join(path + [name])] = np.ascontiguousarray(value)

    visit(params, [])
    return out


def _fsl_setup(cfg: dict, dtype, remat: bool):
    import fsl_jax as fj

    if cfg["workload"] == "sinusoid":
        model, loss = fj.models.MLP(tuple(cfg["hidden"]), 1, dtype=dtype), "mse"
    else:
        model, loss = (
            fj.models.Conv4(num_classes=cfg["ways"], hidden=cfg["channels"], norm="batch", dtype=dtype),
            "xent",
        )
    learner = fj.maml(
        model,
        loss,
        inner_lr=cfg["inner_lr"],
        inner_steps=cfg["inner_steps"],
        first_order=cfg["first_order"],
        remat=remat,
    )
    return fj, learner


def _random_tasks(cfg: dict, rng: np.random.Generator, dtype):
    """Task arrays in fsl_jax's layout (NHWC images; labels grouped by class)."""
    t = cfg["meta_batch"]
    if cfg["workload"] == "sinusoid":
        s, q = cfg["shots"], cfg["queries"]
        amp = rng.uniform(0.1, 5.0, (t, 1, 1))
        phase = rng.uniform(0.0, np.pi, (t, 1, 1))
        x = rng.uniform(-5.0, 5.0, (t, s + q, 1))
        y = amp * np.sin(x - phase)
        return {
            "support_x": x[:, :s].astype(dtype),
            "support_y": y[:, :s].astype(dtype),
            "query_x": x[:, s:].astype(dtype),
            "query_y": y[:, s:].astype(dtype),
        }
    w, s, q, size = cfg["ways"], cfg["shots"], cfg["queries"], cfg["image"]
    return {
        "support_x": rng.uniform(0, 1, (t, w * s, size, size, 1)).astype(dtype),
        "support_y": np.tile(np.repeat(np.arange(w, dtype=np.int32), s), (t, 1)),
        "query_x": rng.uniform(0, 1, (t, w * q, size, size, 1)).astype(dtype),
        "query_y": np.tile(np.repeat(np.arange(w, dtype=np.int32), q), (t, 1)),
    }


def fsl_gradcheck(spec: dict) -> dict:
    """Float64 meta-gradient with ``fsl_jax.train.batch_grads`` (what ``make_meta_step`` differentiates), plus the
    same gradient with task_chunk=1 and remat=True; writes weights, tasks and gradients (torch layouts)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from fsl_jax.train import batch_grads

    cfg = spec["cfg"]
    fj, learner = _fsl_setup(cfg, jnp.float64, remat=False)
    arrays = _random_tasks(cfg, np.random.default_rng(spec.get("seed", 0)), np.float64)
    tasks = fj.Task(**{k: jnp.asarray(v) for k, v in arrays.items()})
    params = learner.init(jax.random.key(0), fj.task_at(tasks, 0))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
    key = jax.random.key(1)
    grads, _, _ = batch_grads(learner, params, tasks, key)
    out = {f"param/{k}": v for k, v in _flax_to_torch(params["params"]).items()}
    out.update({f"data/{k}": v for k, v in arrays.items()})
    out.update({f"grad/{k}": v for k, v in _flax_to_torch(grads["params"]).items()})
    chunked, _, _ = batch_grads(learner, params, tasks, key, task_chunk=1)
    out.update({f"variant/task_chunk=1/{k}": v for k, v in _flax_to_torch(chunked["params"]).items()})
    _, remat_learner = _fsl_setup(cfg, jnp.float64, remat=True)
    remat_grads, _, _ = batch_grads(remat_learner, params, tasks, key)
    out.update({f"variant/remat/{k}": v for k, v in _flax_to_torch(remat_grads["params"]).items()})
    np.savez(spec["npz_out"], **out)
    return {"ok": True}


def fsl_timing(spec: dict) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    cfg = spec["cfg"]
    fj, learner = _fsl_setup(cfg, jnp.float32, remat=spec.get("remat", False))
    tx = optax.adam(cfg["outer_lr"])
    key = jax.random.key(0)
    chunk = spec.get("task_chunk")
    if cfg["workload"] == "sinusoid":
        source = functools.partial(fj.data.sinusoid_tasks, shots=cfg["shots"], queries=cfg["queries"])
        params = learner.init(key, fj.task_at(source(key, 1), 0))
        step = fj.make_meta_step(learner, tx, sampler=source, meta_batch=cfg["meta_batch"], task_chunk=chunk)
        args = (jax.random.key(1),)
    else:
        arrays = _random_tasks(cfg, np.random.default_rng(0), np.float32)
        tasks = fj.Task(**{k: jnp.asarray(v) for k, v in arrays.items()})
        params = learner.init(key, fj.task_at(tasks, 0))
        step = fj.make_meta_step(learner, tx, task_chunk=chunk)
        args = (tasks, jax.random.key(1))
    state = fj.TrainState.create(learner, params, tx)
    jaxpr_flops, unknown_loops = count_matmul_flops(jax.make_jaxpr(step)(state, *args))
    rss_before = peak_rss_mb()

    t0 = time.perf_counter()
    compiled = step.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    rss_compile = peak_rss_mb()

    t0 = time.perf_counter()
    state, metrics = compiled(state, *args)
    jax.block_until_ready((state, metrics))
    first = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        state, metrics = compiled(state, *args)
    jax.block_until_ready((state, metrics))
    times = []
    deadline = time.perf_counter() + spec.get("max_seconds", 1e9)
    for i in range(spec["steps"]):
        t0 = time.perf_counter()
        state, metrics = compiled(state, *args)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline and i >= 1:
            break
    if not bool(metrics["finite"]):
        raise FloatingPointError("non-finite loss or gradient")
    return {
        "compile_s": compile_s,
        "first_step_s": first,
        "step_s": statistics.median(times),
        "step_times_s": times,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_before_compile_mb": rss_before,
        "peak_rss_after_compile_mb": rss_compile,
        "matmul_flops": jaxpr_flops,
        "matmul_flops_has_while_loop": unknown_loops,
        "xla_flops": float(cost.get("flops", float("nan"))) if cost else None,
        "xla_temp_mb": memory.temp_size_in_bytes / 2**20 if memory is not None else None,
        "xla_argument_mb": memory.argument_size_in_bytes / 2**20 if memory is not None else None,
    }


def fsl_worker(spec: dict) -> dict:
    return fsl_gradcheck(spec) if spec["mode"] == "gradcheck" else fsl_timing(spec)


# ======================================================================================================= orchestrator


def machine_info(torch_probe: dict | None) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import importlib.metadata as md

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    mem_gb = None
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "torch": (torch_probe or {}).get("torch"),
        "torch_python": (torch_probe or {}).get("python"),
        "torch_threads": (torch_probe or {}).get("threads"),
        "learn2learn": (torch_probe or {}).get("learn2learn") or (torch_probe or {}).get("learn2learn_unavailable"),
        "loadavg_at_start": os.getloadavg(),
    }


class Runner:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ)
        if args.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                self.env[var] = str(args.threads)
            if args.threads == 1:
                flags = self.env.get("XLA_FLAGS", "")
                self.env["XLA_FLAGS"] = (
                    flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
                ).strip()
        self.env["JAX_PLATFORMS"] = self.env.get("JAX_PLATFORMS", "cpu")

    def command(self, impl: str, spec: dict) -> list[str]:
        payload = json.dumps({**spec, "impl": impl, "threads": self.args.threads})
        if impl == "fsl_jax":
            return [sys.executable, os.path.abspath(__file__), "--worker", payload]
        return [self.args.torch_python, PEERS, "--spec", payload]

    def run(self, impl: str, spec: dict, label: str) -> dict:
        t0 = time.perf_counter()
        load = os.getloadavg()[0]
        print(f"  {label} ...", end="", flush=True)
        try:
            proc = subprocess.run(
                self.command(impl, spec),
                capture_output=True,
                text=True,
                env=self.env,
                cwd=ROOT,
                timeout=self.args.timeout,
            )
        except subprocess.TimeoutExpired:
            print(f" timed out after {self.args.timeout} s")
            return {"error": f"timed out after {self.args.timeout} s"}
        wall = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            why = f"exit {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode in (-9, 137) else "")
            print(f" FAILED ({why}): {tail}")
            return {"error": f"{why}: {tail}"}
        result = json.loads(lines[-1][len("RESULT ") :])
        result["wall_s"] = wall
        result["loadavg_1min_before"] = load
        if "step_s" in result:
            print(f" {result['step_s'] * 1e3:.1f} ms/step, peak RSS {result['peak_rss_mb']:.0f} MB ({wall:.0f} s)")
        else:
            print(f" done ({wall:.0f} s)")
        return result


def probe_torch(python: str) -> dict:
    if not os.path.exists(python):
        return {"unavailable": f"no bench interpreter at {python} (run: bash benchmarks/setup_bench_env.sh)"}
    try:
        proc = subprocess.run([python, PEERS, "--probe"], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"unavailable": "probe timed out"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"unavailable": (proc.stderr.strip().splitlines() or ["probe failed"])[-1][:300]}
    return json.loads(lines[-1][len("RESULT ") :])


def relative_error(grads: dict, ref: dict) -> tuple[float, str]:
    """max over parameter tensors t of max|g_t - ref_t| / max(max|ref_t|, FLOOR * max_t' max|ref_t'|), and the worst t.

    Each tensor is compared with its own scale, except tensors whose gradient is (near) zero, which are compared with
    FLOOR times the largest gradient entry: a conv bias followed by batch norm has an exactly zero gradient in exact
    arithmetic (the normalisation removes it), so its computed gradient is rounding noise in every implementation.
    """
    scale = max(float(np.max(np.abs(r))) for r in ref.values())
    worst, worst_name = 0.0, ""
    for name, r in ref.items():
        if name not in grads:
            return float("inf"), f"{name} missing"
        g = np.asarray(grads[name], np.float64)
        if g.shape != r.shape:
            return float("inf"), f"{name}: shape {g.shape} != {r.shape}"
        denom = max(float(np.max(np.abs(r))), GRAD_FLOOR * scale, 1e-300)
        err = float(np.max(np.abs(g - r))) / denom
        if not err <= worst:  # also catches NaN
            worst, worst_name = err, name
    return worst, worst_name


def gradient_check(
    runner: Runner, impls: list[str], unavailable: dict, workloads: list[str], orders: list[bool]
) -> dict:
    print("Gradient check (float64, same weights and tasks; reference: fsl_jax):")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workload in workloads:
            for first_order in orders:
                key = f"{workload}/{'first' if first_order else 'second'}"
                cfg = {**WORKLOADS[workload], **GRADCHECK_SHRINK[workload], "first_order": first_order}
                ref_path = os.path.join(tmp, f"{workload}_{first_order}_fsl.npz")
                res = runner.run("fsl_jax", {"mode": "gradcheck", "cfg": cfg, "npz_out": ref_path}, f"{key} fsl_jax")
                entry = {"config": cfg}
                if "error" in res:
                    entry["fsl_jax"] = {"ok": False, "error": res["error"]}
                    report[key] = entry
                    continue
                data = np.load(ref_path)
                ref = {k[len("grad/") :]: data[k] for k in data.files if k.startswith("grad/")}
                entry["reference_max_abs_grad"] = {k: float(np.max(np.abs(v))) for k, v in ref.items()}
                entry["fsl_jax"] = {"ok": True, "rel_err": 0.0, "reference": True}
                for variant in ("task_chunk=1", "remat"):
                    prefix = f"variant/{variant}/"
                    got = {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
                    err, name = relative_error(got, ref)
                    entry[f"fsl_jax[{variant}]"] = {"ok": err <= GRAD_TOL, "rel_err": err, "worst": name}
                for impl in impls:
                    if impl == "fsl_jax" or workload not in ONLY_FOR.get(impl, (workload,)):
                        continue
                    if impl in unavailable:
                        entry[impl] = {"ok": False, "error": f"unavailable: {unavailable[impl]}"}
                        continue
                    out_path = os.path.join(tmp, f"{workload}_{first_order}_{impl}.npz")
                    res = runner.run(
                        impl,
                        {"mode": "gradcheck", "cfg": cfg, "npz_in": ref_path, "npz_out": out_path},
                        f"{key} {impl}",
                    )
                    if "error" in res:
                        entry[impl] = {"ok": False, "error": res["error"]}
                        continue
                    got = np.load(out_path)
                    err, name = relative_error({k[len("grad/") :]: got[k] for k in got.files}, ref)
                    entry[impl] = {"ok": err <= GRAD_TOL, "rel_err": err, "worst": name}
                for impl, e in entry.items():
                    if not isinstance(e, dict) or "ok" not in e:
                        continue
                    if "rel_err" in e:
                        flag = "ok" if e["ok"] else f"REFUSED (> {GRAD_TOL:g}; worst tensor {e['worst']})"
                        print(f"    {key:18s} {impl:24s} max rel err {e['rel_err']:.2e}  {flag}")
                    else:
                        print(f"    {key:18s} {impl:24s} {e['error']}")
                report[key] = entry
    return report


def fmt(value, spec=".1f", missing="-"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def header(head: str) -> list[str]:
    """A markdown table's header line and its ``|---|`` separator, one column per cell of ``head``."""
    return [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]


def table_main(rows: list[dict]) -> str:
    head = (
        "| workload | order | impl | meta-batch | grad rel err | compile s | first step s | median step ms | "
        "steps/s | tasks/s | peak RSS MB | GFLOP/step |"
    )
    lines = header(head)
    for r in rows:
        res = r["result"]
        if "step_s" not in res:
            cells = [
                r["workload"],
                r["order"],
                r["impl"],
                str(r["meta_batch"]),
                fmt(r.get("grad_rel_err"), ".1e"),
                res.get("error", "")[:80],
            ] + [""] * 6
        else:
            cells = [
                r["workload"],
                r["order"],
                r["impl"],
                str(r["meta_batch"]),
                fmt(r.get("grad_rel_err"), ".1e"),
                fmt(res.get("compile_s"), ".1f"),
                fmt(res["first_step_s"], ".2f"),
                fmt(res["step_s"] * 1e3, ".1f"),
                fmt(1 / res["step_s"], ".2f" if res["step_s"] > 0.1 else ".0f"),
                fmt(r["meta_batch"] / res["step_s"], ".1f" if res["step_s"] > 0.1 else ".0f"),
                fmt(res["peak_rss_mb"], ".0f"),
                fmt(res["matmul_flops"] / 1e9 if res.get("matmul_flops") else None, ".3g"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_explore(rows: list[dict]) -> str:
    head = (
        "| fsl_jax option (conv, second order, meta-batch 32) | compile s | median step s | peak RSS MB | "
        "XLA temp MB | GFLOP/step (jaxpr) | XLA cost_analysis GFLOP |"
    )
    lines = header(head)
    for r in rows:
        res = r["result"]
        if "step_s" not in res:
            lines.append(f"| {r['variant']} | {res.get('error', '')[:80]} | | | | | |")
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    r["variant"],
                    fmt(res["compile_s"], ".1f"),
                    fmt(res["step_s"], ".2f"),
                    fmt(res["peak_rss_mb"], ".0f"),
                    fmt(res.get("xla_temp_mb"), ".0f"),
                    fmt(res["matmul_flops"] / 1e9, ".1f"),
                    fmt(res["xla_flops"] / 1e9 if res.get("xla_flops") else None, ".1f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def table_sweep(rows: list[dict]) -> str:
    groups: dict = {}
    sizes: set = set()
    for r in rows:
        if "step_s" in r["result"]:
            groups.setdefault((r["workload"], r["order"], r["impl"]), {})[r["meta_batch"]] = (
                r["meta_batch"] / r["result"]["step_s"]
            )
            sizes.add(r["meta_batch"])
    sizes_sorted = sorted(sizes)
    head = "| workload | order | impl | " + " | ".join(f"mb {s}" for s in sizes_sorted) + " |"
    lines = ["tasks/s by meta-batch size:", "", *header(head)]
    for (w, o, i), by in groups.items():
        lines.append(f"| {w} | {o} | {i} | " + " | ".join(fmt(by.get(s), ".1f") for s in sizes_sorted) + " |")
    return "\n".join(lines)


def plot_sweep(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({(r["workload"], r["order"]) for r in rows})
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4), squeeze=False)
    for ax, (w, o) in zip(axes[0], workloads):
        for impl in IMPLS:
            pts = sorted(
                (r["meta_batch"], r["meta_batch"] / r["result"]["step_s"])
                for r in rows
                if (r["workload"], r["order"], r["impl"]) == (w, o, impl) and "step_s" in r["result"]
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("meta-batch size (tasks per step)")
        ax.set_ylabel("tasks / s")
        ax.set_title(f"{w}, {o} order")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("MAML meta-training throughput (CPU; higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, trimmed sweeps (< 10 min on 2 CPU cores)")
    parser.add_argument(
        "--torch-python",
        default=os.path.join(ROOT, ".venv-bench", "bin", "python"),
        help="interpreter with torch (and learn2learn) for the peers",
    )
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    parser.add_argument("--workloads", default="sinusoid,conv")
    parser.add_argument("--orders", default="second,first")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="0: each framework's default; N: OMP/MKL threads and torch.set_num_threads(N); "
        "1 also turns off XLA:CPU's intra-op thread pool",
    )
    parser.add_argument("--skip-gradcheck", action="store_true", help="time everything without the gradient check")
    parser.add_argument("--gradcheck-only", action="store_true", help="run the gradient check and stop")
    parser.add_argument("--no-explore", action="store_true", help="skip fsl_jax's task_chunk / remat runs")
    parser.add_argument(
        "--head-to-head",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only: ROUNDS interleaved rounds of learn2learn vs fsl_jax (task_chunk=1, 2) on the conv "
        "workload, second order; writes maml_head_to_head.json",
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = fsl_worker(json.loads(args.worker))
        print("RESULT " + json.dumps(result), flush=True)
        return

    t_start = time.perf_counter()
    impls = [i for i in args.impls.split(",") if i]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        parser.error(f"unknown impls {bad}; choose from {IMPLS}")
    workloads = [w for w in args.workloads.split(",") if w]
    orders = [o == "first" for o in args.orders.split(",") if o]
    os.makedirs(args.out, exist_ok=True)
    runner = Runner(args)

    probe = probe_torch(args.torch_python) if set(impls) - {"fsl_jax"} else {}
    unavailable = {}
    if "unavailable" in probe:
        unavailable.update({i: probe["unavailable"] for i in impls if i != "fsl_jax"})
    elif "learn2learn_unavailable" in probe:
        unavailable["learn2learn"] = probe["learn2learn_unavailable"]
    info = machine_info(probe)
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores; jax {info['jax']}, torch {info['torch']}; "
        f"learn2learn: {info['learn2learn']}; load average {info['loadavg_at_start'][0]:.2f}"
    )
    for impl, why in unavailable.items():
        print(f"  {impl}: unavailable: {why}")

    gradcheck = {} if args.skip_gradcheck else gradient_check(runner, impls, unavailable, workloads, orders)
    if args.gradcheck_only:
        path = os.path.join(args.out, "maml_gradcheck.json")
        with open(path, "w") as f:
            json.dump({"machine": info, "tolerance": GRAD_TOL, "gradcheck": gradcheck}, f, indent=1, default=str)
        print(f"wrote {path}")
        return

    if args.head_to_head:
        head_to_head(runner, args.head_to_head, unavailable, info, gradcheck, args.out)
        return

    quick = args.quick
    plan = {  # (warm-up steps after the first, timed steps, time cap of the timed loop in s)
        "sinusoid": (5, 30, 20) if quick else (10, 200, 60),
        "conv": (1, 3, 60) if quick else (1, 5, 120),
    }
    sweeps = {
        "sinusoid": [1, 8, 25] if quick else [1, 4, 8, 16, 25, 32],
        "conv": [32] if quick else [1, 4, 8, 16, 32],
    }
    rows, sweep_rows = [], []
    print("Timing:")
    for workload in workloads:
        warmup, steps, cap = plan[workload]
        for first_order in orders:
            order = "first" if first_order else "second"
            key = f"{workload}/{order}"
            # quick: the sweep only for second order (first order at the headline meta-batch)
            sizes = sweeps[workload] if (not quick or not first_order) else [WORKLOADS[workload]["meta_batch"]]
            if WORKLOADS[workload]["meta_batch"] not in sizes:
                sizes = sorted(set(sizes) | {WORKLOADS[workload]["meta_batch"]})
            for impl in impls:
                if workload not in ONLY_FOR.get(impl, (workload,)):
                    continue
                check = gradcheck.get(key, {}).get(impl)
                rel = check.get("rel_err") if check else None
                if impl in unavailable:
                    result = {"error": f"unavailable: {unavailable[impl]}"}
                    rows.append(
                        dict(
                            workload=workload,
                            order=order,
                            impl=impl,
                            meta_batch=WORKLOADS[workload]["meta_batch"],
                            grad_rel_err=rel,
                            result=result,
                        )
                    )
                    continue
                if check is not None and not check.get("ok"):
                    why = (
                        check.get("error")
                        or f"gradient differs from fsl_jax's by {check['rel_err']:.2e} > {GRAD_TOL:g}"
                    )
                    print(f"  {key} {impl}: not timed: {why}")
                    rows.append(
                        dict(
                            workload=workload,
                            order=order,
                            impl=impl,
                            meta_batch=WORKLOADS[workload]["meta_batch"],
                            grad_rel_err=rel,
                            result={"error": f"not timed: {why}"},
                        )
                    )
                    continue
                for mb in sizes:
                    cfg = {**WORKLOADS[workload], "meta_batch": mb, "first_order": first_order}
                    spec = {"mode": "time", "cfg": cfg, "warmup": warmup, "steps": steps, "max_seconds": cap}
                    result = runner.run(impl, spec, f"{key} {impl} meta-batch {mb}")
                    row = dict(
                        workload=workload, order=order, impl=impl, meta_batch=mb, grad_rel_err=rel, result=result
                    )
                    sweep_rows.append(row)
                    if mb == WORKLOADS[workload]["meta_batch"]:
                        rows.append(row)

    explore = []
    if "conv" in workloads and False in orders and "fsl_jax" in impls and not args.no_explore:
        print("fsl_jax memory options (conv, second order, meta-batch 32):")
        warmup, steps, cap = plan["conv"]
        base = next((r for r in rows if (r["workload"], r["order"], r["impl"]) == ("conv", "second", "fsl_jax")), None)
        if base is not None:
            explore.append({"variant": "default (vmap over all 32 tasks)", "result": base["result"]})
        variants = [
            ("task_chunk=1", {"task_chunk": 1}),
            ("task_chunk=2", {"task_chunk": 2}),
            ("task_chunk=4", {"task_chunk": 4}),
        ]
        if not quick:
            variants += [
                ("task_chunk=8", {"task_chunk": 8}),
                ("task_chunk=32", {"task_chunk": 32}),
                ("remat=True, task_chunk=8", {"remat": True, "task_chunk": 8}),
            ]
        variants.append(("remat=True", {"remat": True}))
        for name, options in variants:
            cfg = {**CONV, "first_order": False}
            result = runner.run(
                "fsl_jax",
                {"mode": "time", "cfg": cfg, "warmup": warmup, "steps": steps, "max_seconds": cap, **options},
                f"conv/second fsl_jax {name}",
            )
            explore.append({"variant": name, **options, "result": result})

    md = ["## MAML throughput", "", table_main(rows), ""]
    if len({r["meta_batch"] for r in sweep_rows}) > 2:
        md += [table_sweep(sweep_rows), ""]
    if explore:
        md += [table_explore(explore), ""]
    text = "\n".join(md)
    print()
    print(text)
    plot = None
    if not quick and sweep_rows:
        plot = os.path.join(args.out, "maml_throughput.png")
        plot_sweep(sweep_rows, plot)
        print(f"plot: {plot}")
    payload = {
        "machine": {**info, "loadavg_at_end": os.getloadavg()},
        "mode": "quick" if quick else "full",
        "threads": args.threads or "framework default",
        "workloads": {w: WORKLOADS[w] for w in workloads},
        "gradcheck_tolerance": GRAD_TOL,
        "gradcheck": gradcheck,
        "runs": rows,
        "sweep": sweep_rows,
        "fsl_jax_memory_options": explore,
        "plot": os.path.relpath(plot, ROOT) if plot else None,
        "total_seconds": time.perf_counter() - t_start,
        "notes": [
            "Shared CPU: other processes may run at the same time; loadavg_1min_before is recorded for every run.",
            "GFLOP/step counts matmul/conv FLOPs only (2*M*N*K): fsl_jax from the step's jaxpr with scan bodies "
            "multiplied by their length, torch from torch.utils.flop_counter.FlopCounterMode over one step.",
            "xla_flops is XLA's cost_analysis, which counts a while-loop (lax.scan) body once.",
        ],
    }
    with open(os.path.join(args.out, "maml_throughput.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    with open(os.path.join(args.out, "maml_throughput.md"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.join(args.out, 'maml_throughput.json')} ({time.perf_counter() - t_start:.0f} s in all)")


def head_to_head(runner: Runner, rounds: int, unavailable: dict, info: dict, gradcheck: dict, out: str) -> None:
    """Conv-4 second order, meta-batch 32: learn2learn and fsl_jax's memory-bounded settings timed in turn, round after
    round, so that a slow spell of a shared machine hits every contender; per-round ratios and their median."""
    if "learn2learn" in unavailable:
        raise SystemExit(f"learn2learn unavailable: {unavailable['learn2learn']}")
    contenders = [
        ("learn2learn", "learn2learn", {}),
        ("fsl_jax task_chunk=2", "fsl_jax", {"task_chunk": 2}),
        ("fsl_jax task_chunk=1", "fsl_jax", {"task_chunk": 1}),
    ]
    cfg = {**CONV, "first_order": False}
    results = {name: [] for name, _, _ in contenders}
    print(f"Head to head, conv/second, meta-batch {cfg['meta_batch']}, {rounds} rounds:")
    for r in range(rounds):
        for name, impl, options in contenders:
            spec = {"mode": "time", "cfg": cfg, "warmup": 1, "steps": 5, "max_seconds": 120, **options}
            results[name].append(runner.run(impl, spec, f"round {r + 1} {name}"))
    lines = [
        "| contender | step s, each round | median step s | peak RSS MB (max) | learn2learn time / this time, "
        "each round | median ratio | memory / learn2learn's |",
        "|---|---|---|---|---|---|---|",
    ]
    base = [res.get("step_s") for res in results["learn2learn"]]
    base_rss = max(res.get("peak_rss_mb", 0) for res in results["learn2learn"])
    summary = {}
    for name, _, _ in contenders:
        steps = [res.get("step_s") for res in results[name]]
        if None in steps or None in base:
            lines.append(f"| {name} | failed | | | | | |")
            continue
        ratios = [b / t for b, t in zip(base, steps)]
        rss = max(res["peak_rss_mb"] for res in results[name])
        summary[name] = {
            "step_s": steps,
            "median_step_s": statistics.median(steps),
            "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "peak_rss_mb": rss,
            "memory_vs_learn2learn": rss / base_rss,
        }
        each = ", ".join(f"{t:.2f}" for t in steps)
        lines.append(
            f"| {name} | {each} | {statistics.median(steps):.2f} | {rss:.0f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f}x | "
            f"{rss / base_rss:.1f}x |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    path = os.path.join(out, "maml_head_to_head.json")
    with open(path, "w") as f:
        json.dump(
            {
                "command": f"python benchmarks/maml_throughput.py --head-to-head {rounds}",
                "machine": info,
                "workload": cfg,
                "gradcheck": gradcheck,
                "results": results,
                "summary": summary,
                "table": table,
            },
            f,
            indent=1,
            default=str,
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
