"""GPT-2 scoring and greedy generation: fsl_jax (jitted) vs transformers' PyTorch GPT-2, same weights, same run.

    bash benchmarks/setup_bench_env.sh                  # once: .venv-bench with torch 2.13.0 CPU + transformers
    python benchmarks/gpt2_throughput.py                # GPT-2 small shapes (124M, random weights), ~4 min
    python benchmarks/gpt2_throughput.py --layers 2 --width 128 --heads 4 --repeats 3    # a quick check

No GPT-2 checkpoint exists offline, so the model is GPT-2 small's configuration (12 blocks, width 768, 12 heads,
vocabulary 50,257, 1,024 positions) with random weights from fsl_jax's initialiser, written with
``fj.models.save_pretrained`` and loaded by transformers' ``GPT2LMHeadModel.from_pretrained`` in its own subprocess
(``--torch-python``, default ``.venv-bench/bin/python``, eager attention, float32, inference mode). Two workloads:

- **scoring**: the summed log-probability of every token (after the first real one) of ``--score-batch`` left-padded prompts of
  ``--score-length`` tokens (a teacher-forced forward pass, log-softmax over the vocabulary, a gather): what
  ``PromptClassifier`` computes for its prompts before the label words. fsl_jax: one jitted function of
  ``GPT2.apply``; PyTorch: ``model(ids, attention_mask, position_ids).logits`` then the same reduction.
- **generation**: ``--gen-batch`` prompts of ``--gen-prompt`` tokens extended greedily by ``--gen-new`` tokens with
  the KV cache and no stop token. fsl_jax: ``fj.models.generate`` (prompt pass, then a ``lax.scan`` of one-token
  steps); PyTorch: ``model.generate(do_sample=False, use_cache=True)`` with the same count of new tokens.

Before timing, the scores are compared (max relative difference) and the generated tokens are compared position by
position (random weights give near-ties, so a float difference can flip a late greedy choice; the agreement is
reported). Reported: median seconds of ``--repeats`` calls after two warm-up calls, tokens/s (scoring: prompt
tokens; generation: new tokens), the ratio PyTorch time / fsl_jax time. Writes ``benchmarks/results/gpt2_throughput.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from minilm_throughput import run_torch_side, write_result  # noqa: E402

TORCH_SIDE = r"""
import json, statistics, sys, time
import numpy as np, torch
sys.modules["torchvision"] = None  # not needed, and the PyPI wheel does not load against the CPU torch
from transformers import GPT2LMHeadModel
cfg = json.loads(sys.argv[1])
data = np.load(cfg["inputs"])
model = GPT2LMHeadModel.from_pretrained(cfg["folder"], attn_implementation="eager", torch_dtype=torch.float32).eval()

def timed(fn):
    for _ in range(2):
        out = fn()
    times = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times

ids, mask = torch.from_numpy(data["score_ids"]).long(), torch.from_numpy(data["score_mask"]).long()
pos = (mask.cumsum(-1) - 1).clamp(min=0)

def score():
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        return (lp * mask[:, 1:] * mask[:, :-1]).sum(-1).numpy()

gids, gmask = torch.from_numpy(data["gen_ids"]).long(), torch.from_numpy(data["gen_mask"]).long()

def gen():
    with torch.inference_mode():
        out = model.generate(input_ids=gids, attention_mask=gmask, do_sample=False, use_cache=True,
                             max_new_tokens=cfg["gen_new"], min_new_tokens=cfg["gen_new"], pad_token_id=0,
                             eos_token_id=None)
        return out[:, gids.shape[1]:].numpy()

scores, score_s, score_times = timed(score)
tokens, gen_s, gen_times = timed(gen)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "score_s": score_s,
                  "score_times": score_times, "gen_s": gen_s, "gen_times": gen_times, "scores": scores.tolist(),
                  "tokens": tokens.tolist()}))
"""


def left_padded(rng: np.random.Generator, batch: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` rows of random token ids, left-padded to ``length`` (real lengths from ``length / 2`` up)."""
    ids = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for r in range(1, batch):
        pad = int(rng.integers(0, length // 2))
        ids[r, :pad], mask[r, :pad] = 0, 0
    return ids, mask


def run_fsl_jax(args, folder: str, inputs: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import fsl_jax as fj

    module, params, _ = fj.models.from_pretrained(folder)

    @jax.jit
    def score(params, ids, mask):
        logits = module.apply(params, ids, mask).logits[:, :-1].astype(jnp.float32)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), ids[:, 1:, None], -1)[..., 0]
        return jnp.sum(lp * mask[:, 1:] * mask[:, :-1], -1)

    def timed(fn):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        first = time.perf_counter() - t0
        jax.block_until_ready(fn())
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        return np.asarray(out), statistics.median(times), times, first

    sids, smask = jnp.asarray(inputs["score_ids"]), jnp.asarray(inputs["score_mask"])
    scores, score_s, score_times, score_first = timed(lambda: score(params, sids, smask))
    gids, gmask = jnp.asarray(inputs["gen_ids"]), jnp.asarray(inputs["gen_mask"])
    prompt = gids.shape[1]
    tokens, gen_s, gen_times, gen_first = timed(lambda: fj.models.generate(module, params, gids, gmask, args.gen_new))
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "score_s": score_s,
        "score_times": score_times,
        "score_first_call_s": score_first,
        "gen_s": gen_s,
        "gen_times": gen_times,
        "gen_first_call_s": gen_first,
        "scores": scores.tolist(),
        "tokens": tokens[:, prompt:].tolist(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--score-batch", type=int, default=8)
    p.add_argument("--score-length", type=int, default=128)
    p.add_argument("--gen-batch", type=int, default=4)
    p.add_argument("--gen-prompt", type=int, default=32)
    p.add_argument("--gen-new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch-python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "gpt2_throughput.json"))
    args = p.parse_args(argv)
    for name in ("layers", "width", "heads", "score_batch", "score_length", "gen_batch", "gen_prompt", "gen_new"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.width % args.heads:
        p.error(f"--width {args.width} must be divisible by --heads {args.heads}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")

    import jax
    import jax.numpy as jnp

    import fsl_jax as fj

    config = fj.models.GPT2Config(
        vocab_size=args.vocab, n_positions=1024, n_embd=args.width, n_layer=args.layers, n_head=args.heads
    )
    module = fj.models.GPT2(config)
    params = module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(0)
    sids, smask = left_padded(rng, args.score_batch, args.score_length, args.vocab)
    gids, gmask = left_padded(rng, args.gen_batch, args.gen_prompt, args.vocab)
    with tempfile.TemporaryDirectory(prefix="fsl_jax_gpt2_bench_") as tmp:
        folder = os.path.join(tmp, "model")
        fj.models.save_pretrained(folder, module, params)
        del params
        inputs = {"score_ids": sids, "score_mask": smask, "gen_ids": gids, "gen_mask": gmask}
        np.savez(os.path.join(tmp, "inputs.npz"), **inputs)
        ours = run_fsl_jax(args, folder, inputs)
        theirs = None
        if os.path.exists(args.torch_python):
            cfg = {"folder": folder, "inputs": os.path.join(tmp, "inputs.npz"), "repeats": args.repeats}
            cfg["gen_new"] = args.gen_new
            theirs = run_torch_side(args.torch_python, TORCH_SIDE, cfg)
        else:
            print(f"no {args.torch_python}: fsl_jax side only (run `bash benchmarks/setup_bench_env.sh` for PyTorch)")

    score_tokens = int(smask.sum())
    new_tokens = args.gen_batch * args.gen_new
    checks = {}
    if theirs:
        a, b = np.asarray(ours["scores"]), np.asarray(theirs["scores"])
        checks["score_max_rel_diff"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))
        ta, tb = np.asarray(ours["tokens"]), np.asarray(theirs["tokens"])
        checks["generated_tokens_equal_fraction"] = float(np.mean(ta == tb))
        same = np.cumprod(ta == tb, axis=1).sum(axis=1)
        checks["generated_tokens_equal_before_first_difference"] = same.tolist()
    print(
        f"\nGPT-2 ({args.layers} blocks, width {args.width}, {args.heads} heads, vocabulary {args.vocab}, random "
        f"weights), median of {args.repeats} calls, {os.cpu_count()} CPU cores"
    )
    if checks:
        print(
            f"checks: scores max relative difference {checks['score_max_rel_diff']:.1e}; greedy tokens equal "
            f"{100 * checks['generated_tokens_equal_fraction']:.0f} % (per row before the first difference: "
            f"{checks['generated_tokens_equal_before_first_difference']})\n"
        )
    print("| workload | fsl_jax s (tokens/s) | transformers PyTorch s (tokens/s) | PyTorch time / fsl_jax time |")
    print("|---|---|---|---|")
    rows = {}
    for name, key, tokens, what in (
        ("scoring", "score_s", score_tokens, f"{args.score_batch} x {args.score_length} prompt tokens"),
        ("greedy generation", "gen_s", new_tokens, f"{args.gen_batch} x {args.gen_new} new tokens"),
    ):
        mine = ours[key]
        other = theirs[key] if theirs else None
        rows[name] = {"fsl_jax_s": mine, "torch_s": other, "tokens": tokens, "ratio": other / mine if other else None}
        their_cell = f"{other:.3f} ({tokens / other:.0f})" if other else "-"
        ratio = f"{other / mine:.2f}x" if other else "-"
        print(f"| {name} ({what}) | {mine:.3f} ({tokens / mine:.0f}) | {their_cell} | {ratio} |")
    for side in (ours, theirs or {}):
        side.pop("scores", None)
        side.pop("tokens", None)
    write_result(args.out, {"settings": vars(args), "rows": rows, "checks": checks, "fsl_jax": ours, "torch": theirs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
