"""Argument checks shared by the public entry points (meta-training, evaluation, checkpoints).

Every error names the argument and the value that is wrong. Checks on tasks and models run on shapes only (at trace
time or through ``jax.eval_shape``), so they cost nothing per step.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import jax
import numpy as np

from fsl_jax.tasks import Task


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or ``ValueError`` naming ``name`` and the value."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def positive_number(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """``value`` as a finite float > 0 (or ``None`` when allowed), or ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(value)
        or value <= 0
    ):
        what = "a positive number or None" if allow_none else "a positive number"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def path_or_none(name: str, value: Any) -> str | None:
    """``value`` as a path string (or ``None``), or ``TypeError`` naming ``name``."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise TypeError(f"{name} must be a folder path or None, got {value!r}")
    return os.fspath(value)


def writable_dir(name: str, path: str) -> None:
    """Creates folder ``path`` if needed and checks that a file can be written in it (root ignores permission bits,
    so this writes and removes a probe file instead of trusting ``os.access``)."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".fsl_jax_write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"{name} {path!r} is not a writable folder: {exc.strerror or exc}") from exc


def source_ways(source: Any) -> int | None:
    """The static number of ways of a task source, when it has one (samplers and their bound ``sample``)."""
    owner = getattr(source, "__self__", source)
    ways = getattr(owner, "max_ways", None)  # padded episodes: the static number of classes
    if ways is None:
        ways = getattr(owner, "ways", None)
    return int(ways) if isinstance(ways, (int, np.integer)) and not isinstance(ways, bool) else None


def _abstract(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype), tree)


def label_count(task: Task) -> int | None:
    """``1 + the largest integer label`` of a concrete task (support and query), else ``None``."""
    counts = []
    for labels in (task.support_y, task.query_y):
        if isinstance(labels, jax.core.Tracer) or not np.issubdtype(np.asarray(labels).dtype, np.integer):
            return None
        arr = np.asarray(labels)
        if arr.size:
            counts.append(int(arr.max()) + 1)
    return max(counts) if counts else None


def output_width(learner: Any, params: Any, task: Task) -> int | None:
    """The number of outputs per query example of ``learner`` on ``task`` (one unbatched task), from shapes only."""
    if learner.kind != "classification":
        return None

    def predict(p, t, key):
        return learner.predict(p, learner.adapt(p, t, key), t.query_x)

    task = task._replace(way_mask=None)  # the width is the model's, whatever the episode's padded ways
    out = jax.eval_shape(predict, _abstract(params), _abstract(task), jax.ShapeDtypeStruct((), jax.random.key(0).dtype))
    shape = getattr(out, "shape", None)
    return int(shape[-1]) if shape else None


def check_output_width(learner: Any, params: Any, task: Task, ways: int | None = None) -> None:
    """Labels at or above the model's output width are an error naming both; more outputs than ways a warning.

    ``ways`` is the episodes' number of classes when the source knows it; otherwise it is read off the labels of a
    concrete ``task``. Nothing is checked for regression learners or when neither is available.
    """
    if learner.kind != "classification":
        return
    if ways is None:
        ways = label_count(task)
    if ways is None:
        return
    width = output_width(learner, params, task)
    if width is None:
        return
    if ways > width:
        raise ValueError(
            f"the episodes have {ways} classes (labels 0..{ways - 1}) but {learner.name} outputs {width} logits per "
            f"example: build the model for {ways} ways (e.g. fj.models.Conv4(num_classes={ways}) or ways={ways})"
        )
    if width > ways:
        warnings.warn(
            f"{learner.name} outputs {width} logits per example for {ways}-way episodes: logits {ways}..{width - 1} "
            f"are never a target (build the model for {ways} ways)",
            stacklevel=3,
        )
