"""Mixed precision for every fsl_jax model: ``dtype`` is the computation type, ``param_dtype`` the storage type.

The Flax / MaxText convention: parameters live in ``param_dtype`` (float32 by default) and are cast to ``dtype`` where
they are used, so meta-parameters, inner-loop parameters, their gradients and the optimiser state stay float32 while
the forward (matrix products, convolutions) runs in ``dtype`` (``jnp.bfloat16`` on accelerators). Softmax, losses and
normalisation statistics are computed in float32 whatever ``dtype`` is. No loss scaling: bfloat16 has float32's
exponent range. float16 is accepted but not recommended: its range makes second-order meta-gradients overflow.

Example:
    >>> import jax.numpy as jnp
    >>> check_precision("MLP", jnp.bfloat16, None)  # parameters stored in float32
    dtype('float32')
    >>> check_precision("MLP", jnp.int32, jnp.float32)
    Traceback (most recent call last):
    ...
    ValueError: MLP: dtype must be a floating type (e.g. jnp.float32 or jnp.bfloat16), got int32
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def _name(value: Any) -> str:
    try:
        return jnp.dtype(value).name
    except TypeError:
        return repr(value)


def output_dtype(dtype: Any) -> Any:
    """The dtype of logits, losses and statistics: float32, or float64 when the computation itself is float64."""
    return jnp.promote_types(dtype, jnp.float32)


def resolve_param_dtype(dtype: Any, param_dtype: Any) -> Any:
    """``param_dtype``, or when it is ``None`` float32 (float64 for a float64 computation)."""
    return output_dtype(dtype) if param_dtype is None else param_dtype


def check_precision(owner: str, dtype: Any, param_dtype: Any) -> Any:
    """Returns the parameters' dtype (``param_dtype``, or float32 / float64 for ``None``: see
    :func:`resolve_param_dtype`) after checking both.

    Raises ``ValueError`` naming ``owner`` and the argument unless ``dtype`` and ``param_dtype`` are floating types and
    ``param_dtype`` is at least as precise as ``dtype`` (storing parameters in bfloat16 while computing in float32
    would lose the updates that mixed precision exists to keep).
    """
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if (value is not None or name == "dtype") and not _is_floating(value):
            raise ValueError(
                f"{owner}: {name} must be a floating type (e.g. jnp.float32 or jnp.bfloat16), got {_name(value)}"
            )
    param_dtype = resolve_param_dtype(dtype, param_dtype)
    if (
        jnp.finfo(param_dtype).nmant < jnp.finfo(dtype).nmant
        or np.dtype(param_dtype).itemsize < np.dtype(dtype).itemsize
    ):
        raise ValueError(
            f"{owner}: param_dtype={_name(param_dtype)} is less precise than dtype={_name(dtype)}: keep the stored "
            f"parameters at least as precise as the computation (e.g. param_dtype=jnp.float32)"
        )
    return jnp.dtype(param_dtype)


def _is_floating(value: Any) -> bool:
    try:
        return bool(jnp.issubdtype(jnp.dtype(value), jnp.floating))
    except TypeError:
        return False
