"""The episode: a few-shot task as a pytree.

A :class:`Task` holds a support set (used for adaptation) and a query set (used to score the adapted learner).
Every field is an array; a leading axis on every field makes the same type a *batch* of tasks, which is what
:func:`fsl_jax.make_meta_step` ``vmap``-s and what :mod:`fsl_jax.parallel` shards.
"""

from typing import Any, NamedTuple

import jax
import numpy as np

Array = Any


class Task(NamedTuple):
    """One few-shot task (or a batch of them, with a leading task axis on every field).

    Attributes:
      support_x: support inputs, ``[n_support, *feature_shape]``.
      support_y: support targets: integer labels ``[n_support]`` (classification) or ``[n_support, *target_shape]``.
      query_x: query inputs, ``[n_query, *feature_shape]``.
      query_y: query targets, like ``support_y``.
      support_mask: optional ``[n_support]`` weights (1 = real example, 0 = padding) for ragged tasks.
      query_mask: optional ``[n_query]`` weights, likewise.
      way_mask: optional ``[max_ways]`` 0/1 values for an episode padded to a fixed number of classes (see
        :mod:`fsl_jax.data.episodes`): classes whose entry is 0 are padding and get no probability; labels index the
        classes whose entry is 1.

    Example:
      >>> import jax.numpy as jnp, fsl_jax as fj
      >>> task = fj.Task(jnp.zeros((5, 2)), jnp.arange(5), jnp.zeros((10, 2)), jnp.arange(10) % 5)
      >>> task.num_support, task.num_query
      (5, 10)
    """

    support_x: Array
    support_y: Array
    query_x: Array
    query_y: Array
    support_mask: Array | None = None
    query_mask: Array | None = None
    way_mask: Array | None = None

    @property
    def num_support(self) -> int:
        return int(np.shape(self.support_x)[0])

    @property
    def num_query(self) -> int:
        return int(np.shape(self.query_x)[0])

    def validate(self, *, batched: bool = False, num_ways: int | None = None) -> "Task":
        """Checks shapes and dtypes (outside ``jit``) and returns the task unchanged.

        Args:
          batched: whether every field carries a leading task axis.
          num_ways: if given, integer labels must lie in ``0..num_ways-1`` (checked only on concrete arrays).

        Raises:
          ValueError: naming the field, its shape and what was expected.
          TypeError: when a field is not an array.
        """
        return validate_task(self, batched=batched, num_ways=num_ways)


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if value is None:
        raise TypeError(f"Task.{name} must be an array, got None")
    try:
        return tuple(np.shape(value))
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"Task.{name} must be an array, got {type(value).__name__}") from exc


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def validate_task(task: Task, *, batched: bool = False, num_ways: int | None = None, check_values: bool = True) -> Task:
    """Validates a :class:`Task`; see :meth:`Task.validate`.

    With ``check_values=False`` only shapes and dtypes are checked (no NaN scan, no label range): what the compiled
    entry points (:func:`fsl_jax.meta_loss`, :func:`fsl_jax.make_meta_step`) run at trace time, for free.

    Example:
      >>> import numpy as np, fsl_jax as fj
      >>> task = fj.Task(np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.zeros((2, 2)), np.array([0, 3]))
      >>> fj.validate_task(task, num_ways=2)
      Traceback (most recent call last):
      ...
      ValueError: Task.query_y labels must lie in 0..1, got values in 0..3
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a fsl_jax.Task, got {type(task).__name__}")
    lead = 1 if batched else 0
    shapes = {name: _shape(name, getattr(task, name)) for name in ("support_x", "support_y", "query_x", "query_y")}
    for name, shape in shapes.items():
        if len(shape) < lead + 1:
            what = "[tasks, examples, ...]" if batched else "[examples, ...]"
            raise ValueError(f"Task.{name} must have shape {what}, got shape {shape}")
    if batched:
        sizes = {name: shape[0] for name, shape in shapes.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Task fields must share the leading task axis, got sizes {sizes}")
    sx, sy, qx, qy = (shapes[n] for n in ("support_x", "support_y", "query_x", "query_y"))
    if sx[lead] == 0:
        raise ValueError(f"Task.support_x must hold at least one example, got shape {sx}")
    if qx[lead] == 0:
        raise ValueError(f"Task.query_x must hold at least one example, got shape {qx}")
    if sy[: lead + 1] != sx[: lead + 1]:
        raise ValueError(f"Task.support_y shape {sy} does not match Task.support_x shape {sx} on the example axis")
    if qy[: lead + 1] != qx[: lead + 1]:
        raise ValueError(f"Task.query_y shape {qy} does not match Task.query_x shape {qx} on the example axis")
    if sx[lead + 1 :] != qx[lead + 1 :]:
        raise ValueError(f"Task.support_x features {sx[lead + 1 :]} differ from Task.query_x features {qx[lead + 1 :]}")
    if sy[lead + 1 :] != qy[lead + 1 :]:
        raise ValueError(f"Task.support_y target shape {sy[lead + 1 :]} differs from Task.query_y's {qy[lead + 1 :]}")
    for name, ref in (("support_mask", sx), ("query_mask", qx)):
        mask = getattr(task, name)
        if mask is not None and _shape(name, mask) != ref[: lead + 1]:
            raise ValueError(f"Task.{name} must have shape {ref[: lead + 1]}, got {_shape(name, mask)}")
    if task.way_mask is not None:
        wm = _shape("way_mask", task.way_mask)
        if len(wm) != lead + 1 or (batched and wm[0] != sx[0]):
            what = "[tasks, max_ways]" if batched else "[max_ways]"
            raise ValueError(f"Task.way_mask must have shape {what}, got {wm}")
    for name in ("support_x", "query_x"):
        value = getattr(task, name)
        dtype = np.dtype(value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            raise TypeError(f"Task.{name} must be numeric, got dtype {dtype}")
        if (
            check_values
            and np.issubdtype(dtype, np.floating)
            and _concrete(value)
            and not np.all(np.isfinite(np.asarray(value)))
        ):
            raise ValueError(f"Task.{name} contains NaN or Inf")
    if num_ways is not None:
        for name in ("support_y", "query_y"):
            value = getattr(task, name)
            dtype = np.dtype(value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)
            if not np.issubdtype(dtype, np.integer):
                raise TypeError(f"Task.{name} must hold integer class labels, got dtype {dtype}")
            if check_values and _concrete(value):
                arr = np.asarray(value)
                if arr.size and (arr.min() < 0 or arr.max() >= num_ways):
                    raise ValueError(
                        f"Task.{name} labels must lie in 0..{num_ways - 1}, got values in {arr.min()}..{arr.max()}"
                    )
    return task


def num_tasks(tasks: Task) -> int:
    """The size of the leading task axis of a batched :class:`Task`."""
    return int(np.shape(tasks.support_x)[0])


def task_at(tasks: Task, index: int) -> Task:
    """The ``index``-th task of a batch.

    Example:
      >>> import jax, fsl_jax as fj
      >>> tasks = fj.data.sinusoid_tasks(jax.random.key(0), 8, 5, 10)   # 8 tasks, 5 support / 10 query points
      >>> tasks.support_x.shape, fj.task_at(tasks, 3).support_x.shape
      ((8, 5, 1), (5, 1))
    """
    return jax.tree_util.tree_map(lambda x: x[index], tasks)
