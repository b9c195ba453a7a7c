"""Convolutional few-shot backbones that stay fast under ``vmap`` over per-task weights.

Gradient-based meta-learners ``vmap`` the model over tasks with *different* weights per task. XLA turns a
convolution with batched weights into a grouped convolution, which XLA:CPU runs 20-50x slower than a plain one. The
same math written as im2col (k*k shifted slices of the padded input) + one matrix product is a batched matmul,
which XLA handles well on every backend; its derivatives, of every order, are written by hand in the same form
(:func:`im2col_conv`). Max-pooling as strided slices + select likewise avoids ``reduce_window``. ``conv_impl="auto"``
picks im2col on CPU and XLA's convolution elsewhere.

Normalisation: ``norm="batch"`` normalises with the statistics of the batch at hand (per task under ``vmap``: the
support set during adaptation, the query set when predicting, as in the reference MAML implementation) with a
learned scale and bias and **no running averages**, so there is no mutable state to thread through the inner loop
and second-order gradients are exact. ``"layer"`` (per example) and ``"none"`` are the alternatives.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.models.precision import check_precision, output_dtype

Array = Any
NORMS = ("batch", "layer", "none")
CONV_IMPLS = ("auto", "im2col", "xla")


def _resolve_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return impl


class Conv2d(nn.Module):
    """A stride-1 'SAME' 2-D convolution, NHWC, with a selectable implementation.

    The kernel has Flax's layout ``[k, k, in, out]`` whatever the implementation, so parameters are interchangeable.

    Attributes:
      features: output channels.
      kernel_size: odd kernel size ``k``.
      use_bias: add a bias.
      conv_impl: ``"im2col"`` (slices + one matrix product), ``"xla"`` (``lax.conv_general_dilated``) or ``"auto"``.
    """

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"Conv2d expects NHWC input of rank 4, got shape {x.shape}")
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {k}")
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features), self.param_dtype)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if _resolve_impl(self.conv_impl) == "xla":
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            y = im2col_conv(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        return y


def _patches(x: Array, k: int) -> Array:
    """``[n, h, w, c] -> [n*h*w, k*k*c]``: the k*k shifted slices of the zero-padded input, tap-major."""
    n, height, width, cin = x.shape
    pad = k // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    patches = jnp.stack([padded[:, i : i + height, j : j + width, :] for i in range(k) for j in range(k)], axis=3)
    return patches.reshape(n * height * width, k * k * cin)


def _flip(kernel: Array) -> Array:
    """The kernel of the data gradient: rotated 180 degrees, input and output channels swapped."""
    return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


@jax.custom_vjp
def im2col_conv(x: Array, kernel: Array) -> Array:
    """'SAME' stride-1 convolution (NHWC input, ``[k, k, in, out]`` kernel) as im2col + one matrix product.

    The patches are ``k*k`` shifted slices of the padded input laid out so that the product needs no transpose. The
    derivatives are written by hand in the same form, at every order: the data gradient is this convolution with the
    flipped kernel, the kernel gradient (:func:`_kernel_grad`) is one matrix product of the output gradient with the
    patches, and that function's own derivatives are again these two. Autodiff of the slices instead would pad and
    add ``k*k`` full-size arrays, store the patches for the backward pass and transpose them, which took a third of
    a Conv-4 MAML step on XLA:CPU. Here the patches are recomputed in the backward pass, never stored. Reverse mode
    only (``jax.grad`` of any order; not ``jax.jvp``): use ``conv_impl="xla"`` for forward-mode derivatives.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 5))
      >>> im2col_conv(x, w)[0, :, :, 0].tolist()  # a 3x3 window of ones over 2 channels, zero-padded
      [[8.0, 12.0, 12.0, 8.0], [12.0, 18.0, 18.0, 12.0], [12.0, 18.0, 18.0, 12.0], [8.0, 12.0, 12.0, 8.0]]
    """
    return _conv(x, kernel)


def _conv(x: Array, kernel: Array) -> Array:
    k, _, cin, cout = kernel.shape
    if kernel.shape[1] != k or k % 2 != 1 or x.shape[-1] != cin:
        raise ValueError(f"im2col_conv needs an odd square kernel [k, k, {x.shape[-1]}, out], got {kernel.shape}")
    n, height, width, _ = x.shape
    y = _patches(x, k) @ kernel.reshape(k * k * cin, cout).astype(x.dtype)
    return y.reshape(n, height, width, cout)


def _conv_fwd(x: Array, kernel: Array):
    # im2col_conv, not _conv: under an outer derivative (MAML's second order) this forward is traced by the outer
    # autodiff, which must see the custom rule again rather than differentiate the slices.
    return im2col_conv(x, kernel), (x, kernel)


def _conv_bwd(residuals, g: Array):
    x, kernel = residuals
    return im2col_conv(g, _flip(kernel)).astype(x.dtype), _kernel_grad(x, g, kernel.shape[0]).astype(kernel.dtype)


im2col_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _kernel_grad(x: Array, g: Array, k: int) -> Array:
    """``d<conv(x, W), g>/dW = patches(x)^T g`` as ``[k, k, in, out]``, computed as ``(g^T patches)^T``.

    In that order XLA transposes ``g`` (``out`` wide) and not the patches (``k*k*in`` wide).
    """
    n, height, width, cin = x.shape
    cout = g.shape[-1]
    grad_t = jax.lax.dot_general(g.reshape(n * height * width, cout), _patches(x, k), (((0,), (0,)), ((), ())))
    return grad_t.T.reshape(k, k, cin, cout)


def _kernel_grad_fwd(x: Array, g: Array, k: int):
    return _kernel_grad(x, g, k), (x, g)  # the custom function itself, as in _conv_fwd


def _kernel_grad_bwd(k: int, residuals, kernel_bar: Array):
    # <kernel_bar, patches(x)^T g> = <conv(x, kernel_bar), g>: linear in g and in x.
    x, g = residuals
    return im2col_conv(g, _flip(kernel_bar)).astype(x.dtype), im2col_conv(x, kernel_bar).astype(g.dtype)


_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pooling with stride 2 ('VALID': odd trailing rows/columns are dropped).

    Written as an argmax over the four strided slices of each window and a ``select``, not as ``reduce_max``:
    the derivative of ``reduce_max`` compares the input with the recomputed maximum, and when XLA fuses the two
    sides differently (seen on XLA:CPU with a batch-statistics norm under ``vmap``) that equality can fail and the
    gradient comes out wrong. A select of the chosen element has exact derivatives of every order, forward and reverse.

    Example:
      >>> import jax.numpy as jnp
      >>> max_pool_2x2(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
    """
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    corners = (x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2])
    choice = jax.lax.stop_gradient(jnp.argmax(jnp.stack(corners, axis=-1), axis=-1))
    out = corners[3]
    for i in (2, 1, 0):
        out = jnp.where(choice == i, corners[i], out)
    return out


class Norm(nn.Module):
    """Batch-statistics, layer or no normalisation with a learned scale and bias (see module docstring)."""

    kind: str = "batch"
    epsilon: float = 1e-5
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.kind not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.kind!r}")
        if self.kind == "none":
            return x
        axes = tuple(range(x.ndim - 1)) if self.kind == "batch" else tuple(range(1, x.ndim))
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # statistics in float32 whatever the compute dtype
        mean = jnp.mean(xf, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
        return (y * scale.astype(y.dtype) + bias.astype(y.dtype)).astype(x.dtype)


class ConvBlock(nn.Module):
    """conv 3x3 -> norm -> ReLU -> 2x2 max-pool."""

    features: int = 64
    norm: str = "batch"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = Conv2d(
            self.features, conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype, name="conv"
        )(x)
        x = Norm(self.norm, param_dtype=self.param_dtype, name="norm")(x)
        return max_pool_2x2(nn.relu(x))


class Conv4(nn.Module):
    """The standard four-block few-shot backbone (Vinyals et al., 2016; Finn et al., 2017).

    Four blocks of conv 3x3 (``hidden`` channels) -> norm -> ReLU -> max-pool 2x2, then flatten. 28x28 inputs give a
    ``hidden``-dimensional embedding (1x1 spatial), 84x84 inputs ``hidden*5*5``. With ``num_classes`` a linear
    classifier named ``head`` follows (the subtree :func:`fsl_jax.anil` adapts); without it the module returns the
    embedding (for metric learners).

    Attributes:
      num_classes: classifier outputs, or ``None`` for an embedding network.
      hidden: channels of every block.
      norm: ``"batch"`` (per-batch statistics, no running averages), ``"layer"`` or ``"none"``.
      conv_impl: ``"auto"`` (im2col on CPU, XLA convolution elsewhere), ``"im2col"`` or ``"xla"``.
      dtype: computation dtype (``jnp.bfloat16`` on accelerators); normalisation statistics and logits are float32.
      param_dtype: parameter dtype (``None``: float32, float64 for float64; meta-parameters and updates stay float32).

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> model = fj.models.Conv4(num_classes=5, hidden=16)
      >>> x = jnp.zeros((5, 28, 28, 1))
      >>> variables = model.init(jax.random.key(0), x)
      >>> model.apply(variables, x).shape
      (5, 5)
      >>> list(variables["params"])  # four blocks and the head that ANIL adapts
      ['block0', 'block1', 'block2', 'block3', 'head']
      >>> encoder = fj.models.Conv4(hidden=16)  # no num_classes: an embedding network
      >>> encoder.apply(encoder.init(jax.random.key(0), x), x).shape
      (5, 16)
    """

    num_classes: int | None = None
    hidden: int = 64
    norm: str = "batch"
    conv_impl: str = "auto"
    blocks: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"Conv4 expects images [batch, height, width, channels], got shape {x.shape}")
        param_dtype = check_precision("Conv4", self.dtype, self.param_dtype)
        for i in range(self.blocks):
            x = ConvBlock(self.hidden, self.norm, self.conv_impl, self.dtype, param_dtype, name=f"block{i}")(x)
        x = x.reshape(x.shape[0], -1)
        if self.num_classes is None:
            return x.astype(output_dtype(self.dtype))
        head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=param_dtype, name="head")
        return head(x).astype(output_dtype(self.dtype))
