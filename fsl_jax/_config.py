"""JSON-able descriptions of what defines a run: learners, models, optimisers and task sources.

A checkpoint stores the description of the run that wrote it; resuming compares it with the caller's and names every
field that differs (:func:`config_diff`). Descriptions are built from what the objects hold (constructor arguments,
dataclass fields, the values an optax transformation closes over), never from ``repr`` addresses, so the same
settings give the same description in another process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import math
import types
from typing import Any, Callable

import jax
import numpy as np

_MAX_DEPTH = 8
_FINGERPRINT_VALUES = 1 << 16  # array fingerprints hash at most this many evenly spaced values


def _function_name(fn: Callable) -> str:
    """``"module.qualname"`` without the ``<locals>`` noise: ``optax.scale_by_adam.update_fn``."""
    qualname = getattr(fn, "__qualname__", type(fn).__name__).replace(".<locals>", "")
    module = getattr(fn, "__module__", None) or ""
    return f"{module.split('.')[0]}.{qualname}" if module else qualname


def _array(value: Any) -> dict:
    shape = tuple(int(d) for d in np.shape(value))
    dtype = str(value.dtype)
    size = int(np.prod(shape)) if shape else 1
    if size <= 16:
        return {"array": np.asarray(jax.device_get(value)).tolist(), "dtype": dtype}
    flat = value.reshape(-1)
    stride = max(1, size // _FINGERPRINT_VALUES)
    sample = np.ascontiguousarray(jax.device_get(flat[::stride]))  # on device: only the sample is transferred
    digest = hashlib.blake2b(sample.tobytes(), digest_size=8).hexdigest()
    return {"shape": list(shape), "dtype": dtype, "fingerprint": digest}


def _closure(fn: Callable, depth: int) -> dict:
    """The values a function closes over, by name (what an optax transformation's ``update`` holds)."""
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    out = {}
    if code is not None:
        for name, cell in zip(code.co_freevars, cells):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if name in ("__class__",):
                continue
            out[name] = describe(value, depth + 1)
    return out


def describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able description of ``value`` that is equal for equal settings.

    Numbers, strings and ``None`` stand for themselves; sequences and dicts are described element-wise; Flax modules
    and dataclasses by their fields; objects with a ``config`` attribute (learners, samplers) by it; functions by their
    name and the values they close over (so ``optax.adam(1e-3)`` and ``optax.adam(3e-4)`` differ); arrays by shape,
    dtype and a fingerprint of their values.

    Example:
      >>> import optax
      >>> describe(optax.sgd(0.1)) == describe(optax.sgd(0.1)), describe(optax.sgd(0.1)) == describe(optax.sgd(0.2))
      (True, False)
      >>> describe({"lr": 0.5, "layers": (32, 32)})
      {'lr': 0.5, 'layers': [32, 32]}
    """
    if depth > _MAX_DEPTH:
        return "..."
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return [describe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (np.dtype, type)):
        return getattr(value, "__name__", str(value))
    if hasattr(value, "shape") and hasattr(value, "dtype") and not callable(value):
        if str(getattr(value, "dtype", "")).startswith("key<"):  # a typed PRNG key
            return _array(jax.random.key_data(value))
        return _array(value)
    config = getattr(value, "config", None)
    if isinstance(config, dict):
        return config
    if isinstance(value, functools.partial):
        return {
            "partial": describe(value.func, depth + 1),
            "args": describe(value.args, depth + 1),
            "keywords": describe(value.keywords, depth + 1),
        }
    if isinstance(value, types.MethodType):
        return {"method": _function_name(value.__func__), "of": describe(value.__self__, depth + 1)}
    if hasattr(value, "_fields") and hasattr(value, "update") and hasattr(value, "init"):  # optax transformation
        return describe(value.update, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: getattr(value, f.name, None)
            for f in dataclasses.fields(value)
            if f.name not in ("parent", "name") and not f.name.startswith("_")
        }
        return {"type": type(value).__name__, **{k: describe(v, depth + 1) for k, v in fields.items()}}
    if hasattr(value, "_fields"):  # other NamedTuples
        return {"type": type(value).__name__, **{k: describe(getattr(value, k), depth + 1) for k in value._fields}}
    if inspect.isfunction(value):
        name = _function_name(value)
        cells = value.__closure__ or ()
        if name.endswith("with_extra_args_support.update") and "tx" in value.__code__.co_freevars and cells:
            return describe(cells[value.__code__.co_freevars.index("tx")].cell_contents, depth)
        closure = _closure(value, depth)
        return {"fn": name, **closure} if closure else name
    if callable(value):
        return _function_name(value)
    return f"<{type(value).__qualname__}>"


def key_path(keys: tuple) -> str:
    """A pytree key path as ``opt_state/0/mu/params/w``: the same string whether a level is a NamedTuple (an orbax
    checkpoint stores those as dicts), a dict or a list.

    Example:
      >>> import jax
      >>> [key_path(p) for p, _ in jax.tree_util.tree_leaves_with_path({"a": [1, {"b": 2}]})]
      ['a/0', 'a/1/b']
    """
    parts = []
    for k in keys:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    if isinstance(tree, list):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out if out else {prefix: []}
    return {prefix: tree}


def config_diff(stored: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored value, current value)}`` for every leaf field that differs (dotted paths).

    Example:
      >>> config_diff({"learner": {"inner_lr": 0.4}, "meta_batch": 8}, {"learner": {"inner_lr": 0.1}, "meta_batch": 8})
      {'learner.inner_lr': (0.4, 0.1)}
    """
    a, b = _flatten(stored), _flatten(current)
    missing = object()
    diff = {}
    for key in list(a) + [k for k in b if k not in a]:
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            diff[key] = (None if x is missing else x, None if y is missing else y)
    return diff


def records_config(constructor: Callable) -> Callable:
    """Decorates a learner constructor so that the learner it returns carries ``config``: its name and arguments.

    Example:
      >>> import fsl_jax as fj
      >>> fj.maml(fj.models.MLP((8,)), "mse", inner_lr=0.1).config["inner_lr"]
      0.1
    """
    signature = inspect.signature(constructor)

    @functools.wraps(constructor)
    def wrapper(*args, **kwargs):
        learner = constructor(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        config = {"learner": constructor.__name__}
        config.update({name: describe(value) for name, value in bound.arguments.items()})
        return learner._replace(config=config)

    return wrapper
