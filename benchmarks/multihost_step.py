"""Meta-step time on 8 CPU devices as 1 process x 8 devices and as 2 processes x 4 devices (gloo collectives).

    python benchmarks/multihost_step.py [--steps 200]

Two workloads, each run through `fj.meta_train` with a mesh over all 8 devices: sinusoid MAML sampled on the device
(meta-batch 32) and a Conv-4 ProtoNet fed by a HostSampler (meta-batch 8, each process building its own rows). The
time per step is measured after the first logging point (compilation excluded), median of 3 windows. Writes
benchmarks/results/multihost_step.json and prints a markdown table.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=200, help="timed steps per window (default 200)")
parser.add_argument("--worker", help=argparse.SUPPRESS)
args = parser.parse_args()

if args.worker is None:
    results = {}
    for layout, processes in (("1x8", 1), ("2x4", 2)):
        with socket.create_server(("127.0.0.1", 0)) as free:
            port = free.getsockname()[1]
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", layout, "--steps", str(args.steps)],
                stdout=subprocess.PIPE,
                text=True,
                env=dict(
                    os.environ,
                    XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}",
                    JAX_PLATFORMS="cpu",
                    **(
                        {
                            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                            "JAX_NUM_PROCESSES": str(processes),
                            "JAX_PROCESS_ID": str(i),
                        }
                        if processes > 1
                        else {}
                    ),
                ),
            )
            for i in range(processes)
        ]
        outputs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            sys.exit(f"{layout} failed: {[p.returncode for p in procs]}")
        results[layout] = json.loads(outputs[0].strip().splitlines()[-1])
    rows = ["| workload | 1 process x 8 devices | 2 processes x 4 devices | ratio |", "|---|---|---|---|"]
    for name in results["1x8"]:
        a, b = results["1x8"][name], results["2x4"][name]
        rows.append(f"| {name} | {1e3 * a:.2f} ms/step | {1e3 * b:.2f} ms/step | {b / a:.2f}x |")
    print("\n".join(rows))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "multihost_step.json"), "w") as f:
        json.dump(
            {
                "command": "python benchmarks/multihost_step.py --steps " + str(args.steps),
                "seconds_per_step": results,
                "table": rows,
            },
            f,
            indent=2,
        )
    sys.exit(0)

import fsl_jax as fj  # noqa: E402

fj.parallel.initialize()
import functools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402


def per_step(learner, optimizer, source, meta_batch):
    """Median seconds per step over 3 windows of args.steps steps after a compiled warm-up step, as fj.meta_train
    runs them on a CPU mesh (one step in flight; a host source builds this process's rows, then the global batch)."""
    mesh = fj.parallel.task_mesh()
    host = isinstance(source, fj.data.HostSampler)
    example = source.sample(1, index=0) if host else source(jax.random.key(0), 1)
    params = learner.init(jax.random.key(0), jax.tree_util.tree_map(lambda x: x[0], example))
    state = fj.parallel.shard_state(fj.TrainState.create(learner, params, optimizer), mesh)
    if host:
        step_fn = fj.make_meta_step(learner, optimizer, mesh=mesh)
        start, stop = fj.parallel.local_rows(mesh, meta_batch)

        def step(state, i):
            tasks = fj.parallel.global_tasks(
                source.sample(meta_batch, index=i, start=start, stop=stop), mesh, meta_batch
            )
            return step_fn(state, tasks, jax.random.key(i))
    else:
        step_fn = fj.make_meta_step(learner, optimizer, sampler=source, meta_batch=meta_batch, mesh=mesh)

        def step(state, i):
            return step_fn(state, jax.random.key(0))

    state, _ = step(state, 0)
    jax.block_until_ready(state)
    times = []
    for window in range(3):
        t0 = time.perf_counter()
        for i in range(args.steps):
            state, _ = step(state, 1 + window * args.steps + i)
            jax.block_until_ready(state.step)
        times.append((time.perf_counter() - t0) / args.steps)
    return float(np.median(times))


sinusoid = fj.maml(fj.models.MLP(hidden=(40, 40)), "mse", inner_lr=0.01, inner_steps=1)
images = np.random.default_rng(0).random((40, 20, 28, 28, 1)).astype(np.float32)
out = {
    "sinusoid MAML, device-side source, meta-batch 32": per_step(
        sinusoid, optax.adam(1e-3), functools.partial(fj.data.sinusoid_tasks, shots=10, queries=10), 32
    ),
    "Conv-4 ProtoNet, HostSampler, meta-batch 8": per_step(
        fj.protonet(fj.models.Conv4(hidden=32), ways=5),
        optax.adam(1e-3),
        fj.data.HostSampler(images, ways=5, shots=1, queries=5),
        8,
    ),
}
if fj.parallel.is_primary():
    print(json.dumps(out), flush=True)
