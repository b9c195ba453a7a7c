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
kwargs = dict(steps=steps, meta_batch=8 * mesh.size, key=jax.random.key(0), progress=False)
sharded, _ = fj.meta_train(learner, optax.sgd(0.05), source, mesh=mesh, **kwargs)
single, _ = fj.meta_train(learner, optax.sgd(0.05), source, **kwargs)
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(sharded.params),
                                                          jax.tree_util.tree_leaves(single.params)))
print(f"after {steps} steps, max |sharded - single-device| parameter difference: {diff:.2e}")
print(fj.evaluate(learner, sharded.params, source, episodes=100, key=jax.random.key(1)))
