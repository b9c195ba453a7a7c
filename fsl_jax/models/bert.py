"""BERT encoder written in ``flax.linen`` (no dependency on transformers' model classes).

The module reproduces Hugging Face's ``BertModel`` (post-LayerNorm encoder, absolute position embeddings, optional
tanh pooler) so that checkpoints load with :func:`fsl_jax.models.hub.from_pretrained`. The parameter tree is::

    embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding, embeddings/LayerNorm/{scale,bias}
    layer_{i}/attention/{query,key,value,output}/{kernel,bias}, layer_{i}/attention_norm/{scale,bias}
    layer_{i}/intermediate/{kernel,bias}, layer_{i}/output/{kernel,bias}, layer_{i}/output_norm/{scale,bias}
    pooler/{kernel,bias}                        (only with ``add_pooling_layer=True``)

Dense kernels are ``[in, out]`` (Flax's layout; Hugging Face's PyTorch ``Linear`` weights are their transpose).

Example:
    >>> import jax, jax.numpy as jnp
    >>> config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                     intermediate_size=32, max_position_embeddings=8)
    >>> model = Bert(config)
    >>> ids = jnp.array([[1, 5, 7, 0], [1, 9, 0, 0]])
    >>> mask = (ids != 0).astype(jnp.int32)
    >>> params = model.init(jax.random.key(0), ids, mask)
    >>> sorted(params["params"]), params["params"]["layer_0"]["intermediate"]["kernel"].shape
    (['embeddings', 'layer_0', 'layer_1', 'pooler'], (16, 32))
    >>> out = model.apply(params, ids, mask)
    >>> out.last_hidden_state.shape, out.pooler_output.shape, len(out.hidden_states)
    ((2, 4, 16), (2, 16), 3)
    >>> sentence_embedding(model, params, ids, mask).shape
    (2, 16)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import _validate
from fsl_jax.models.dropout import Dropout, apply_mask
from fsl_jax.models.precision import check_precision

Array = Any
Dtype = Any

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function that Hugging Face configs call ``name``.

    ``"gelu"`` is the exact (erf) GELU; ``"gelu_new"``, ``"gelu_pytorch_tanh"`` and ``"gelu_fast"`` are the tanh
    approximation.

    Example:
        >>> float(activation("relu")(jnp.array(-1.0)))
        0.0
    """
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")


def check_attention_impl(value: Any) -> str:
    """``value`` if it names an attention implementation (see :func:`dot_product_attention`), else ``ValueError``."""
    return _validate.choice("attention_impl", value, ATTENTION_IMPLS)


def check_attention_backend(value: str) -> None:
    """``attention_impl="cudnn"`` needs a CUDA GPU: ``ValueError`` naming the argument and the backend otherwise."""
    if value == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(
            f"attention_impl='cudnn' needs a CUDA GPU (cuDNN flash attention), but the default JAX backend is "
            f"{jax.default_backend()!r}: use 'auto' or 'xla'"
        )


def _dataclass_from_dict(cls, data: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder, with Hugging Face's field names and defaults (bert-base-uncased).

    ``attention_impl`` (not a Hugging Face field, left out of :meth:`to_dict`) picks the attention kernel: see
    :func:`dot_product_attention`.

    Example:
        >>> BertConfig.from_dict({"hidden_size": 384, "num_attention_heads": 12, "unknown_key": 1}).hidden_size
        384
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    attention_impl: str = "auto"

    def __post_init__(self):
        check_attention_impl(self.attention_impl)
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; only 'absolute' is"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BertConfig":
        """Builds a config from a (Hugging Face ``config.json``) mapping, ignoring unknown keys."""
        return _dataclass_from_dict(cls, data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        """Reads a Hugging Face ``config.json``, ignoring unknown keys."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a Hugging Face ``config.json`` mapping (with ``model_type="bert"``)."""
        fields = dataclasses.asdict(self)
        fields.pop("attention_impl")
        return {"model_type": "bert", "architectures": ["BertModel"], **fields}


class BertOutput(NamedTuple):
    """Outputs of :class:`Bert`.

    Attributes:
      last_hidden_state: ``[batch, seq, hidden]``.
      pooler_output: ``tanh(dense(last_hidden_state[:, 0]))``, ``[batch, hidden]``; ``None`` without a pooler.
      hidden_states: embeddings output then each layer's output (``num_hidden_layers + 1`` arrays).
    """

    last_hidden_state: Array
    pooler_output: Array | None
    hidden_states: tuple[Array, ...]


def _dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype, std: float = 0.02) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, kernel_init=nn.initializers.normal(std), name=name)


def _layer_norm(eps: float, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


def attention_bias(mask: Array, dtype: Dtype) -> Array:
    """An additive attention bias from a boolean ``mask``: 0 where true, the most negative ``dtype`` value elsewhere."""
    return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(jnp.finfo(dtype).min, dtype))


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    bias: Array,
    dropout: Dropout | None,
    deterministic: bool,
    scale: float,
    implementation: str = "einsum",
) -> Array:
    """Multi-head attention core: ``softmax(q k^T * scale + bias) v``; ``q``/``k``/``v`` are ``[b, t, heads, d]``.

    ``implementation``: ``"einsum"`` is the written-out form below; ``"xla"`` calls ``jax.nn.dot_product_attention``
    (XLA's attention: float32 logits and softmax, bfloat16 inputs with float32 accumulation); ``"auto"`` is the
    einsum form on CPU (faster there) and ``jax.nn.dot_product_attention`` with the kernel left to JAX elsewhere;
    ``"cudnn"`` asks it for cuDNN's flash attention (CUDA GPUs, float16 / bfloat16). Attention-probability dropout
    exists only in the einsum form, so while it is active (``dropout`` given and not ``deterministic``) the einsum
    path runs whatever ``implementation`` says.

    The einsum form works in the ``[b, heads, t, d]`` layout (one transpose of each of ``q``, ``k``, ``v`` and the
    output, so both products are plain batched matrix products), scales ``q`` rather than the ``t x t`` scores, keeps
    logits, probabilities and accumulation in float32, and has a hand-written backward pass (the softmax's
    derivative with the probabilities kept from the forward pass). Attention dropout multiplies the probabilities by
    a :meth:`~fsl_jax.models.dropout.Dropout.mask` drawn once and reused by the backward pass. On a 2-core CPU,
    forward + backward at MiniLM's shapes took 31 ms against 59 ms for the earlier form that JAX differentiated
    (``benchmarks/minilm_breakdown.py`` has the same-run comparison with PyTorch). Reverse mode of any order works;
    forward mode (``jax.jvp``) works only over a ``jax.grad`` (forward-over-reverse Hessian-vector products).

    Example:
        >>> q = k = v = jax.random.normal(jax.random.key(0), (2, 5, 4, 8))
        >>> bias = attention_bias(jnp.ones((2, 1, 1, 5), bool), jnp.float32)
        >>> a = dot_product_attention(q, k, v, bias, None, True, 8**-0.5)
        >>> b = dot_product_attention(q, k, v, bias, None, True, 8**-0.5, implementation="xla")
        >>> a.shape, bool(jnp.allclose(a, b, atol=1e-6))
        ((2, 5, 4, 8), True)
    """
    if implementation == "auto" and jax.default_backend() == "cpu":
        implementation = "einsum"  # XLA:CPU: the written-out form was faster (MiniLM step 1.27-1.42 vs 1.56-1.67 s)
    if implementation != "einsum" and (dropout is None or deterministic):
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            bias=bias.astype(jnp.promote_types(q.dtype, jnp.float32)),
            scale=scale,
            implementation=None if implementation == "auto" else implementation,  # type: ignore[arg-type]  # checked
        )
    keep, rate = None, 0.0
    if dropout is not None and not deterministic and dropout.rate > 0:
        if not isinstance(dropout, Dropout):
            raise TypeError(f"dropout must be a fsl_jax.models.dropout.Dropout, got {type(dropout).__name__}")
        rate = float(dropout.rate)
        keep = dropout.mask(q.shape[:1] + q.shape[2:3] + q.shape[1:2] + k.shape[1:2])  # [b, heads, q, k]
    if bias.ndim != 4:
        raise ValueError(f"bias must be 4-d, broadcastable to [batch, heads, q, k], got shape {bias.shape}")
    return _attention(q, k, v, bias, keep, rate, float(scale))


def _attention_fwd(q, k, v, bias, keep, rate, scale):
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qt = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)
    kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    scores = jnp.einsum("bhqd,bhkd->bhqk", qt, kt, preferred_element_type=acc) + bias.astype(acc)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    # A query that may attend to nothing (a bias of -inf everywhere) gets zero weights and a zero output, not NaN;
    # attention_bias's finite minimum gives such a row the uniform average instead, as transformers does.
    row_max = jnp.where(jnp.isfinite(row_max), row_max, jnp.zeros((), acc))
    weights = jnp.exp(scores - row_max)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    probs = weights / jnp.where(total > 0, total, jnp.ones((), acc))
    used = probs if keep is None else apply_mask(probs, keep, rate)
    out = jnp.einsum("bhqk,bhkd->bhqd", used.astype(v.dtype), vt, preferred_element_type=acc)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype), (qt, kt, vt, bias, keep, probs, out)


def _attention_bwd(rate, scale, residuals, grad):
    qt, kt, vt, bias, keep, probs, out = residuals
    acc = probs.dtype
    gt = jnp.swapaxes(grad, 1, 2)
    used = probs if keep is None else apply_mask(probs, keep, rate)
    dv = jnp.einsum("bhqk,bhqd->bhkd", used.astype(gt.dtype), gt, preferred_element_type=acc)
    d_used = jnp.einsum("bhqd,bhkd->bhqk", gt, vt, preferred_element_type=acc)
    d_probs = d_used if keep is None else apply_mask(d_used, keep, rate)
    # softmax backward; sum_k probs * d_probs == <grad, out> row by row (also with the dropout mask)
    delta = jnp.sum(gt.astype(acc) * out, axis=-1, keepdims=True)
    d_scores = probs * (d_probs - delta)
    dq = jnp.einsum("bhqk,bhkd->bhqd", d_scores.astype(kt.dtype), kt, preferred_element_type=acc) * scale
    dk = jnp.einsum("bhqk,bhqd->bhkd", d_scores.astype(qt.dtype), qt, preferred_element_type=acc)
    summed = tuple(i for i in range(4) if bias.shape[i] == 1 and d_scores.shape[i] != 1)
    d_bias = jnp.sum(d_scores, axis=summed, keepdims=True) if summed else d_scores
    d_keep = None if keep is None else np.zeros(keep.shape, jax.dtypes.float0)
    return (
        jnp.swapaxes(dq, 1, 2).astype(qt.dtype),
        jnp.swapaxes(dk, 1, 2).astype(kt.dtype),
        jnp.swapaxes(dv, 1, 2).astype(vt.dtype),
        jnp.broadcast_to(d_bias, bias.shape).astype(bias.dtype),
        d_keep,
    )


# The attention core with a hand-written backward pass (the one the softmax's derivative gives, with the
# probabilities kept from the forward pass): on a 2-core CPU, forward + backward at MiniLM's shapes took 31 ms
# against 53 ms for the same forward differentiated by JAX and 59 ms for the earlier [b, t, heads, d] einsum form.
# Reverse mode of any order works (the backward pass is itself differentiable); forward mode (``jax.jvp``) does not,
# except over a ``jax.grad`` (forward-over-reverse Hessian-vector products).
_attention = jax.custom_vjp(
    lambda q, k, v, bias, keep, rate, scale: _attention_fwd(q, k, v, bias, keep, rate, scale)[0], nondiff_argnums=(5, 6)
)
_attention.defvjp(_attention_fwd, _attention_bwd)


class BertEmbeddings(nn.Module):
    """Word + absolute position + token type embeddings, then LayerNorm."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array) -> Array:
        cfg = self.config

        def embed(n: int, name: str) -> nn.Embed:
            return nn.Embed(
                n,
                cfg.hidden_size,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                embedding_init=nn.initializers.normal(0.02),
                name=name,
            )

        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
            + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        return _layer_norm(cfg.layer_norm_eps, "LayerNorm", self.dtype, self.param_dtype)(x)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with its output projection (no residual / norm)."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        split = lambda y: y.reshape(y.shape[:-1] + (heads, head_dim))
        q, k, v = (
            split(_dense(cfg.hidden_size, name, self.dtype, self.param_dtype)(x)) for name in ("query", "key", "value")
        )
        dropout = Dropout(cfg.attention_probs_dropout_prob) if cfg.attention_probs_dropout_prob > 0 else None
        context = dot_product_attention(
            q, k, v, bias, dropout, deterministic, 1.0 / math.sqrt(head_dim), cfg.attention_impl
        )
        context = context.reshape(context.shape[:-2] + (cfg.hidden_size,))
        return _dense(cfg.hidden_size, "output", self.dtype, self.param_dtype)(context)


class BertLayer(nn.Module):
    """One post-LayerNorm transformer encoder layer."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
        cfg = self.config
        drop = Dropout(cfg.hidden_dropout_prob)
        attn = BertSelfAttention(cfg, self.dtype, self.param_dtype, name="attention")(x, bias, deterministic)
        x = _layer_norm(cfg.layer_norm_eps, "attention_norm", self.dtype, self.param_dtype)(
            drop(attn, deterministic=deterministic) + x
        )
        h = _dense(cfg.intermediate_size, "intermediate", self.dtype, self.param_dtype)(x)
        h = _dense(cfg.hidden_size, "output", self.dtype, self.param_dtype)(activation(cfg.hidden_act)(h))
        return _layer_norm(cfg.layer_norm_eps, "output_norm", self.dtype, self.param_dtype)(
            drop(h, deterministic=deterministic) + x
        )


class Bert(nn.Module):
    """BERT encoder (Hugging Face ``BertModel``) in ``flax.linen``.

    Attributes:
      config: the :class:`BertConfig`.
      dtype: computation dtype (LayerNorm statistics and the attention softmax run in float32).
      param_dtype: dtype of the parameters created by ``init``.
      add_pooling_layer: add the ``tanh(dense(h[CLS]))`` pooler (``pooler_output`` is ``None`` otherwise).

    Call it with ``input_ids`` ``[batch, seq]``, an optional ``attention_mask`` (1 for tokens, 0 for padding),
    optional ``token_type_ids`` and ``deterministic=False`` (with a ``"dropout"`` rng) to train with dropout.

    Example:
        >>> config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, max_position_embeddings=8)
        >>> model = Bert(config, add_pooling_layer=False)
        >>> ids = jnp.ones((2, 5), jnp.int32)
        >>> params = model.init(jax.random.key(0), ids)
        >>> out = model.apply(params, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
        >>> out.last_hidden_state.shape, out.pooler_output is None
        ((2, 5, 16), True)
        >>> bool(jnp.allclose(out.last_hidden_state, model.apply(params, ids).last_hidden_state))  # dropout was on
        False
    """

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> BertOutput:
        cfg = self.config
        check_precision("Bert", self.dtype, self.param_dtype)
        check_attention_backend(cfg.attention_impl)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        seq_len = input_ids.shape[1]
        if seq_len > cfg.max_position_embeddings:
            raise ValueError(
                f"input_ids has {seq_len} positions, more than max_position_embeddings={cfg.max_position_embeddings}"
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)

        x = BertEmbeddings(cfg, self.dtype, self.param_dtype, name="embeddings")(input_ids, token_type_ids)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)

        bias = attention_bias(attention_mask[:, None, None, :].astype(bool), self.dtype)
        hidden_states = [x]
        for i in range(cfg.num_hidden_layers):
            x = BertLayer(cfg, self.dtype, self.param_dtype, name=f"layer_{i}")(x, bias, deterministic)
            hidden_states.append(x)

        pooled = None
        if self.add_pooling_layer:
            pooled = jnp.tanh(_dense(cfg.hidden_size, "pooler", self.dtype, self.param_dtype)(x[:, 0]))
        return BertOutput(x, pooled, tuple(hidden_states))


def mean_pool(hidden: Array, mask: Array) -> Array:
    """Mean of ``hidden`` ``[batch, seq, dim]`` over the positions where ``mask`` ``[batch, seq]`` is non-zero.

    Matches sentence-transformers' mean pooling (the token count is clamped at 1e-9).

    Example:
        >>> h = jnp.array([[[1.0], [3.0], [100.0]]])
        >>> mean_pool(h, jnp.array([[1, 1, 0]])).tolist()
        [[2.0]]
    """
    if hidden.shape[:2] != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match hidden shape {hidden.shape}[:2]")
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """``x / max(||x||, eps)`` along the last axis (``torch.nn.functional.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sentence_embedding(
    module: Bert, params: Any, input_ids: Array, attention_mask: Array, token_type_ids: Array | None = None
) -> Array:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: mean-pool the last hidden state over the non-padding
    tokens, then L2-normalise. Returns float32 ``[batch, hidden]``.

    Example:
        >>> import numpy as np, fsl_jax as fj
        >>> module, params, tokenizer = fj.models.from_pretrained("all-MiniLM-L6-v2")
        >>> batch = tokenizer(["a cat", "a kitten", "stock prices fell"], padding=True, return_tensors="np")
        >>> emb = sentence_embedding(module, params, batch["input_ids"], batch["attention_mask"])
        >>> emb.shape, np.linalg.norm(emb, axis=1).round(4).tolist()
        ((3, 384), [1.0, 1.0, 1.0])
        >>> [round(float(s), 2) for s in emb @ emb[0]]  # cosine similarities to "a cat"
        [1.0, 0.77, 0.08]
    """
    out: Any = module.apply(params, input_ids, attention_mask, token_type_ids)
    return l2_normalize(mean_pool(out.last_hidden_state, attention_mask))
