"""Few-shot fine-tuning of GPT-2 on a prompt: PET-style label-word loss, or a classification head.

Two objectives over the same prompt (``template.prompt(text)``, left-padded to a fixed length):

* ``"label_words"`` (PET, Schick & Schuetze 2021): the logits of a label are the scores of its verbaliser words as
  the continuation of the prompt (:func:`fsl_jax.llm.prompting.candidate_scores`; for single-token words that is the
  LM's logit of the word at the label position, up to a shared constant); the loss is the cross-entropy over the
  labels. The tuned model still is a language model: :meth:`LMFinetuneClassifier.prompt_classifier` gives a
  :class:`~fsl_jax.llm.prompting.PromptClassifier` with the tuned weights (e.g. to add demonstrations or calibration).
* ``"head"``: the hidden state of the last real token -> ``Dense(num_labels)`` (a new head, its own learning rate).

Both train with one jitted optax step (train state donated). ``train_last_n_blocks=n`` trains only the last ``n``
transformer blocks and the final LayerNorm (and the head); the other parameters get ``stop_gradient`` and
``optax.set_to_zero`` through ``optax.multi_transform``, so they neither move nor hold optimiser state. Dropout is
off during fine-tuning (few-shot runs are short; the step stays deterministic).

Example (``lm, params, tok = fj.models.from_pretrained(gpt2_folder)`` for a real model; here a tiny random GPT-2
over the vocabulary of the bundled all-MiniLM-L6-v2 tokenizer):
    >>> import jax, jax.numpy as jnp, fsl_jax as fj
    >>> _, _, tok = fj.models.from_pretrained("all-MiniLM-L6-v2")
    >>> lm = fj.models.GPT2(fj.models.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=2, n_head=2))
    >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    >>> texts, labels = ["a great film", "a dull plot", "superb acting", "awful pacing"], ["pos", "neg", "pos", "neg"]
    >>> clf = LMFinetuneClassifier(lm, params, tok, "{text} Sentiment: {label}", {"pos": "good", "neg": "bad"},
    ...                            steps=20, learning_rate=1e-2, train_last_n_blocks=1)
    >>> clf = clf.fit(texts, labels)
    >>> len(clf.history_["loss"]), clf.history_["loss"][-1] < clf.history_["loss"][0]
    (20, True)
    >>> clf.predict(texts)  # the support set is learnt
    ['pos', 'neg', 'pos', 'neg']
    >>> frozen = params["params"]["h_0"]["mlp"]["c_fc"]["kernel"]  # block 0 is not among the last 1
    >>> bool(jnp.all(clf.lm_params_["params"]["h_0"]["mlp"]["c_fc"]["kernel"] == frozen))
    True
"""

from __future__ import annotations

import functools
from typing import Any, Hashable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax import _validate
from fsl_jax.llm.prompting import (
    PromptClassifier,
    Template,
    Verbalizer,
    _Candidates,
    _encode,
    _encode_candidates,
    _pad_id,
    candidate_scores,
    label_scores,
    truncate_texts,
)

__all__ = ["LMFinetuneClassifier", "OBJECTIVES", "lm_logits", "make_lm_finetune_step", "trainable_labels"]

Array = Any
OBJECTIVES = ("label_words", "head")


def trainable_labels(lm_params: Any, n_layer: int, train_last_n_blocks: int | None) -> Any:
    """``"train"`` / ``"frozen"`` for every leaf of a GPT-2 parameter tree (``variables["params"]``).

    ``None`` trains everything; ``n`` trains blocks ``h_{n_layer-n} .. h_{n_layer-1}`` and ``ln_f`` (``n=0``:
    nothing).

    Example:
        >>> tree = {"wte": {"embedding": 0}, "h_0": {"w": 0}, "h_1": {"w": 0}, "ln_f": {"scale": 0}}
        >>> trainable_labels(tree, 2, 1)
        {'wte': {'embedding': 'frozen'}, 'h_0': {'w': 'frozen'}, 'h_1': {'w': 'train'}, 'ln_f': {'scale': 'train'}}
    """
    if train_last_n_blocks is None:
        return jax.tree_util.tree_map(lambda _: "train", lm_params)
    first = n_layer - train_last_n_blocks
    trained = {f"h_{i}" for i in range(first, n_layer)} | ({"ln_f"} if train_last_n_blocks > 0 else set())
    return {
        name: jax.tree_util.tree_map(lambda _, t=name in trained: "train" if t else "frozen", sub)
        for name, sub in lm_params.items()
    }


def lm_logits(
    module: Any,
    lm_params: Any,
    head: Any,
    ids: Array,
    mask: Array,
    *,
    objective: str,
    cont_ids: Array | None = None,
    cont_mask: Array | None = None,
    membership: Array | None = None,
    reduce: str = "sum",
) -> Array:
    """``[B, num_labels]`` logits of a batch of prompts under either objective (differentiable).

    Args:
      module: the :class:`~fsl_jax.models.GPT2`.
      lm_params: its parameter tree (``variables["params"]``).
      head: ``{"kernel": [n_embd, L], "bias": [L]}`` for ``objective="head"`` (ignored otherwise).
      ids, mask: ``[B, P]`` left-padded prompts.
      objective: ``"label_words"`` or ``"head"``.
      cont_ids, cont_mask, membership: the verbaliser's encoded words (``"label_words"`` only).
      reduce: ``"sum"`` / ``"mean"`` over a word's tokens.
    """
    variables = {"params": lm_params}
    if objective == "label_words":
        return label_scores(candidate_scores(module, variables, ids, mask, cont_ids, cont_mask, reduce), membership)
    hidden = module.apply(variables, ids, mask).last_hidden_state  # [B, P, D]
    positions = jnp.arange(ids.shape[1])
    last = jnp.argmax(jnp.where(mask.astype(bool), positions, -1), axis=1)  # last real token
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return h @ head["kernel"] + head["bias"]


def make_lm_finetune_step(
    module: Any, optimizer: optax.GradientTransformation, labels_tree: Any, *, objective: str, reduce: str = "sum"
):
    """The jitted fine-tuning step ``step(train, opt_state, ids, mask, y, cont_ids, cont_mask, membership) ->
    (train, opt_state, metrics)`` with ``train = {"lm": params, "head": head}`` and ``train`` / ``opt_state``
    donated. Parameters labelled ``"frozen"`` in ``labels_tree`` (same structure as ``train``) get no gradient.
    """
    _validate.choice("objective", objective, OBJECTIVES)

    def loss_fn(train, ids, mask, y, cont_ids, cont_mask, membership):
        train = jax.tree_util.tree_map(
            lambda p, lab: jax.lax.stop_gradient(p) if lab == "frozen" else p, train, labels_tree
        )
        logits = lm_logits(
            module,
            train["lm"],
            train["head"],
            ids,
            mask,
            objective=objective,
            cont_ids=cont_ids,
            cont_mask=cont_mask,
            membership=membership,
            reduce=reduce,
        )
        logp = jax.nn.log_softmax(logits, axis=-1)
        loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        accuracy = jnp.mean((jnp.argmax(logits, axis=1) == y).astype(jnp.float32))
        return loss, accuracy

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(train, opt_state, ids, mask, y, cont_ids, cont_mask, membership):
        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            train, ids, mask, y, cont_ids, cont_mask, membership
        )
        updates, opt_state = optimizer.update(grads, opt_state, train)
        train = optax.apply_updates(train, updates)
        return train, opt_state, {"loss": loss, "accuracy": accuracy, "grad_norm": optax.global_norm(grads)}

    return step


@functools.lru_cache(maxsize=32)
def _finetune_fns(
    module: Any,
    objective: str,
    reduce: str,
    learning_rate: float,
    head_learning_rate: float,
    weight_decay: float,
    train_last_n_blocks: int | None,
):
    """``(optimizer, step)`` for one configuration, cached so that refitting (new draws) does not recompile."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    head = {} if objective == "label_words" else {"kernel": 0, "bias": 0}
    labels_tree = {
        "lm": trainable_labels(shapes, module.config.n_layer, train_last_n_blocks),
        "head": jax.tree_util.tree_map(lambda _: "head", head),
    }
    decay = lambda tree: jax.tree_util.tree_map(lambda p: p.ndim >= 2, tree)
    optimizer = optax.multi_transform(
        {
            "train": optax.adamw(learning_rate, weight_decay=weight_decay, mask=decay),
            "head": optax.adamw(head_learning_rate, weight_decay=weight_decay, mask=decay),
            "frozen": optax.set_to_zero(),
        },
        labels_tree,
    )
    return optimizer, make_lm_finetune_step(module, optimizer, labels_tree, objective=objective, reduce=reduce)


@functools.partial(jax.jit, static_argnames=("module", "objective", "reduce"))
def _logits(module, train, ids, mask, cont_ids, cont_mask, membership, *, objective, reduce):
    return lm_logits(
        module,
        train["lm"],
        train["head"],
        ids,
        mask,
        objective=objective,
        cont_ids=cont_ids,
        cont_mask=cont_mask,
        membership=membership,
        reduce=reduce,
    )


def _sorted_labels(labels: Sequence[Hashable]) -> tuple:
    distinct = list(dict.fromkeys(labels))
    try:
        return tuple(sorted(distinct))
    except TypeError:
        return tuple(distinct)


class LMFinetuneClassifier:
    """Few-shot fine-tuning of a GPT-2 on a prompt (see the module docstring).

    Args:
      lm_module: a :class:`~fsl_jax.models.GPT2`.
      params: its pretrained variables ``{"params": ...}`` (not modified).
      tokenizer: its tokenizer.
      template: a :class:`~fsl_jax.llm.prompting.Template` or pattern; the text before ``{label}`` is the input.
      verbalizer: label words (required for ``"label_words"``; ``None`` for ``"head"`` takes the labels from
        :meth:`fit`, sorted).
      objective: ``"label_words"`` or ``"head"``.
      train_last_n_blocks: ``None`` for full fine-tuning, else train only the last ``n`` blocks + ``ln_f`` (+ head).
      steps: optimisation steps.
      learning_rate: AdamW learning rate of the language model.
      head_learning_rate: AdamW learning rate of the head.
      batch_size: prompts per step (sampled without replacement, epoch by epoch).
      weight_decay: AdamW weight decay.
      max_length: prompt tokens (fixed; longer prompts keep their last tokens); default: the longest support
        prompt rounded up to a multiple of 16.
      max_text_tokens: cut texts to this many tokens before templating.
      reduce: ``"sum"`` / ``"mean"`` over a label word's tokens.
      seed: seed of the head initialisation and the batch order.

    Attributes (after ``fit``):
      classes_: the labels (column order of :meth:`predict_proba`).
      history_: ``{"loss": [...], "accuracy": [...]}`` per step (training batch).
      lm_params_: the tuned GPT-2 variables ``{"params": ...}``.
    """

    def __init__(
        self,
        lm_module: Any,
        params: Any,
        tokenizer: Any,
        template: Template | str,
        verbalizer: Verbalizer | Mapping | None = None,
        objective: str = "label_words",
        *,
        train_last_n_blocks: int | None = None,
        steps: int = 100,
        learning_rate: float = 1e-4,
        head_learning_rate: float = 1e-3,
        batch_size: int = 8,
        weight_decay: float = 0.0,
        max_length: int | None = None,
        max_text_tokens: int | None = None,
        reduce: str = "sum",
        seed: int = 0,
    ):
        _validate.choice("objective", objective, OBJECTIVES)
        if objective == "label_words" and verbalizer is None:
            raise ValueError("objective='label_words' needs a verbalizer {label: [words]}")
        n_layer = lm_module.config.n_layer
        self.train_last_n_blocks = _validate.integer("train_last_n_blocks", train_last_n_blocks, 0, allow_none=True)
        if self.train_last_n_blocks is not None and self.train_last_n_blocks > n_layer:
            raise ValueError(f"train_last_n_blocks={train_last_n_blocks} exceeds the model's n_layer={n_layer}")
        if objective == "label_words" and self.train_last_n_blocks == 0:
            raise ValueError("train_last_n_blocks=0 leaves nothing to train with objective='label_words'")
        self.lm_module = lm_module
        self.params = params
        self.tokenizer = tokenizer
        self.template = template if isinstance(template, Template) else Template(template)
        self.verbalizer = (
            None
            if verbalizer is None
            else (verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer(verbalizer))
        )
        self.objective = objective
        self.steps = _validate.integer("steps", steps, 1)
        self.learning_rate = _validate.number("learning_rate", learning_rate)
        self.head_learning_rate = _validate.number("head_learning_rate", head_learning_rate)
        self.batch_size = _validate.integer("batch_size", batch_size, 1)
        self.weight_decay = _validate.number("weight_decay", weight_decay, allow_zero=True)
        self.max_length = _validate.integer("max_length", max_length, 1, allow_none=True)
        self.max_text_tokens = _validate.integer("max_text_tokens", max_text_tokens, 1, allow_none=True)
        self.reduce = _validate.choice("reduce", reduce, ("sum", "mean"))
        self.seed = int(seed)
        self._candidates: _Candidates | None
        if self.verbalizer is not None:
            self._candidates = _encode_candidates(tokenizer, self.template, self.verbalizer)
        else:
            self._candidates = None
        self._train: dict[str, Any] | None = None
        self.classes_: tuple = self.verbalizer.labels if self.verbalizer is not None else ()
        self.history_: dict[str, list[float]] = {"loss": [], "accuracy": []}

    # ------------------------------------------------------------------ encoding

    def _cand_arrays(self):
        if self._candidates is None:  # unused by the head objective; fixed dummies keep one signature
            return np.zeros((1, 1), np.int32), np.ones((1, 1), np.int32), np.ones((max(len(self.classes_), 1), 1), bool)
        return self._candidates.ids, self._candidates.mask, self._candidates.membership

    def _prompts(self, texts: list[str]) -> list[list[int]]:
        texts = truncate_texts(self.tokenizer, texts, self.max_text_tokens)
        encoded = _encode(self.tokenizer, [self.template.prompt(t) for t in texts])
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"the prompt of text {i} is empty after tokenisation")
        return encoded

    def _pad(self, encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        length = self.max_length_
        ids = np.full((len(encoded), length), _pad_id(self.tokenizer), np.int32)
        mask = np.zeros((len(encoded), length), np.int32)
        for r, seq in enumerate(encoded):
            seq = seq[-length:]
            ids[r, length - len(seq) :] = seq
            mask[r, length - len(seq) :] = 1
        return ids, mask

    # ------------------------------------------------------------------ training

    def fit(self, texts: Sequence[str], labels: Sequence[Hashable]) -> "LMFinetuneClassifier":
        """Fine-tunes on ``(texts, labels)`` for ``steps`` steps from the pretrained parameters.

        Raises:
          ValueError: lengths differ, a label without label words, or a prompt longer than the context window.
        """
        texts, labels = list(texts), list(labels)
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty sequence of strings")
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
        if self.verbalizer is not None:
            self.verbalizer.check_labels(labels)
            self.classes_ = self.verbalizer.labels
        else:
            self.classes_ = _sorted_labels(labels)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 labels, got {list(self.classes_)}")
        code = {c: i for i, c in enumerate(self.classes_)}
        y = np.asarray([code[label] for label in labels], np.int32)
        encoded = self._prompts(texts)
        cont_ids, cont_mask, membership = self._cand_arrays()
        limit = self.lm_module.config.n_positions - (cont_ids.shape[1] if self.objective == "label_words" else 0)
        longest = max(len(ids) for ids in encoded)
        if self.max_length is not None:
            self.max_length_ = self.max_length
        else:
            self.max_length_ = min(-(-longest // 16) * 16, limit)
        if self.max_length_ > limit:
            raise ValueError(
                f"max_length={self.max_length_} (+ label tokens) exceeds the context window "
                f"n_positions={self.lm_module.config.n_positions}"
            )
        ids, mask = self._pad(encoded)

        key = jax.random.key(self.seed)
        lm = jax.tree_util.tree_map(jnp.array, self.params["params"])  # a copy: the step donates its input
        head = {
            "kernel": 0.02 * jax.random.normal(key, (self.lm_module.config.n_embd, len(self.classes_))),
            "bias": jnp.zeros((len(self.classes_),)),
        }
        if self.objective == "label_words":
            head = {}
        train = {"lm": lm, "head": head}
        optimizer, step = _finetune_fns(
            self.lm_module,
            self.objective,
            self.reduce,
            self.learning_rate,
            self.head_learning_rate,
            self.weight_decay,
            self.train_last_n_blocks,
        )
        opt_state = optimizer.init(train)
        rng = np.random.default_rng(self.seed)
        batch = min(self.batch_size, len(texts))
        order, pos = rng.permutation(len(texts)), 0
        history: dict[str, list[float]] = {"loss": [], "accuracy": []}
        metrics = []
        for _ in range(self.steps):
            if pos + batch > len(order):
                order, pos = rng.permutation(len(texts)), 0
            idx = order[pos : pos + batch]
            pos += batch
            train, opt_state, m = step(train, opt_state, ids[idx], mask[idx], y[idx], cont_ids, cont_mask, membership)
            metrics.append(m)
        for m in jax.device_get(metrics):
            history["loss"].append(float(m["loss"]))
            history["accuracy"].append(float(m["accuracy"]))
        self._train = train
        self.history_ = history
        return self

    # ------------------------------------------------------------------ prediction

    @property
    def lm_params_(self) -> dict:
        train = self._check_fitted()
        return {"params": train["lm"]}

    def _check_fitted(self) -> dict[str, Any]:
        """The tuned parameters ``{"lm": ..., "head": ...}``; ``RuntimeError`` when not fitted."""
        if self._train is None:
            raise RuntimeError("this LMFinetuneClassifier is not fitted: call fit(texts, labels) first")
        return self._train

    def score_labels(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """``[n, labels]`` logits (columns in :attr:`classes_` order), ``batch_size`` prompts per compiled call."""
        self._check_fitted()
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.classes_)), np.float32)
        ids, mask = self._pad(self._prompts(texts))
        rows = -(-len(texts) // batch_size) * batch_size
        ids = np.concatenate([ids, np.repeat(ids[:1], rows - len(texts), 0)])
        mask = np.concatenate([mask, np.repeat(mask[:1], rows - len(texts), 0)])
        cont_ids, cont_mask, membership = self._cand_arrays()
        out = [
            _logits(
                self.lm_module,
                self._train,
                ids[s : s + batch_size],
                mask[s : s + batch_size],
                cont_ids,
                cont_mask,
                membership,
                objective=self.objective,
                reduce=self.reduce,
            )
            for s in range(0, rows, batch_size)
        ]
        return np.asarray(jnp.concatenate(out))[: len(texts)]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, labels]`` softmax of :meth:`score_labels`."""
        return np.asarray(jax.nn.softmax(self.score_labels(texts), axis=-1))

    def predict(self, texts: Sequence[str]) -> list:
        """The most likely label of each text."""
        return [self.classes_[i] for i in np.argmax(self.score_labels(texts), axis=1)]

    def score(self, texts: Sequence[str], labels: Sequence[Hashable]) -> float:
        """Accuracy on ``(texts, labels)``."""
        return float(np.mean([p == y for p, y in zip(self.predict(texts), labels)]))

    def prompt_classifier(self, **kwargs: Any) -> PromptClassifier:
        """A :class:`~fsl_jax.llm.prompting.PromptClassifier` over the tuned weights (``"label_words"`` only);
        ``kwargs`` go to its constructor (``demonstrations``, ``calibrate``, ...)."""
        self._check_fitted()
        if self.verbalizer is None:
            raise ValueError("prompt_classifier needs a verbalizer (objective='label_words')")
        return PromptClassifier(
            self.lm_module,
            self.lm_params_,
            self.tokenizer,
            self.template,
            self.verbalizer,
            reduce=self.reduce,
            max_text_tokens=self.max_text_tokens,
            **kwargs,
        )
