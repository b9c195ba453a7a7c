"""BERT text models for few-shot learners: a sentence encoder and a classifier over token ids.

Both modules take **token ids only**, ``int32 [n, seq]``, padded with ``pad_token_id``; the attention mask is derived
inside as ``ids != pad_token_id`` (BERT tokenizers never emit the pad token inside a text). So a text task is an
ordinary :class:`~fsl_jax.Task` whose ``support_x`` / ``query_x`` are id arrays, and the same modules plug into
``fj.maml`` / ``fj.anil`` (``head="head"``) and ``fj.protonet`` unchanged. Ids come from
:func:`fsl_jax.data.text.tokenize` or :func:`fsl_jax.data.text.tokenize_classes` (which pad to ``max_length``).

Parameter trees: :class:`BertEncoder` ``{"bert": <Bert params>}``; :class:`BertClassifier`
``{"bert": <Bert params>, "head": {"kernel", "bias"}}``. ``<Bert params>`` is :class:`~fsl_jax.models.bert.Bert`'s
tree without the pooler, so :func:`load_backbone` fills it from a Hugging Face folder (all-MiniLM-L6-v2 by default).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fsl_jax.models.bert import BertConfig
    >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                  intermediate_size=32, max_position_embeddings=8)
    >>> ids = jnp.array([[2, 7, 9, 3, 0, 0], [2, 5, 3, 0, 0, 0]], jnp.int32)
    >>> enc = BertEncoder(cfg)
    >>> variables = enc.init(jax.random.key(0), ids)
    >>> emb = enc.apply(variables, ids)
    >>> emb.shape
    (2, 16)
    >>> bool(jnp.allclose(emb[0], enc.apply(variables, ids[:1, :4])[0], atol=1e-5))  # padding (id 0) is masked
    True
    >>> clf = BertClassifier(cfg, num_classes=3)
    >>> sorted(clf.init(jax.random.key(0), ids)["params"])
    ['bert', 'head']
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax import _validate
from fsl_jax.models.bert import Bert, BertConfig, BertLayer, attention_bias, l2_normalize, mean_pool

__all__ = [
    "Backbone",
    "BertClassifier",
    "BertEncoder",
    "BertTop",
    "classifier_variables",
    "encoder_variables",
    "load_backbone",
    "pooled_features",
]

Array = Any
Dtype = Any


def pooled_features(
    bert: Bert, input_ids: Array, pad_token_id: int, normalize: bool, deterministic: bool = True
) -> Array:
    """Mean-pooled (optionally L2-normalised) last hidden state of ``bert`` over the non-padding tokens.

    ``input_ids`` may carry extra leading axes (``[..., seq]``); they are flattened for BERT and restored.
    """
    ids = jnp.asarray(input_ids).astype(jnp.int32)
    lead = ids.shape[:-1]
    ids = ids.reshape((-1, ids.shape[-1]))
    mask = (ids != pad_token_id).astype(jnp.int32)
    out = bert(ids, mask, deterministic=deterministic)
    z = mean_pool(out.last_hidden_state, mask)
    if normalize:
        z = l2_normalize(z)
    return z.reshape(lead + z.shape[-1:])


class BertEncoder(nn.Module):
    """Sentence embeddings from token ids: BERT, mean pooling over ``ids != pad_token_id``, L2 normalisation.

    With the all-MiniLM-L6-v2 weights this is exactly sentence-transformers' embedding. LayerNorm only (no batch
    statistics), so it is safe under ``vmap`` and grad-of-grad.

    Attributes:
      config: the :class:`~fsl_jax.models.bert.BertConfig`.
      pad_token_id: the padding id (positions holding it are masked out).
      normalize: L2-normalise the pooled embedding.
      dtype: computation dtype; param_dtype: parameter dtype.

    Call: ``encoder.apply(variables, ids, deterministic=True)`` with ``ids`` ``int [..., seq]`` returns float32
    ``[..., hidden]`` (pass ``deterministic=False`` and a ``"dropout"`` rng to train with dropout).

    Example:
        >>> import numpy as np
        >>> enc, variables, tok = load_backbone("all-MiniLM-L6-v2").encoder()
        >>> ids = tok(["a cat", "a kitten"], padding="max_length", max_length=8, return_tensors="np")["input_ids"]
        >>> emb = enc.apply(variables, ids)
        >>> emb.shape, np.linalg.norm(emb, axis=-1).round(4).tolist()
        ((2, 384), [1.0, 1.0])
        >>> round(float(emb[0] @ emb[1]), 2)  # cosine similarity; padding does not change it
        0.77
    """

    config: BertConfig
    pad_token_id: int = 0
    normalize: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, deterministic: bool = True) -> Array:
        bert = Bert(self.config, self.dtype, self.param_dtype, add_pooling_layer=False, name="bert")
        return pooled_features(bert, input_ids, self.pad_token_id, self.normalize, deterministic)


class BertTop(nn.Module):
    """The top of a BERT encoder: layers ``first .. num_hidden_layers - 1`` on the hidden states that enter layer
    ``first``, then mean pooling over ``mask`` and (optionally) L2 normalisation.

    Its parameters are BERT's ``layer_{first}`` ... entries, so training only the top layers of a sentence encoder
    runs the frozen bottom once (``Bert(...).apply(...).hidden_states[first]``, see :func:`bottom_hidden`) and then
    only these layers at every step.

    Example:
        >>> import numpy as np
        >>> bb = load_backbone("all-MiniLM-L6-v2")
        >>> ids = bb.tokenizer(["a cat", "a kitten"], padding="max_length", max_length=8, return_tensors="np")[
        ...     "input_ids"]
        >>> hidden, mask = bottom_hidden(bb.config, bb.pad_token_id, bb.params, ids, 4)
        >>> top = BertTop(bb.config, 4)
        >>> z = top.apply({"params": {k: bb.params[k] for k in ("layer_4", "layer_5")}}, hidden, mask)
        >>> enc, variables, _ = bb.encoder()
        >>> bool(np.allclose(z, enc.apply(variables, ids), atol=1e-5))
        True
    """

    config: BertConfig
    first: int
    normalize: bool = True

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        _check_first(self.first, cfg)
        bias = attention_bias(mask[:, None, None, :].astype(bool), hidden.dtype)
        x = hidden
        for i in range(self.first, cfg.num_hidden_layers):
            x = BertLayer(cfg, name=f"layer_{i}")(x, bias, deterministic)
        z = mean_pool(x, mask)
        return l2_normalize(z) if self.normalize else z


def _check_first(first: Any, config: BertConfig) -> None:
    n = config.num_hidden_layers
    if not _validate.is_int(first) or not 0 <= first < n:
        raise ValueError(f"first must be a layer index in [0, {n - 1}] (the encoder has {n} layers), got {first!r}")


@functools.lru_cache(maxsize=8)
def _bottom_fn(config: BertConfig, first: int) -> Any:
    bert = Bert(config, add_pooling_layer=False)

    def run(params: Any, ids: Array, mask: Array) -> Array:
        out: Any = bert.apply({"params": params}, ids, mask)
        return out.hidden_states[first]

    return jax.jit(run)


def bottom_hidden(
    config: BertConfig, pad_token_id: int, bert_params: Any, ids: Any, first: int, batch_size: int = 32
) -> tuple[Array, Array]:
    """``(hidden [n, seq, dim], mask [n, seq])``: the hidden states of ``ids`` entering layer ``first`` of BERT (no
    dropout), computed in batches of ``batch_size`` (the last one padded), and the non-padding mask."""
    _check_first(first, config)
    batch_size = _validate.positive_int("batch_size", batch_size)
    ids = jnp.asarray(ids).astype(jnp.int32)
    mask = (ids != pad_token_id).astype(jnp.int32)
    fn = _bottom_fn(config, first)
    n = ids.shape[0]
    padded = -(-n // batch_size) * batch_size
    ids_p = jnp.concatenate([ids, jnp.full((padded - n, ids.shape[1]), pad_token_id, jnp.int32)])
    mask_p = jnp.concatenate([mask, jnp.zeros((padded - n, ids.shape[1]), jnp.int32)])
    chunks = [
        fn(bert_params, ids_p[s : s + batch_size], mask_p[s : s + batch_size]) for s in range(0, padded, batch_size)
    ]
    return jnp.concatenate(chunks)[:n], mask


class BertClassifier(nn.Module):
    """BERT + mean pooling + a linear ``head``: logits ``[..., num_classes]`` from token ids.

    The head's parameters are the top-level subtree ``"head"``, so ``fj.anil(BertClassifier(...), head="head")``
    adapts only the head in its inner loop.

    Attributes:
      config: the :class:`~fsl_jax.models.bert.BertConfig`.
      num_classes: outputs of the head.
      pad_token_id: the padding id.
      normalize: L2-normalise the pooled features before the head (then ``feature_scale`` multiplies them; useful
        for head-only adaptation with a few SGD steps, as in ANIL).
      feature_scale: factor applied to the (normalised) features.
      head_init: ``"zeros"`` (the ANIL / "zero trick" choice: no class is preferred before adaptation) or
        ``"normal"`` (std 0.02, Hugging Face's classifier initialisation).
      dtype, param_dtype: as in :class:`BertEncoder`.

    Example:
        >>> clf, variables, tok = load_backbone("all-MiniLM-L6-v2").classifier(5, head_init="zeros")
        >>> sorted(variables["params"]), variables["params"]["head"]["kernel"].shape
        (['bert', 'head'], (384, 5))
        >>> ids = tok(["a late goal"], padding="max_length", max_length=8, return_tensors="np")["input_ids"]
        >>> clf.apply(variables, ids).tolist()  # a zero head prefers no class before training
        [[0.0, 0.0, 0.0, 0.0, 0.0]]
    """

    config: BertConfig
    num_classes: int
    pad_token_id: int = 0
    normalize: bool = False
    feature_scale: float = 1.0
    head_init: str = "normal"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, deterministic: bool = True) -> Array:
        if self.head_init not in ("zeros", "normal"):
            raise ValueError(f"head_init must be 'zeros' or 'normal', got {self.head_init!r}")
        bert = Bert(self.config, self.dtype, self.param_dtype, add_pooling_layer=False, name="bert")
        z = pooled_features(bert, input_ids, self.pad_token_id, self.normalize, deterministic)
        if self.feature_scale != 1.0:
            z = z * self.feature_scale
        init = nn.initializers.zeros if self.head_init == "zeros" else nn.initializers.normal(0.02)
        return nn.Dense(self.num_classes, kernel_init=init, param_dtype=self.param_dtype, name="head")(z)


def encoder_variables(bert_params: Any) -> dict:
    """``{"params": {"bert": bert_params}}``: the variables of a :class:`BertEncoder`."""
    return {"params": {"bert": bert_params}}


def classifier_variables(bert_params: Any, head_params: Any) -> dict:
    """``{"params": {"bert": bert_params, "head": head_params}}``: the variables of a :class:`BertClassifier`."""
    return {"params": {"bert": bert_params, "head": head_params}}


class Backbone(NamedTuple):
    """A pretrained BERT, ready to build text models from.

    Attributes:
      config: its :class:`~fsl_jax.models.bert.BertConfig`.
      params: the BERT parameter tree (no pooler), what ``variables["params"]["bert"]`` of the modules holds.
      tokenizer: its transformers tokenizer.
      folder: the model folder it was read from.
    """

    config: BertConfig
    params: Any
    tokenizer: Any
    folder: str

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.config.pad_token_id)

    def encoder(self, normalize: bool = True) -> tuple[BertEncoder, dict, Any]:
        """``(BertEncoder, variables, tokenizer)`` with the pretrained weights."""
        return (BertEncoder(self.config, self.pad_token_id, normalize), encoder_variables(self.params), self.tokenizer)

    def classifier(self, num_classes: int, key: Array | None = None, **kwargs: Any) -> tuple[BertClassifier, dict, Any]:
        """``(BertClassifier, variables, tokenizer)``: pretrained BERT, freshly initialised head (``key``, default
        ``PRNGKey(0)``). ``kwargs`` go to :class:`BertClassifier` (``normalize``, ``feature_scale``, ``head_init``)."""
        num_classes = _validate.positive_int("num_classes", num_classes)
        module = BertClassifier(self.config, num_classes, self.pad_token_id, **kwargs)
        key = jax.random.key(0) if key is None else key
        head = nn.Dense(
            num_classes,
            kernel_init=(nn.initializers.zeros if module.head_init == "zeros" else nn.initializers.normal(0.02)),
        )
        head_params = head.init(key, jnp.zeros((1, self.config.hidden_size), jnp.float32))["params"]
        return module, classifier_variables(self.params, head_params), self.tokenizer


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str, dtype_name: str) -> Backbone:
    from fsl_jax.models.hub import from_pretrained

    module, variables, tokenizer = from_pretrained(folder, dtype=jnp.dtype(dtype_name), add_pooling_layer=False)
    if not isinstance(module, Bert):
        raise ValueError(f"backbone {folder!r} is a {type(module).__name__}, not a BERT model")
    if tokenizer is None:
        raise FileNotFoundError(f"backbone folder {folder!r} has no tokenizer files (tokenizer.json or vocab.txt)")
    return Backbone(module.config, variables["params"], tokenizer, folder)


def load_backbone(backbone: str | os.PathLike = "all-MiniLM-L6-v2", dtype: Any = jnp.float32) -> Backbone:
    """Loads a BERT model folder (or the bundled ``"all-MiniLM-L6-v2"``) for the text models; cached per folder.

    The returned parameters are shared between calls: treat them as read-only (copy before donating them to a
    jitted update).

    Args:
      backbone: a local Hugging Face BERT folder (``config.json``, ``model.safetensors``, tokenizer files) or
        ``"all-MiniLM-L6-v2"``.
      dtype: parameter and computation dtype.

    Raises:
      FileNotFoundError: ``backbone`` is neither a folder nor a bundled name, or the folder lacks weights or a
        tokenizer.
      ValueError: the folder holds a non-BERT model.

    Example:
        >>> bb = load_backbone("all-MiniLM-L6-v2")
        >>> bb.config.hidden_size, bb.pad_token_id, load_backbone("all-MiniLM-L6-v2") is bb  # cached
        (384, 0, True)
        >>> enc, variables, tok = bb.encoder()
        >>> clf, clf_vars, _ = bb.classifier(num_classes=5)
        >>> clf_vars["params"]["bert"] is bb.params, clf_vars["params"]["head"]["bias"].shape  # shared weights
        (True, (5,))
    """
    from fsl_jax.models.hub import resolve_model_folder

    try:
        folder = resolve_model_folder(backbone)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"backbone={str(backbone)!r}: {e}") from None
    return _load_cached(str(folder.resolve()), jnp.dtype(dtype).name)
