"""Flax modules: few-shot backbones and text backbones (no training logic here).

Each name is imported from its module on first use (PEP 562, see :mod:`fsl_jax`).
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from fsl_jax import _lazy

if _TYPE_CHECKING:  # what the lazy table below resolves to, for type checkers and IDEs
    from fsl_jax.models.bert import Bert, BertConfig, mean_pool, sentence_embedding
    from fsl_jax.models.conv import Conv2d, Conv4, ConvBlock, Norm, im2col_conv, max_pool_2x2
    from fsl_jax.models.gpt2 import GPT2, GPT2Config, generate
    from fsl_jax.models.hub import from_pretrained, save_pretrained
    from fsl_jax.models.mlp import MLP
    from fsl_jax.models.resnet import ResBlock, ResNet12

__getattr__, __dir__ = _lazy(
    __name__,
    globals(),
    submodules=[],
    attributes={
        "bert": ["Bert", "BertConfig", "mean_pool", "sentence_embedding"],
        "conv": ["Conv2d", "Conv4", "ConvBlock", "Norm", "im2col_conv", "max_pool_2x2"],
        "gpt2": ["GPT2", "GPT2Config", "generate"],
        "hub": ["from_pretrained", "save_pretrained"],
        "mlp": ["MLP"],
        "resnet": ["ResBlock", "ResNet12"],
    },
)

__all__ = [
    "Bert",
    "BertConfig",
    "Conv2d",
    "Conv4",
    "ConvBlock",
    "GPT2",
    "GPT2Config",
    "MLP",
    "Norm",
    "ResBlock",
    "ResNet12",
    "from_pretrained",
    "generate",
    "im2col_conv",
    "max_pool_2x2",
    "mean_pool",
    "save_pretrained",
    "sentence_embedding",
]
