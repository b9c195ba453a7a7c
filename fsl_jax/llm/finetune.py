"""Few-shot text classification with a BERT backbone, scikit-learn style.

:class:`FewShotTextClassifier` fits on a handful of labelled texts (``fit(texts, labels)``, labels of any hashable
type) and offers ``predict``, ``predict_proba``, ``score``, ``save`` and ``load``. Six methods share one prediction
path (BERT -> mean pooling over non-padding tokens -> a linear or cosine head):

========== ==================================================================================================
method     what ``fit`` does
========== ==================================================================================================
head       frozen sentence embeddings (mean-pooled, L2-normalised) + multinomial logistic regression with L2,
           trained full-batch with Adam inside one ``jax.jit`` (``head_steps``, ``head_learning_rate``,
           ``head_l2``).
finetune   full fine-tuning of BERT + a linear head on the mean-pooled output, the head initialised by a linear
           probe (LP-FT; ``finetune_init``): one jitted AdamW step with the state donated, dropout on, linear
           warm-up/decay, layer-wise learning-rate decay (``layer_decay``), 15 epochs over the whole support set.
           Options: early stopping on a held-out part of the support set (``early_stopping=True``), a
           weight-space average with the starting point (``wise``, WiSE-FT).
setfit     SetFit (Tunstall et al., 2022): contrastive fine-tuning of the encoder on (same class / different
           class) pairs with sentence-transformers' CosineSimilarityLoss (``setfit_loss="cosine"``) or a margin
           ContrastiveLoss (``"contrastive"``), then the ``head`` method on the tuned embeddings
           (``setfit_head="logistic"``) or that head trained end to end with the encoder (``"end_to_end"``).
           Pairs: SetFit's generation (``setfit_sampling="paper"``: ``num_iterations`` rounds of one positive and
           one negative pair per support text, one epoch) or pairs drawn *on the device* every step
           (``"random"``, O(n + batch) memory, ``steps`` steps).
protonet   class prototypes (mean normalised embedding per class) and cosine logits / ``temperature``;
           optionally the encoder is first meta-trained episodically with :func:`fsl_jax.protonet`
           (``meta_train_steps``, default 0).
anil       ANIL (:func:`fsl_jax.anil`, ``remat=True``) over :class:`~fsl_jax.llm.text_models.BertClassifier`
           (normalised features x ``feature_scale``, zero-initialised head): ``meta_train_steps`` meta-steps on
           text episodes drawn from the support set (or from ``fit(..., meta_texts=, meta_labels=)``, texts of
           other classes), then the head is adapted on the whole support set with the same inner loop
           (``inner_steps`` SGD steps at ``inner_lr``). Kept cheap: few meta-steps, ``meta_batch=2``.
auto       picks one of ``auto_methods`` (default head, finetune, setfit) by stratified ``auto_folds``-fold
           cross-validation on the support set alone, keeping the whole fit within ``time_budget`` seconds by
           projection, and refits the winner on the whole support set (``fit_info_["auto"]`` holds the scores).
========== ==================================================================================================

Compiled functions are cached per configuration, so repeated fits (several random draws) compile once. Embeddings
of the *pretrained* encoder are cached per text in memory (``cache_embeddings``), which makes ``head`` and
``protonet`` cheap to refit on new draws.

Each method lives in its own module of :mod:`fsl_jax.llm.text_methods` (``head``, ``finetune``, ``setfit``,
``episodic`` for ``protonet`` and ``anil``, ``auto``; the shared prediction path in ``common``), which documents it in
full; this module holds the classifier: argument checks, ``fit`` (input checks, augmentation, dispatch), prediction and
persistence.

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

import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import _validate
from fsl_jax.data.text import sort_labels, tokenize
from fsl_jax.llm.text_methods import auto, episodic, head, setfit
from fsl_jax.llm.text_methods import finetune as full_finetune
from fsl_jax.llm.text_methods.common import features

# Kept importable from here (benchmarks and tests use them).
from fsl_jax.llm.text_methods.common import xent as _xent  # noqa: F401
from fsl_jax.llm.text_methods.finetune import finetune_fns as _finetune_fns  # noqa: F401
from fsl_jax.llm.text_methods.setfit import class_index as _class_index  # noqa: F401
from fsl_jax.llm.text_methods.setfit import sample_pairs
from fsl_jax.llm.text_models import Backbone, load_backbone

__all__ = ["METHODS", "FewShotTextClassifier", "sample_pairs"]

METHODS = ("head", "finetune", "setfit", "protonet", "anil", "auto")
SETFIT_LOSSES = setfit.LOSSES
FINETUNE_INITS = ("probe", "random")
_FORMAT = "fsl_jax.FewShotTextClassifier"

# Per-method defaults for the arguments left at None.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "head": head.DEFAULTS,
    "finetune": full_finetune.DEFAULTS,
    "setfit": setfit.DEFAULTS,
    "protonet": episodic.PROTONET_DEFAULTS,
    "anil": episodic.ANIL_DEFAULTS,
    "auto": {},
}

# fit_<method>(clf, texts, y[, meta=(meta_texts, meta_labels)]): sets clf._bert, clf._head and clf.fit_info_.
_FIT: dict[str, Callable[..., None]] = {
    "head": head.fit_head,
    "finetune": full_finetune.fit_finetune,
    "setfit": setfit.fit_setfit,
    "protonet": episodic.fit_protonet,
    "anil": episodic.fit_anil,
    "auto": auto.fit_auto,
}
_META_METHODS = ("protonet", "anil")


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


# ----------------------------------------------------------------------------------------------------------------
# The classifier
# ----------------------------------------------------------------------------------------------------------------


class FewShotTextClassifier:
    """A few-shot text classifier over a BERT backbone (see the module docstring for the six methods).

    Args:
      backbone: a local Hugging Face BERT folder or ``"all-MiniLM-L6-v2"`` (bundled).
      method: ``"head"``, ``"finetune"``, ``"setfit"``, ``"protonet"``, ``"anil"`` or ``"auto"``.
      seed: seed of every random choice (splits, batches, pairs, dropout, augmentation).
      max_length: tokens per text (truncation / padding); fixed so that nothing recompiles.
      steps: optimisation steps of ``finetune`` / ``setfit`` (default: ``finetune`` from ``epochs``; ``setfit`` 40,
        or with ``setfit_sampling="paper"`` one pass over its pairs, which ``steps`` then caps).
      epochs: passes over the support set, an alternative to ``steps`` (``finetune`` default 15).
      learning_rate: peak learning rate of the encoder (``finetune`` 5e-5, ``setfit`` 2e-5; meta-training of
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
      early_stopping: enable ``finetune``'s early stopping (default off: every support text trains; used only when
        every class keeps >= 2 texts for training after holding >= 2 out).
      patience: evaluations without a lower validation loss before stopping (not before half of the steps).
      finetune_init: ``"probe"`` (LP-FT, Kumar et al. 2022: the head starts from the logistic regression on the
        frozen, normalised embeddings of the training part, and that starting point is itself a validation
        candidate) or ``"random"`` (a freshly initialised head on unnormalised mean-pooled features).
      eval_every: steps between validation evaluations (default: one epoch).
      setfit_loss: ``"cosine"`` (CosineSimilarityLoss, MSE between cosine similarity and 1 / 0) or
        ``"contrastive"`` (margin loss on the cosine distance).
      margin: the ``"contrastive"`` margin.
      setfit_sampling: ``"random"`` (``steps`` steps of pairs drawn on the device, default 40) or ``"paper"``
        (SetFit's pair generation: ``num_iterations`` rounds of one positive and one negative pair per support text,
        one epoch).
      num_iterations: ``setfit`` rounds of pair generation (default 20, SetFit's).
      setfit_head: ``"logistic"`` (logistic regression on the tuned embeddings) or ``"end_to_end"`` (that head and
        the encoder then trained together on the cross-entropy for ``setfit_head_epochs`` epochs).
      setfit_head_epochs: epochs of the ``"end_to_end"`` head training.
      train_layers: ``setfit``'s contrastive stage trains only the top ``train_layers`` layers of the encoder (the
        frozen bottom runs once on the support set; ``None``: every layer, as in SetFit).
      layer_decay: ``finetune``'s layer-wise learning-rate decay (default 0.8; 1 = none; layer ``i`` of ``L``
        trains at ``learning_rate * layer_decay ** (L - i)``).
      warmup_fraction: ``finetune``'s share of the steps spent warming the learning rates up from 0.
      wise: ``finetune``'s weight-space average (WiSE-FT): the fitted weights are ``wise * fine-tuned + (1 - wise) *
        start`` (1: the fine-tuned weights; with ``finetune_init="probe"`` the start is the pretrained encoder and
        the probe's head).
      auto_methods: ``auto``'s candidate methods, tried in order (the first is always kept).
      auto_folds: ``auto``'s cross-validation folds on the support set.
      time_budget: seconds ``auto``'s whole ``fit`` should stay within (``None``: no limit).
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
        early_stopping: bool = False,
        patience: int = 5,
        finetune_init: str = "probe",
        eval_every: int | None = None,
        setfit_loss: str = "cosine",
        margin: float = 0.5,
        setfit_sampling: str = "random",
        num_iterations: int = setfit.NUM_ITERATIONS,
        setfit_head: str = "logistic",
        setfit_head_epochs: float = 2.0,
        train_layers: int | None = None,
        layer_decay: float | None = None,
        warmup_fraction: float | None = None,
        wise: float = 1.0,
        auto_methods: Sequence[str] = auto.DEFAULT_METHODS,
        auto_folds: int = 4,
        time_budget: float | None = None,
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
        _validate.choice("method", method, METHODS)
        _validate.choice("setfit_loss", setfit_loss, SETFIT_LOSSES)
        if augment is not None and not callable(augment):
            raise TypeError(
                f"augment must be None or a callable (texts, labels, rng) -> (texts, labels), got "
                f"{type(augment).__name__}"
            )
        if not _validate.is_int(seed):
            raise ValueError(f"seed must be an int, got {seed!r}")
        from fsl_jax.models.hub import resolve_model_folder

        try:
            resolve_model_folder(backbone)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"backbone={str(backbone)!r}: {e}") from None
        self.backbone = str(backbone) if isinstance(backbone, os.PathLike) else backbone
        self.method = method
        self.seed = int(seed)
        self.max_length = _validate.integer("max_length", max_length, minimum=2)
        self.steps = _validate.integer("steps", steps, allow_none=True)
        self.epochs = _validate.number("epochs", epochs, allow_none=True)
        self.learning_rate = _validate.number("learning_rate", learning_rate, allow_none=True)
        self.batch_size = _validate.integer("batch_size", batch_size)
        self.augment = augment
        self.weight_decay = _validate.number("weight_decay", weight_decay, allow_zero=True)
        self.head_learning_rate = _validate.number("head_learning_rate", head_learning_rate, allow_none=True)
        self.head_steps = _validate.integer("head_steps", head_steps)
        self.head_l2 = _validate.number("head_l2", head_l2, allow_zero=True)
        self.validation_fraction = _validate.number("validation_fraction", validation_fraction)
        if self.validation_fraction >= 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
        self.early_stopping = bool(early_stopping)
        self.patience = _validate.integer("patience", patience)
        self.finetune_init = _validate.choice("finetune_init", finetune_init, FINETUNE_INITS)
        self.eval_every = _validate.integer("eval_every", eval_every, allow_none=True)
        self.setfit_loss = setfit_loss
        self.margin = _validate.number("margin", margin)
        self.setfit_sampling = _validate.choice("setfit_sampling", setfit_sampling, setfit.SAMPLINGS)
        self.num_iterations = _validate.integer("num_iterations", num_iterations)
        self.setfit_head = _validate.choice("setfit_head", setfit_head, setfit.HEADS)
        self.setfit_head_epochs = _validate.number("setfit_head_epochs", setfit_head_epochs)
        self.train_layers = _validate.integer("train_layers", train_layers, allow_none=True)
        self.wise = _validate.number("wise", wise, allow_zero=True)
        if self.wise > 1:
            raise ValueError(f"wise must be in [0, 1], got {wise!r}")
        self.layer_decay = _validate.number("layer_decay", layer_decay, allow_none=True)
        if self.layer_decay is not None and self.layer_decay > 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
        self.warmup_fraction = _validate.number("warmup_fraction", warmup_fraction, allow_none=True, allow_zero=True)
        if self.warmup_fraction is not None and self.warmup_fraction >= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
        if isinstance(auto_methods, str) or not all(isinstance(m, str) for m in auto_methods) or not auto_methods:
            raise ValueError(f"auto_methods must be a non-empty sequence of method names, got {auto_methods!r}")
        for m in auto_methods:
            _validate.choice("auto_methods", m, tuple(x for x in METHODS if x != "auto"))
        self.auto_methods = tuple(auto_methods)
        self.auto_folds = _validate.integer("auto_folds", auto_folds, minimum=2)
        self.time_budget = _validate.number("time_budget", time_budget, allow_none=True)
        self.temperature = _validate.number("temperature", temperature)
        self.meta_train_steps = _validate.integer("meta_train_steps", meta_train_steps, allow_none=True, minimum=0)
        self.meta_batch = _validate.integer("meta_batch", meta_batch)
        self.inner_lr = _validate.number("inner_lr", inner_lr)
        self.inner_steps = _validate.integer("inner_steps", inner_steps)
        self.feature_scale = _validate.number("feature_scale", feature_scale)
        self.dropout = bool(dropout)
        self.eval_batch_size = _validate.integer("eval_batch_size", eval_batch_size)
        self.cache_embeddings = bool(cache_embeddings)
        self.progress = bool(progress)
        self._bb: Backbone | None = None
        self._bert: Any = None  # tuned BERT parameters; None = the pretrained ones
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
        type(self).__init__(self, **merged)
        return self

    def __repr__(self) -> str:
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        shown = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v or k == "method"]
        return f"FewShotTextClassifier({', '.join(shown)})"

    def _setting(self, name: str) -> Any:
        """The argument ``name``, or the method's default for it when left at ``None``."""
        value = getattr(self, name)
        if value is None:
            value = _DEFAULTS[self.method].get(name)
        return value

    @property
    def is_fitted(self) -> bool:
        return self._head is not None

    def _check_fitted(self) -> dict[str, Any]:
        """The fitted head; ``RuntimeError`` when not fitted."""
        if self._head is None:
            raise RuntimeError("this FewShotTextClassifier is not fitted yet; call fit(texts, labels) first")
        return self._head

    def _backbone(self) -> Backbone:
        if self._bb is None:
            self._bb = load_backbone(self.backbone)
        return self._bb

    def _ids(self, texts: Sequence[str]) -> np.ndarray:
        return tokenize(texts, self._backbone().tokenizer, self.max_length)[0]

    # ------------------------------------------------------------------ logits

    def _logits(self, texts: list[str]) -> np.ndarray:
        """``[n, classes]`` logits: the (tuned or pretrained) encoder's pooled features through the fitted head."""
        fitted = self._check_fitted()
        normalize = fitted["kind"] != "linear_unnormalized"
        feats = jnp.asarray(features(self, self._bert, texts, normalize=normalize, desc="predict"))
        if fitted["kind"] == "cosine":
            protos = fitted["prototypes"]
            protos = protos / jnp.maximum(jnp.linalg.norm(protos, axis=-1, keepdims=True), 1e-12)
            return np.asarray(feats @ protos.T / fitted["temperature"])
        return np.asarray(feats @ fitted["kernel"] + fitted["bias"])

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
        texts = _validate.texts("texts", texts)
        labels = _validate.labels(texts, labels)
        if self.augment is not None:
            result = self.augment(list(texts), list(labels), np.random.default_rng(self.seed))
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError(f"augment must return a (texts, labels) tuple, got {type(result).__name__}")
            texts = _validate.texts("augment(...) texts", result[0])
            labels = _validate.labels(texts, result[1], "augment(...) texts", "augment(...) labels")
        classes = sort_labels(labels)
        if len(classes) < 2:
            raise ValueError(f"labels has a single class {classes[0]!r}; a classifier needs at least 2 classes")
        if (meta_texts is None) != (meta_labels is None):
            raise ValueError("give both meta_texts and meta_labels, or neither")
        meta = None
        if meta_texts is not None:
            meta_texts = _validate.texts("meta_texts", meta_texts)
            meta_labels = _validate.labels(meta_texts, meta_labels, "meta_texts", "meta_labels")
            meta = (meta_texts, meta_labels)
        position = {c: i for i, c in enumerate(classes)}
        y = np.asarray([position[label] for label in labels], np.int32)
        t0 = time.perf_counter()
        self._bb = load_backbone(self.backbone)
        self.classes_ = classes
        self._bert, self._head = None, None
        self.fit_info_ = {"method": self.method, "support_size": len(texts)}
        fit = _FIT[self.method]
        if meta is not None and self.method not in _META_METHODS:
            raise ValueError(
                f"meta_texts / meta_labels are only used by method 'protonet' or 'anil', not {self.method!r}"
            )
        if meta is not None:
            fit(self, texts, y, meta=meta)
        else:
            fit(self, texts, y)
        self.fit_info_["seconds"] = time.perf_counter() - t0
        return self

    # ------------------------------------------------------------------ predict

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, len(classes_)]`` class probabilities (softmax of the head's logits), columns in ``classes_`` order."""
        self._check_fitted()
        texts = _validate.texts("texts", texts)
        logits = self._logits(texts)
        return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, len(classes_)]`` logits."""
        self._check_fitted()
        return self._logits(_validate.texts("texts", texts))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """The most probable label of each text (an object array of the original label values)."""
        self._check_fitted()
        texts = _validate.texts("texts", texts)
        best = np.argmax(self._logits(texts), axis=-1)
        out = np.empty(len(texts), dtype=object)
        out[:] = [self.classes_[i] for i in best]
        return out

    def score(self, texts: Sequence[str], labels: Sequence[Hashable]) -> float:
        """Accuracy of :meth:`predict` on ``texts`` against ``labels``."""
        texts = _validate.texts("texts", texts)
        labels = _validate.labels(texts, labels)
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

        fitted = self._check_fitted()
        bad = [c for c in self.classes_ if not _jsonable(c)]
        if bad:
            raise TypeError(
                f"classes_ holds labels JSON cannot store ({bad[:3]!r}); use str, int, float or bool labels"
            )
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in self.get_params().items() if k != "augment"}
        settings["backbone"] = str(self.backbone)
        head = {k: np.asarray(v) for k, v in fitted.items() if k not in ("kind", "temperature")}
        info = {k: v for k, v in getattr(self, "fit_info_", {}).items() if _jsonable(v) or isinstance(v, dict)}
        doc = {
            "format": _FORMAT,
            "version": 1,
            "settings": settings,
            "classes": list(self.classes_),
            "head_kind": fitted["kind"],
            "temperature": fitted.get("temperature"),
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
