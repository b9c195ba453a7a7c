"""MiniLM fine-tuning step throughput: fsl_jax (jitted) vs transformers PyTorch, same batch, same run.

    bash benchmarks/setup_bench_env.sh                 # once: .venv-bench with torch 2.13.0 CPU + transformers
    python benchmarks/minilm_throughput.py             # batch 16 x 128 tokens, 20 timed steps each
    python benchmarks/minilm_throughput.py --batch 32 --length 64 --steps 10
    python benchmarks/minilm_throughput.py --dropout off --out benchmarks/results/minilm_throughput_nodropout.json

The step is what ``FewShotTextClassifier(method="finetune")`` runs: all-MiniLM-L6-v2 (6 layers, hidden 384) + mean
pooling + a linear head, dropout on, cross-entropy, AdamW on every weight. fsl_jax runs the library's own compiled,
donated step (``fsl_jax.llm.finetune._finetune_fns``); the peer is transformers' ``BertModel`` loaded from the same
safetensors folder with the same pooling and head, ``torch.optim.AdamW``, in its own subprocess
(``--torch-python``, default ``.venv-bench/bin/python``). Both see the same token ids (real BBC News articles,
tokenised once). Before timing, the two forward passes (dropout off) are compared on that batch. Reported: median
seconds per step after ``--warmup`` steps, examples/s, the compile / first-step time. Writes
``benchmarks/results/minilm_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

TORCH_SIDE = r"""
import json, statistics, sys, time
import numpy as np, torch
# learn2learn's torchvision wheel does not load against the CPU torch wheel; BERT does not need it.
sys.modules["torchvision"] = None
from transformers import BertModel
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
data = np.load(cfg["batch"])
ids, mask, y = (torch.from_numpy(data[k]) for k in ("ids", "mask", "y"))
drop = {} if cfg["dropout"] else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
bert = BertModel.from_pretrained(cfg["folder"], add_pooling_layer=False, attn_implementation="eager", **drop)
head = torch.nn.Linear(bert.config.hidden_size, cfg["classes"])
with torch.no_grad():
    head.weight.copy_(torch.from_numpy(data["head_w"]).T); head.bias.copy_(torch.from_numpy(data["head_b"]))

def logits():
    h = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(h.dtype)
    return head((h * m).sum(1) / m.sum(1).clamp(min=1e-9))

bert.eval(); head.eval()
with torch.no_grad():
    reference = logits().numpy()
params = list(bert.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
bert.train(); head.train()
def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(logits(), y)
    loss.backward()
    opt.step()
    return float(loss)
t0 = time.perf_counter(); step(); first = time.perf_counter() - t0
for _ in range(cfg["warmup"]):
    step()
times = []
for _ in range(cfg["steps"]):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps({"first_step_s": first, "step_times_s": times, "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "logits": reference.tolist()}))
"""


def run_fsl_jax(args, ids, y, classes):
    import jax
    import jax.numpy as jnp

    from fsl_jax.llm.finetune import _finetune_fns
    from fsl_jax.llm.text_models import load_backbone

    bb = load_backbone("all-MiniLM-L6-v2")
    module, variables, _ = bb.classifier(classes, jax.random.key(0))
    params = jax.tree_util.tree_map(jnp.array, variables["params"])  # a private copy: the step donates it
    head = jax.tree_util.tree_map(np.asarray, params["head"])
    reference = np.asarray(module.apply({"params": params}, jnp.asarray(ids)))
    tx, step, _ = _finetune_fns(module, 1e-4, 1e-4, 0.01, 10_000, args.dropout == "on")
    state = (params, tx.init(params))
    ids_d, y_d, idx = jnp.asarray(ids), jnp.asarray(y), jnp.arange(len(y))

    def one(state, i):
        state, loss = step(state, ids_d, y_d, idx, jax.random.key(i))
        loss.block_until_ready()
        return state

    t0 = time.perf_counter()
    state = one(state, 0)
    first = time.perf_counter() - t0
    for i in range(args.warmup):
        state = one(state, 1 + i)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        state = one(state, 100 + i)
        times.append(time.perf_counter() - t0)
    return (
        {
            "first_step_s": first,
            "step_times_s": times,
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "logits": reference,
        },
        head,
        bb,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--dropout",
        choices=("on", "off"),
        default="on",
        help="dropout in both implementations (default on, as FewShotTextClassifier trains)",
    )
    p.add_argument("--torch-python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "minilm_throughput.json"))
    args = p.parse_args(argv)

    from fsl_jax.data.text import bbc_news, tokenize
    from fsl_jax.llm.text_models import load_backbone

    ds = bbc_news()
    classes = len(ds.label_names)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(ds), args.batch, replace=False)
    tok = load_backbone("all-MiniLM-L6-v2").tokenizer
    ids, mask = tokenize([ds.texts[i] for i in pick], tok, args.length)
    y = np.array([ds.label_names.index(ds.labels[i]) for i in pick], np.int64)
    print(f"batch {args.batch} x {ids.shape[1]} tokens ({int(mask.sum())} non-pad), {classes} classes")

    results = {}
    jax_res, head, bb = run_fsl_jax(args, ids, y, classes)
    results["fsl_jax"] = jax_res
    torch_ok = os.path.exists(args.torch_python)
    if torch_ok:
        with tempfile.TemporaryDirectory() as tmp:
            batch = os.path.join(tmp, "batch.npz")
            np.savez(
                batch,
                ids=ids.astype(np.int64),
                mask=mask.astype(np.int64),
                y=y,
                head_w=np.asarray(head["kernel"]),
                head_b=np.asarray(head["bias"]),
            )
            cfg = {
                "batch": batch,
                "folder": bb.folder,
                "classes": classes,
                "steps": args.steps,
                "warmup": args.warmup,
                "dropout": args.dropout == "on",
            }
            results["transformers_torch"] = run_torch_side(args.torch_python, TORCH_SIDE, cfg)
    else:
        print(f"no {args.torch_python}: run `bash benchmarks/setup_bench_env.sh` for the PyTorch peer")

    rows = []
    for name, r in results.items():
        med = statistics.median(r["step_times_s"])
        r["median_step_s"], r["examples_per_s"] = med, args.batch / med
        rows.append((name, med, r["examples_per_s"], r["first_step_s"]))
    if torch_ok:
        diff = float(
            np.max(
                np.abs(np.asarray(results["fsl_jax"]["logits"]) - np.asarray(results["transformers_torch"]["logits"]))
            )
        )
        print(f"forward parity (dropout off) on the timed batch: max |logits difference| = {diff:.2e}")
        if diff > 1e-3:
            raise SystemExit("the two implementations do not compute the same model; not reporting a ratio")
    else:
        diff = None
    for r in results.values():
        r["logits"] = None
    base = dict((n, e) for n, _, e, _ in rows).get("transformers_torch")
    print(
        f"\nMiniLM fine-tuning step (forward + backward + AdamW, dropout {args.dropout}), batch {args.batch} x "
        f"{ids.shape[1]}, "
        f"median of {args.steps} steps after {args.warmup} warm-up; {os.cpu_count()} CPU cores\n"
    )
    print("| implementation | s / step | examples / s | vs transformers PyTorch | first step (compile) s |")
    print("|---|---|---|---|---|")
    for name, med, eps, first in rows:
        ratio = f"{eps / base:.2f}x" if base else "-"
        print(f"| {name} | {med:.3f} | {eps:.1f} | {ratio} | {first:.1f} |")
    write_result(args.out, {"settings": vars(args), "results": results, "forward_max_abs_diff": diff})
    return 0


def run_torch_side(python: str, code: str, cfg: dict) -> dict:
    """Runs the PyTorch peer ``code`` with the bench interpreter ``python`` (``code`` reads ``cfg`` as JSON from
    ``sys.argv[1]`` and prints its result as JSON on its last line); exits with its stderr if it fails."""
    proc = subprocess.run([python, "-c", code, json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit("the PyTorch peer failed (run bash benchmarks/setup_bench_env.sh)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_result(out: str, doc: dict) -> None:
    """Writes ``doc`` plus the machine and the command line as JSON to ``out``."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    doc = dict(
        doc, machine={"cpus": os.cpu_count(), "platform": platform.platform()}, command=" ".join(["python"] + sys.argv)
    )
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    sys.exit(main())
