"""GPT-2 language model written in ``flax.linen``, with a fixed-shape KV cache and a jitted ``generate``.

The module reproduces Hugging Face's ``GPT2LMHeadModel`` (pre-LayerNorm blocks, learned absolute positions, output
projection tied to the token embedding) so that checkpoints load with :func:`fsl_jax.models.hub.from_pretrained`.
The parameter tree is::

    wte/embedding, wpe/embedding, ln_f/{scale,bias}
    h_{i}/ln_1, h_{i}/ln_2                       {scale,bias}
    h_{i}/attn/{c_attn,c_proj}/{kernel,bias}, h_{i}/mlp/{c_fc,c_proj}/{kernel,bias}

Kernels are ``[in, out]``, the same layout as Hugging Face's ``Conv1D`` weights.

Padding: position ids are derived from the attention mask (``cumsum(mask) - 1``, as Hugging Face's generation does),
so left-padded prompts give the same logits at real tokens as unpadded ones.

Example:
    >>> import jax, jax.numpy as jnp
    >>> config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    >>> model = GPT2(config)
    >>> ids = jnp.array([[0, 0, 5, 7], [3, 4, 5, 6]])
    >>> mask = jnp.array([[0, 0, 1, 1], [1, 1, 1, 1]])  # the first prompt is left-padded
    >>> params = model.init(jax.random.key(0), ids, mask)
    >>> sorted(params["params"]), params["params"]["h_0"]["attn"]["c_attn"]["kernel"].shape
    (['h_0', 'h_1', 'ln_f', 'wpe', 'wte'], (16, 48))
    >>> out = model.apply(params, ids, mask)
    >>> out.logits.shape, len(out.hidden_states)  # the embeddings and the output of each block
    ((2, 4, 50), 3)
    >>> unpadded = model.apply(params, ids[:1, 2:]).logits  # the same prompt without its padding
    >>> bool(jnp.allclose(out.logits[0, 2:], unpadded[0], atol=1e-5))
    True
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.models.dropout import Dropout
from fsl_jax.models.precision import check_precision
from fsl_jax.models.bert import (
    activation,
    attention_bias,
    check_attention_backend,
    check_attention_impl,
    dot_product_attention,
)

Array = Any
Dtype = Any


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Hyper-parameters of GPT-2, with Hugging Face's field names and defaults (the 124M ``gpt2``).

    ``n_inner=None`` means ``4 * n_embd``. ``attention_impl`` (not a Hugging Face field, left out of :meth:`to_dict`)
    picks the attention kernel: see :func:`fsl_jax.models.bert.dot_product_attention`.

    Example:
        >>> GPT2Config.from_dict({"n_embd": 64, "n_head": 4, "n_ctx": 1024, "unknown": 0}).inner_size
        256
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    attention_impl: str = "auto"

    def __post_init__(self):
        check_attention_impl(self.attention_impl)
        try:
            activation(self.activation_function)
        except ValueError as e:
            raise ValueError(f"activation_function={self.activation_function!r}: {e}") from None
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")

    @property
    def inner_size(self) -> int:
        """Width of the MLP's hidden layer."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GPT2Config":
        """Builds a config from a (Hugging Face ``config.json``) mapping, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "GPT2Config":
        """Reads a Hugging Face ``config.json``, ignoring unknown keys."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a Hugging Face ``config.json`` mapping (with ``model_type="gpt2"``)."""
        fields = dataclasses.asdict(self)
        fields.pop("attention_impl")
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_ctx": self.n_positions, **fields}


class KVCache(NamedTuple):
    """Fixed-shape key/value cache of :class:`GPT2` (a pytree: carry it through ``lax.scan`` / ``jit``).

    Attributes:
      key: one ``[batch, max_length, n_head, head_dim]`` buffer per layer.
      value: like ``key``.
      mask: ``[batch, max_length]`` bool, true at slots that hold a real (non-padding) token.
      position: ``[batch]`` int32, the position id of the next real token of each row.
      index: ``[]`` int32, the number of slots filled so far (the next call writes from here).
    """

    key: tuple[Array, ...]
    value: tuple[Array, ...]
    mask: Array
    position: Array
    index: Array


class GPT2Output(NamedTuple):
    """Outputs of :class:`GPT2`.

    Attributes:
      logits: ``[batch, seq, vocab_size]``.
      last_hidden_state: ``[batch, seq, n_embd]``, after the final LayerNorm.
      hidden_states: embeddings output, the outputs of blocks ``1 .. n_layer - 1``, then ``last_hidden_state``
        (``n_layer + 1`` arrays, as in Hugging Face).
      cache: the updated :class:`KVCache` when called with one, else ``None``.
    """

    logits: Array
    last_hidden_state: Array
    hidden_states: tuple[Array, ...]
    cache: KVCache | None


def _dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype, std: float = 0.02) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, kernel_init=nn.initializers.normal(std), name=name)


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention, optionally reading and writing one layer's cache."""

    config: GPT2Config
    layer_idx: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, bias: Array, deterministic: bool, kv: tuple[Array, Array, Array] | None
    ) -> tuple[Array, tuple[Array, Array] | None]:
        cfg = self.config
        head_dim = cfg.n_embd // cfg.n_head
        qkv = _dense(3 * cfg.n_embd, "c_attn", self.dtype, self.param_dtype)(x)
        q, k, v = (y.reshape(y.shape[:-1] + (cfg.n_head, head_dim)) for y in jnp.split(qkv, 3, axis=-1))
        new_kv = None
        if kv is not None:
            cache_k, cache_v, index = kv
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
            new_kv = (k, v)
        scale = 1.0 / math.sqrt(head_dim) if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= self.layer_idx + 1
        dropout = Dropout(cfg.attn_pdrop) if cfg.attn_pdrop > 0 else None
        context = dot_product_attention(
            q, k.astype(self.dtype), v.astype(self.dtype), bias, dropout, deterministic, scale, cfg.attention_impl
        )
        context = context.reshape(context.shape[:-2] + (cfg.n_embd,))
        std = 0.02 / math.sqrt(2 * cfg.n_layer)
        out = _dense(cfg.n_embd, "c_proj", self.dtype, self.param_dtype, std)(context)
        return Dropout(cfg.resid_pdrop)(out, deterministic=deterministic), new_kv


class GPT2MLP(nn.Module):
    """The block's feed-forward network."""

    config: GPT2Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        h = activation(cfg.activation_function)(_dense(cfg.inner_size, "c_fc", self.dtype, self.param_dtype)(x))
        h = _dense(cfg.n_embd, "c_proj", self.dtype, self.param_dtype, 0.02 / math.sqrt(2 * cfg.n_layer))(h)
        return Dropout(cfg.resid_pdrop)(h, deterministic=deterministic)


class GPT2Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    config: GPT2Config
    layer_idx: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array, deterministic: bool, kv: tuple[Array, Array, Array] | None):
        cfg = self.config

        def norm(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        attn, new_kv = GPT2Attention(cfg, self.layer_idx, self.dtype, self.param_dtype, name="attn")(
            norm("ln_1")(x), bias, deterministic, kv
        )
        x = x + attn
        x = x + GPT2MLP(cfg, self.dtype, self.param_dtype, name="mlp")(norm("ln_2")(x), deterministic)
        return x, new_kv


class GPT2(nn.Module):
    """GPT-2 language model (Hugging Face ``GPT2LMHeadModel``) in ``flax.linen``; output projection tied to ``wte``.

    Attributes:
      config: the :class:`GPT2Config`.
      dtype: computation dtype (LayerNorm statistics and the attention softmax run in float32); also the cache's.
      param_dtype: dtype of the parameters created by ``init``.

    Call it with ``input_ids`` ``[batch, seq]``, an optional ``attention_mask`` (1 for tokens, 0 for padding; left
    padding is the supported layout), optional ``position_ids`` (default: from the mask's cumulative sum),
    ``deterministic=False`` with a ``"dropout"`` rng to train with dropout, and optionally ``cache`` (from
    :meth:`init_cache`): the new tokens' keys and values are written at ``cache.index`` and attend to everything
    cached before them; ``attention_mask`` then covers only the new tokens. The returned :class:`GPT2Output` carries
    the updated cache. The cache must have room: ``cache.index + seq <= max_length`` (not checked under ``jit``).

    Example:
        >>> config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
        >>> model = GPT2(config)
        >>> ids = jnp.array([[1, 2, 3]])
        >>> params = model.init(jax.random.key(0), ids)
        >>> full = model.apply(params, ids).logits
        >>> cache = model.init_cache(batch_size=1, max_length=8)
        >>> out = model.apply(params, ids[:, :2], cache=cache)
        >>> last = model.apply(params, ids[:, 2:], cache=out.cache)
        >>> bool(jnp.allclose(last.logits[:, 0], full[:, 2], atol=1e-5)), int(last.cache.index)
        (True, 3)
    """

    config: GPT2Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` rows and ``max_length`` tokens (prompt + new tokens).

        Needs no parameters: call it on the module itself (``model.init_cache(2, 64)``).
        """
        cfg = self.config
        if max_length < 1 or max_length > cfg.n_positions:
            raise ValueError(f"max_length must be in [1, n_positions={cfg.n_positions}], got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        shape = (batch_size, max_length, cfg.n_head, cfg.n_embd // cfg.n_head)
        zeros = tuple(jnp.zeros(shape, self.dtype) for _ in range(cfg.n_layer))
        return KVCache(
            key=zeros,
            value=tuple(jnp.zeros(shape, self.dtype) for _ in range(cfg.n_layer)),
            mask=jnp.zeros((batch_size, max_length), bool),
            position=jnp.zeros((batch_size,), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        cache: KVCache | None = None,
    ) -> GPT2Output:
        cfg = self.config
        check_precision("GPT2", self.dtype, self.param_dtype)
        check_attention_backend(cfg.attention_impl)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        batch, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, seq), bool)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
        mask = attention_mask.astype(bool)
        limit, what = (cfg.n_positions, "n_positions") if cache is None else (cache.mask.shape[1], "cache max_length")
        if seq > limit:
            raise ValueError(f"input_ids has {seq} positions, more than {what}={limit}")

        start = jnp.zeros((batch,), jnp.int32) if cache is None else cache.position
        if position_ids is None:
            # Left padding: real tokens count from `start`; padding gets a clipped, irrelevant position.
            position_ids = jnp.maximum(start[:, None] + jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1, 0)

        if cache is None:
            allowed = mask[:, None, None, :] & jnp.tril(jnp.ones((seq, seq), bool))[None, None]
            new_mask = None
        else:
            new_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
            query_slot = cache.index + jnp.arange(seq)
            key_slot = jnp.arange(new_mask.shape[1])
            allowed = new_mask[:, None, None, :] & (key_slot[None, :] <= query_slot[:, None])[None, None]
        bias = attention_bias(allowed, self.dtype)

        wte = nn.Embed(
            cfg.vocab_size,
            cfg.n_embd,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="wte",
        )
        wpe = nn.Embed(
            cfg.n_positions,
            cfg.n_embd,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="wpe",
        )
        x = wte(input_ids) + wpe(position_ids)
        x = Dropout(cfg.embd_pdrop)(x, deterministic=deterministic)

        hidden_states = [x]
        keys, values = [], []
        for i in range(cfg.n_layer):
            kv = None if cache is None else (cache.key[i], cache.value[i], cache.index)
            x, new_kv = GPT2Block(cfg, i, self.dtype, self.param_dtype, name=f"h_{i}")(x, bias, deterministic, kv)
            if new_kv is not None:
                keys.append(new_kv[0])
                values.append(new_kv[1])
            if i < cfg.n_layer - 1:
                hidden_states.append(x)
        x = nn.LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_f")(x)
        hidden_states.append(x)
        logits = wte.attend(x)

        new_cache = None
        if cache is not None:
            new_cache = KVCache(
                key=tuple(keys),
                value=tuple(values),
                mask=new_mask,
                position=cache.position + jnp.sum(mask, axis=-1, dtype=jnp.int32),
                index=cache.index + seq,
            )
        return GPT2Output(logits, x, tuple(hidden_states), new_cache)


def generate(
    module: GPT2,
    params: Any,
    input_ids: Array,
    attention_mask: Array | None = None,
    max_new_tokens: int = 20,
    *,
    key: Array | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Array:
    """Extends (left-padded) prompts by ``max_new_tokens`` tokens with the KV cache; compiled with ``jax.jit``.

    The prompt is run once to fill the cache, then a ``lax.scan`` feeds one token per step. Greedy (argmax) when
    ``temperature == 0``, else samples from ``softmax(logits / temperature)`` restricted to the ``top_k`` most
    likely tokens when ``top_k`` is given. After a row emits ``eos_token_id`` its later tokens are ``pad_token_id``
    (default: ``eos_token_id``). Every row runs all ``max_new_tokens`` steps (fixed shapes).

    Args:
      module: the :class:`GPT2` module.
      params: its variables (``{"params": ...}``).
      input_ids: ``[batch, prompt_len]`` prompts, left-padded.
      attention_mask: ``[batch, prompt_len]``, 0 at padding; default all ones.
      max_new_tokens: number of tokens to add (a Python int).
      key: PRNG key, required when ``temperature > 0``.
      temperature: 0 for greedy decoding.
      top_k: sample among the ``top_k`` most likely tokens only.
      eos_token_id: stop token; ``None`` never stops.
      pad_token_id: token written after a row's stop token.

    Returns:
      ``[batch, prompt_len + max_new_tokens]`` int32: the prompts followed by the new tokens.

    Example:
        >>> model = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
        >>> ids = jnp.array([[0, 3, 4], [5, 6, 7]])
        >>> params = model.init(jax.random.key(0), ids)
        >>> out = generate(model, params, ids, jnp.array([[0, 1, 1], [1, 1, 1]]), 4,
        ...                key=jax.random.key(1), temperature=0.8, top_k=5)
        >>> out.shape, out.dtype, bool(jnp.all(out[:, :3] == ids))  # the prompts, then 4 sampled tokens each
        ((2, 7), dtype('int32'), True)
    """
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, prompt_len], got shape {input_ids.shape}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("key is required when temperature > 0 (sampling)")
    vocab = module.config.vocab_size
    if top_k is not None and not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in [1, vocab_size={vocab}], got {top_k}")
    total = input_ids.shape[1] + max_new_tokens
    if total > module.config.n_positions:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds "
            f"n_positions={module.config.n_positions}"
        )
    if max_new_tokens == 0:
        return input_ids.astype(jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if pad_token_id is None:
        pad_token_id = eos_token_id if eos_token_id is not None else 0
    if key is None:
        key = jax.random.key(0)
    return _generate(
        module,
        params,
        input_ids.astype(jnp.int32),
        jnp.asarray(attention_mask),
        key,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
        eos_token_id=eos_token_id,
        pad_token_id=int(pad_token_id),
    )


@functools.partial(
    jax.jit, static_argnames=("module", "max_new_tokens", "temperature", "top_k", "eos_token_id", "pad_token_id")
)
def _generate(
    module, params, input_ids, attention_mask, key, *, max_new_tokens, temperature, top_k, eos_token_id, pad_token_id
):
    batch, prompt_len = input_ids.shape

    def choose(logits, step_key):
        if temperature == 0.0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = logits.astype(jnp.float32) / temperature
        if top_k is not None:
            kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        return jax.random.categorical(step_key, logits, axis=-1).astype(jnp.int32)

    def finish(token, done):
        token = jnp.where(done, pad_token_id, token)
        if eos_token_id is not None:
            done = done | (token == eos_token_id)
        return token, done

    keys = jax.random.split(key, max_new_tokens)
    cache = module.init_cache(batch, prompt_len + max_new_tokens)
    out = module.apply(params, input_ids, attention_mask, cache=cache)
    first, done = finish(choose(out.logits[:, -1], keys[0]), jnp.zeros((batch,), bool))

    def step(carry, step_key):
        cache, token, done = carry
        out = module.apply(params, token[:, None], cache=cache)
        token, done = finish(choose(out.logits[:, -1], step_key), done)
        return (out.cache, token, done), token

    _, rest = jax.lax.scan(step, (out.cache, first, done), keys[1:])
    return jnp.concatenate([input_ids, first[:, None], rest.T], axis=1)
