"""Padding one episode to static shapes: zero rows at the end, masks that say which rows and classes are real."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.tasks import Task, validate_task

Array = Any


def _size(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _mask_dtype(task: Task) -> Any:
    """The masks' dtype: an existing mask's, else the inputs' floating dtype, else float32."""
    for mask in (task.support_mask, task.query_mask, task.way_mask):
        if mask is not None:
            return mask.dtype
    dtype = np.dtype(task.support_x.dtype)
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def _pad_rows(xp: Any, value: Array, rows: int) -> Array:
    extra = rows - value.shape[0]
    return xp.concatenate([value, xp.zeros((extra, *value.shape[1:]), value.dtype)])


def _pad_side(task: Task, side: str, rows: int, dtype: Any) -> tuple[Array, Array, Array]:
    x, y, mask = getattr(task, f"{side}_x"), getattr(task, f"{side}_y"), getattr(task, f"{side}_mask")
    n = x.shape[0]
    if rows < n:
        raise ValueError(f"{side}={rows} is smaller than the task's {n} {side} rows")
    xp = jnp if isinstance(x, jax.Array) else np
    real = xp.ones((n,), dtype) if mask is None else xp.asarray(mask).astype(dtype)
    return _pad_rows(xp, x, rows), _pad_rows(xp, xp.asarray(y), rows), _pad_rows(xp, real, rows)


def _concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def pad_task(task: Task, *, support: int, query: int, ways: int | None = None) -> Task:
    """Pads one (unbatched) task to ``support`` support rows, ``query`` query rows and, optionally, ``ways`` classes.

    Zero rows (``x = 0``, ``y = 0``) are appended to the support and the query set, and ``support_mask`` /
    ``query_mask`` mark the real rows with 1 and the padding with 0 (an existing mask is kept for the original rows,
    so rows it already marks as padding stay padding). Padded episodes of one shape share one compilation, and every
    built-in learner computes the same loss and meta-gradient on the padded task as on the original one (see
    ``tests/test_padding.py``); masks need not be contiguous, so padding may also sit between real rows.

    With ``ways``, ``way_mask`` is ``[ways]``: 1 for the classes ``0..n-1`` of the task, 0 for the padded classes,
    which get no probability in the built-in losses. ``n``, the number of classes of the task, is the sum of an
    existing ``way_mask`` if the task has one, else ``max(support_y) + 1`` over the real support rows (so the labels
    must be ``0..n-1`` and every class must have a support example; on concrete arrays, a real support or query
    label at or above ``n`` is an error). Build the learner for ``ways`` classes (a head of width ``ways``, or
    ``ways=ways``). Without ``ways`` an existing ``way_mask`` is kept as it is.

    Arrays come back as the kind they were given: numpy for numpy (no device transfer), jax for jax (the function
    then also works inside ``jit``, except for the label checks, which need concrete values). The masks take the
    dtype of an existing mask, else the inputs' floating dtype, else float32.

    Caveat: a model whose output for one row depends on the other rows of the batch sees the padding. The built-in
    learners apply their models to all rows of a set at once, so ``fj.models.Conv4(norm="batch")`` (and any
    batch-statistics norm, e.g. in :class:`~fsl_jax.learners.RelationEncoder`) normalises with statistics that
    include the padded rows: use ``norm="layer"`` or ``norm="none"`` with padded episodes.

    Args:
      task: one task (no leading task axis), numpy or jax arrays.
      support: number of support rows after padding (at least the task's).
      query: number of query rows after padding (at least the task's).
      ways: number of classes after padding (at least the task's), or ``None`` to leave ``way_mask`` as it is.

    Returns:
      the padded :class:`~fsl_jax.Task`.

    Raises:
      ValueError: naming ``support``, ``query`` or ``ways`` when it is smaller than the task (or not a positive int),
        when ``ways`` is given for non-integer (regression) targets, or when a real label is outside ``0..n-1``.

    Example:
      >>> import numpy as np, fsl_jax as fj
      >>> task = fj.Task(np.ones((4, 2), np.float32), np.array([0, 0, 1, 1]), np.ones((2, 2), np.float32),
      ...                np.array([1, 0]))
      >>> padded = fj.data.pad_task(task, support=6, query=3, ways=4)
      >>> padded.support_x.shape, padded.support_mask.tolist(), padded.query_mask.tolist()
      ((6, 2), [1.0, 1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0])
      >>> padded.way_mask.tolist(), type(padded.way_mask).__name__
      ([1.0, 1.0, 0.0, 0.0], 'ndarray')
      >>> fj.data.pad_task(task, support=3, query=3)
      Traceback (most recent call last):
      ...
      ValueError: support=3 is smaller than the task's 4 support rows
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a fsl_jax.Task, got {type(task).__name__}")
    validate_task(task, check_values=False)
    support, query = _size("support", support), _size("query", query)
    if ways is not None:
        ways = _size("ways", ways)
    dtype = _mask_dtype(task)
    support_x, support_y, support_mask = _pad_side(task, "support", support, dtype)
    query_x, query_y, query_mask = _pad_side(task, "query", query, dtype)
    way_mask = task.way_mask
    if ways is not None:
        way_mask = _way_mask(task, ways, dtype)
    return Task(support_x, support_y, query_x, query_y, support_mask, query_mask, way_mask)


def _way_mask(task: Task, ways: int, dtype: Any) -> Array:
    y = task.support_y
    if not np.issubdtype(np.dtype(y.dtype), np.integer) or np.ndim(y) != 1:
        raise ValueError(
            f"ways is for classification tasks with integer labels [n]; got support_y of dtype {y.dtype} "
            f"and shape {np.shape(y)}"
        )
    xp = jnp if isinstance(task.support_x, jax.Array) else np
    real_s = np.ones(np.shape(y), bool) if task.support_mask is None else xp.asarray(task.support_mask) > 0
    real_q = np.ones(np.shape(task.query_y), bool) if task.query_mask is None else xp.asarray(task.query_mask) > 0
    if task.way_mask is not None:
        n = xp.sum(xp.asarray(task.way_mask) > 0)
    else:
        n = xp.max(xp.where(real_s, xp.asarray(y), -1)) + 1
    if _concrete(n):
        n_int = int(n)
        if n_int > ways:
            raise ValueError(f"ways={ways} is smaller than the task's {n_int} classes")
        for name, labels, real in (("support_y", y, real_s), ("query_y", task.query_y, real_q)):
            if not all(map(_concrete, (labels, real))):
                continue
            labels = np.asarray(labels)[np.asarray(real)]
            if labels.size and (labels.min() < 0 or labels.max() >= n_int):
                raise ValueError(
                    f"Task.{name} has real labels in {labels.min()}..{labels.max()}, but the task has "
                    f"{n_int} classes (labels 0..{n_int - 1})"
                )
    return (xp.arange(ways) < n).astype(dtype)
