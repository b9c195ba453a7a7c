"""Where a Conv-4 second-order MAML step spends its time, from a ``jax.profiler`` trace of the compiled step.

    python benchmarks/profile_maml_step.py                      # meta-batch 8, task_chunk 1, ~1 min on 2 cores
    python benchmarks/profile_maml_step.py --meta-batch 32 --task-chunk 0 --top 30

The workload is ``benchmarks/maml_throughput.py``'s Conv-4 (64 channels, batch-statistics norm, 5-way 1-shot, 15
queries, 5 inner steps, Adam). Two steps run under the profiler; the XLA:CPU operations (thunks) recorded on the
runtime's worker threads are summed per operation and per kind (``ynn_fusion`` / ``dot``: matrix products; ``stack`` /
``concatenate``: building im2col patches; ``copy...``: layout changes; the rest: fused elementwise work and
reductions). Each operation is named with the JAX source op from the optimised HLO's metadata. Times are summed over
threads, so they can exceed the wall time when operations overlap.

Prints two tables; writes benchmarks/results/profile_maml_step.json.
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
sys.path.insert(0, HERE)

from _profile import dump_hlo, op_info, optimized_hlo, thunk_seconds  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--task-chunk", type=int, default=1, help="0: vmap over the whole task batch")
    p.add_argument("--top", type=int, default=15, help="operations to list")
    p.add_argument("--out", default=os.path.join(HERE, "results", "profile_maml_step.json"))
    args = p.parse_args(argv)
    if args.meta_batch < 1 or args.task_chunk < 0:
        p.error(f"--meta-batch must be >= 1 and --task-chunk >= 0, got {args.meta_batch} and {args.task_chunk}")
    tmp = tempfile.mkdtemp(prefix="fsl_jax_profile_")
    dump_hlo(tmp, ".*update.*")
    import jax

    from xla_cpu_flags import conv_maml_step

    b = args.meta_batch
    step, state, tasks, key = conv_maml_step(b, task_chunk=args.task_chunk or None, donate=False)
    compiled = step.lower(state, tasks, key).compile()
    jax.block_until_ready(compiled(state, tasks, key))
    t0 = time.perf_counter()
    with jax.profiler.trace(f"{tmp}/trace"):
        for _ in range(2):
            jax.block_until_ready(compiled(state, tasks, key))
    wall = (time.perf_counter() - t0) / 2
    per_op = thunk_seconds(f"{tmp}/trace", 2)
    hlo = optimized_hlo(tmp, "*update*")
    per_kind: collections.Counter = collections.Counter()
    for name, seconds in per_op.items():
        per_kind[re.sub(r"\.\d+$", "", name)] += seconds
    total = sum(per_op.values())

    kinds = ["| kind of operation | s/step | share |", "|---|---|---|"]
    kinds += [f"| `{k}` | {v:.3f} | {100 * v / total:.1f} % |" for k, v in per_kind.most_common(12)]
    ops = ["| operation | s/step | shape | JAX source |", "|---|---|---|---|"]
    top = []
    for name, seconds in per_op.most_common(args.top):
        shape, source = op_info(hlo, name)
        top.append({"op": name, "seconds": seconds, "shape": shape, "source": source})
        ops.append(f"| `{name}` | {seconds:.3f} | `{shape}` | `{source[-80:]}` |")
    print(
        f"Conv-4 second-order MAML, meta-batch {b}, task_chunk {args.task_chunk or 'none (vmap over all)'}: "
        f"{wall:.2f} s/step under the profiler; {total:.2f} s/step of operations summed over threads\n"
    )
    print("\n".join(kinds) + "\n\n" + "\n".join(ops))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        command = "python benchmarks/profile_maml_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
        json.dump(
            {
                "command": command.strip(),
                "meta_batch": b,
                "task_chunk": args.task_chunk,
                "wall_s_per_step": wall,
                "ops_s_per_step": total,
                "per_kind": dict(per_kind.most_common()),
                "top_ops": top,
            },
            f,
            indent=1,
        )
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
