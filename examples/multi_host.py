"""Multi-host meta-training on one machine: 2 processes x 4 devices against 1 process x 8 devices.

    python examples/multi_host.py [--quick]

Every process runs the same code (JAX's multi-controller model): `fj.parallel.initialize()` joins the run (here from
the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables this script sets for its children; on a TPU
pod slice or under SLURM it needs no arguments at all), then `fj.meta_train` spans every process's devices. The
HostSampler builds only each process's rows of every batch, so both runs see the same global batches and end with
the same meta-parameters (up to float summation order).
"""

import argparse
import os
import socket
import subprocess
import sys

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
parser.add_argument("--worker", choices=["1x8", "2x4"], help=argparse.SUPPRESS)
args = parser.parse_args()

if args.worker is None:  # the launcher: start both runs, each as its own set of processes
    with socket.create_server(("127.0.0.1", 0)) as free:
        port = free.getsockname()[1]  # a free local port for process 0 of the 2x4 run
    runs = {}
    for layout, processes in (("1x8", 1), ("2x4", 2)):
        runs[layout] = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", layout] + (["--quick"] if args.quick else []),
                env=dict(
                    os.environ,
                    XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}",
                    JAX_PLATFORMS="cpu",
                    **(
                        {
                            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                            "JAX_NUM_PROCESSES": "2",
                            "JAX_PROCESS_ID": str(i),
                        }
                        if processes > 1
                        else {}
                    ),
                ),
            )
            for i in range(processes)
        ]
    codes = [p.wait() for procs in runs.values() for p in procs]
    sys.exit(max(codes, key=abs))

import fsl_jax as fj  # noqa: E402

fj.parallel.initialize()  # joins the other process of the 2x4 run; a no-op for the 1x8 run
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

rng = np.random.default_rng(0)
classes = (rng.normal(size=(40, 20, 16)) + 0.8 * rng.normal(size=(40, 1, 16))).astype(np.float32)
train = fj.data.HostSampler(classes[:30], ways=5, shots=1, queries=5, seed=0)
test = fj.data.HostSampler(classes[30:], ways=5, shots=1, queries=5, seed=1)
learner = fj.protonet(fj.models.MLP(hidden=(64,), out=32), ways=5)
state, history = fj.meta_train(
    learner,
    optax.sgd(0.1),
    train,
    steps=20 if args.quick else 300,
    meta_batch=16,
    key=jax.random.key(0),
    log_every=10,
    progress=False,
)
result = fj.evaluate(
    learner, state.params, test, episodes=64 if args.quick else 600, batch_size=32, key=jax.random.key(1)
)
checksum = sum(float(np.abs(np.asarray(jax.device_get(x))).sum()) for x in jax.tree_util.tree_leaves(state.params))
if fj.parallel.is_primary():
    print(
        f"{args.worker}: {jax.process_count()} process(es) x {jax.local_device_count()} devices, "
        f"{int(jax.device_get(state.step))} steps, final loss {history.series('loss')[-1]:.5f}, "
        f"sum |params| {checksum:.5f}, unseen classes: {result}",
        flush=True,
    )
