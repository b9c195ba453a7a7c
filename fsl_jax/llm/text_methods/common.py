"""What every fitting method of :class:`~fsl_jax.llm.finetune.FewShotTextClassifier` shares.

* The prediction path: BERT -> mean pooling over non-padding tokens (optionally L2-normalised), compiled once per
  configuration (:func:`feature_fn`) and run in fixed-size batches (:func:`features`), with the embeddings of the
  *pretrained* encoder cached per text in memory, so that refits of ``head`` / ``protonet`` on new draws are cheap.
* The loss and optimiser pieces of the methods that train the encoder: :func:`xent`, :func:`adamw` (AdamW with weight
  decay on matrices only and a linear warm-up / decay :func:`schedule`).
* :func:`steps_for`: the number of optimisation steps from ``steps``, ``epochs`` or the method's default.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax._progress import progress
from fsl_jax.llm.text_models import BertEncoder, encoder_variables

if TYPE_CHECKING:
    from fsl_jax.llm.finetune import FewShotTextClassifier

# Pooled features of the pretrained encoder, per (model folder, max_length, normalize, text); oldest dropped first.
FEATURE_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
FEATURE_CACHE_SIZE = 50_000


@functools.lru_cache(maxsize=16)
def feature_fn(config: Any, pad_token_id: int, normalize: bool) -> Callable:
    """The jitted ``(bert_params, ids) -> [n, hidden]`` pooled features of one BERT configuration (cached)."""
    encoder = BertEncoder(config, pad_token_id, normalize)
    return jax.jit(lambda bert_params, ids: encoder.apply(encoder_variables(bert_params), ids))


def features(
    clf: FewShotTextClassifier,
    bert_params: Any,
    texts: Sequence[str],
    ids: np.ndarray | None = None,
    *,
    normalize: bool = True,
    desc: str = "embed",
) -> np.ndarray:
    """``[n, hidden]`` float32 pooled features of ``texts`` under ``bert_params`` (``None``: the pretrained encoder,
    whose features are cached per text when ``clf.cache_embeddings``). ``ids`` are the texts' token ids, when already
    computed; batches of ``clf.eval_batch_size`` (the last one padded) keep a single compiled shape."""
    bb = clf._backbone()
    pretrained = bert_params is None
    params = bb.params if pretrained else bert_params
    use_cache = pretrained and clf.cache_embeddings
    out: dict[int, np.ndarray] = {}  # row -> its features, from the cache or computed below
    todo = list(range(len(texts)))
    if use_cache:
        keys = [(bb.folder, clf.max_length, normalize, t) for t in texts]
        todo = []
        for i, k in enumerate(keys):
            hit = FEATURE_CACHE.get(k)
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
    if todo:
        if ids is None:
            ids_todo = clf._ids([texts[i] for i in todo])
        else:
            ids_todo = np.asarray(ids)[todo]
        fn = feature_fn(bb.config, bb.pad_token_id, normalize)
        bs = clf.eval_batch_size
        total = len(todo)
        padded = -(-total // bs) * bs
        if padded != total:
            fill = np.full((padded - total, ids_todo.shape[1]), bb.pad_token_id, np.int32)
            ids_todo = np.concatenate([ids_todo, fill])
        chunks = []
        for s in progress(range(0, padded, bs), desc=desc, disable=not clf.progress, leave=False):
            chunks.append(fn(params, jnp.asarray(ids_todo[s : s + bs])))
        feats = np.asarray(jnp.concatenate(chunks))[:total]
        for j, i in enumerate(todo):
            out[i] = feats[j]
            if use_cache:
                FEATURE_CACHE[keys[i]] = feats[j]
        if use_cache:
            while len(FEATURE_CACHE) > FEATURE_CACHE_SIZE:
                FEATURE_CACHE.popitem(last=False)
    return np.stack([out[i] for i in range(len(texts))]).astype(np.float32)


def xent(logits, labels):
    """Mean cross-entropy of ``[n, classes]`` logits against ``[n]`` int labels."""
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], axis=-1))


def schedule(peak: float, steps: int, warmup_fraction: float = 0.1) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak`` over ``warmup_fraction`` of the ``steps`` (at least one), then linear decay
    to 0."""
    warmup = max(1, int(round(steps * warmup_fraction)))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, 0.0, max(1, steps - warmup))], [warmup]
    )


def decay_mask(params):
    """Weight decay on matrices (and higher-rank kernels) only, not on biases or layer norms."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def adamw(peak: float, steps: int, weight_decay: float, warmup_fraction: float = 0.1) -> optax.GradientTransformation:
    """AdamW over :func:`schedule` with :func:`decay_mask`."""
    return optax.adamw(schedule(peak, steps, warmup_fraction), weight_decay=weight_decay, mask=decay_mask)


def layer_depths(bert_params: Any) -> dict[str, int]:
    """Depth of each top-level entry of BERT's parameters: ``embeddings`` 0, ``layer_i`` ``i + 1`` (any other entry,
    e.g. a pooler, sits above the last layer)."""
    depths = {}
    layers = sum(1 for k in bert_params if k.startswith("layer_"))
    for k in bert_params:
        if k == "embeddings":
            depths[k] = 0
        elif k.startswith("layer_"):
            depths[k] = int(k.split("_")[1]) + 1
        else:
            depths[k] = layers + 1
    return depths


def copy_tree(tree):
    """A copy of every array of ``tree`` (the compiled steps donate their state, so never hand them the originals)."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def steps_for(clf: FewShotTextClassifier, n_train: int, batch: int, default_steps: int | None = None) -> int:
    """Optimisation steps: ``clf.steps``; else ``epochs`` (given or the method's default) passes over ``n_train``
    texts in batches of ``batch``; else ``default_steps`` or the method's default ``steps``."""
    if clf.steps is not None:
        return clf.steps
    epochs = clf._setting("epochs")
    if epochs is not None:
        return max(1, math.ceil(epochs * n_train / batch))
    return int(default_steps if default_steps is not None else clf._setting("steps"))
