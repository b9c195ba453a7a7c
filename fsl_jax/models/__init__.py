"""Flax modules: few-shot backbones (no training logic here)."""

from fsl_jax.models.conv import Conv2d, Conv4, ConvBlock, Norm, im2col_conv, max_pool_2x2
from fsl_jax.models.mlp import MLP

__all__ = ["Conv2d", "Conv4", "ConvBlock", "MLP", "Norm", "im2col_conv", "max_pool_2x2"]
