"""Multi-layer perceptrons (the MAML sinusoid network)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Array = Any


class MLP(nn.Module):
    """A ReLU multi-layer perceptron; the last layer is named ``head``.

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> model = fj.models.MLP(hidden=(40, 40), out=1)      # the MAML sinusoid network
      >>> model.apply(model.init(jax.random.key(0), jnp.zeros((10, 1))), jnp.zeros((10, 1))).shape
      (10, 1)
    """

    hidden: Sequence[int] = (40, 40)
    out: int | None = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"dense{i}")(x))
        if self.out is None:
            return x
        return nn.Dense(self.out, dtype=self.dtype, name="head")(x)
