"""Few-shot classification by prompting a GPT-2: templates, label words, in-context demonstrations, calibration.

A :class:`Template` turns a text into a prompt (``"Review: {text}\\nSentiment: {label}"``), a :class:`Verbalizer`
maps each label to one or more label words (``{"pos": ["great", "good"], "neg": ["terrible"]}``), and a
:class:`PromptClassifier` scores every label word as the continuation of the prompt:

* **Scoring.** ``score(label) = logsumexp over its words of  sum_t log p(word_t | prompt, word_<t)`` (or the mean
  over the word's tokens with ``reduce="mean"``). All candidate words of all labels are scored for a batch of
  queries, each with all its demonstration orders, in **one** jitted call: the left-padded prompts run once through
  GPT-2 filling a KV cache, then the (right-padded) label-word continuations are ``vmap``-ed over the candidates
  against that shared cache (no Python loop over labels). Shapes are fixed (prompts padded to a multiple of
  ``length_multiple``, ``batch_size`` queries per call), so scoring new query batches or another verbaliser with the
  same shapes does not recompile.
* **In-context learning.** With ``demonstrations=k``, ``k`` support examples rendered with their label word precede
  the query (``template.separator`` between them). ``selection="random"`` draws them uniformly, ``"balanced"``
  round-robin over classes, ``"nearest"`` takes the ``k`` support texts most similar to each query under a sentence
  embedding ``embed_fn`` (Liu et al. 2021), most similar last. ``orders > 1`` scores that many random orderings of the
  demonstrations in the same call and averages their (calibrated) label log-scores.
* **Contextual calibration** (Zhao et al. 2021). The content-free input (``"N/A"``) is scored with the same
  demonstrations, and the label probabilities are divided by ``p(label | content-free)`` and renormalised:
  ``p_cal = softmax(score - score_cf)``.
* **Prompt search.** :meth:`PromptClassifier.search_prompts` picks the template and verbaliser with the best
  leave-one-out accuracy on the support set (each support text classified with demonstrations from the others).
* :func:`generate_text`: greedy / temperature / top-k generation with stop tokens and stop strings.

The same classifier runs a real GPT-2 folder (``lm, params, tok = fj.models.from_pretrained(folder)``) or a small
random model, as in the examples here (a tiny random GPT-2 over the vocabulary of the bundled all-MiniLM-L6-v2
tokenizer: the calls are those of a real model, the predictions are arbitrary).

Example:
    >>> import jax, jax.numpy as jnp, fsl_jax as fj
    >>> _, _, tok = fj.models.from_pretrained("all-MiniLM-L6-v2")  # a tokenizer that needs no download
    >>> config = fj.models.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2)
    >>> lm = fj.models.GPT2(config)
    >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))  # random weights: arbitrary predictions
    >>> clf = PromptClassifier(lm, params, tok, "Review: {text}\\nSentiment: {label}",
    ...                        {"pos": ["positive"], "neg": ["negative"]}, demonstrations=2,
    ...                        selection="balanced", calibrate=True)
    >>> clf = clf.fit(["a great film", "a dull plot", "superb acting", "awful pacing"], ["pos", "neg", "pos", "neg"])
    >>> print(clf.prompts(["a wonderful film"])[0][0])  # one demonstration per class, then the query
    Review: a dull plot
    Sentiment: negative
    <BLANKLINE>
    Review: a great film
    Sentiment: positive
    <BLANKLINE>
    Review: a wonderful film
    Sentiment:
    >>> clf.predict_proba(["a wonderful film", "a boring film"]).shape, clf.classes_
    ((2, 2), ('pos', 'neg'))
"""

from __future__ import annotations

import collections
import copy
import functools
import string
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import _validate

__all__ = [
    "PromptClassifier",
    "PromptSearchResult",
    "Template",
    "Verbalizer",
    "candidate_scores",
    "generate_text",
    "label_scores",
    "sentence_embed_fn",
    "truncate_texts",
    "SELECTIONS",
    "REDUCTIONS",
]

Array = Any
SELECTIONS = ("random", "balanced", "nearest")
REDUCTIONS = ("sum", "mean")
# Number of times the jitted scorer was traced (tests use it to check that fixed shapes compile once).
TRACE_COUNTS: collections.Counter = collections.Counter()


# ----------------------------------------------------------------------------------------------------------------
# Templates and verbalisers
# ----------------------------------------------------------------------------------------------------------------


class Template:
    """A prompt pattern with named slots: ``{text}`` (required), ``{label}`` (where the label word goes) and any
    other ``{name}`` filled from keyword arguments.

    The query prompt is everything before ``{label}``; whitespace just before ``{label}`` is moved to the front of
    the label word (``"Sentiment: {label}"`` scores ``" positive"`` after ``"...Sentiment:"``, which is how GPT-2's
    BPE tokenises it). Text after ``{label}`` appears in rendered demonstrations but not in the scored query (a causal
    LM cannot look ahead). Without ``{label}`` the label word follows the text after a space.

    Args:
      pattern: the pattern, e.g. ``"Review: {text}\\nSentiment: {label}"`` (``{{`` / ``}}`` for literal braces).
      separator: between demonstrations and before the query.
      instructions: text put before the first demonstration (or the query in zero-shot).
      **fields: values of the other named slots.

    Raises:
      ValueError: no ``{text}`` slot, ``{label}`` twice, a positional ``{}`` or a slot without a value.

    Example:
        >>> t = Template("Review: {text}\\nSentiment: {label}")
        >>> t.prompt("good film")
        'Review: good film\\nSentiment:'
        >>> t.label_continuation("positive")
        ' positive'
        >>> t.render("good film", "positive")
        'Review: good film\\nSentiment: positive'
        >>> Template("{text} ({topic}) is about {label}.", topic="news").render("x", "sport")
        'x (news) is about sport.'
    """

    def __init__(self, pattern: str, *, separator: str = "\n\n", instructions: str = "", **fields: str):
        if not isinstance(pattern, str):
            raise TypeError(f"template pattern must be a str, got {type(pattern).__name__}")
        try:
            parsed = list(string.Formatter().parse(pattern))
        except ValueError as e:
            raise ValueError(f"template {pattern!r} is not a valid format pattern: {e}") from None
        names = [name for _, name, _, _ in parsed if name is not None]
        if "text" not in names:
            raise ValueError(f"template {pattern!r} has no {{text}} slot; put {{text}} where the input text goes")
        if names.count("label") > 1:
            raise ValueError(f"template {pattern!r} has more than one {{label}} slot")
        if "label" in names and names.index("label") < names.index("text"):
            raise ValueError(
                f"template {pattern!r} puts {{label}} before {{text}}: the label is scored as the "
                f"continuation of everything before it, so {{text}} must come first"
            )
        if "" in names or any(name.isdigit() for name in names):
            raise ValueError(f"template {pattern!r} has a positional slot {{}}; use named slots like {{text}}")
        missing = sorted({n for n in names if n not in ("text", "label") and n not in fields})
        if missing:
            raise ValueError(
                f"template {pattern!r} has slots {missing} without values; pass them as keyword "
                f"arguments, e.g. Template(pattern, {missing[0]}='...')"
            )
        for _, name, spec, conversion in parsed:
            if name is not None and (spec or conversion):
                raise ValueError(f"template {pattern!r}: slot {{{name}}} must not have a format spec or conversion")
        self.pattern = pattern
        self.separator = separator
        self.instructions = instructions
        self.fields = dict(fields)
        before: list[tuple[str, str | None]] = []
        after: list[tuple[str, str | None]] = []
        seen = False
        for literal, name, _, _ in parsed:
            (after if seen else before).append(("", literal))
            if name == "label":
                seen = True
            elif name is not None:
                (after if seen else before).append((name, None))
        if not seen:
            before.append(("", ""))
        self._before, self._after, self.has_label_slot = before, after, seen

    def _fill(self, pieces: list, text: str) -> str:
        out = []
        for name, literal in pieces:
            out.append(literal if not name else text if name == "text" else str(self.fields[name]))
        return "".join(out)

    def _split(self, text: str) -> tuple[str, str]:
        head = self._fill(self._before, text)
        stripped = head.rstrip()
        gap = head[len(stripped) :]
        if not self.has_label_slot:
            gap = " "
        return stripped, gap

    def prompt(self, text: str) -> str:
        """The query prompt: the pattern up to ``{label}``, trailing whitespace removed."""
        return self._split(text)[0]

    def label_continuation(self, word: str, text: str = "") -> str:
        """What follows :meth:`prompt`: the whitespace before ``{label}`` and the label word."""
        return self._split(text)[1] + word

    def render(self, text: str, word: str) -> str:
        """A full demonstration: the prompt, the label word and the rest of the pattern."""
        prompt, gap = self._split(text)
        return prompt + gap + word + self._fill(self._after, text)

    def __repr__(self) -> str:
        return f"Template({self.pattern!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Template) and (self.pattern, self.separator, self.instructions, self.fields) == (
            other.pattern,
            other.separator,
            other.instructions,
            other.fields,
        )

    def __hash__(self) -> int:
        return hash((self.pattern, self.separator, self.instructions, tuple(sorted(self.fields.items()))))


class Verbalizer:
    """Label -> label words. A label's score aggregates its words as ``log(sum_w p(w))``; the first word is the one
    written in demonstrations.

    Args:
      mapping: ``{label: word}`` or ``{label: [words]}``; labels keep the mapping's order (the column order of
        :meth:`PromptClassifier.predict_proba`).

    Raises:
      ValueError: an empty mapping, a label without words or an empty word.

    Example:
        >>> v = Verbalizer({"pos": ["great", "good"], "neg": "bad"})
        >>> v.labels, v.words["neg"]
        (('pos', 'neg'), ('bad',))
        >>> Verbalizer.parse("business=business,money;sport=sport").words["business"]
        ('business', 'money')
    """

    words: dict[Hashable, tuple[str, ...]]
    labels: tuple[Hashable, ...]

    def __init__(self, mapping: Mapping[Any, str | Sequence[str]]):
        if isinstance(mapping, Verbalizer):
            mapping = mapping.words
        if not isinstance(mapping, Mapping) or not mapping:
            raise ValueError(f"verbalizer must be a non-empty {{label: [words]}} mapping, got {mapping!r}")
        words: dict[Hashable, tuple[str, ...]] = {}
        for label, value in mapping.items():
            ws = (value,) if isinstance(value, str) else tuple(value)
            if not ws:
                raise ValueError(f"verbalizer label {label!r} has no label words")
            for w in ws:
                if not isinstance(w, str) or not w.strip():
                    raise ValueError(f"verbalizer label {label!r} has an empty or non-string label word {w!r}")
            words[label] = ws
        self.words = words
        self.labels = tuple(words)

    @classmethod
    def parse(cls, spec: str) -> "Verbalizer":
        """Parses ``"label=word,word;label=word"`` (the CLI's ``--label-words``)."""
        mapping: dict[str, list[str]] = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            label, eq, rest = part.partition("=")
            if not eq or not label.strip():
                raise ValueError(f"label words {spec!r}: {part!r} is not of the form label=word,word")
            ws = [w.strip() for w in rest.split(",") if w.strip()]
            if not ws:
                raise ValueError(f"label words {spec!r}: label {label.strip()!r} has no words")
            mapping[label.strip()] = ws
        if not mapping:
            raise ValueError(f"label words {spec!r} define no label")
        return cls(mapping)

    def check_labels(self, labels: Sequence[Hashable]) -> None:
        """Raises ``ValueError`` naming the first label that has no label words."""
        for label in dict.fromkeys(labels):
            if label not in self.words:
                raise ValueError(
                    f"label {label!r} is missing from the verbalizer (labels with words: "
                    f"{list(self.labels)}); add label words for it"
                )

    def __repr__(self) -> str:
        return f"Verbalizer({ {k: list(v) for k, v in self.words.items()} })"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Verbalizer) and self.words == other.words

    def __hash__(self) -> int:
        return hash(tuple(self.words.items()))


# ----------------------------------------------------------------------------------------------------------------
# The compiled scorer
# ----------------------------------------------------------------------------------------------------------------


def candidate_scores(
    module: Any,
    params: Any,
    prompt_ids: Array,
    prompt_mask: Array,
    cont_ids: Array,
    cont_mask: Array,
    reduce: str = "sum",
) -> Array:
    """Log-probabilities of every candidate continuation after every prompt (differentiable, not jitted).

    The prompts run once through ``module`` filling a KV cache of ``P + T`` slots; the continuations are ``vmap``-ed
    over candidates against that cache.

    Args:
      module: a :class:`~fsl_jax.models.GPT2`.
      params: its variables ``{"params": ...}``.
      prompt_ids: ``[B, P]`` left-padded prompts (at least one real token each).
      prompt_mask: ``[B, P]``, 1 at real tokens.
      cont_ids: ``[C, T]`` right-padded continuations (at least one real token each).
      cont_mask: ``[C, T]``, 1 at real tokens.
      reduce: ``"sum"`` of the token log-probabilities or their ``"mean"``.

    Returns:
      ``[B, C]`` float32 scores.
    """
    batch, length = prompt_ids.shape
    _, width = cont_ids.shape
    cache = module.init_cache(batch, length + width)
    out = module.apply(params, prompt_ids, prompt_mask, cache=cache)
    first = jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)  # [B, V]

    def one(ids: Array, mask: Array) -> Array:  # one candidate: [T], [T] -> [B]
        maskf = mask.astype(jnp.float32)
        lp = first[:, ids[0]][:, None]
        if width > 1:
            ids_b = jnp.broadcast_to(ids, (batch, width))
            mask_b = jnp.broadcast_to(mask, (batch, width))
            logits = module.apply(params, ids_b, mask_b, cache=out.cache).logits[:, :-1].astype(jnp.float32)
            rest = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), ids_b[:, 1:, None], axis=-1)[..., 0]
            lp = jnp.concatenate([lp, rest], axis=1)
        total = jnp.sum(lp * maskf[None], axis=1)
        if reduce == "mean":
            total = total / jnp.maximum(jnp.sum(maskf), 1.0)
        return total

    return jax.vmap(one, out_axes=1)(cont_ids, cont_mask)


def label_scores(scores: Array, membership: Array) -> Array:
    """``[B, C]`` candidate scores -> ``[B, L]`` label scores: ``logsumexp`` over each label's words
    (``membership`` ``[L, C]`` bool)."""
    masked = jnp.where(membership[None], scores[:, None, :], -jnp.inf)
    return jax.nn.logsumexp(masked, axis=-1)


@functools.partial(jax.jit, static_argnames=("module", "reduce"))
def _score(module, params, prompt_ids, prompt_mask, cont_ids, cont_mask, membership, *, reduce):
    """``[Q, O, P]`` prompts (queries x demonstration orders) -> ``[Q, O, L]`` label scores, in one compiled call."""
    TRACE_COUNTS["score"] += 1
    queries, orders, length = prompt_ids.shape
    flat = candidate_scores(
        module, params, prompt_ids.reshape(-1, length), prompt_mask.reshape(-1, length), cont_ids, cont_mask, reduce
    )
    return label_scores(flat, membership).reshape(queries, orders, -1)


class _Candidates(NamedTuple):
    ids: np.ndarray  # [C, T]
    mask: np.ndarray  # [C, T]
    membership: np.ndarray  # [L, C]


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _encode_candidates(tokenizer: Any, template: Template, verbalizer: Verbalizer) -> _Candidates:
    words = [(i, w) for i, label in enumerate(verbalizer.labels) for w in verbalizer.words[label]]
    encoded = _encode(tokenizer, [template.label_continuation(w) for _, w in words])
    unk = getattr(tokenizer, "unk_token_id", None)
    for (i, w), tokens in zip(words, encoded):
        if not tokens:
            raise ValueError(f"label word {w!r} (label {verbalizer.labels[i]!r}) tokenises to nothing")
        if unk is not None and unk in tokens:
            raise ValueError(
                f"label word {w!r} (label {verbalizer.labels[i]!r}) is not in the tokenizer's vocabulary "
                f"(it tokenises to the unknown token {getattr(tokenizer, 'unk_token', unk)!r})"
            )
    width = max(len(ids) for ids in encoded)
    ids = np.zeros((len(words), width), np.int32)
    mask = np.zeros((len(words), width), np.int32)
    membership = np.zeros((len(verbalizer.labels), len(words)), bool)
    for c, ((i, _), seq) in enumerate(zip(words, encoded)):
        ids[c, : len(seq)] = seq
        mask[c, : len(seq)] = 1
        membership[i, c] = True
    return _Candidates(ids, mask, membership)


def truncate_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int | None) -> list[str]:
    """Cuts each text after its first ``max_tokens`` tokens (at the token's character offset; ``None``: unchanged).

    Example:
        >>> import fsl_jax as fj
        >>> _, _, tok = fj.models.from_pretrained("all-MiniLM-L6-v2")
        >>> truncate_texts(tok, ["one two three", "four"], 2)
        ['one two', 'four']
    """
    texts = list(texts)
    if max_tokens is None or not texts:
        return texts
    try:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [
            t if len(offsets) <= max_tokens else t[: offsets[max_tokens - 1][1]]
            for t, offsets in zip(texts, enc["offset_mapping"])
        ]
    except (NotImplementedError, KeyError, TypeError):  # slow tokenizers: cut at words
        return [" ".join(t.split()[:max_tokens]) for t in texts]


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x, axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


# ----------------------------------------------------------------------------------------------------------------
# The classifier
# ----------------------------------------------------------------------------------------------------------------


class PromptSearchResult(NamedTuple):
    """What :meth:`PromptClassifier.search_prompts` found.

    Attributes:
      template: the best :class:`Template`.
      verbalizer: the best :class:`Verbalizer`.
      accuracy: its leave-one-out accuracy on the support set.
      table: ``(template, verbalizer, accuracy)`` for every candidate pair, in the order tried.
    """

    template: Template
    verbalizer: Verbalizer
    accuracy: float
    table: list


class PromptClassifier:
    """Zero- / few-shot text classification by scoring label words after a prompt (see the module docstring).

    Args:
      lm_module: a :class:`~fsl_jax.models.GPT2`.
      params: its variables ``{"params": ...}``.
      tokenizer: a transformers tokenizer (``fj.models.from_pretrained`` returns one).
      template: a :class:`Template` or its pattern.
      verbalizer: a :class:`Verbalizer` or its ``{label: [words]}`` mapping.
      demonstrations: labelled support examples shown before each query (0 = zero-shot).
      selection: ``"random"``, ``"balanced"`` (round-robin over classes) or ``"nearest"`` (needs ``embed_fn``).
      orders: demonstration orderings scored and averaged (all in the same compiled calls).
      calibrate: contextual calibration against ``content_free``.
      reduce: a word's score is the ``"sum"`` or the ``"mean"`` of its tokens' log-probabilities.
      embed_fn: ``texts -> [n, d]`` sentence embeddings for ``selection="nearest"`` (cosine similarity).
      content_free: the content-free input of the calibration.
      max_text_tokens: cut every text (demonstrations and queries) to this many tokens before templating.
      batch_size: queries per compiled call, each with its ``orders`` prompts (fixed, so no recompilation across
        batches).
      length_multiple: prompts are left-padded to a multiple of this (bounds the number of compiled shapes).
      seed: seed of the demonstration draws and orders (the same every call: predictions are deterministic).

    Attributes:
      classes_: the verbaliser's labels: column ``i`` of :meth:`predict_proba` / :meth:`score_labels`.

    Raises:
      ValueError: a bad option, a template without ``{text}``, a label word that is not in the vocabulary.

    Example:
        >>> import jax, jax.numpy as jnp, fsl_jax as fj
        >>> _, _, tok = fj.models.from_pretrained("all-MiniLM-L6-v2")  # a tokenizer that needs no download
        >>> config = fj.models.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2)
        >>> lm = fj.models.GPT2(config)
        >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))  # random weights: arbitrary predictions
        >>> clf = PromptClassifier(lm, params, tok, "{text} It was {label}.",
        ...                        {"pos": "great", "neg": "terrible"}, calibrate=True)
        >>> clf.prompts(["I loved it"])  # zero-shot: no fit needed; each label word is scored after this prompt
        [['I loved it It was']]
        >>> probs = clf.predict_proba(["I loved it", "I hated it"])
        >>> probs.shape, probs.sum(axis=1).round(4).tolist()
        ((2, 2), [1.0, 1.0])
        >>> clf.predict(["I loved it"])[0] in clf.classes_
        True
    """

    def __init__(
        self,
        lm_module: Any,
        params: Any,
        tokenizer: Any,
        template: Template | str,
        verbalizer: Verbalizer | Mapping,
        demonstrations: int = 0,
        selection: str = "random",
        orders: int = 1,
        calibrate: bool = False,
        reduce: str = "sum",
        *,
        embed_fn: Callable[[list[str]], Any] | None = None,
        content_free: str = "N/A",
        max_text_tokens: int | None = None,
        batch_size: int = 8,
        length_multiple: int = 16,
        seed: int = 0,
    ):
        if not hasattr(lm_module, "init_cache") or not hasattr(lm_module, "config"):
            raise TypeError(f"lm_module must be an fsl_jax GPT2, got {type(lm_module).__name__}")
        _validate.choice("selection", selection, SELECTIONS)
        _validate.choice("reduce", reduce, REDUCTIONS)
        if selection == "nearest" and demonstrations and embed_fn is None:
            raise ValueError(
                "selection='nearest' needs embed_fn (texts -> [n, d] sentence embeddings), e.g. "
                "MiniLM through fj.models.sentence_embedding"
            )
        if embed_fn is not None and not callable(embed_fn):
            raise TypeError(f"embed_fn must be callable texts -> [n, d], got {type(embed_fn).__name__}")
        self.lm_module = lm_module
        self.params = params
        self.tokenizer = tokenizer
        self.template = template if isinstance(template, Template) else Template(template)
        self.verbalizer = verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer(verbalizer)
        self.demonstrations = _validate.integer("demonstrations", demonstrations, 0)
        self.selection = selection
        self.orders = _validate.integer("orders", orders, 1)
        self.calibrate = bool(calibrate)
        self.reduce = reduce
        self.embed_fn = embed_fn
        self.content_free = str(content_free)
        self.max_text_tokens = _validate.integer("max_text_tokens", max_text_tokens, 1, allow_none=True)
        self.batch_size = _validate.integer("batch_size", batch_size, 1)
        self.length_multiple = _validate.integer("length_multiple", length_multiple, 1)
        self.seed = int(seed)
        self._candidates = _encode_candidates(tokenizer, self.template, self.verbalizer)
        self.pool_texts_: list[str] = []
        self.pool_labels_: list = []
        self._pool_embeddings: np.ndarray | None = None

    @property
    def classes_(self) -> tuple:
        return self.verbalizer.labels

    # ------------------------------------------------------------------ fitting

    def fit(self, texts: Sequence[str], labels: Sequence[Hashable]) -> "PromptClassifier":
        """Stores the demonstration pool (nothing is trained); embeds it for ``selection="nearest"``.

        Raises:
          ValueError: lengths differ, a label is missing from the verbaliser, or fewer texts than
            ``demonstrations`` (``"random"`` / ``"balanced"`` draw without replacement).
        """
        texts = _validate.texts("texts", texts, allow_empty=True)
        labels = list(labels)
        if len(labels) != len(texts):
            raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
        self.verbalizer.check_labels(labels)
        if self.demonstrations > len(texts):
            raise ValueError(f"demonstrations={self.demonstrations} is more than the {len(texts)} texts given to fit")
        self.pool_texts_ = self._truncate(texts)
        self.pool_labels_ = labels
        self._pool_embeddings = None
        if self.selection == "nearest" and self.demonstrations:
            self._pool_embeddings = self._embed(self.pool_texts_)
        return self

    def _truncate(self, texts: list[str]) -> list[str]:
        return truncate_texts(self.tokenizer, texts, self.max_text_tokens)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.embed_fn is None:
            raise ValueError(
                "selection='nearest' needs embed_fn (texts -> [n, d] sentence embeddings), e.g. "
                "MiniLM through fj.models.sentence_embedding"
            )
        emb = np.asarray(self.embed_fn(list(texts)), np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"embed_fn must return [n, d] for n={len(texts)} texts, got shape {emb.shape}")
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    # ------------------------------------------------------------------ demonstrations

    def _select(self, query_texts: list[str], exclude: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """Pool indices ``[n, orders, k]`` of each query's demonstrations, and whether all rows share them."""
        n, k = len(query_texts), self.demonstrations
        if k == 0:
            return np.zeros((n, self.orders, 0), np.int64), True
        if not self.pool_texts_:
            raise ValueError(f"demonstrations={k} needs a demonstration pool: call fit(texts, labels) first")
        pool = len(self.pool_texts_)
        if exclude is not None and pool - 1 < k:
            raise ValueError(f"leave-one-out needs more than demonstrations={k} support texts, got {pool}")
        rng = np.random.default_rng(self.seed)
        if self.selection == "nearest":
            if self._pool_embeddings is None:
                raise ValueError(
                    "selection='nearest' needs the demonstration pool's embeddings: call fit(texts, labels) with "
                    "selection='nearest' and demonstrations > 0"
                )
            sims = self._embed(query_texts) @ self._pool_embeddings.T  # [n, pool]
            if exclude is not None:
                sims[np.arange(n), exclude] = -np.inf
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k][:, ::-1]  # most similar last
            base = [top[i] for i in range(n)]
            shared = False
        else:
            if self.selection == "random":
                order = rng.permutation(pool)
            else:
                codes = {label: i for i, label in enumerate(dict.fromkeys(self.pool_labels_))}
                per_class = [
                    list(rng.permutation(np.flatnonzero(np.asarray([codes[y] for y in self.pool_labels_]) == c)))
                    for c in range(len(codes))
                ]
                class_order = rng.permutation(len(per_class))
                picked = []
                while any(per_class):
                    for c in class_order:
                        if per_class[c]:
                            picked.append(per_class[c].pop(0))
                order = np.asarray(picked)
            if exclude is None:
                base = [rng.permutation(order[:k])] * n
                shared = True
            else:
                head = order[: k + 1]
                base = [rng.permutation(head[head != exclude[i]][:k]) for i in range(n)]
                shared = False
        out = np.empty((n, self.orders, k), np.int64)
        perms = [np.arange(k)] + [rng.permutation(k) for _ in range(self.orders - 1)]
        for o, perm in enumerate(perms):
            for i in range(n):
                out[i, o] = base[i][perm]
        return out, shared

    def _context(self, demos: np.ndarray, text: str) -> str:
        t = self.template
        parts = [t.render(self.pool_texts_[j], self.verbalizer.words[self.pool_labels_[j]][0]) for j in demos]
        parts.append(t.prompt(text))
        return t.instructions + t.separator.join(parts)

    # ------------------------------------------------------------------ scoring

    def _score_prompts(self, prompts: list[str]) -> np.ndarray:
        """``[len(prompts) / orders, orders, L]`` label log-scores of query-major prompts (``orders`` consecutive
        prompts per query), ``batch_size`` queries with all their orders per compiled call."""
        encoded = _encode(self.tokenizer, prompts)
        width = self._candidates.ids.shape[1]
        limit = self.lm_module.config.n_positions
        for i, tokens in enumerate(encoded):
            if not tokens:
                raise ValueError(
                    f"prompt {i} is empty after tokenisation ({prompts[i]!r}); the template must render "
                    "some text before the label"
                )
            if len(tokens) + width > limit:
                raise ValueError(
                    f"prompt {i} is {len(tokens)} tokens + {width} label tokens = {len(tokens) + width}, longer than "
                    f"the context window n_positions={limit}; use fewer demonstrations or set max_text_tokens"
                )
        longest = max(len(ids) for ids in encoded)
        length = min(-(-longest // self.length_multiple) * self.length_multiple, limit - width)
        queries = len(encoded) // self.orders
        padded = -(-queries // self.batch_size) * self.batch_size
        ids = np.full((padded, self.orders, length), _pad_id(self.tokenizer), np.int32)
        mask = np.zeros((padded, self.orders, length), np.int32)
        for q in range(padded):
            for o in range(self.orders):
                seq = encoded[(q if q < queries else 0) * self.orders + o]  # pad with copies of the first query
                ids[q, o, length - len(seq) :] = seq
                mask[q, o, length - len(seq) :] = 1
        cand = self._candidates
        out = []
        for start in range(0, padded, self.batch_size):
            sl = slice(start, start + self.batch_size)
            out.append(
                _score(
                    self.lm_module,
                    self.params,
                    ids[sl],
                    mask[sl],
                    cand.ids,
                    cand.mask,
                    cand.membership,
                    reduce=self.reduce,
                )
            )
        return np.asarray(jnp.concatenate(out))[:queries]

    def _scores(self, texts: list[str], exclude: np.ndarray | None = None) -> np.ndarray:
        texts = self._truncate(texts)
        n = len(texts)
        demos, shared = self._select(texts, exclude)
        prompts = [self._context(demos[i, o], texts[i]) for i in range(n) for o in range(self.orders)]
        cf_rows = 0
        if self.calibrate:
            cf_rows = 1 if shared else n
            prompts += [
                self._context(demos[i, o], self.content_free) for i in range(cf_rows) for o in range(self.orders)
            ]
        scores = self._score_prompts(prompts)  # [n + cf_rows, orders, labels]
        s = scores[:n]
        if self.calibrate:
            cf = scores[n:]
            s = _log_softmax(s - cf)  # = log(p / p_cf, renormalised)
        return s.mean(axis=1)

    def prompts(self, texts: Sequence[str]) -> list[list[str]]:
        """The prompt strings that are scored for each text: ``[n][orders]`` (demonstrations + query prompt; the
        label words follow them)."""
        texts = self._truncate(_validate.texts("texts", texts, allow_empty=True))
        demos, _ = self._select(texts, None)
        return [[self._context(demos[i, o], texts[i]) for o in range(self.orders)] for i in range(len(texts))]

    def score_labels(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, labels]`` label log-scores (columns in :attr:`classes_` order).

        With ``orders=1`` and no calibration: ``log sum_w p(w | prompt)`` over each label's words (a word's
        probability being the product of its tokens', or their geometric mean with ``reduce="mean"``). With
        calibration: ``log softmax(score - score_content_free)``. With several orders: the mean over orders.
        """
        texts = _validate.texts("texts", texts, allow_empty=True)
        if not texts:
            return np.zeros((0, len(self.classes_)), np.float32)
        return self._scores(texts)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, labels]`` probabilities: the softmax of :meth:`score_labels` over the labels."""
        return _softmax(self.score_labels(texts))

    def predict(self, texts: Sequence[str]) -> list:
        """The most likely label of each text."""
        return [self.classes_[i] for i in np.argmax(self.score_labels(texts), axis=1)]

    def score(self, texts: Sequence[str], labels: Sequence[Hashable]) -> float:
        """Accuracy on ``(texts, labels)``."""
        predictions = self.predict(texts)
        return float(np.mean([p == y for p, y in zip(predictions, labels)]))

    # ------------------------------------------------------------------ prompt search

    def search_prompts(
        self,
        candidate_templates: Sequence[Template | str],
        candidate_verbalizers: Sequence[Verbalizer | Mapping],
        texts: Sequence[str],
        labels: Sequence[Hashable],
    ) -> PromptSearchResult:
        """Picks the template x verbaliser pair with the best leave-one-out accuracy on ``(texts, labels)`` and
        keeps it (``self`` is refitted on ``(texts, labels)``).

        Each support text is classified with demonstrations drawn from the *other* support texts (zero-shot when
        ``demonstrations=0``). Ties keep the earlier candidate.

        Example:
            >>> import jax, jax.numpy as jnp, fsl_jax as fj
            >>> _, _, tok = fj.models.from_pretrained("all-MiniLM-L6-v2")  # a tokenizer that needs no download
            >>> config = fj.models.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2)
            >>> lm = fj.models.GPT2(config)
            >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))  # random weights
            >>> clf = PromptClassifier(lm, params, tok, "{text} Topic: {label}", {"a": "sport", "b": "money"})
            >>> texts = ["a late goal", "the match was won", "shares fell", "rates rose"]
            >>> labels = ["a", "a", "b", "b"]
            >>> result = clf.search_prompts(["{text} Topic: {label}", "{text}\\nThis is about {label}"],
            ...                             [{"a": "sport", "b": "money"}, {"a": "game", "b": "market"}],
            ...                             texts, labels)
            >>> len(result.table), 0.0 <= result.accuracy <= 1.0  # 2 templates x 2 verbalisers tried
            (4, True)
            >>> clf.template == result.template, clf.verbalizer == result.verbalizer  # the best pair is kept
            (True, True)
        """
        texts = _validate.texts("texts", texts, allow_empty=True)
        labels = list(labels)
        if not candidate_templates or not candidate_verbalizers:
            raise ValueError("search_prompts needs at least one candidate template and one verbalizer")
        table: list[tuple[Template, Verbalizer, float]] = []
        best: tuple[Template, Verbalizer, float] | None = None
        for t in candidate_templates:
            for v in candidate_verbalizers:
                trial = copy.copy(self)
                trial.template = t if isinstance(t, Template) else Template(t)
                trial.verbalizer = v if isinstance(v, Verbalizer) else Verbalizer(v)
                trial._candidates = _encode_candidates(self.tokenizer, trial.template, trial.verbalizer)
                trial.fit(texts, labels)
                scores = trial._scores(trial.pool_texts_, exclude=np.arange(len(texts)))
                predicted = [trial.classes_[i] for i in np.argmax(scores, axis=1)]
                accuracy = float(np.mean([p == y for p, y in zip(predicted, labels)]))
                table.append((trial.template, trial.verbalizer, accuracy))
                if best is None or accuracy > best[2]:
                    best = table[-1]
        if best is None:  # not reached: both candidate lists were checked to be non-empty
            raise ValueError("search_prompts needs at least one candidate template and one verbalizer")
        self.template, self.verbalizer = best[0], best[1]
        self._candidates = _encode_candidates(self.tokenizer, self.template, self.verbalizer)
        self.fit(texts, labels)
        return PromptSearchResult(best[0], best[1], best[2], table)


def sentence_embed_fn(
    path_or_name: str = "all-MiniLM-L6-v2", max_length: int = 128, batch_size: int = 32
) -> Callable[[list[str]], np.ndarray]:
    """An ``embed_fn`` for ``selection="nearest"``: sentence embeddings of a BERT folder (default the bundled
    all-MiniLM-L6-v2) through :func:`fsl_jax.models.sentence_embedding`, ``batch_size`` texts per compiled call.

    Example:
        >>> embed = sentence_embed_fn(max_length=16, batch_size=4)
        >>> emb = embed(["a cat", "a kitten", "stock prices fell"])
        >>> emb.shape, [round(float(s), 2) for s in emb @ emb[0]]  # unit vectors: cosine similarities to "a cat"
        ((3, 384), [1.0, 0.77, 0.08])
    """
    from fsl_jax.models.bert import sentence_embedding
    from fsl_jax.models.hub import from_pretrained

    module, params, tokenizer = from_pretrained(path_or_name)
    if tokenizer is None:
        raise ValueError(f"{path_or_name!r} has no tokenizer files")
    apply = jax.jit(lambda p, ids, mask: sentence_embedding(module, p, ids, mask))

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            chunk += [""] * (batch_size - len(chunk))
            enc = tokenizer(chunk, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
            out.append(np.asarray(apply(params, enc["input_ids"], enc["attention_mask"])))
        return np.concatenate(out)[: len(texts)] if out else np.zeros((0, module.config.hidden_size), np.float32)

    return embed


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def generate_text(
    lm_module: Any,
    params: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 20,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop: Sequence[str | int] = (),
    stop_at_eos: bool = True,
    key: Array | None = None,
    length_multiple: int = 16,
) -> list[str]:
    """Continues each prompt with :func:`fsl_jax.models.generate` and returns the new text only.

    Args:
      lm_module, params, tokenizer: the GPT-2 and its tokenizer.
      prompts: the prompts (left-padded together to a multiple of ``length_multiple`` tokens).
      max_new_tokens: tokens to generate.
      temperature: 0 for greedy decoding, else sampling (needs ``key``).
      top_k: sample among the ``top_k`` most likely tokens.
      stop: stop strings (the text is cut before the first one) and/or stop token ids (cut before the first).
      stop_at_eos: stop at the tokenizer's end-of-sequence token.
      key: PRNG key for sampling.

    Returns:
      The generated continuation of each prompt.

    Example:
        >>> import jax, jax.numpy as jnp, fsl_jax as fj
        >>> _, _, tok = fj.models.from_pretrained("all-MiniLM-L6-v2")  # a tokenizer that needs no download
        >>> config = fj.models.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2)
        >>> lm = fj.models.GPT2(config)
        >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))  # random weights: arbitrary predictions
        >>> generate_text(lm, params, tok, ["Q: 2+2?\\nA:"], 5)  # greedy: 5 tokens of a random model
        ['keane gliding gliding gliding gliding']
        >>> generate_text(lm, params, tok, ["Q: 2+2?\\nA:"], 5, stop=["gliding"])  # cut before the first stop string
        ['keane ']
    """
    from fsl_jax.models.gpt2 import generate

    prompts = list(prompts)
    if not prompts:
        return []
    encoded = _encode(tokenizer, prompts)
    for i, tokens in enumerate(encoded):
        if not tokens:
            raise ValueError(f"prompts[{i}] is empty after tokenisation")
    limit = lm_module.config.n_positions
    longest = max(len(ids) for ids in encoded)
    length = max(longest, min(-(-longest // length_multiple) * length_multiple, limit - max_new_tokens))
    if length + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the context window "
            f"n_positions={limit}"
        )
    ids = np.full((len(encoded), length), _pad_id(tokenizer), np.int32)
    mask = np.zeros_like(ids)
    for r, seq in enumerate(encoded):
        ids[r, length - len(seq) :] = seq
        mask[r, length - len(seq) :] = 1
    eos = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None
    out = np.asarray(
        generate(
            lm_module,
            params,
            ids,
            mask,
            max_new_tokens,
            key=key,
            temperature=temperature,
            top_k=top_k,
            eos_token_id=eos,
        )
    )[:, length:]
    stop_ids = {int(s) for s in stop if isinstance(s, (int, np.integer))} | ({eos} if eos is not None else set())
    stop_strings = [s for s in stop if isinstance(s, str) and s]
    texts = []
    for row in out:
        row = list(row)
        cut = next((j for j, t in enumerate(row) if t in stop_ids), len(row))
        text = tokenizer.decode(row[:cut])
        for s in stop_strings:
            pos = text.find(s)
            if pos >= 0:
                text = text[:pos]
        texts.append(text)
    return texts
