"""MAML's sinusoid regression tasks (Finn et al., 2017).

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]``, phase ``phi ~ U[0, pi]`` and inputs
``x ~ U[-5, 5]``. Sampling is pure ``jax.random``: it runs inside ``jit`` and ``vmap``.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from fsl_jax import _validate
from fsl_jax.tasks import Task

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, jnp.pi)
X_RANGE = (-5.0, 5.0)


def sinusoid_params(key: jax.Array, num_tasks: int) -> tuple[jax.Array, jax.Array]:
    """Amplitudes and phases of ``num_tasks`` sinusoid tasks, each ``[num_tasks]``."""
    k_amp, k_phase = jax.random.split(key)
    amp = jax.random.uniform(k_amp, (num_tasks,), minval=AMPLITUDE[0], maxval=AMPLITUDE[1])
    phase = jax.random.uniform(k_phase, (num_tasks,), minval=PHASE[0], maxval=PHASE[1])
    return amp, phase


def sinusoid_tasks(key: jax.Array, num_tasks: int, shots: int, queries: int) -> Task:
    """Samples a batch of sinusoid regression tasks.

    Args:
      key: a PRNG key.
      num_tasks: the size of the leading task axis.
      shots: support points per task (K in K-shot regression).
      queries: query points per task.

    Returns:
      A batched :class:`~fsl_jax.Task` with ``support_x/y: [num_tasks, shots, 1]`` and
      ``query_x/y: [num_tasks, queries, 1]`` (float32).

    Example:
      >>> import jax, fsl_jax as fj
      >>> tasks = fj.data.sinusoid_tasks(jax.random.key(0), num_tasks=25, shots=10, queries=10)
      >>> tasks.support_x.shape
      (25, 10, 1)
    """
    for name, value in (("num_tasks", num_tasks), ("shots", shots), ("queries", queries)):
        _validate.positive_int(name, value)
    k_task, k_x = jax.random.split(key)
    amp, phase = sinusoid_params(k_task, num_tasks)
    x = jax.random.uniform(k_x, (num_tasks, shots + queries, 1), minval=X_RANGE[0], maxval=X_RANGE[1])
    y = amp[:, None, None] * jnp.sin(x - phase[:, None, None])
    return Task(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
