"""Argument checks shared by the public entry points (learners, data, text classifiers, meta-training, evaluation,
checkpoints).

Every error names the argument and the value that is wrong. The first part holds the generic checks (ints, numbers,
fractions, choices, modules, texts and labels) that every module calls instead of keeping its own copy; the second the
checks on tasks and models, which run on shapes only (at trace time or through ``jax.eval_shape``), so they cost
nothing per step.

This module imports only :mod:`fsl_jax.tasks` from the package (never ``fsl_jax.learners``, ``fsl_jax.llm``,
``fsl_jax.data`` or ``fsl_jax.train``), so that any module can import it without an import cycle.

Example:
    >>> integer("shots", 5)
    5
    >>> integer("steps", None, allow_none=True) is None
    True
    >>> number("weight_decay", 0, allow_zero=True)
    0.0
    >>> choice("split", "val", ("train", "val", "test"))
    'val'
    >>> integer("ways", 1, 2)
    Traceback (most recent call last):
    ...
    ValueError: ways must be an int >= 2, got 1
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Any, Hashable, Literal, Sequence, TypeGuard, TypeVar, overload

import jax
import numpy as np

from fsl_jax.tasks import Task

if TYPE_CHECKING:
    import flax.linen as nn

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------- generic checks


def is_int(value: Any) -> TypeGuard[int | np.integer]:
    """Whether ``value`` is an integer (a Python or NumPy int; ``bool`` is not one)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


@overload
def integer(name: str, value: Any, minimum: int = 1, *, allow_none: Literal[False] = False) -> int: ...
@overload
def integer(name: str, value: Any, minimum: int = 1, *, allow_none: bool) -> int | None: ...
def integer(name: str, value: Any, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (``None`` passes through when ``allow_none``).

    Python and NumPy ints are accepted, ``bool`` is not.

    Raises:
      ValueError: ``"{name} must be an int >= {minimum}, got {value!r}"`` (``"... >= {minimum} or None, ..."`` when
        ``None`` is allowed).
    """
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        or_none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an int >= {minimum}{or_none}, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (Python or NumPy int, not ``bool``).

    Raises:
      ValueError: ``"{name} must be a positive int, got {value!r}"``.
    """
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@overload
def number(
    name: str, value: Any, *, allow_zero: bool = False, allow_none: Literal[False] = False, say_finite: bool = True
) -> float: ...
@overload
def number(
    name: str, value: Any, *, allow_zero: bool = False, allow_none: bool, say_finite: bool = True
) -> float | None: ...
def number(
    name: str, value: Any, *, allow_zero: bool = False, allow_none: bool = False, say_finite: bool = True
) -> float | None:
    """``value`` as a finite float > 0 (>= 0 when ``allow_zero``; ``None`` passes through when ``allow_none``).

    Python and NumPy ints and floats are accepted; ``bool``, NaN and infinities are not.

    Raises:
      ValueError: ``"{name} must be a positive finite number, got {value!r}"`` (``non-negative`` when zero is
        allowed, ``... or None`` when ``None`` is; ``say_finite=False`` leaves out the word ``finite``, the wording
        of :func:`positive_number`).
    """
    if value is None and allow_none:
        return None
    if not _is_real(value) or not _finite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        finite = " finite" if say_finite else ""
        or_none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a {kind}{finite} number{or_none}, got {value!r}")
    return float(value)


@overload
def positive_number(name: str, value: Any, *, allow_none: Literal[False] = False) -> float: ...
@overload
def positive_number(name: str, value: Any, *, allow_none: bool) -> float | None: ...
def positive_number(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """``value`` as a finite float > 0 (or ``None`` when allowed): :func:`number` with the wording
    ``"{name} must be a positive number[ or None], got {value!r}"``."""
    return number(name, value, allow_none=allow_none, say_finite=False)


def fraction(name: str, value: Any) -> float:
    """``value`` as a float in ``[0, 1]`` (an int or float, not ``bool`` or NaN).

    Raises:
      ValueError: ``"{name} must be in [0, 1], got {value!r}"``.
    """
    if not _is_real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def ways(value: Any) -> int:
    """The number of classes of a metric learner: an int >= 2.

    Raises:
      ValueError: ``"ways must be an int >= 2, got {value!r}"``.
    """
    return integer("ways", value, 2)


def choice(name: str, value: Any, allowed: Sequence[T]) -> T:
    """``value`` when it is one of ``allowed`` (an instance of that option's type and equal to it, so ``1`` is not
    ``"1"`` and an array is never compared element-wise).

    Raises:
      ValueError: ``"{name} must be one of {allowed}, got {value!r}"``.
    """
    for option in allowed:
        if isinstance(value, type(option)) and value == option:
            return value
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def module(name: str, value: Any) -> nn.Module:
    """``value`` when it is a ``flax.linen.Module``.

    Raises:
      TypeError: ``"{name} must be a flax.linen.Module, got {type name}"``.
    """
    import flax.linen as nn  # here, not at the top: this module stays light for the checks that need no flax

    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a flax.linen.Module, got {type(value).__name__}")
    return value


def texts(name: str, value: Any, *, allow_empty: bool = False) -> list[str]:
    """``value`` as a list of strings.

    Raises:
      TypeError: a single ``str`` (``"{name} must be a sequence of strings, got a single str '...'; wrap it in a
        list"``), something that is not iterable, or an item that is not a ``str`` (``"{name}[i] must be a str, got
        {type name} {item!r}"``).
      ValueError: an empty sequence, unless ``allow_empty``.

    Example:
        >>> texts("texts", ("a match", "a merger"))
        ['a match', 'a merger']
    """
    if isinstance(value, str):
        raise TypeError(f"{name} must be a sequence of strings, got a single str {value[:40]!r}; wrap it in a list")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of strings, got {type(value).__name__}") from None
    if not items and not allow_empty:
        raise ValueError(f"{name} is empty: need at least one text")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(item).__name__} {item!r}")
    return items


def labels(texts: Sequence[str], labels: Any, texts_name: str = "texts", labels_name: str = "labels") -> list[Hashable]:
    """``labels`` as a list of hashable labels, one per text (NumPy scalars become Python ones).

    Raises:
      TypeError: a single ``str``, something that is not iterable, or an unhashable label (each naming
        ``labels_name``).
      ValueError: ``len(labels) != len(texts)``.

    Example:
        >>> labels(["a match", "a merger"], np.array(["sport", "business"]))
        ['sport', 'business']
    """
    if isinstance(labels, str):
        raise TypeError(f"{labels_name} must be a sequence of labels, got a single str {labels[:40]!r}")
    try:
        items = list(labels)
    except TypeError:
        raise TypeError(f"{labels_name} must be a sequence of labels, got {type(labels).__name__}") from None
    if len(items) != len(texts):
        raise ValueError(
            f"len({labels_name})={len(items)} does not match len({texts_name})={len(texts)}: give one label per text"
        )
    out = []
    for i, label in enumerate(items):
        if isinstance(label, np.generic):
            label = label.item()
        try:
            hash(label)
        except TypeError:
            raise TypeError(f"{labels_name}[{i}]={label!r} is not hashable; labels must be hashable") from None
        out.append(label)
    return out


# ---------------------------------------------------------------------------------------------------- files


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


# ---------------------------------------------------------------------------------------------------- tasks and models


def source_ways(source: Any) -> int | None:
    """The static number of ways of a task source, when it has one (samplers and their bound ``sample``)."""
    owner = getattr(source, "__self__", source)
    ways = getattr(owner, "max_ways", None)  # padded episodes: the static number of classes
    if ways is None:
        ways = getattr(owner, "ways", None)
    return int(ways) if is_int(ways) else None


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
