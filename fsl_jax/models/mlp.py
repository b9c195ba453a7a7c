"""Multi-layer perceptrons (the MAML sinusoid network)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fsl_jax.models.precision import check_precision, output_dtype

Array = Any


class MLP(nn.Module):
    """A ReLU multi-layer perceptron; the last layer is named ``head``.

    ``dtype`` is the computation type, ``param_dtype`` the parameters' (``None``: float32, or float64 for a float64
    computation; see :mod:`fsl_jax.models.precision`); the output is float32 (float64 for float64).

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> model = fj.models.MLP(hidden=(40, 40), out=1)      # the MAML sinusoid network
      >>> model.apply(model.init(jax.random.key(0), jnp.zeros((10, 1))), jnp.zeros((10, 1))).shape
      (10, 1)
    """

    hidden: Sequence[int] = (40, 40)
    out: int | None = 1
    dtype: Any = jnp.float32
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        param_dtype = check_precision("MLP", self.dtype, self.param_dtype)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=param_dtype, name=f"dense{i}")(x))
        if self.out is None:
            return x.astype(output_dtype(self.dtype))
        return nn.Dense(self.out, dtype=self.dtype, param_dtype=param_dtype, name="head")(x).astype(
            output_dtype(self.dtype)
        )
