"""N-way K-shot episode samplers over class-indexed data.

* :class:`DeviceSampler` keeps the whole ``[classes, per_class, ...]`` array on the device and samples episodes with
  ``jax.random`` inside ``jit`` (so a meta-step never waits for the host).
* :class:`HostSampler` does the same with numpy, for ragged classes or data that does not fit on the device.

Both produce the same distribution: ``ways`` distinct classes in random order, labelled ``0..ways-1``; for each
class ``shots + queries`` distinct examples, the first ``shots`` in the support set, the rest in the query set.
Support and query examples are grouped by label (``support_y = [0]*shots + [1]*shots + ...``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import _validate
from fsl_jax._config import describe
from fsl_jax.data.episodes import ArraySource
from fsl_jax.tasks import Task


def _check_episode(ways: Any, shots: Any, queries: Any, num_classes: int, per_class: int) -> tuple[int, int, int]:
    ways = _validate.integer("ways", ways)
    shots = _validate.integer("shots", shots)
    queries = _validate.integer("queries", queries)
    if ways > num_classes:
        raise ValueError(f"ways={ways} exceeds the {num_classes} classes in data")
    if shots + queries > per_class:
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {shots + queries} exceeds the {per_class} examples per class"
        )
    return ways, shots, queries


def check_rows(num_tasks: Any, start: Any, stop: Any) -> tuple[int, int]:
    """Validates ``num_tasks`` and the row range ``start:stop`` (``stop=None``: to the end) of a batch."""
    _validate.integer("num_tasks", num_tasks)
    stop = num_tasks if stop is None else stop
    if not (
        isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer)) and 0 <= start < stop <= num_tasks
    ):
        raise ValueError(
            f"start and stop must satisfy 0 <= start < stop <= num_tasks={num_tasks}, got "
            f"start={start!r}, stop={stop!r}"
        )
    return int(start), int(stop)


def _labels(ways: int, count: int) -> np.ndarray:
    return np.repeat(np.arange(ways, dtype=np.int32), count)


def _as_float(x: Any, dtype: Any) -> Any:
    """uint8 images become ``dtype`` in [0, 1]; other data is cast to ``dtype``."""
    if x.dtype == jnp.uint8:
        return x.astype(dtype) / 255.0
    return x.astype(dtype)


class DeviceSampler:
    """Samples N-way K-shot episodes on the device, inside ``jit``.

    Args:
      data: ``[classes, per_class, *feature_shape]`` array (numpy or jax). uint8 data is kept as uint8 on the
        device (4x less memory) and converted to ``dtype`` in ``[0, 1]`` per episode.
      ways: classes per task (N).
      shots: support examples per class (K).
      queries: query examples per class.
      dtype: the dtype of sampled inputs.

    Raises:
      ValueError: a wrong rank, ``ways`` above the number of classes, or ``shots + queries`` above the examples per
        class.

    Example:
      >>> import jax, numpy as np, fsl_jax as fj
      >>> data = np.random.rand(20, 30, 8).astype(np.float32)        # 20 classes x 30 examples x 8 features
      >>> sampler = fj.data.DeviceSampler(data, ways=5, shots=1, queries=15)
      >>> tasks = jax.jit(sampler.sample, static_argnums=1)(jax.random.key(0), 32)
      >>> tasks.support_x.shape, tasks.query_y.shape
      ((32, 5, 8), (32, 75))
    """

    def __init__(self, data: Any, ways: int, shots: int, queries: int, dtype: Any = jnp.float32):
        shape = np.shape(data)
        if len(shape) < 3:
            raise ValueError(
                f"data must have shape [classes, per_class, *features] (rank >= 3), got rank {len(shape)} shape {shape}"
            )
        self.ways, self.shots, self.queries = _check_episode(ways, shots, queries, shape[0], shape[1])
        self.data = jnp.asarray(data)
        self.dtype = dtype
        self.num_classes, self.per_class = int(shape[0]), int(shape[1])
        self.feature_shape = tuple(shape[2:])

    def sample_one(self, key: jax.Array) -> Task:
        """One unbatched task (jittable)."""
        k_class, k_example = jax.random.split(key)
        classes = jax.random.choice(k_class, self.num_classes, (self.ways,), replace=False)
        keys = jax.random.split(k_example, self.ways)
        count = self.shots + self.queries
        idx = jax.vmap(lambda k: jax.random.choice(k, self.per_class, (count,), replace=False))(keys)
        x = _as_float(self.data[classes[:, None], idx], self.dtype)  # [ways, count, *features]
        support_x = x[:, : self.shots].reshape((self.ways * self.shots, *self.feature_shape))
        query_x = x[:, self.shots :].reshape((self.ways * self.queries, *self.feature_shape))
        return Task(
            support_x,
            jnp.asarray(_labels(self.ways, self.shots)),
            query_x,
            jnp.asarray(_labels(self.ways, self.queries)),
        )

    def sample(self, key: jax.Array, num_tasks: int) -> Task:
        """A batch of ``num_tasks`` tasks with a leading task axis (jittable; ``num_tasks`` must be static)."""
        _validate.integer("num_tasks", num_tasks)
        return jax.vmap(self.sample_one)(jax.random.split(key, num_tasks))

    @property
    def config(self) -> dict:
        """What defines this sampler's episodes (stored with checkpoints): the episode shape and the data's shape,
        dtype and a fingerprint of its values."""
        return {
            "sampler": "DeviceSampler",
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "dtype": np.dtype(self.dtype).name,
            "data": describe(self.data),
        }

    def __repr__(self) -> str:
        return (
            f"DeviceSampler(classes={self.num_classes}, per_class={self.per_class}, features={self.feature_shape}, "
            f"ways={self.ways}, shots={self.shots}, queries={self.queries})"
        )


class HostSampler:
    """Samples N-way K-shot episodes with numpy on the host.

    Use it for ragged classes (a list of per-class arrays with different counts) or for data too large for the
    device. Episodes are deterministic in ``(seed, index, j)``: ``sample(num_tasks, index=i)`` always returns the same
    batch, which is what makes a resumed run sample exactly what an uninterrupted one would, and episode ``j`` of it
    does not depend on the others, so each process of a multi-process run can build only its own part.

    Args:
      data: ``[classes, per_class, *features]`` array, or a sequence of per-class arrays ``[count_c, *features]``.
      ways, shots, queries: as in :class:`DeviceSampler`.
      seed: the base seed.
      dtype: the numpy dtype of sampled inputs (uint8 data is scaled to [0, 1]).

    Example:
      >>> import numpy as np, fsl_jax as fj
      >>> classes = [np.random.rand(n, 4).astype(np.float32) for n in (20, 25, 30, 22, 40, 21)]
      >>> sampler = fj.data.HostSampler(classes, ways=5, shots=5, queries=10, seed=0)
      >>> sampler.sample(8).query_x.shape
      (8, 50, 4)
    """

    def __init__(self, data: Any, ways: int, shots: int, queries: int, seed: int = 0, dtype: Any = np.float32):
        classes = ArraySource(data).classes
        min_count = min(len(c) for c in classes)
        self.ways, self.shots, self.queries = _check_episode(ways, shots, queries, len(classes), min_count)
        if not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.classes = classes
        self.seed = int(seed)
        self.dtype = dtype
        self.index = 0
        self.feature_shape = tuple(classes[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _one(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        chosen = rng.choice(len(self.classes), self.ways, replace=False)
        count = self.shots + self.queries
        x = np.stack([self.classes[c][rng.choice(len(self.classes[c]), count, replace=False)] for c in chosen])
        if x.dtype == np.uint8:
            x = x.astype(self.dtype) / 255.0
        x = x.astype(self.dtype)
        support = x[:, : self.shots].reshape((self.ways * self.shots, *self.feature_shape))
        query = x[:, self.shots :].reshape((self.ways * self.queries, *self.feature_shape))
        return support, query

    def sample(self, num_tasks: int, index: int | None = None, *, start: int = 0, stop: int | None = None) -> Task:
        """A batch of ``num_tasks`` tasks (numpy arrays with a leading task axis), or the part ``start:stop`` of it.

        Episode ``j`` of batch ``index`` is drawn from ``default_rng([seed, index, j])`` alone, so any part of a batch
        can be built without the rest: in a multi-process run each process builds only its own rows, and the global
        batch is the same whatever the number of processes.

        Args:
          num_tasks: tasks in the (whole) batch.
          index: the batch number; ``None`` takes the sampler's counter and advances it.
          start, stop: build only episodes ``start .. stop - 1`` of the batch (default: all of them).

        Example:
          >>> import numpy as np, fsl_jax as fj
          >>> sampler = fj.data.HostSampler(np.random.rand(8, 6, 3).astype(np.float32), ways=2, shots=1, queries=2)
          >>> whole, part = sampler.sample(4, index=7), sampler.sample(4, index=7, start=2, stop=4)
          >>> part.support_x.shape, bool(np.array_equal(whole.query_x[2:], part.query_x))
          ((2, 2, 3), True)
        """
        start, stop = check_rows(num_tasks, start, stop)
        if index is None:
            index = self.index
            self.index += 1
        pairs = [self._one(np.random.default_rng([self.seed, int(index), j])) for j in range(start, stop)]
        count = stop - start
        support_x = np.stack([p[0] for p in pairs])
        query_x = np.stack([p[1] for p in pairs])
        support_y = np.tile(_labels(self.ways, self.shots), (count, 1))
        query_y = np.tile(_labels(self.ways, self.queries), (count, 1))
        return Task(support_x, support_y, query_x, query_y)

    @property
    def config(self) -> dict:
        """What defines this sampler's episodes (stored with checkpoints), as :attr:`DeviceSampler.config`."""
        counts = [len(c) for c in self.classes]
        return {
            "sampler": "HostSampler",
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "seed": self.seed,
            "dtype": np.dtype(self.dtype).name,
            "classes": len(counts),
            "examples": sum(counts),
            "data": describe(self.classes[0]),
            "last_class": describe(self.classes[-1]),
        }

    def __repr__(self) -> str:
        return (
            f"HostSampler(classes={self.num_classes}, features={self.feature_shape}, ways={self.ways}, "
            f"shots={self.shots}, queries={self.queries}, seed={self.seed})"
        )
