"""Few-shot text classification with a BERT backbone, scikit-learn style.

:class:`FewShotTextClassifier` fits on a handful of labelled texts (``fit(texts, labels)``, labels of any hashable
type) and offers ``predict``, ``predict_proba``, ``score``, ``save`` and ``load``. Five methods share one prediction
path (BERT -> mean pooling over non-padding tokens -> a linear or cosine head):

========== ==================================================================================================
method     what ``fit`` does
========== ==================================================================================================
head       frozen sentence embeddings (mean-pooled, L2-normalised) + multinomial logistic regression with L2,
           trained full-batch with Adam inside one ``jax.jit`` (``head_steps``, ``head_learning_rate``,
           ``head_l2``).
finetune   full fine-tuning of BERT + a linear head on the mean-pooled output, the head initialised by a linear
           probe (LP-FT; ``finetune_init``): one jitted AdamW step with the state donated, dropout on, linear
           warm-up/decay; early stopping on a held-out part of the support set
           (``validation_fraction``, at least 2 texts per class, and only when at least 2 per class remain for
           training): the lowest-validation-loss checkpoint is kept, and training stops after ``patience``
           evaluations without improvement, never before half of the steps. Otherwise a fixed number of steps.
setfit     SetFit (Tunstall et al., 2022): contrastive fine-tuning of the encoder on (same class / different
           class) pairs drawn *on the device* every step from index arrays with ``jax.random`` (O(n + batch)
           memory, never the O(n^2) pair list), with sentence-transformers' CosineSimilarityLoss
           (``setfit_loss="cosine"``) or a margin ContrastiveLoss (``"contrastive"``); then the ``head`` method on
           the tuned embeddings.
protonet   class prototypes (mean normalised embedding per class) and cosine logits / ``temperature``;
           optionally the encoder is first meta-trained episodically with :func:`fsl_jax.protonet`
           (``meta_train_steps``, default 0).
anil       ANIL (:func:`fsl_jax.anil`, ``remat=True``) over :class:`~fsl_jax.llm.text_models.BertClassifier`
           (normalised features x ``feature_scale``, zero-initialised head): ``meta_train_steps`` meta-steps on
           text episodes drawn from the support set (or from ``fit(..., meta_texts=, meta_labels=)``, texts of
           other classes), then the head is adapted on the whole support set with the same inner loop
           (``inner_steps`` SGD steps at ``inner_lr``). Kept cheap: few meta-steps, ``meta_batch=2``.
========== ==================================================================================================

Compiled functions are cached per configuration, so repeated fits (several random draws) compile once. Embeddings
of the *pretrained* encoder are cached per text in memory (``cache_embeddings``), which makes ``head`` and
``protonet`` cheap to refit on new draws.

Example:
    >>> clf = FewShotTextClassifier(method="head")
    >>> clf.fit(["great match", "stocks fell", "a late goal", "bank profits"],
    ...         ["sport", "business", "sport", "business"])
    FewShotTextClassifier(method='head')
    >>> clf.predict(["the striker scored twice", "shares slid"])
    array(['sport', 'business'], dtype=object)
    >>> clf.classes_, clf.predict_proba(["the striker scored twice"]).round(2)
    (('business', 'sport'), array([[0.07, 0.93]], dtype=float32))
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from fsl_jax._progress import progress

from fsl_jax.data.text import sort_labels, tokenize
from fsl_jax.llm.text_models import Backbone, BertClassifier, BertEncoder, encoder_variables, load_backbone

__all__ = ["METHODS", "FewShotTextClassifier", "sample_pairs"]

METHODS = ("head", "finetune", "setfit", "protonet", "anil")
SETFIT_LOSSES = ("cosine", "contrastive")
FINETUNE_INITS = ("probe", "random")
_FORMAT = "fsl_jax.FewShotTextClassifier"

# Per-method defaults for the arguments left at None.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "head": {},
    "finetune": {"learning_rate": 1e-4, "epochs": 20},
    "setfit": {"learning_rate": 2e-5, "steps": 40},
    "protonet": {"learning_rate": 2e-5, "meta_train_steps": 0},
    "anil": {"learning_rate": 2e-5, "meta_train_steps": 10},
}

_FEATURE_CACHE: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_FEATURE_CACHE_SIZE = 50_000


# ----------------------------------------------------------------------------------------------------------------
# Compiled pieces (module level, cached per configuration so that refits do not recompile)
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _feature_fn(config: Any, pad_token_id: int, normalize: bool) -> Callable:
    encoder = BertEncoder(config, pad_token_id, normalize)
    return jax.jit(lambda bert_params, ids: encoder.apply(encoder_variables(bert_params), ids))


def _xent(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], axis=-1))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_logreg(x, y, num_classes: int, steps: int, learning_rate, l2):
    """Multinomial logistic regression: mean cross-entropy + ``l2 * ||W||^2``, full-batch Adam for ``steps``."""
    params = {
        "kernel": jnp.zeros((x.shape[1], num_classes), jnp.float32),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }
    tx = optax.adam(learning_rate)

    def loss(p):
        return _xent(x @ p["kernel"] + p["bias"], y) + l2 * jnp.sum(p["kernel"] ** 2)

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), value

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params, losses[-1]


def _schedule(peak: float, steps: int, warmup_fraction: float = 0.1) -> optax.Schedule:
    warmup = max(1, int(round(steps * warmup_fraction)))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, 0.0, max(1, steps - warmup))], [warmup]
    )


def _decay_mask(params):
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def _adamw(peak: float, steps: int, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(_schedule(peak, steps), weight_decay=weight_decay, mask=_decay_mask)


@functools.lru_cache(maxsize=8)
def _finetune_fns(
    module: BertClassifier,
    learning_rate: float,
    head_learning_rate: float,
    weight_decay: float,
    steps: int,
    dropout: bool,
):
    tx = optax.multi_transform(
        {"bert": _adamw(learning_rate, steps, weight_decay), "head": _adamw(head_learning_rate, steps, weight_decay)},
        lambda p: {k: jax.tree_util.tree_map(lambda _: k, v) for k, v in p.items()},
    )

    def loss_fn(params, ids, y, key):
        logits = module.apply({"params": params}, ids, deterministic=not dropout, rngs={"dropout": key})
        return _xent(logits, y)

    def step(state, ids_all, y_all, idx, key):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, ids_all[idx], y_all[idx], key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def evaluate(params, ids, y):
        logits = module.apply({"params": params}, ids)
        return _xent(logits, y), jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))

    return tx, jax.jit(step, donate_argnums=(0,)), jax.jit(evaluate)


def sample_pairs(
    key: jax.Array,
    codes: jax.Array,
    order: jax.Array,
    rank: jax.Array,
    starts: jax.Array,
    counts: jax.Array,
    num_pairs: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples ``num_pairs`` (anchor, partner) index pairs, half same-class and half different-class, in O(n + pairs)
    memory (jittable; no n x n structure is ever built).

    Examples are addressed through the class-sorted permutation ``order``: class ``c`` occupies
    ``order[starts[c] : starts[c] + counts[c]]``. A positive partner is drawn uniformly from the anchor's class
    without the anchor itself (skipping its ``rank`` inside the block; a class with one example pairs the anchor
    with itself); a negative partner is drawn uniformly from the ``n - counts[c]`` examples outside the block.

    Args:
      key: PRNG key.
      codes: ``[n]`` int class of each example.
      order: ``[n]`` ``argsort(codes)`` (stable).
      rank: ``[n]`` position of each example inside its class block.
      starts: ``[classes]`` first position of each class block in ``order``.
      counts: ``[classes]`` examples per class.
      num_pairs: pairs to draw (static); the first ``num_pairs // 2`` are positives.

    Returns:
      ``(anchor, partner, target)``: ``[num_pairs]`` int32, int32 and float32 (1 = same class, 0 = different).

    Example:
        >>> codes = jnp.array([0, 1, 0, 1, 1])
        >>> order, rank, starts, counts = _class_index(np.asarray(codes), 2)
        >>> a, b, t = sample_pairs(jax.random.key(0), codes, order, rank, starts, counts, 8)
        >>> bool(jnp.all((codes[a] == codes[b]) == (t == 1)))
        True
    """
    n = codes.shape[0]
    k_anchor, k_pos, k_neg = jax.random.split(key, 3)
    anchor = jax.random.randint(k_anchor, (num_pairs,), 0, n)
    c = codes[anchor]
    count = counts[c]
    start = starts[c]
    r = jax.random.randint(k_pos, (num_pairs,), 0, jnp.maximum(count - 1, 1))
    r = jnp.where(count >= 2, r + (r >= rank[anchor]), rank[anchor])
    positive = order[start + r]
    j = jax.random.randint(k_neg, (num_pairs,), 0, jnp.maximum(n - count, 1))
    negative = order[jnp.where(j < start, j, j + count)]
    is_pos = jnp.arange(num_pairs) < num_pairs // 2
    partner = jnp.where(is_pos, positive, negative)
    return anchor.astype(jnp.int32), partner.astype(jnp.int32), is_pos.astype(jnp.float32)


def _class_index(codes: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(order, rank, starts, counts)`` for :func:`sample_pairs`."""
    codes = np.asarray(codes)
    order = np.argsort(codes, kind="stable").astype(np.int32)
    counts = np.bincount(codes, minlength=num_classes).astype(np.int32)
    starts = (np.cumsum(counts) - counts).astype(np.int32)
    rank = np.empty(len(codes), np.int32)
    rank[order] = np.arange(len(codes), dtype=np.int32) - starts[codes[order]]
    return order, rank, starts, counts


@functools.lru_cache(maxsize=8)
def _setfit_fns(
    encoder: BertEncoder,
    learning_rate: float,
    weight_decay: float,
    steps: int,
    num_pairs: int,
    loss: str,
    margin: float,
    dropout: bool,
):
    tx = _adamw(learning_rate, steps, weight_decay)

    def pair_loss(params, ids_all, a, b, target, key):
        ids = jnp.concatenate([ids_all[a], ids_all[b]])
        z = encoder.apply(encoder_variables(params), ids, deterministic=not dropout, rngs={"dropout": key})
        cos = jnp.sum(z[:num_pairs] * z[num_pairs:], axis=-1)
        if loss == "cosine":
            return jnp.mean((cos - target) ** 2)
        distance = 1.0 - cos
        return jnp.mean(0.5 * (target * distance**2 + (1 - target) * jax.nn.relu(margin - distance) ** 2))

    def step(state, ids_all, codes, order, rank, starts, counts, key):
        params, opt_state = state
        k_pairs, k_drop = jax.random.split(key)
        a, b, target = sample_pairs(k_pairs, codes, order, rank, starts, counts, num_pairs)
        value, grads = jax.value_and_grad(pair_loss)(params, ids_all, a, b, target, k_drop)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return tx, jax.jit(step, donate_argnums=(0,))


@functools.lru_cache(maxsize=8)
def _meta_fns(
    kind: str, module: Any, ways: int, learning_rate: float, inner_lr: float, inner_steps: int, temperature: float
):
    import fsl_jax as fj

    if kind == "protonet":
        from fsl_jax.learners.protonet import protonet

        learner = protonet(module, ways, distance="cosine", temperature=temperature)
    else:
        learner = fj.anil(module, "xent", inner_lr, inner_steps, head="head", remat=True)
    tx = optax.adam(learning_rate)
    return learner, tx, fj.make_meta_step(learner, tx)


@functools.partial(jax.jit, static_argnames=("inner_lr", "steps"))
def _adapt_head(features, y, head, inner_lr: float, steps: int, feature_scale):
    """ANIL's inner loop on precomputed (scaled) features: ``steps`` SGD steps on the head from its meta-learned
    initialisation (identical to ``learner.adapt``, without recomputing BERT in every step)."""
    from fsl_jax.learners.maml import inner_loop

    x = features * feature_scale

    def loss(h):
        return _xent(x @ h["kernel"] + h["bias"], y)

    return inner_loop(loss, head, inner_lr, steps)


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------


def _check_texts(name: str, texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings, got a single str {texts[:40]!r}")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError(f"{name} is empty: need at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__} {t!r}")
    return texts


def _check_labels(texts: list[str], labels: Any, texts_name: str = "texts", labels_name: str = "labels") -> list:
    if isinstance(labels, str):
        raise TypeError(f"{labels_name} must be a sequence of labels, got a single str {labels[:40]!r}")
    try:
        labels = list(labels)
    except TypeError:
        raise TypeError(f"{labels_name} must be a sequence of labels, got {type(labels).__name__}") from None
    if len(labels) != len(texts):
        raise ValueError(
            f"len({labels_name})={len(labels)} does not match len({texts_name})={len(texts)}: give one label per text"
        )
    out = []
    for i, label in enumerate(labels):
        if isinstance(label, np.generic):
            label = label.item()
        try:
            hash(label)
        except TypeError:
            raise TypeError(f"{labels_name}[{i}]={label!r} is not hashable; labels must be hashable") from None
        out.append(label)
    return out


def _check_positive_int(name: str, value: Any, allow_none: bool = False, minimum: int = 1) -> Any:
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_number(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> Any:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {kind} finite number, got {value!r}")
    return float(value)


def _copy_tree(tree):
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


# ----------------------------------------------------------------------------------------------------------------
# The classifier
# ----------------------------------------------------------------------------------------------------------------


class FewShotTextClassifier:
    """A few-shot text classifier over a BERT backbone (see the module docstring for the five methods).

    Args:
      backbone: a local Hugging Face BERT folder or ``"all-MiniLM-L6-v2"`` (bundled).
      method: ``"head"``, ``"finetune"``, ``"setfit"``, ``"protonet"`` or ``"anil"``.
      seed: seed of every random choice (splits, batches, pairs, dropout, augmentation).
      max_length: tokens per text (truncation / padding); fixed so that nothing recompiles.
      steps: optimisation steps of ``finetune`` / ``setfit`` (default: ``finetune`` from ``epochs``; ``setfit``
        40).
      epochs: passes over the support set, an alternative to ``steps`` (``finetune`` default 20).
      learning_rate: peak learning rate of the encoder (``finetune`` 1e-4, ``setfit`` 2e-5; meta-training of
        ``protonet`` / ``anil`` 2e-5).
      batch_size: texts per ``finetune`` step, pairs per ``setfit`` step.
      augment: optional ``(texts, labels, rng) -> (texts, labels)`` applied to the support set in :meth:`fit`
        (``rng`` is a ``numpy.random.Generator`` seeded with ``seed``), e.g. from :mod:`fsl_jax.llm.augment`.
      weight_decay: AdamW weight decay on matrices (``finetune``, ``setfit``).
      head_learning_rate: ``finetune``: peak learning rate of the linear head (default 1e-3); ``head`` /
        ``setfit``: Adam learning rate of the logistic regression (default 0.05).
      head_steps: full-batch steps of the logistic regression (default 300).
      head_l2: L2 penalty of the logistic regression on the mean loss (default 1e-3).
      validation_fraction: ``finetune`` early stopping: part of each class held out (at least 2 texts).
      early_stopping: enable ``finetune``'s early stopping (used only when every class keeps >= 2 texts for
        training after holding >= 2 out).
      patience: evaluations without a lower validation loss before stopping (not before half of the steps).
      finetune_init: ``"probe"`` (LP-FT, Kumar et al. 2022: the head starts from the logistic regression on the
        frozen, normalised embeddings of the training part, and that starting point is itself a validation
        candidate) or ``"random"`` (a freshly initialised head on unnormalised mean-pooled features).
      eval_every: steps between validation evaluations (default: one epoch).
      setfit_loss: ``"cosine"`` (CosineSimilarityLoss, MSE between cosine similarity and 1 / 0) or
        ``"contrastive"`` (margin loss on the cosine distance).
      margin: the ``"contrastive"`` margin.
      temperature: ``protonet`` logits are ``cos / temperature``.
      meta_train_steps: episodic meta-training steps for ``protonet`` (default 0) and ``anil`` (default 10).
      meta_batch: tasks per meta-step.
      inner_lr, inner_steps: ANIL's inner SGD (default 0.5 and 5, on features of norm ``feature_scale``).
      feature_scale: ANIL: the normalised features are multiplied by it before the head (default 10).
      dropout: train ``finetune`` / ``setfit`` with the backbone's dropout.
      eval_batch_size: texts per compiled embedding call.
      cache_embeddings: cache the pretrained encoder's embeddings per text (in memory).
      progress: show progress bars.

    Attributes (after ``fit``):
      classes_: the labels, sorted; column ``i`` of :meth:`predict_proba` is ``classes_[i]``.
      fit_info_: what ``fit`` did (steps, best validation step and accuracy, meta-steps, seconds, support size).

    Raises:
      ValueError: unknown ``method`` / ``setfit_loss`` or a bad number (naming the argument and value).
      FileNotFoundError: ``backbone`` is neither a folder nor a bundled model.

    Example:
        >>> import tempfile
        >>> texts = ["a late goal won the match", "the striker scored twice", "the team lost the final",
        ...          "stocks fell sharply", "the bank raised rates", "profits rose this quarter"]
        >>> labels = ["sport"] * 3 + ["business"] * 3
        >>> clf = FewShotTextClassifier(method="protonet", max_length=16, seed=0).fit(texts, labels)
        >>> clf.score(["the goalkeeper saved a penalty", "the market rallied"], ["sport", "business"])
        1.0
        >>> clf.fit_info_["support_size"], clf.fit_info_["meta_train_steps"]
        (6, 0)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = clf.save(folder)
        ...     FewShotTextClassifier.load(folder).predict(["a late goal"])
        array(['sport'], dtype=object)

        ``method="setfit"`` (e.g. ``steps=40``), ``"finetune"`` and ``"anil"`` take the same calls; they compile a
        training step of the whole backbone first, which takes tens of seconds on a CPU.
    """

    def __init__(
        self,
        backbone: str | os.PathLike = "all-MiniLM-L6-v2",
        method: str = "head",
        *,
        seed: int = 0,
        max_length: int = 128,
        steps: int | None = None,
        epochs: float | None = None,
        learning_rate: float | None = None,
        batch_size: int = 16,
        augment: Callable | None = None,
        weight_decay: float = 0.01,
        head_learning_rate: float | None = None,
        head_steps: int = 300,
        head_l2: float = 1e-3,
        validation_fraction: float = 0.2,
        early_stopping: bool = True,
        patience: int = 5,
        finetune_init: str = "probe",
        eval_every: int | None = None,
        setfit_loss: str = "cosine",
        margin: float = 0.5,
        temperature: float = 0.05,
        meta_train_steps: int | None = None,
        meta_batch: int = 2,
        inner_lr: float = 0.5,
        inner_steps: int = 5,
        feature_scale: float = 10.0,
        dropout: bool = True,
        eval_batch_size: int = 32,
        cache_embeddings: bool = True,
        progress: bool = False,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if setfit_loss not in SETFIT_LOSSES:
            raise ValueError(f"setfit_loss must be one of {SETFIT_LOSSES}, got {setfit_loss!r}")
        if augment is not None and not callable(augment):
            raise TypeError(
                f"augment must be None or a callable (texts, labels, rng) -> (texts, labels), got "
                f"{type(augment).__name__}"
            )
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        from fsl_jax.models.hub import resolve_model_folder

        try:
            resolve_model_folder(backbone)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"backbone={str(backbone)!r}: {e}") from None
        self.backbone = str(backbone) if isinstance(backbone, os.PathLike) else backbone
        self.method = method
        self.seed = int(seed)
        self.max_length = _check_positive_int("max_length", max_length, minimum=2)
        self.steps = _check_positive_int("steps", steps, allow_none=True)
        self.epochs = _check_number("epochs", epochs, allow_none=True)
        self.learning_rate = _check_number("learning_rate", learning_rate, allow_none=True)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.augment = augment
        self.weight_decay = _check_number("weight_decay", weight_decay, allow_zero=True)
        self.head_learning_rate = _check_number("head_learning_rate", head_learning_rate, allow_none=True)
        self.head_steps = _check_positive_int("head_steps", head_steps)
        self.head_l2 = _check_number("head_l2", head_l2, allow_zero=True)
        self.validation_fraction = _check_number("validation_fraction", validation_fraction)
        if self.validation_fraction >= 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
        self.early_stopping = bool(early_stopping)
        self.patience = _check_positive_int("patience", patience)
        if finetune_init not in FINETUNE_INITS:
            raise ValueError(f"finetune_init must be one of {FINETUNE_INITS}, got {finetune_init!r}")
        self.finetune_init = finetune_init
        self.eval_every = _check_positive_int("eval_every", eval_every, allow_none=True)
        self.setfit_loss = setfit_loss
        self.margin = _check_number("margin", margin)
        self.temperature = _check_number("temperature", temperature)
        self.meta_train_steps = _check_positive_int("meta_train_steps", meta_train_steps, allow_none=True, minimum=0)
        self.meta_batch = _check_positive_int("meta_batch", meta_batch)
        self.inner_lr = _check_number("inner_lr", inner_lr)
        self.inner_steps = _check_positive_int("inner_steps", inner_steps)
        self.feature_scale = _check_number("feature_scale", feature_scale)
        self.dropout = bool(dropout)
        self.eval_batch_size = _check_positive_int("eval_batch_size", eval_batch_size)
        self.cache_embeddings = bool(cache_embeddings)
        self.progress = bool(progress)
        self._bb: Backbone | None = None
        self._bert = None  # tuned BERT parameters; None = the pretrained ones
        self._head: dict[str, Any] | None = None

    # ------------------------------------------------------------------ sklearn-style plumbing

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments (scikit-learn's ``get_params``)."""
        del deep
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> "FewShotTextClassifier":
        """Sets constructor arguments (validated by rebuilding) and forgets any fit."""
        merged = {**self.get_params(), **params}
        unknown = set(params) - set(self.get_params())
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}; valid: {sorted(self.get_params())}")
        self.__init__(**merged)
        return self

    def __repr__(self) -> str:
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        shown = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v or k == "method"]
        return f"FewShotTextClassifier({', '.join(shown)})"

    def _setting(self, name: str) -> Any:
        value = getattr(self, name)
        if value is None:
            value = _DEFAULTS[self.method].get(name)
        return value

    @property
    def is_fitted(self) -> bool:
        return self._head is not None

    def _check_fitted(self) -> None:
        if self._head is None:
            raise RuntimeError("this FewShotTextClassifier is not fitted yet; call fit(texts, labels) first")

    def _backbone(self) -> Backbone:
        if self._bb is None:
            self._bb = load_backbone(self.backbone)
        return self._bb

    def _ids(self, texts: Sequence[str]) -> np.ndarray:
        return tokenize(texts, self._backbone().tokenizer, self.max_length)[0]

    # ------------------------------------------------------------------ features

    def _features(
        self,
        bert_params: Any,
        texts: Sequence[str],
        ids: np.ndarray | None = None,
        *,
        normalize: bool = True,
        desc: str = "embed",
    ) -> np.ndarray:
        """``[n, hidden]`` float32 pooled features; cached per text for the pretrained encoder."""
        bb = self._backbone()
        pretrained = bert_params is None
        params = bb.params if pretrained else bert_params
        use_cache = pretrained and self.cache_embeddings
        out: list[np.ndarray | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        if use_cache:
            keys = [(bb.folder, self.max_length, normalize, t) for t in texts]
            todo = []
            for i, k in enumerate(keys):
                hit = _FEATURE_CACHE.get(k)
                if hit is None:
                    todo.append(i)
                else:
                    out[i] = hit
        if todo:
            if ids is None:
                ids_todo = self._ids([texts[i] for i in todo])
            else:
                ids_todo = np.asarray(ids)[todo]
            fn = _feature_fn(bb.config, bb.pad_token_id, normalize)
            bs = self.eval_batch_size
            total = len(todo)
            padded = -(-total // bs) * bs
            if padded != total:
                fill = np.full((padded - total, ids_todo.shape[1]), bb.pad_token_id, np.int32)
                ids_todo = np.concatenate([ids_todo, fill])
            chunks = []
            for s in progress(range(0, padded, bs), desc=desc, disable=not self.progress, leave=False):
                chunks.append(fn(params, jnp.asarray(ids_todo[s : s + bs])))
            feats = np.asarray(jnp.concatenate(chunks))[:total]
            for j, i in enumerate(todo):
                out[i] = feats[j]
                if use_cache:
                    _FEATURE_CACHE[keys[i]] = feats[j]
            if use_cache:
                while len(_FEATURE_CACHE) > _FEATURE_CACHE_SIZE:
                    _FEATURE_CACHE.popitem(last=False)
        return np.stack(out).astype(np.float32)

    def _logits(self, texts: list[str]) -> np.ndarray:
        head = self._head
        normalize = head["kind"] != "linear_unnormalized"
        feats = jnp.asarray(self._features(self._bert, texts, normalize=normalize, desc="predict"))
        if head["kind"] == "cosine":
            protos = head["prototypes"]
            protos = protos / jnp.maximum(jnp.linalg.norm(protos, axis=-1, keepdims=True), 1e-12)
            return np.asarray(feats @ protos.T / head["temperature"])
        return np.asarray(feats @ head["kernel"] + head["bias"])

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[Hashable],
        *,
        meta_texts: Sequence[str] | None = None,
        meta_labels: Sequence[Hashable] | None = None,
    ) -> "FewShotTextClassifier":
        """Fits on the support set ``texts`` / ``labels``.

        Args:
          texts: the support texts.
          labels: one hashable label per text (strings, ints, ...); at least two classes.
          meta_texts, meta_labels: optional extra labelled texts (typically of *other* classes) that ``protonet`` /
            ``anil`` meta-train on instead of the support set.

        Returns:
          ``self``.

        Raises:
          ValueError: empty ``texts``, ``len(labels) != len(texts)``, a single class, or meta-training data that
            cannot form episodes (named in the message).
          TypeError: a non-string text or an unhashable label.
        """
        texts = _check_texts("texts", texts)
        labels = _check_labels(texts, labels)
        if self.augment is not None:
            result = self.augment(list(texts), list(labels), np.random.default_rng(self.seed))
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError(f"augment must return a (texts, labels) tuple, got {type(result).__name__}")
            texts = _check_texts("augment(...) texts", result[0])
            labels = _check_labels(texts, result[1], "augment(...) texts", "augment(...) labels")
        classes = sort_labels(labels)
        if len(classes) < 2:
            raise ValueError(f"labels has a single class {classes[0]!r}; a classifier needs at least 2 classes")
        if (meta_texts is None) != (meta_labels is None):
            raise ValueError("give both meta_texts and meta_labels, or neither")
        meta = None
        if meta_texts is not None:
            meta_texts = _check_texts("meta_texts", meta_texts)
            meta_labels = _check_labels(meta_texts, meta_labels, "meta_texts", "meta_labels")
            meta = (meta_texts, meta_labels)
        position = {c: i for i, c in enumerate(classes)}
        y = np.asarray([position[label] for label in labels], np.int32)
        t0 = time.perf_counter()
        self._bb = load_backbone(self.backbone)
        self.classes_ = classes
        self._bert, self._head = None, None
        self.fit_info_ = {"method": self.method, "support_size": len(texts)}
        fit = {
            "head": self._fit_head,
            "finetune": self._fit_finetune,
            "setfit": self._fit_setfit,
            "protonet": self._fit_protonet,
            "anil": self._fit_anil,
        }[self.method]
        if meta is not None and self.method not in ("protonet", "anil"):
            raise ValueError(
                f"meta_texts / meta_labels are only used by method 'protonet' or 'anil', not {self.method!r}"
            )
        if meta is not None:
            fit(texts, y, meta=meta)
        else:
            fit(texts, y)
        self.fit_info_["seconds"] = time.perf_counter() - t0
        return self

    def _linear_head(self, feats: np.ndarray, y: np.ndarray) -> dict:
        lr = self.head_learning_rate if self.head_learning_rate is not None else 0.05
        params, loss = _fit_logreg(
            jnp.asarray(feats), jnp.asarray(y), len(self.classes_), self.head_steps, lr, self.head_l2
        )
        self.fit_info_["head_loss"] = float(loss)
        return {"kind": "linear", "kernel": params["kernel"], "bias": params["bias"]}

    def _fit_head(self, texts: list[str], y: np.ndarray) -> None:
        self._head = self._linear_head(self._features(None, texts, desc="embed support"), y)

    def _steps_for(self, n_train: int, batch: int) -> int:
        if self.steps is not None:
            return self.steps
        epochs = self.epochs if self.epochs is not None else _DEFAULTS[self.method].get("epochs")
        if epochs is not None:
            return max(1, math.ceil(epochs * n_train / batch))
        return int(_DEFAULTS[self.method]["steps"])

    def _validation_split(self, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.early_stopping:
            return np.arange(len(y)), None
        train, val = [], []
        for c in range(len(self.classes_)):
            idx = rng.permutation(np.flatnonzero(y == c))
            n_val = max(2, int(round(self.validation_fraction * len(idx))))
            if len(idx) - n_val < 2:
                return np.arange(len(y)), None
            val.append(idx[:n_val])
            train.append(idx[n_val:])
        return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))

    def _fit_finetune(self, texts: list[str], y: np.ndarray) -> None:
        bb = self._backbone()
        rng = np.random.default_rng([self.seed, 1])
        train_idx, val_idx = self._validation_split(y, rng)
        batch = min(self.batch_size, len(train_idx))
        steps = self._steps_for(len(train_idx), batch)
        lr = float(self._setting("learning_rate"))
        head_lr = self.head_learning_rate if self.head_learning_rate is not None else 1e-3
        probe = self.finetune_init == "probe"
        module, variables, _ = bb.classifier(
            len(self.classes_), jax.random.key(self.seed), normalize=probe, head_init="normal"
        )
        tx, step_fn, eval_fn = _finetune_fns(module, lr, float(head_lr), self.weight_decay, steps, self.dropout)
        params = dict(_copy_tree(variables["params"]))
        if probe:  # LP-FT: start from the logistic-regression head on the frozen embeddings of the training part
            feats = self._features(None, [texts[i] for i in train_idx], desc="embed support")
            head = self._linear_head(feats, y[train_idx])
            params["head"] = {"kernel": jnp.array(head["kernel"]), "bias": jnp.array(head["bias"])}
        state = (params, tx.init(params))
        ids = self._ids(texts)
        ids_dev, y_dev = jnp.asarray(ids), jnp.asarray(y)
        val = (jnp.asarray(ids[val_idx]), jnp.asarray(y[val_idx])) if val_idx is not None else None
        eval_every = self.eval_every or max(1, math.ceil(len(train_idx) / batch))
        key = jax.random.key(self.seed)
        stream = np.concatenate([rng.permutation(train_idx) for _ in range(-(-steps * batch // len(train_idx)) + 1)])
        # The checkpoint with the lowest validation loss is kept (a few held-out texts make accuracy too coarse to
        # select on: it once stopped a run at step 16 of 38 while the loss was still falling fast); no stopping
        # before half of the schedule.
        best_loss, best_acc, best_step = np.inf, 0.0, 0
        best_params, bad, done = None, 0, 0
        if val is not None and probe:  # the probe itself is a candidate: fine-tuning must beat it on validation
            best_loss, best_acc = (float(v) for v in eval_fn(state[0], *val))
            best_params = _copy_tree(state[0])
        bar = progress(range(steps), desc="finetune", disable=not self.progress, leave=False)
        for i in bar:
            idx = jnp.asarray(stream[i * batch : (i + 1) * batch])
            state, loss = step_fn(state, ids_dev, y_dev, idx, jax.random.fold_in(key, i))
            done = i + 1
            if val is not None and (done % eval_every == 0 or done == steps):
                val_loss, val_acc = (float(v) for v in eval_fn(state[0], *val))
                bar.set_postfix(loss=f"{float(loss):.3f}", val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.2f}")
                if val_loss < best_loss:
                    best_loss, best_acc, best_step, bad = val_loss, val_acc, done, 0
                    best_params = _copy_tree(state[0])
                else:
                    bad += 1
                    if bad >= self.patience and done >= steps // 2:
                        break
        bar.close()
        params = state[0] if best_params is None else best_params
        self.fit_info_.update(
            steps=done,
            max_steps=steps,
            batch_size=batch,
            train_size=len(train_idx),
            validation_size=0 if val_idx is None else len(val_idx),
        )
        if val is not None:
            self.fit_info_.update(best_step=best_step, validation_accuracy=best_acc, validation_loss=best_loss)
        self._bert = params["bert"]
        self._head = {
            "kind": "linear" if probe else "linear_unnormalized",
            "kernel": params["head"]["kernel"],
            "bias": params["head"]["bias"],
        }

    def _fit_setfit(self, texts: list[str], y: np.ndarray) -> None:
        bb = self._backbone()
        steps = self._steps_for(len(texts), self.batch_size)
        lr = float(self._setting("learning_rate"))
        encoder, variables, _ = bb.encoder(normalize=True)
        tx, step_fn = _setfit_fns(
            encoder, lr, self.weight_decay, steps, self.batch_size, self.setfit_loss, self.margin, self.dropout
        )
        params = _copy_tree(variables["params"]["bert"])
        state = (params, tx.init(params))
        ids = jnp.asarray(self._ids(texts))
        index = [jnp.asarray(a) for a in _class_index(y, len(self.classes_))]
        codes = jnp.asarray(y)
        key = jax.random.key(self.seed)
        losses = []
        bar = progress(range(steps), desc="setfit", disable=not self.progress, leave=False)
        for i in bar:
            state, loss = step_fn(state, ids, codes, *index, jax.random.fold_in(key, i))
            losses.append(loss)
        bar.close()
        self._bert = state[0]
        self.fit_info_.update(
            steps=steps,
            pairs_per_step=self.batch_size,
            first_loss=float(losses[0]),
            last_loss=float(np.mean(np.asarray(losses[-5:]))),
        )
        feats = self._features(self._bert, texts, np.asarray(ids), desc="embed support")
        self._head = self._linear_head(feats, y)

    def _episode_data(self, texts: list[str], y: np.ndarray, meta: tuple | None, need_ways: int | None):
        """Per-class id arrays and episode sizes for meta-training."""
        support_min = int(np.bincount(y).min())
        if meta is None:
            groups = [self._ids([t for t, c in zip(texts, y) if c == k]) for k in range(len(self.classes_))]
            if support_min < 2:
                raise ValueError(
                    f"meta-training on the support set needs >= 2 texts per class (episode support + query); the "
                    f"smallest class has {support_min}: pass meta_texts/meta_labels or set meta_train_steps=0"
                )
            shots = max(1, support_min // 2)
            queries = support_min - shots
        else:
            meta_texts, meta_labels = meta
            meta_classes = sort_labels(meta_labels)
            groups = [self._ids([t for t, label in zip(meta_texts, meta_labels) if label == c]) for c in meta_classes]
            meta_min = min(len(g) for g in groups)
            shots = min(support_min, max(1, meta_min - 1))
            queries = max(1, min(max(shots, 4), meta_min - shots))
            if meta_min < 2:
                raise ValueError(
                    f"meta_labels: every class needs >= 2 texts for an episode; the smallest has {meta_min}"
                )
        ways = min(len(groups), len(self.classes_)) if need_ways is None else need_ways
        if need_ways is not None and len(groups) < need_ways:
            raise ValueError(
                f"meta_labels has {len(groups)} classes but ANIL's head has {need_ways} outputs (one per class of "
                f"labels): meta-training episodes need at least {need_ways} classes"
            )
        return groups, ways, shots, queries

    def _meta_train(
        self,
        kind: str,
        module: Any,
        variables: Any,
        groups: list,
        ways: int,
        shots: int,
        queries: int,
        temperature: float = 1.0,
    ) -> tuple[Any, list[float]]:
        from fsl_jax.data.sampler import HostSampler
        from fsl_jax.step import TrainState

        steps = int(self._setting("meta_train_steps"))
        lr = float(self._setting("learning_rate"))
        learner, tx, step_fn = _meta_fns(kind, module, ways, lr, self.inner_lr, self.inner_steps, temperature)
        sampler = HostSampler(groups, ways, shots, queries, seed=self.seed, dtype=np.int32)
        state = TrainState.create(learner, _copy_tree(variables), tx)
        key = jax.random.key(self.seed)
        accs = []
        bar = progress(range(steps), desc=f"meta-train {kind}", disable=not self.progress, leave=False)
        for i in bar:
            tasks = jax.tree_util.tree_map(jnp.asarray, sampler.sample(self.meta_batch, index=i))
            state, metrics = step_fn(state, tasks, jax.random.fold_in(key, i))
            accs.append(metrics["accuracy"])
        bar.close()
        accs = [float(a) for a in accs]
        self.fit_info_.update(
            meta_train_steps=steps,
            meta_episode=dict(ways=ways, shots=shots, queries=queries),
            meta_accuracy_first=accs[0] if accs else None,
            meta_accuracy_last=float(np.mean(accs[-3:])) if accs else None,
        )
        return state.params, accs

    def _fit_protonet(self, texts: list[str], y: np.ndarray, meta: tuple | None = None) -> None:
        bb = self._backbone()
        steps = int(self._setting("meta_train_steps"))
        if steps > 0:
            groups, ways, shots, queries = self._episode_data(texts, y, meta, None)
            encoder, variables, _ = bb.encoder(normalize=True)
            params, _ = self._meta_train("protonet", encoder, variables, groups, ways, shots, queries, self.temperature)
            self._bert = params["params"]["bert"]
        else:
            self.fit_info_["meta_train_steps"] = 0
        feats = self._features(self._bert, texts, desc="embed support")
        protos = np.stack([feats[y == c].mean(0) for c in range(len(self.classes_))])
        self._head = {"kind": "cosine", "prototypes": jnp.asarray(protos), "temperature": self.temperature}

    def _fit_anil(self, texts: list[str], y: np.ndarray, meta: tuple | None = None) -> None:
        bb = self._backbone()
        num_classes = len(self.classes_)
        module, variables, _ = bb.classifier(
            num_classes, jax.random.key(self.seed), normalize=True, feature_scale=self.feature_scale, head_init="zeros"
        )
        steps = int(self._setting("meta_train_steps"))
        head = variables["params"]["head"]
        if steps > 0:
            groups, ways, shots, queries = self._episode_data(texts, y, meta, num_classes)
            params, _ = self._meta_train("anil", module, variables, groups, ways, shots, queries)
            self._bert, head = params["params"]["bert"], params["params"]["head"]
        else:
            self.fit_info_["meta_train_steps"] = 0
        feats = self._features(self._bert, texts, desc="embed support")
        adapted = _adapt_head(
            jnp.asarray(feats), jnp.asarray(y), head, self.inner_lr, self.inner_steps, self.feature_scale
        )
        self._head = {"kind": "linear", "kernel": adapted["kernel"] * self.feature_scale, "bias": adapted["bias"]}

    # ------------------------------------------------------------------ predict

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, len(classes_)]`` class probabilities (softmax of the head's logits), columns in ``classes_`` order."""
        self._check_fitted()
        texts = _check_texts("texts", texts)
        logits = self._logits(texts)
        return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, len(classes_)]`` logits."""
        self._check_fitted()
        return self._logits(_check_texts("texts", texts))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """The most probable label of each text (an object array of the original label values)."""
        self._check_fitted()
        texts = _check_texts("texts", texts)
        best = np.argmax(self._logits(texts), axis=-1)
        out = np.empty(len(texts), dtype=object)
        out[:] = [self.classes_[i] for i in best]
        return out

    def score(self, texts: Sequence[str], labels: Sequence[Hashable]) -> float:
        """Accuracy of :meth:`predict` on ``texts`` against ``labels``."""
        texts = _check_texts("texts", texts)
        labels = _check_labels(texts, labels)
        predictions = self.predict(texts)
        return float(np.mean([p == t for p, t in zip(predictions, labels)]))

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the fitted classifier to the folder ``path``.

        Layout: ``settings.json`` (constructor arguments, ``classes_``, head kind, ``fit_info_``),
        ``head.safetensors`` (head arrays) and, when the encoder was tuned (``finetune``, ``setfit``, meta-trained
        ``protonet`` / ``anil``), ``encoder/`` -- a Hugging Face BERT folder (``config.json``, ``model.safetensors``,
        tokenizer) that :func:`fsl_jax.models.from_pretrained` also reads. A classifier over the frozen backbone
        stores only the backbone's name or path. ``augment`` is not saved (a loaded classifier has none).

        Raises:
          RuntimeError: not fitted.
          TypeError: labels that JSON cannot hold (use str / int / float / bool labels to save).
        """
        from safetensors.numpy import save_file

        from fsl_jax.models.bert import Bert
        from fsl_jax.models.hub import save_pretrained

        self._check_fitted()
        bad = [c for c in self.classes_ if not _jsonable(c)]
        if bad:
            raise TypeError(
                f"classes_ holds labels JSON cannot store ({bad[:3]!r}); use str, int, float or bool labels"
            )
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in self.get_params().items() if k != "augment"}
        settings["backbone"] = str(self.backbone)
        head = {k: np.asarray(v) for k, v in self._head.items() if k not in ("kind", "temperature")}
        info = {k: v for k, v in getattr(self, "fit_info_", {}).items() if _jsonable(v) or isinstance(v, dict)}
        doc = {
            "format": _FORMAT,
            "version": 1,
            "settings": settings,
            "classes": list(self.classes_),
            "head_kind": self._head["kind"],
            "temperature": self._head.get("temperature"),
            "encoder_tuned": self._bert is not None,
            "augment": getattr(self.augment, "__name__", None),
            "fit_info": info,
        }
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in head.items()}, str(folder / "head.safetensors"))
        if self._bert is not None:
            bb = self._backbone()
            save_pretrained(
                folder / "encoder", Bert(bb.config, add_pooling_layer=False), {"params": self._bert}, bb.tokenizer
            )
        with open(folder / "settings.json", "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, default=str)
            f.write("\n")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FewShotTextClassifier":
        """Reads a folder written by :meth:`save`.

        Raises:
          FileNotFoundError: ``path`` or one of its files is missing, or (for a frozen-backbone classifier) the
            backbone it names is no longer available.
          ValueError: the folder was not written by :meth:`save`.
        """
        from safetensors.numpy import load_file

        folder = Path(path)
        settings_file = folder / "settings.json"
        if not settings_file.is_file():
            raise FileNotFoundError(f"path={str(folder)!r} has no settings.json (was it written by save()?)")
        with open(settings_file, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("format") != _FORMAT:
            raise ValueError(f"path={str(folder)!r}: settings.json is not a {_FORMAT} file")
        settings = dict(doc["settings"])
        tuned = bool(doc["encoder_tuned"])
        backbone = settings.pop("backbone")
        source = folder / "encoder" if tuned else backbone
        clf = cls(source, **settings)
        clf.backbone = backbone
        bb = load_backbone(source)
        clf._bb = bb
        clf._bert = bb.params if tuned else None
        head_file = folder / "head.safetensors"
        if not head_file.is_file():
            raise FileNotFoundError(f"path={str(folder)!r} has no head.safetensors")
        arrays = {k: jnp.asarray(v) for k, v in load_file(str(head_file)).items()}
        clf._head = {"kind": doc["head_kind"], **arrays}
        if doc["head_kind"] == "cosine":
            clf._head["temperature"] = float(doc["temperature"])
        clf.classes_ = tuple(doc["classes"])
        clf.fit_info_ = doc.get("fit_info", {})
        return clf
