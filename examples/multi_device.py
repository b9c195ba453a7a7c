"""The same meta-training sharded over all devices (8 fake CPU devices when there is no accelerator).

    python examples/multi_device.py [--quick]

On CPU the devices are simulated with XLA_FLAGS=--xla_force_host_platform_device_count=8 (set below before JAX
starts). On a GPU/TPU host, all local devices are used; on a multi-host slice call jax.distributed.initialize() first.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import functools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import fsl_jax as fj  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()

mesh = fj.parallel.task_mesh()
print(f"{mesh.size} devices: {jax.devices()[0].platform}")
source = functools.partial(fj.data.sinusoid_tasks, shots=10, queries=10)
learner = fj.maml(fj.models.MLP(), "mse", inner_lr=0.01)
steps = 50 if args.quick else 2000


def train(n, **kw):
    return fj.meta_train(
        learner, optax.sgd(0.05), source, steps=n, meta_batch=8 * mesh.size, key=jax.random.key(0), progress=False, **kw
    )[0]


def max_diff(a, b):
    return max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params))
    )


# The same computation up to the order of floating-point sums (per-device partial means, then an all-reduce):
print(
    f"after 50 steps, max |sharded - single-device| parameter difference: "
    f"{max_diff(train(50, mesh=mesh), train(50)):.1e}"
)
# Over thousands of SGD steps such rounding differences grow (as they do on one device with another summation
# order, e.g. task_chunk=8): compare what the two runs reach rather than their bits.
sharded, single = train(steps, mesh=mesh), train(steps)
for name, state in (("sharded", sharded), ("single-device", single)):
    print(
        f"{name:13s} after {steps} steps:",
        fj.evaluate(learner, state.params, source, episodes=600 if not args.quick else 100, key=jax.random.key(1)),
    )
