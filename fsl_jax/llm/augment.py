"""Label-preserving text augmentation for few-shot support sets.

Operations (each ``op(text, rng) -> text`` with a ``numpy.random.Generator``):

* :class:`RandomSwap`, :class:`RandomDeletion`, :class:`RandomInsertion`: EDA (Wei & Zou 2019) on whitespace words;
  insertion draws words from the corpus vocabulary (the texts being augmented, or a given vocabulary).
* :class:`EmbeddingReplacement`: replaces words by one of their cosine-nearest neighbours in a backbone's token
  embedding matrix (GPT-2's ``wte`` or BERT's ``word_embeddings``), among *whole-word* tokens only (no ``##`` pieces,
  for byte-level BPE only space-prefixed ``Ġword`` tokens).
* :class:`Rewrite`: any ``str -> str`` callable, e.g. back-translation or paraphrasing with a local model.

:class:`Augmenter` composes them; ``augmenter(texts, labels, rng) -> (texts, labels)`` is the ``augment=`` hook of
:class:`~fsl_jax.llm.finetune.FewShotTextClassifier` and is deterministic under its seed.

Example:
    >>> aug = Augmenter([RandomSwap(), RandomDeletion(0.2)], n_aug=2, seed=0)
    >>> texts, labels = aug(["the match ended in a draw"], ["sport"])
    >>> texts  # the original, then 2 copies (an op may leave a short text unchanged)
    ['the match ended in a draw', 'the match ended in a draw', 'the match ended draw a in']
    >>> labels
    ['sport', 'sport', 'sport']
"""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from fsl_jax import _validate

__all__ = [
    "Augmenter",
    "EmbeddingReplacement",
    "RandomDeletion",
    "RandomInsertion",
    "RandomSwap",
    "Rewrite",
    "eda",
    "token_embedding_matrix",
]


def _count(alpha: float, n_words: int, minimum: int = 1) -> int:
    return max(minimum, int(math.ceil(alpha * n_words))) if n_words else 0


class RandomSwap:
    """Swaps two random word positions, ``max(1, ceil(alpha * words))`` times.

    Example:
        >>> RandomSwap(0.1)("a b c", np.random.default_rng(0))  # ceil(0.1 * 3) = 1 swap
        'a c b'
    """

    def __init__(self, alpha: float = 0.1):
        self.alpha = _validate.fraction("alpha", alpha)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        if len(words) < 2:
            return text
        for _ in range(_count(self.alpha, len(words))):
            i, j = rng.choice(len(words), 2, replace=False)
            words[i], words[j] = words[j], words[i]
        return " ".join(words)

    def __repr__(self) -> str:
        return f"RandomSwap({self.alpha})"


class RandomDeletion:
    """Deletes each word with probability ``p`` (always keeps at least one word).

    Example:
        >>> RandomDeletion(1.0)("a b c", np.random.default_rng(0))  # every word drawn for deletion: one is kept
        'a'
    """

    def __init__(self, p: float = 0.1):
        self.p = _validate.fraction("p", p)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        if len(words) < 2:
            return text
        keep = rng.random(len(words)) >= self.p
        if not keep.any():
            keep[rng.integers(len(words))] = True
        return " ".join(w for w, k in zip(words, keep) if k)

    def __repr__(self) -> str:
        return f"RandomDeletion({self.p})"


class RandomInsertion:
    """Inserts ``max(1, ceil(alpha * words))`` words drawn from a vocabulary at random positions.

    Args:
      alpha: inserted words per word of the text.
      vocabulary: the words to draw from; ``None`` uses the words of the texts passed to :class:`Augmenter` (the
        corpus), set through :meth:`with_corpus`.
      min_length: only words of at least this many characters are drawn from the corpus.

    Example:
        >>> op = RandomInsertion(0.5, vocabulary=["goal"])
        >>> op("a b", np.random.default_rng(0)).split().count("goal")
        1
    """

    def __init__(self, alpha: float = 0.1, vocabulary: Sequence[str] | None = None, min_length: int = 3):
        self.alpha = _validate.fraction("alpha", alpha)
        self.min_length = int(min_length)
        self.vocabulary = None if vocabulary is None else sorted(set(vocabulary))
        if self.vocabulary is not None and not self.vocabulary:
            raise ValueError("vocabulary is empty")

    def with_corpus(self, texts: Sequence[str]) -> "RandomInsertion":
        """A copy drawing from the words of ``texts`` (when no vocabulary was given)."""
        if self.vocabulary is not None:
            return self
        words = sorted({w for t in texts for w in t.split() if len(w) >= self.min_length and w.isalpha()})
        return RandomInsertion(self.alpha, words or sorted({w for t in texts for w in t.split()}), self.min_length)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        if not self.vocabulary:
            raise ValueError("RandomInsertion has no vocabulary: give vocabulary=... or use it inside an Augmenter")
        words = text.split()
        for _ in range(_count(self.alpha, len(words))):
            words.insert(int(rng.integers(len(words) + 1)), self.vocabulary[int(rng.integers(len(self.vocabulary)))])
        return " ".join(words)

    def __repr__(self) -> str:
        return f"RandomInsertion({self.alpha})"


def token_embedding_matrix(params: Any) -> np.ndarray:
    """The token embedding matrix ``[vocab, dim]`` of GPT-2 (``wte``) or BERT (``embeddings/word_embeddings``)
    variables, as returned by :func:`fsl_jax.models.from_pretrained`."""
    tree = params.get("params", params) if isinstance(params, dict) else params
    for path in (
        ("wte", "embedding"),
        ("embeddings", "word_embeddings", "embedding"),
        ("bert", "embeddings", "word_embeddings", "embedding"),
    ):
        node = tree
        try:
            for k in path:
                node = node[k]
        except (KeyError, TypeError):
            continue
        return np.asarray(node, np.float32)
    raise ValueError(
        "params has no token embedding matrix (expected wte/embedding or embeddings/word_embeddings/embedding)"
    )


class EmbeddingReplacement:
    """Replaces words by cosine-nearest whole-word tokens of a token embedding matrix.

    A word is replaceable when it is itself a whole-word token (looked up as is, lower-cased, and for byte-level BPE
    vocabularies as ``"Ġ" + word``); each replaceable word is replaced with probability ``p`` by one of its
    ``top_k`` nearest whole-word neighbours (case variants of the word itself excluded), drawn uniformly.

    Args:
      embeddings: ``[vocab, dim]`` (e.g. :func:`token_embedding_matrix` of a backbone's params).
      tokenizer: the backbone's tokenizer (its ``get_vocab()`` maps token strings to rows).
      p: replacement probability per replaceable word.
      top_k: neighbours to choose from.
      min_length: shorter words are never replaced (and never proposed).
      stopwords: words never replaced.

    Example:
        >>> import numpy as np, fsl_jax as fj
        >>> module, params, tok = fj.models.from_pretrained("all-MiniLM-L6-v2")
        >>> op = EmbeddingReplacement(token_embedding_matrix(params), tok, p=0.3, top_k=3)
        >>> op.neighbours("football"), op.neighbours("market")
        (['nfl', 'soccer', 'footballers'], ['markets', 'marketplace', 'prices'])
        >>> op("the striker scored a late goal", np.random.default_rng(1))
        'the striker scores a late goal'
    """

    def __init__(
        self,
        embeddings: Any,
        tokenizer: Any,
        p: float = 0.1,
        top_k: int = 5,
        min_length: int = 3,
        stopwords: Sequence[str] = (),
    ):
        self.p = _validate.fraction("p", p)
        self.top_k = _validate.positive_int("top_k", top_k)
        emb = np.asarray(embeddings, np.float32)
        vocab = tokenizer.get_vocab()
        byte_level = any(t.startswith("Ġ") for t in vocab)
        words: dict[str, int] = {}
        for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
            if idx >= emb.shape[0]:
                continue
            if byte_level:
                if not token.startswith("Ġ"):
                    continue
                word = token[1:]
            else:
                if token.startswith("##") or token.startswith("[") or token.startswith("<"):
                    continue
                word = token.lstrip("▁")
            if len(word) >= min_length and word.isalpha():
                words.setdefault(word, idx)
        if len(words) < 2:
            raise ValueError("the tokenizer's vocabulary has fewer than 2 whole-word tokens to replace words with")
        self.words = list(words)
        self._index = {w: i for i, w in enumerate(self.words)}
        rows = emb[[words[w] for w in self.words]]
        self._unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        self.stopwords = {s.lower() for s in stopwords}
        self._neighbours: dict[str, list[str]] = {}

    def neighbours(self, word: str) -> list[str]:
        """The ``top_k`` nearest whole-word tokens of ``word`` (empty when ``word`` is not a whole-word token)."""
        if word in self._neighbours:
            return self._neighbours[word]
        key = word if word in self._index else word.lower() if word.lower() in self._index else None
        result: list[str] = []
        if key is not None and word.lower() not in self.stopwords:
            sims = self._unit @ self._unit[self._index[key]]
            for j in np.argsort(-sims, kind="stable"):
                candidate = self.words[j]
                if candidate.lower() != word.lower():
                    result.append(candidate)
                if len(result) == self.top_k:
                    break
        self._neighbours[word] = result
        return result

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        out = []
        for w in words:
            options = self.neighbours(w)
            if options and rng.random() < self.p:
                w = options[int(rng.integers(len(options)))]
            out.append(w)
        return " ".join(out)

    def __repr__(self) -> str:
        return f"EmbeddingReplacement(p={self.p}, top_k={self.top_k})"


class Rewrite:
    """Applies ``fn(text) -> text`` (back-translation, paraphrasing with a local model, ...), with probability
    ``p``; an empty or non-string result keeps the original text.

    Example:
        >>> Rewrite(str.upper)("goal", np.random.default_rng(0))
        'GOAL'
    """

    def __init__(self, fn: Callable[[str], str], p: float = 1.0):
        if not callable(fn):
            raise TypeError(f"rewrite fn must be callable str -> str, got {type(fn).__name__}")
        self.fn = fn
        self.p = _validate.fraction("p", p)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        if self.p < 1.0 and rng.random() >= self.p:
            return text
        out = self.fn(text)
        return out if isinstance(out, str) and out.strip() else text

    def __repr__(self) -> str:
        return f"Rewrite({getattr(self.fn, '__name__', self.fn)!r}, p={self.p})"


class Augmenter:
    """Adds ``n_aug`` augmented copies of every text (same label).

    Args:
      ops: operations ``op(text, rng) -> text`` (the classes of this module, or any such callable).
      n_aug: augmented copies per text.
      seed: seed used when no ``rng`` is passed to :meth:`__call__`.
      mode: ``"one"`` applies one randomly chosen op per copy (as EDA does), ``"all"`` applies every op in order.
      rewrite_fn: optional ``str -> str`` appended to ``ops`` as :class:`Rewrite`.
      keep_original: return the original texts first.

    Calling it: ``augmenter(texts, labels, rng=None) -> (texts, labels)``. Each text gets its own generator
    spawned from ``rng`` (or from ``seed``), so the output depends only on the seed and the inputs. Copies equal to
    their original are kept (they still add weight, as in EDA).

    Example:
        >>> aug = Augmenter(eda(alpha=0.2), n_aug=3, seed=1)
        >>> t1, _ = aug(["a quiet day in the markets"], ["business"])
        >>> t2, _ = aug(["a quiet day in the markets"], ["business"])
        >>> t1 == t2, len(t1)  # the same seed gives the same copies
        (True, 4)
        >>> t1[1:]
        ['a quiet day in markets', 'a quiet markets the day in the markets', 'a quiet day the markets']
    """

    def __init__(
        self,
        ops: Sequence[Callable[[str, np.random.Generator], str]] = (),
        n_aug: int = 4,
        seed: int = 0,
        mode: str = "one",
        rewrite_fn: Callable[[str], str] | None = None,
        keep_original: bool = True,
    ):
        ops = list(ops)
        if rewrite_fn is not None:
            ops.append(Rewrite(rewrite_fn))
        if not ops:
            raise ValueError("Augmenter needs at least one op (or a rewrite_fn)")
        for op in ops:
            if not callable(op):
                raise TypeError(f"every op must be callable (text, rng) -> text, got {type(op).__name__}")
        n_aug = _validate.integer("n_aug", n_aug, 0)
        _validate.choice("mode", mode, ("one", "all"))
        self.ops, self.n_aug, self.seed, self.mode = ops, n_aug, int(seed), mode
        self.keep_original = bool(keep_original)

    def __call__(
        self, texts: Sequence[str], labels: Sequence[Hashable], rng: np.random.Generator | None = None
    ) -> tuple[list[str], list]:
        texts, labels = list(texts), list(labels)
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        ops = [op.with_corpus(texts) if isinstance(op, RandomInsertion) else op for op in self.ops]
        rng = np.random.default_rng(self.seed) if rng is None else rng
        seeds = rng.integers(0, 2**63 - 1, size=len(texts))
        out_texts = list(texts) if self.keep_original else []
        out_labels = list(labels) if self.keep_original else []
        for text, label, s in zip(texts, labels, seeds):
            r = np.random.default_rng(int(s))
            for _ in range(self.n_aug):
                if self.mode == "one":
                    new = ops[int(r.integers(len(ops)))](text, r)
                else:
                    new = text
                    for op in ops:
                        new = op(new, r)
                out_texts.append(new)
                out_labels.append(label)
        return out_texts, out_labels

    def __repr__(self) -> str:
        return f"Augmenter({self.ops}, n_aug={self.n_aug}, seed={self.seed}, mode={self.mode!r})"


def eda(alpha: float = 0.1, vocabulary: Sequence[str] | None = None) -> list:
    """The three EDA operations with one strength: ``[RandomSwap(alpha), RandomDeletion(alpha),
    RandomInsertion(alpha, vocabulary)]`` (synonym replacement: use :class:`EmbeddingReplacement`)."""
    return [RandomSwap(alpha), RandomDeletion(alpha), RandomInsertion(alpha, vocabulary)]
