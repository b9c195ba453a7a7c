"""PyTorch peers of the MAML benchmark: torch.func (functional_call + vmap + grad) and learn2learn.

Implementations (``spec["impl"]``): ``torch_func`` (batch norm via ``F.batch_norm``), ``torch_func_bn_ops`` (the
same with batch norm written as tensor ops: see :class:`BatchStatNorm`) and ``learn2learn``
(``l2l.algorithms.MAML(model, lr, first_order).clone().adapt(loss)``, one task at a time).

Run by ``benchmarks/maml_throughput.py`` with the bench interpreter (``.venv-bench/bin/python``), one subprocess per
measurement; it needs only torch and numpy (and learn2learn for that peer), never jax or fsl_jax.

    .venv-bench/bin/python benchmarks/maml_peers_torch.py --probe
    .venv-bench/bin/python benchmarks/maml_peers_torch.py --spec '{"impl": "torch_func", "mode": "time", ...}'

The models mirror ``fsl_jax.models.MLP`` and ``fsl_jax.models.Conv4(norm="batch")`` exactly (same parameter names,
torch layouts): Conv-4 blocks are conv 3x3 (padding 1) -> batch norm with the statistics of the batch at hand
(``F.batch_norm(x, None, None, weight, bias, training=True)``, no running statistics: those cannot be updated
under ``vmap``) -> ReLU -> 2x2 max-pool; the embedding is flattened channels-last like Flax's. Under ``vmap``,
``F.batch_norm``'s second-order gradient is wrong, which the gradient check catches: ``torch_func_bn_ops`` is the
torch.func peer whose gradient is right. The last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------------------------------------- models


class MLP(nn.Module):
    """fsl_jax.models.MLP: Linear layers dense0, dense1, ... and head, ReLU between."""

    def __init__(self, hidden, out=1, inp=1):
        super().__init__()
        widths = [inp, *hidden]
        for i in range(len(hidden)):
            setattr(self, f"dense{i}", nn.Linear(widths[i], widths[i + 1]))
        self.depth = len(hidden)
        self.head = nn.Linear(widths[-1], out)

    def forward(self, x):
        for i in range(self.depth):
            x = F.relu(getattr(self, f"dense{i}")(x))
        return self.head(x)


class BatchStatNorm(nn.Module):
    """Batch norm with the current batch's statistics and a learned scale/bias; no running statistics.

    ``ops=False``: ``F.batch_norm(x, None, None, weight, bias, training=True)`` (torch's batch-norm kernel).
    ``ops=True``: the same function written as mean / variance / rsqrt tensor ops. Under ``torch.func.vmap`` the
    second-order gradient through ``F.batch_norm`` is wrong (torch 2.13: ~4 % off in float64; the benchmark's
    gradient check shows it), while the ops version is exact; without vmap both are exact.
    """

    def __init__(self, channels, eps=1e-5, ops=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.ops = ops

    def forward(self, x):
        if not self.ops:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        centred = x - mean
        var = centred.square().mean(dim=(0, 2, 3), keepdim=True)
        return centred * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class ConvBlock(nn.Module):
    def __init__(self, cin, cout, bn_ops=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = BatchStatNorm(cout, ops=bn_ops)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.norm(self.conv(x))), 2)


class Conv4(nn.Module):
    """fsl_jax.models.Conv4(num_classes, hidden, norm="batch") on NCHW inputs."""

    def __init__(self, num_classes, hidden=64, in_channels=1, image=28, blocks=4, bn_ops=False):
        super().__init__()
        size = image
        for i in range(blocks):
            setattr(self, f"block{i}", ConvBlock(in_channels if i == 0 else hidden, hidden, bn_ops))
            size //= 2
        self.blocks = blocks
        self.head = nn.Linear(hidden * size * size, num_classes)

    def forward(self, x):
        for i in range(self.blocks):
            x = getattr(self, f"block{i}")(x)
        return self.head(x.permute(0, 2, 3, 1).flatten(1))  # channels-last flatten, as Flax


def build_model(cfg, bn_ops=False):
    if cfg["workload"] == "sinusoid":
        return MLP(cfg["hidden"]), F.mse_loss
    return Conv4(cfg["ways"], cfg["channels"], image=cfg["image"], bn_ops=bn_ops), F.cross_entropy


# ------------------------------------------------------------------------------------------------------------- data


def sinusoid_batch(cfg, generator):
    """MAML sinusoid tasks, sampled in torch every step (fsl_jax samples inside its jitted step)."""
    t, s, q = cfg["meta_batch"], cfg["shots"], cfg["queries"]
    amp = torch.rand(t, generator=generator) * 4.9 + 0.1
    phase = torch.rand(t, generator=generator) * math.pi
    x = torch.rand(t, s + q, 1, generator=generator) * 10.0 - 5.0
    y = amp[:, None, None] * torch.sin(x - phase[:, None, None])
    return x[:, :s], y[:, :s], x[:, s:], y[:, s:]


def conv_batch(cfg, generator):
    """Random images of the benchmark's shapes, labels grouped by class as fsl_jax's samplers produce them."""
    t, w, s, q, size = cfg["meta_batch"], cfg["ways"], cfg["shots"], cfg["queries"], cfg["image"]
    sx = torch.rand(t, w * s, 1, size, size, generator=generator)
    qx = torch.rand(t, w * q, 1, size, size, generator=generator)
    sy = torch.arange(w).repeat_interleave(s).expand(t, -1).contiguous()
    qy = torch.arange(w).repeat_interleave(q).expand(t, -1).contiguous()
    return sx, sy, qx, qy


def batch_from_npz(cfg, data):
    """Task data written by the fsl_jax side (its layout: NHWC images) -> torch tensors (NCHW)."""
    sx, sy, qx, qy = (
        torch.from_numpy(np.asarray(data[f"data/{k}"])) for k in ("support_x", "support_y", "query_x", "query_y")
    )
    if cfg["workload"] == "conv":
        sx, qx = sx.permute(0, 1, 4, 2, 3).contiguous(), qx.permute(0, 1, 4, 2, 3).contiguous()
        sy, qy = sy.long(), qy.long()
    return sx, sy, qx, qy


# ----------------------------------------------------------------------------------------------------------- peers


def torch_func_meta_grad(model, loss_fn, cfg):
    """grad of the mean query loss over vmap-ed tasks; the inner loop is torch.func.grad steps (second order)."""
    from torch.func import functional_call, grad, vmap

    lr, steps, first_order = cfg["inner_lr"], cfg["inner_steps"], cfg["first_order"]

    def support_loss(fast, x, y):
        return loss_fn(functional_call(model, fast, (x,)), y)

    def task_loss(params, sx, sy, qx, qy):
        fast = params
        for _ in range(steps):
            g = grad(support_loss)(fast, sx, sy)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            fast = {k: fast[k] - lr * g[k] for k in fast}
        return loss_fn(functional_call(model, fast, (qx,)), qy)

    def meta_loss(params, sx, sy, qx, qy):
        return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, sx, sy, qx, qy).mean()

    return grad(meta_loss)


def import_l2l_maml():
    """learn2learn's MAML class, and how it was imported.

    ``import learn2learn`` runs its package ``__init__``, which imports learn2learn.vision and so torchvision; the
    PyPI torchvision wheel is built against CUDA torch and does not load with the CPU torch wheel
    (``operator torchvision::nms does not exist``). learn2learn.algorithms.maml itself needs only torch, so on that
    failure it is loaded without running the package ``__init__`` files (same code, nothing patched).
    """
    try:
        import learn2learn

        return learn2learn.algorithms.MAML, f"learn2learn {learn2learn.__version__}"
    except Exception as exc:  # noqa: BLE001 - any import failure: try the algorithm module alone
        first_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}"
    for name in [m for m in sys.modules if m == "learn2learn" or m.startswith("learn2learn.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"learn2learn is not installed ({first_error})")
    root = list(spec.submodule_search_locations)[0]
    for name, sub in (("learn2learn", ""), ("learn2learn.algorithms", "algorithms")):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, sub)]
        sys.modules[name] = module
    from learn2learn._version import __version__
    from learn2learn.algorithms.maml import MAML

    return (
        MAML,
        f"learn2learn {__version__} (learn2learn.algorithms.maml imported alone; `import learn2learn` fails: {first_error})",
    )


def l2l_meta_grad_fn(model, loss_fn, cfg):
    """learn2learn's documented loop: per task clone() -> adapt() x steps -> query loss backward; grads in .grad."""
    MAML, _ = import_l2l_maml()
    maml = MAML(model, lr=cfg["inner_lr"], first_order=cfg["first_order"])
    steps = cfg["inner_steps"]

    def meta_grad(sx, sy, qx, qy):
        tasks = sx.shape[0]
        for t in range(tasks):
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(loss_fn(learner(sx[t]), sy[t]))
            (loss_fn(learner(qx[t]), qy[t]) / tasks).backward()

    return maml, meta_grad


# ---------------------------------------------------------------------------------------------------------- modes


def gradcheck(spec):
    """Float64 meta-gradient from the weights and tasks in spec["npz_in"]; written to spec["npz_out"]."""
    torch.set_default_dtype(torch.float64)
    cfg = spec["cfg"]
    data = np.load(spec["npz_in"])
    model, loss_fn = build_model(cfg, bn_ops=spec["impl"] == "torch_func_bn_ops")
    model = model.double()
    state = {name: torch.from_numpy(np.asarray(data[f"param/{name}"])) for name, _ in model.named_parameters()}
    model.load_state_dict(state, strict=True)
    batch = batch_from_npz(cfg, data)
    if spec["impl"].startswith("torch_func"):
        params = {k: p.detach() for k, p in model.named_parameters()}
        grads = torch_func_meta_grad(model, loss_fn, cfg)(params, *batch)
    else:
        maml, meta_grad = l2l_meta_grad_fn(model, loss_fn, cfg)
        maml.zero_grad()
        meta_grad(*batch)
        grads = {k: p.grad for k, p in model.named_parameters()}
    np.savez(spec["npz_out"], **{f"grad/{k}": v.detach().numpy() for k, v in grads.items()})
    return {"ok": True}


def timing(spec):
    cfg = spec["cfg"]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model, loss_fn = build_model(cfg, bn_ops=spec["impl"] == "torch_func_bn_ops")
    if cfg["workload"] == "sinusoid":
        sample = lambda: sinusoid_batch(cfg, generator)  # noqa: E731 - fresh tasks every step
    else:
        fixed = conv_batch(cfg, generator)
        sample = lambda: fixed
    info = {}
    if spec["impl"].startswith("torch_func"):
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["outer_lr"])
        meta_grad = torch_func_meta_grad(model, loss_fn, cfg)
        params = {k: p.detach() for k, p in model.named_parameters()}  # views: see the in-place Adam updates
        named = dict(model.named_parameters())

        def step():
            grads = meta_grad(params, *sample())
            for k, p in named.items():
                p.grad = grads[k]
            optimizer.step()
    else:
        maml, meta_grad = l2l_meta_grad_fn(model, loss_fn, cfg)
        info["l2l_import"] = import_l2l_maml()[1]
        optimizer = torch.optim.Adam(maml.parameters(), lr=cfg["outer_lr"])

        def step():
            optimizer.zero_grad(set_to_none=True)
            meta_grad(*sample())
            optimizer.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    flops = None
    if spec.get("count_flops", True):
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = float(counter.get_total_flops())
    for _ in range(spec["warmup"]):
        step()
    times = []
    deadline = time.perf_counter() + spec.get("max_seconds", 1e9)
    for i in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline and i >= 1:
            break
    return {
        "first_step_s": first,
        "compile_s": None,
        "step_s": statistics.median(times),
        "step_times_s": times,
        "peak_rss_mb": peak_rss_mb(),
        "matmul_flops": flops,
        "threads": torch.get_num_threads(),
        **info,
    }


def probe():
    out = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    try:
        _, how = import_l2l_maml()
        out["learn2learn"] = how
    except Exception as exc:  # noqa: BLE001
        out["learn2learn_unavailable"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", help="JSON: impl, mode (time|gradcheck), cfg, ...")
    parser.add_argument("--probe", action="store_true", help="print versions and whether learn2learn imports")
    args = parser.parse_args()
    if args.probe:
        result = probe()
        print("[bench-env] " + json.dumps(result))
    else:
        spec = json.loads(args.spec)
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        result = gradcheck(spec) if spec["mode"] == "gradcheck" else timing(spec)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
