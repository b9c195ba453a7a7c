"""Where a MiniLM fine-tuning step spends its time, per XLA operation, from a ``jax.profiler`` trace.

    python benchmarks/profile_minilm_step.py                      # batch 16 x 128, dropout on, ~1 min on 2 cores
    python benchmarks/profile_minilm_step.py --dropout off --top 30 --out /tmp/profile.json

The step is the library's own compiled, donated ``FewShotTextClassifier(method="finetune")`` step
(``fsl_jax.llm.text_methods.finetune.finetune_fns``): all-MiniLM-L6-v2 + mean pooling + linear head, cross-entropy,
AdamW on every weight. Three steps run under the profiler; the XLA:CPU operations (thunks) recorded on the runtime's
threads are summed per operation, per kind of operation and per *role*: the JAX source op that the optimised HLO's
metadata names for it, grouped into matrix products (dense layers, attention scores and context), softmax, layer
norm, GELU, dropout (random bits and masks), AdamW and the rest. Times are summed over threads, so they can exceed
the wall time when operations overlap.

Prints three tables; writes ``benchmarks/results/profile_minilm_step.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _profile import dump_hlo, op_info, optimized_hlo, thunk_seconds  # noqa: E402

# (role, regular expression on the JAX source op name / HLO op); the first match wins.
ROLES = [
    (
        "dropout (random bits, masks)",
        r"threefry|philox|random_bits|rbg|bernoulli|shift_right_logical|random_wrap|[Dd]ropout|_where",
    ),
    ("AdamW update", r"optax|adam|apply_updates|scale_by|add_decayed|multi_transform"),
    (
        "attention core (batched matmuls)",
        r"bqhd|bhqk|bkhd|bhqd|bhkd|attention/dot_general|attention/jit\(_einsum\)|_attention",
    ),
    ("softmax", r"softmax|reduce_max|exp|logsumexp"),
    ("layer norm", r"LayerNorm|layer_norm|_norm|rsqrt|var|mean"),
    ("GELU", r"gelu|erf|tanh"),
    ("dense layers (matmul)", r"dot_general|Dense|ynn|dot"),
    ("embeddings (gather / scatter)", r"gather|scatter|Embed|take"),
    ("layout (transpose / copy)", r"transpose|copy|reshape"),
]


def role_of(name: str, source: str) -> str:
    text = f"{source} {name}"
    for role, pattern in ROLES:
        if re.search(pattern, text):
            return role
    return "other elementwise / reductions"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--dropout", choices=("on", "off"), default="on")
    p.add_argument(
        "--prng",
        default="threefry2x32",
        help="PRNG implementation of the dropout keys (threefry2x32, rbg, unsafe_rbg, ...)",
    )
    p.add_argument("--top", type=int, default=20, help="operations to list")
    p.add_argument("--out", default=os.path.join(HERE, "results", "profile_minilm_step.json"))
    args = p.parse_args(argv)
    if args.batch < 1 or args.length < 2:
        p.error(f"--batch must be >= 1 and --length >= 2, got {args.batch} and {args.length}")
    tmp = tempfile.mkdtemp(prefix="fsl_jax_profile_")
    dump_hlo(tmp, ".*step.*")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fsl_jax.llm.text_methods.finetune import finetune_fns
    from fsl_jax.llm.text_models import load_backbone

    b, t = args.batch, args.length
    bb = load_backbone("all-MiniLM-L6-v2")
    module, variables, _ = bb.classifier(5, jax.random.key(0))
    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    rng = np.random.default_rng(0)
    ids, y = jnp.asarray(rng.integers(1000, 20000, (b, t))), jnp.asarray(rng.integers(0, 5, b))
    idx = jnp.arange(b)
    tx, step, _ = finetune_fns(module, 1e-4, 1e-3, 0.01, 10_000, args.dropout == "on")
    state = (params, tx.init(params))

    def key(i):
        return jax.random.key(i, impl=args.prng)

    for i in range(2):
        state, loss = step(state, ids, y, idx, key(i))
    jax.block_until_ready(loss)
    n = 3
    t0 = time.perf_counter()
    with jax.profiler.trace(f"{tmp}/trace"):
        for i in range(n):
            state, loss = step(state, ids, y, idx, key(10 + i))
        jax.block_until_ready(loss)
    wall = (time.perf_counter() - t0) / n
    per_op = thunk_seconds(f"{tmp}/trace", n)
    hlo = optimized_hlo(tmp, "*step*")
    info = {name: op_info(hlo, name) for name in per_op}
    per_kind: collections.Counter = collections.Counter()
    per_role: collections.Counter = collections.Counter()
    for name, seconds in per_op.items():
        per_kind[re.sub(r"\.\d+$", "", name)] += seconds
        per_role[role_of(name, info[name][1])] += seconds
    total = sum(per_op.values())

    roles = ["| role | s/step | share |", "|---|---|---|"]
    roles += [f"| {k} | {v:.3f} | {100 * v / total:.1f} % |" for k, v in per_role.most_common()]
    kinds = ["| kind of operation | s/step | share |", "|---|---|---|"]
    kinds += [f"| `{k}` | {v:.3f} | {100 * v / total:.1f} % |" for k, v in per_kind.most_common(12)]
    ops = ["| operation | s/step | shape | JAX source |", "|---|---|---|---|"]
    top = []
    for name, seconds in per_op.most_common(args.top):
        shape, source = info[name]
        top.append({"op": name, "seconds": seconds, "shape": shape, "source": source})
        ops.append(f"| `{name}` | {seconds:.4f} | `{shape[:60]}` | `{source[-90:]}` |")
    print(
        f"MiniLM fine-tuning step, batch {b} x {t} tokens, dropout {args.dropout} ({args.prng} keys): "
        f"{wall:.3f} s/step under the profiler; {total:.3f} s/step of operations summed over threads\n"
    )
    print("\n".join(roles) + "\n\n" + "\n".join(kinds) + "\n\n" + "\n".join(ops))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        command = "python benchmarks/profile_minilm_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
        json.dump(
            {
                "command": command.strip(),
                "settings": vars(args),
                "cpus": os.cpu_count(),
                "wall_s_per_step": wall,
                "ops_s_per_step": total,
                "per_role": dict(per_role.most_common()),
                "per_kind": dict(per_kind.most_common()),
                "top_ops": top,
                "ops_over_1ms": [
                    {"op": k, "seconds": v, "role": role_of(k, info[k][1]), "shape": info[k][0], "source": info[k][1]}
                    for k, v in per_op.most_common()
                    if v > 1e-3
                ],
            },
            f,
            indent=1,
        )
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
