"""Where a MiniLM fine-tuning step spends its time: fsl_jax (XLA:CPU) and PyTorch, part by part, same shapes.

    python benchmarks/minilm_breakdown.py                 # batch 16 x 128 tokens, ~3 min on a 2-core CPU
    python benchmarks/minilm_breakdown.py --batch 8 --repeats 5

``benchmarks/minilm_throughput.py`` measures the whole step; this script splits it into the parts that decide it:

- the four matrix products of one encoder layer (fused QKV as three products, attention output, FFN up, FFN down),
  forward only, on ``[batch * length, 384]`` activations;
- the attention core (``softmax(q k^T) v`` over 12 heads, ``[batch, length, heads, dim]`` in and out, as both
  models hold it), forward and backward;
- the whole model forward (dropout off), forward + backward, and the full step (AdamW) with and without dropout;
- for fsl_jax, the same step with dropout keys of the ``rbg`` PRNG instead of the default ``threefry``.

Each part is a separate jitted function (fsl_jax) or eager code (PyTorch, in its own subprocess run with
``--torch-python``, default ``.venv-bench/bin/python``), timed as the median of ``--repeats`` calls after two warm-up
calls. Prints a markdown table; writes ``benchmarks/results/minilm_breakdown.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from minilm_throughput import run_torch_side, write_result  # noqa: E402

TORCH_SIDE = r"""
import json, statistics, sys, time
import torch
sys.modules["torchvision"] = None  # not needed, and the PyPI wheel does not load against the CPU torch
from transformers import BertModel
torch.manual_seed(0)
cfg = json.loads(sys.argv[1])
b, t, d, h, f = cfg["batch"], cfg["length"], 384, 12, 1536

def timed(fn):
    for _ in range(2):
        fn()
    out = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
    return statistics.median(out)

res = {}
x, x4 = torch.randn(b * t, d), torch.randn(b * t, f)
w_dd, w_df, w_fd = torch.randn(d, d), torch.randn(d, f), torch.randn(f, d)
with torch.no_grad():
    res["matmuls of one layer (6 products, forward)"] = timed(
        lambda: [x @ w_dd for _ in range(4)] + [x @ w_df, x4 @ w_fd])
# [b, t, heads, d] in and out, as in transformers' eager BertSelfAttention (view + permute, then permute back)
q, k, v = (torch.randn(b, t, h, d // h, requires_grad=True) for _ in range(3))
bias = torch.zeros(b, 1, 1, t)
def attn():
    qt, kt, vt = (x.permute(0, 2, 1, 3) for x in (q, k, v))
    p = torch.softmax(qt @ kt.transpose(-1, -2) * (d // h) ** -0.5 + bias, -1)
    (p @ vt).permute(0, 2, 1, 3).contiguous().view(b, t, d).sum().backward()
res["attention core x6 layers (forward + backward)"] = timed(lambda: [attn() for _ in range(6)])
ids = torch.randint(1000, 20000, (b, t)); mask = torch.ones(b, t, dtype=torch.long); y = torch.randint(0, 5, (b,))
for dropout in (False, True):
    drop = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    bert = BertModel.from_pretrained(cfg["folder"], add_pooling_layer=False, attn_implementation="eager", **drop)
    head = torch.nn.Linear(d, 5)
    def logits():
        hs = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return head(hs.mean(1))
    opt = torch.optim.AdamW(list(bert.parameters()) + list(head.parameters()), lr=1e-4, weight_decay=0.01)
    bert.train()
    if not dropout:
        with torch.no_grad():
            res["model forward (dropout off)"] = timed(logits)
        def fb():
            bert.zero_grad(set_to_none=True); head.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(logits(), y).backward()
        res["model forward + backward (dropout off)"] = timed(fb)
    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(logits(), y).backward()
        opt.step()
    res["full step, dropout " + ("on" if dropout else "off")] = timed(step)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": res}))
"""


def run_fsl_jax(args) -> dict:
    import jax
    import jax.numpy as jnp

    from fsl_jax.llm.finetune import _finetune_fns, _xent
    from fsl_jax.llm.text_models import load_backbone
    from fsl_jax.models.bert import dot_product_attention

    b, t, d, h, f = args.batch, args.length, 384, 12, 1536

    def timed(fn, *xs):
        for _ in range(2):
            jax.block_until_ready(fn(*xs))
        out = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*xs))
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    res = {}
    key = jax.random.key(0)
    x, x4 = jax.random.normal(key, (b * t, d)), jax.random.normal(key, (b * t, f))
    w_dd, w_df, w_fd = jax.random.normal(key, (d, d)), jax.random.normal(key, (d, f)), jax.random.normal(key, (f, d))
    # separate jitted calls so XLA cannot fuse or drop the four identical products
    mm_dd, mm = jax.jit(lambda a, w: a @ w), jax.jit(lambda a, w: a @ w)
    res["matmuls of one layer (6 products, forward)"] = timed(
        lambda: [mm_dd(x, w_dd) for _ in range(4)] + [mm(x, w_df), mm(x4, w_fd)]
    )
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, h, d // h)) for i in range(3))
    bias = jnp.zeros((b, 1, 1, t))
    scale = (d // h) ** -0.5
    attn = jax.jit(
        jax.grad(lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, bias, None, True, scale)), argnums=(0, 1, 2))
    )
    res["attention core x6 layers (forward + backward)"] = timed(lambda: [attn(q, k, v) for _ in range(6)])

    bb = load_backbone("all-MiniLM-L6-v2")
    module, variables, _ = bb.classifier(5, jax.random.key(0))
    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    rng = np.random.default_rng(0)
    ids, y = jnp.asarray(rng.integers(1000, 20000, (b, t))), jnp.asarray(rng.integers(0, 5, b))
    fwd = jax.jit(lambda p, ids: module.apply({"params": p}, ids))
    res["model forward (dropout off)"] = timed(fwd, params, ids)
    grad = jax.jit(jax.grad(lambda p, ids, y: _xent(module.apply({"params": p}, ids), y)))
    res["model forward + backward (dropout off)"] = timed(grad, params, ids, y)
    idx = jnp.arange(b)
    for dropout, impl, name in (
        (False, None, "full step, dropout off"),
        (True, None, "full step, dropout on"),
        (True, "rbg", "full step, dropout on, rbg keys"),
    ):
        tx, step, _ = _finetune_fns(module, 1e-4, 1e-4, 0.01, 10_000, dropout)
        state = [(jax.tree_util.tree_map(jnp.array, params), tx.init(params))]
        counter = [0]

        def one():
            counter[0] += 1
            k = jax.random.key(counter[0], impl=impl) if impl else jax.random.key(counter[0])
            state[0], loss = step(state[0], ids, y, idx, k)
            return loss

        res[name] = timed(one)
    return {"jax": jax.__version__, "backend": jax.default_backend(), "results": res, "folder": bb.folder}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--torch-python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "minilm_breakdown.json"))
    args = p.parse_args(argv)

    ours = run_fsl_jax(args)
    theirs = None
    if os.path.exists(args.torch_python):
        cfg = {"batch": args.batch, "length": args.length, "repeats": args.repeats, "folder": ours["folder"]}
        theirs = run_torch_side(args.torch_python, TORCH_SIDE, cfg)
    else:
        print(f"no {args.torch_python}: fsl_jax side only (run `bash benchmarks/setup_bench_env.sh` for PyTorch)")

    print(
        f"\nMiniLM parts, batch {args.batch} x {args.length} tokens, median of {args.repeats} calls, "
        f"{os.cpu_count()} CPU cores\n"
    )
    print("| part | fsl_jax (ms) | PyTorch (ms) | PyTorch time / fsl_jax time |")
    print("|---|---|---|---|")
    for name, sec in ours["results"].items():
        other = theirs["results"].get(name) if theirs else None
        ratio = f"{other / sec:.2f}x" if other else "-"
        print(f"| {name} | {1e3 * sec:.0f} | {f'{1e3 * other:.0f}' if other else '-'} | {ratio} |")
    write_result(args.out, {"settings": vars(args), "fsl_jax": ours, "torch": theirs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
