"""Task-parallel meta-training over several devices with ``jax.sharding``.

The task batch is split along its leading axis over a 1-D device mesh whose axis is named ``"tasks"``; parameters and
optimiser state are replicated. ``jax.jit`` inserts the one all-reduce the mean meta-gradient needs, so the sharded
step computes the same numbers as the single-device one.

Multi-host (TPU slices, several GPU hosts): call ``jax.distributed.initialize()`` on every host first, then
``task_mesh()`` spans ``jax.devices()`` across hosts; each host feeds the same global key to a device-side sampler.

Simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``) share one thread pool, and a sharded
step's all-reduce blocks a thread until every device's part arrives. Keep one sharded step in flight there (call
``jax.block_until_ready`` on the state after each step, as :func:`fsl_jax.meta_train` does on a CPU mesh): with many
steps dispatched ahead, XLA:CPU can deadlock in the all-reduce and aborts the process after 40 s.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsl_jax.tasks import Task

TASK_AXIS = "tasks"


def task_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``) with the axis ``"tasks"``.

    Example:
      >>> import fsl_jax as fj
      >>> mesh = fj.parallel.task_mesh()
      >>> mesh.axis_names
      ('tasks',)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must hold at least one device, got an empty sequence")
    return Mesh(np.asarray(devices), (TASK_AXIS,))


def task_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (task) axis of every array over the mesh."""
    if TASK_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {TASK_AXIS!r}, got axes {mesh.axis_names}")
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def shard_tasks(tasks: Task, mesh: Mesh) -> Task:
    """Places a batch of tasks on the mesh, split along the task axis.

    Raises:
      ValueError: when the number of tasks is not a multiple of the number of devices.
    """
    total = int(np.shape(tasks.support_x)[0])
    if total % mesh.size:
        raise ValueError(f"tasks: {total} tasks do not divide evenly over {mesh.size} devices; use a multiple")
    return jax.device_put(tasks, task_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree (parameters, a train state) to every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
