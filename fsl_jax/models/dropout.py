"""Dropout whose random bits come from a Philox counter-based generator, whatever the key's implementation.

A transformer fine-tuning step draws one random number per attention probability and per hidden activation (about
29 million for MiniLM at 16 x 128 tokens). With JAX's default ``threefry2x32`` keys, Flax's ``nn.Dropout``
(``jax.random.bernoulli``: threefry bits, then a float uniform, then a comparison) spent 0.23 s of a 3.0 s step on
that on a 2-core CPU; ``philox4x32`` bits compared with an integer threshold cost about a quarter as much.

:class:`Dropout` keeps Flax's interface and semantics (``rate``, the ``"dropout"`` rng collection, scaling the kept
values by ``1 / (1 - rate)``, the identity when ``deterministic``) and changes only where the bits come from: the
module's rng (any implementation, typed or raw) yields two 32-bit words, which seed a ``philox4x32`` key, whose bits
are compared with ``round(rate * 2**32)``. So an element is dropped with probability ``rate`` to within ``2**-33``,
elements are independent (Philox-4x32-10, Random123's generator that cuRAND and PyTorch's CUDA dropout also use), and
two calls with different rngs draw independent masks. The masks differ from ``nn.Dropout``'s for the same key.

Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((1000, 100))
    >>> y = Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> round(float(jnp.mean(y == 0)), 2), round(float(jnp.max(y)), 4)  # a quarter dropped, the rest times 1 / 0.75
    (0.25, 1.3333)
    >>> bool(jnp.all(Dropout(0.25).apply({}, x, deterministic=True) == x))
    True
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fsl_jax import _validate

Array = Any

_TWO_32 = 2**32


def keep_mask(key: Array, rate: float, shape: tuple[int, ...]) -> Array:
    """A boolean mask of ``shape``: each element ``False`` (dropped) with probability ``rate``, independently.

    ``key`` may be a typed key of any implementation or a raw ``uint32`` key. Two words drawn from it seed a
    ``philox4x32`` key; its ``uint32`` bits are kept where ``>= round(rate * 2**32)``.

    Example:
        >>> m = keep_mask(jax.random.key(0), 0.1, (100_000,))
        >>> m.dtype, round(1 - float(m.mean()), 2)
        (dtype('bool'), 0.1)
    """
    rate = _validate.fraction("rate", rate)
    seed = jax.random.bits(key, (2,), jnp.uint32)
    bits = jax.random.bits(jax.random.wrap_key_data(seed, impl="philox4x32"), shape, jnp.uint32)
    threshold = min(int(round(rate * _TWO_32)), _TWO_32 - 1)
    return bits >= jnp.asarray(threshold, jnp.uint32)


def dropout(x: Array, rate: float, key: Array) -> Array:
    """``x`` with each element zeroed with probability ``rate`` and the rest scaled by ``1 / (1 - rate)``.

    ``rate == 1`` gives zeros. See :func:`keep_mask` for the bits.

    Example:
        >>> dropout(jnp.ones(4), 0.0, jax.random.key(0)).tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    rate = _validate.fraction("rate", rate)
    if rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    return apply_mask(x, keep_mask(key, rate, x.shape), rate)


def apply_mask(x: Array, keep: Array, rate: float) -> Array:
    """``x`` zeroed where ``keep`` is false and scaled by ``1 / (1 - rate)`` elsewhere (``rate < 1``): the one place
    that applies a dropout mask, for :func:`dropout` and code that keeps its mask (the attention core's backward)."""
    if not _validate.fraction("rate", rate) < 1.0:
        raise ValueError(f"rate must be < 1 to scale the kept values, got {rate!r}")
    return lax.select(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros_like(x))


class Dropout(nn.Module):
    """Flax ``nn.Dropout`` with Philox bits (see the module docstring); same call: ``Dropout(rate)(x, deterministic)``.

    Attributes:
      rate: the probability of dropping an element, in ``[0, 1]``.
      rng_collection: the rng stream the key comes from (``"dropout"``).
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
        if deterministic or self.rate == 0.0:
            return inputs
        return dropout(inputs, self.rate, self.make_rng(self.rng_collection))

    def mask(self, shape: tuple[int, ...]) -> Array:
        """The keep mask that a call on an input of ``shape`` would draw (for code that applies it itself, such as
        :func:`fsl_jax.models.bert.dot_product_attention`); scale the kept values by ``1 / (1 - rate)``."""
        return keep_mask(self.make_rng(self.rng_collection), self.rate, shape)
