"""ResNet-12, the wider few-shot backbone (Oreshkin et al., 2018; Lee et al., 2019).

Built from the same pieces as :class:`fsl_jax.models.Conv4` (im2col ``Conv2d``, batch-statistics ``Norm``,
reshape max-pool), so it stays fast under ``vmap`` on CPU and has no running averages (see :mod:`fsl_jax.models.conv`).
DropBlock is not included.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fsl_jax.models.conv import Conv2d, Norm, max_pool_2x2
from fsl_jax.models.precision import check_precision, output_dtype

Array = Any


class ResBlock(nn.Module):
    """Three (conv 3x3 -> norm) with leaky ReLU between them, plus a (conv 1x1 -> norm) shortcut; add, leaky ReLU,
    2x2 max-pool."""

    features: int
    norm: str = "batch"
    conv_impl: str = "auto"
    negative_slope: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def conv(k: int, name: str) -> Conv2d:
            return Conv2d(
                self.features,
                k,
                use_bias=False,
                conv_impl=self.conv_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        shortcut = Norm(self.norm, param_dtype=self.param_dtype, name="shortcut_norm")(conv(1, "shortcut_conv")(x))
        for i in range(3):
            x = conv(3, f"conv{i}")(x)
            x = Norm(self.norm, param_dtype=self.param_dtype, name=f"norm{i}")(x)
            if i < 2:
                x = nn.leaky_relu(x, self.negative_slope)
        x = nn.leaky_relu(x + shortcut, self.negative_slope)
        return max_pool_2x2(x)


class ResNet12(nn.Module):
    """ResNet-12: four residual blocks (each three 3x3 convs and a 1x1 shortcut, then 2x2 max-pool) and a global
    average pool.

    84x84 inputs reach 5x5 before the pool, 28x28 inputs 1x1; the output is ``[n, channels[-1]]`` (an embedding for
    metric learners) or, with ``num_classes``, logits from a linear classifier named ``head`` (for
    :func:`fsl_jax.anil`).

    Attributes:
      num_classes: classifier outputs, or ``None`` for the embedding.
      channels: output channels of the four blocks.
      norm: ``"batch"`` (per-batch statistics, no running averages), ``"layer"`` or ``"none"``.
      conv_impl: ``"auto"`` (im2col on CPU, XLA convolution elsewhere), ``"im2col"`` or ``"xla"``.
      negative_slope: of the leaky ReLUs (0.1, as in the reference implementations).
      dtype: computation dtype; normalisation statistics and the output are float32.
      param_dtype: parameter dtype (``None``: float32, or float64 for a float64 computation).

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> model = fj.models.ResNet12()  # channels (64, 160, 320, 640)
      >>> x = jnp.zeros((2, 84, 84, 3))
      >>> out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x)  # shapes only: no compute
      >>> out.shape, list(variables["params"])
      ((2, 640), ['block0', 'block1', 'block2', 'block3'])
      >>> sum(v.size for v in jax.tree_util.tree_leaves(variables))  # the usual 12.4M parameters
      12424320
      >>> head = fj.models.ResNet12(num_classes=5)  # logits from a linear "head", e.g. for fj.anil
      >>> jax.eval_shape(head.init_with_output, jax.random.key(0), jnp.zeros((2, 28, 28, 1)))[0].shape
      (2, 5)
    """

    num_classes: int | None = None
    channels: Sequence[int] = (64, 160, 320, 640)
    norm: str = "batch"
    conv_impl: str = "auto"
    negative_slope: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        param_dtype = check_precision("ResNet12", self.dtype, self.param_dtype)
        if x.ndim != 4:
            raise ValueError(f"ResNet12 expects images [batch, height, width, channels], got shape {x.shape}")
        if len(self.channels) != 4 or not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ValueError(f"channels must be four positive ints, got {self.channels!r}")
        if x.shape[1] < 16 or x.shape[2] < 16:
            raise ValueError(f"ResNet12 needs inputs of at least 16x16 (four 2x2 pools), got {x.shape[1:3]}")
        for i, features in enumerate(self.channels):
            x = ResBlock(
                features,
                self.norm,
                self.conv_impl,
                self.negative_slope,
                self.dtype,
                param_dtype,
                name=f"block{i}",
            )(x)
        x = jnp.mean(x.astype(output_dtype(self.dtype)), axis=(1, 2))
        if self.num_classes is None:
            return x
        head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=param_dtype, name="head")
        return head(x).astype(output_dtype(self.dtype))
