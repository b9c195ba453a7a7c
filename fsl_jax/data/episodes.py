"""Episode shapes: fixed N-way K-shot, or Meta-Dataset's variable-way, variable-shot episodes padded to static shapes.

An :class:`EpisodeSpec` says how many classes, support and query examples an episode has. Fixed ``ways`` / ``shots`` /
``queries`` give ordinary episodes. Otherwise the sizes follow the rules of Meta-Dataset (Triantafillou et al., 2020,
its ``data/sampling.py``), drawn for each episode from its own random generator:

* ways uniform in ``[min_ways, min(max_ways, classes)]``;
* one query count for every class: ``min(max_query, floor(min images per chosen class / 2))``;
* a support size ``min(max_support, sum_c floor(beta * min(max_support_per_class, remaining_c) + 1))`` with
  ``beta ~ U(0, 1)`` and ``remaining_c`` the images of class ``c`` left after its queries;
* per-class support shares proportional to ``class size * exp(U(log 0.5, log 2))``, one example per class at least,
  at most ``remaining_c``.

Variable episodes are padded to the spec's static maximum shapes (``support_mask``, ``query_mask`` and ``way_mask``
mark what is real), so one compilation serves every episode; every learner gives a padded episode the loss and
meta-gradient of the same episode unpadded. Batch statistics are the exception: ``Conv4(norm="batch")`` would
include padded rows in its statistics, so use ``norm="layer"`` or ``"none"`` with variable episodes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Sequence, overload

import numpy as np

META_DATASET = "meta-dataset"


@overload
def _positive(name: str, value: Any, allow_none: Literal[False] = False) -> int: ...
@overload
def _positive(name: str, value: Any, allow_none: bool) -> int | None: ...
def _positive(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """How many classes, support and query examples an episode has.

    Attributes:
      min_ways, max_ways: the range of ways (equal for a fixed number of ways).
      shots: support examples per class, or ``None`` for Meta-Dataset's support rule.
      queries: query examples per class, or ``None`` for Meta-Dataset's query rule.
      max_support: cap on the support set size (Meta-Dataset: 500).
      max_support_per_class: cap on one class's contribution to the support size (Meta-Dataset: 100).
      max_query: cap on the query examples per class (Meta-Dataset: 10).

    Example:
      >>> from fsl_jax.data.episodes import EpisodeSpec
      >>> EpisodeSpec.create(5, 1, 15).fixed, EpisodeSpec.create("meta-dataset").max_ways
      (True, 50)
    """

    min_ways: int
    max_ways: int
    shots: int | None
    queries: int | None
    max_support: int = 500
    max_support_per_class: int = 100
    max_query: int = 10

    @classmethod
    def create(cls, ways: Any, shots: Any = None, queries: Any = None, **caps: Any) -> "EpisodeSpec":
        """``ways``: an int, a ``(min, max)`` pair or ``"meta-dataset"`` (5..50); ``shots`` / ``queries``: an int or
        ``None`` (Meta-Dataset's rules); ``caps``: ``max_support``, ``max_support_per_class``, ``max_query``."""
        if isinstance(ways, str):
            if ways != META_DATASET:
                raise ValueError(f"ways must be an int, a (min, max) pair or {META_DATASET!r}, got {ways!r}")
            low, high = 5, 50
        elif isinstance(ways, (tuple, list)):
            if len(ways) != 2:
                raise ValueError(f"ways as a range must be a (min, max) pair, got {ways!r}")
            low, high = (_positive("ways", w) for w in ways)
            if low > high:
                raise ValueError(f"ways=(min, max) needs min <= max, got {tuple(ways)!r}")
        else:
            low = high = _positive("ways", ways)
        for name in caps:
            if name not in ("max_support", "max_support_per_class", "max_query"):
                raise TypeError(f"unknown episode cap {name!r} (max_support, max_support_per_class, max_query)")
            _positive(name, caps[name])
        spec = cls(low, high, _positive("shots", shots, True), _positive("queries", queries, True), **caps)
        if spec.shots is None and spec.max_support < spec.max_ways:
            raise ValueError(
                f"max_support={spec.max_support} leaves no support example for each of up to {spec.max_ways} ways"
            )
        return spec

    @property
    def fixed(self) -> bool:
        """Whether every episode has the same shape (no padding needed)."""
        return self.min_ways == self.max_ways and self.shots is not None and self.queries is not None

    def min_examples(self) -> int:
        """The fewest images a class needs to take part in an episode."""
        if self.queries is not None:
            return (self.shots or 1) + self.queries
        # Meta-Dataset's query rule takes floor(n / 2) of the smallest class and leaves ceil(n / 2) for support
        return max(2, 2 * (self.shots or 1))

    def padded_shapes(self, num_classes: int, max_count: int) -> tuple[int, int, int]:
        """Static ``(ways, support rows, query rows)`` for a source with ``num_classes`` classes and at most
        ``max_count`` images in one class."""
        ways = min(self.max_ways, num_classes)
        if self.queries is not None:
            per_query = self.queries
        else:
            per_query = min(self.max_query, max_count // 2)
        if self.shots is not None:
            support = ways * self.shots
        else:
            support = min(self.max_support, ways * min(self.max_support_per_class, max_count - 1))
        return ways, support, ways * per_query


def sample_sizes(
    rng: np.random.Generator,
    counts: np.ndarray,
    spec: EpisodeSpec,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draws one episode's classes and sizes: ``(classes, support per class, queries per class)``.

    ``counts[c]`` is the number of images of class ``c`` (every class must hold ``spec.min_examples()``).

    Example:
      >>> import numpy as np
      >>> from fsl_jax.data.episodes import EpisodeSpec, sample_sizes
      >>> spec = EpisodeSpec.create("meta-dataset")
      >>> classes, support, queries = sample_sizes(np.random.default_rng(0), np.full(100, 20), spec)
      >>> 5 <= len(classes) <= 50, queries, bool(support.min() >= 1), bool(support.sum() <= 500)
      (True, 10, True, True)
    """
    counts = np.asarray(counts)
    num_classes = len(counts)
    high = min(spec.max_ways, num_classes)
    if spec.min_ways > high:
        raise ValueError(f"ways={spec.min_ways} exceeds the {num_classes} classes of the source")
    ways = int(rng.integers(spec.min_ways, high + 1)) if high > spec.min_ways else high
    classes = rng.choice(num_classes, ways, replace=False)
    chosen = counts[classes]
    if spec.queries is not None:
        queries = spec.queries
    else:
        queries = min(spec.max_query, int(chosen.min()) // 2)
    remaining = chosen - queries
    if spec.shots is not None:
        support = np.full(ways, spec.shots, np.int64)
    else:
        beta = rng.uniform()
        contributions = np.minimum(spec.max_support_per_class, remaining)
        size = int(min(np.floor(beta * contributions + 1).sum(), spec.max_support))
        weights = chosen * np.exp(rng.uniform(math.log(0.5), math.log(2.0), size=ways))
        desired = np.floor(weights / weights.sum() * (size - ways)).astype(np.int64) + 1
        support = np.minimum(desired, remaining)
    return classes, support.astype(np.int64), int(queries)


def build_episode(
    rng: np.random.Generator, source: Any, spec: EpisodeSpec, shapes: tuple[int, int, int] | None, dtype: Any
) -> dict[str, np.ndarray]:
    """One episode from ``source`` as a dict of numpy arrays (the fields of a :class:`~fsl_jax.Task`).

    Examples are grouped by class in the order the classes were drawn (labels ``0..ways-1``); for each class the
    first examples drawn are its support, the rest its queries. With ``shapes = (ways, support, query)`` the episode is
    padded to those sizes and carries ``support_mask``, ``query_mask`` and ``way_mask``.
    """
    classes, support, queries = sample_sizes(rng, source.counts, spec)
    xs_s, xs_q = [], []
    for c, n in zip(classes, support):
        idx = rng.choice(int(source.counts[c]), int(n) + queries, replace=False)
        x = source.load_many(int(c), idx)
        xs_s.append(x[:n])
        xs_q.append(x[n:])
    ways = len(classes)
    support_x = _to_float(np.concatenate(xs_s), dtype)
    query_x = _to_float(np.concatenate(xs_q), dtype)
    support_y = np.repeat(np.arange(ways, dtype=np.int32), support)
    query_y = np.repeat(np.arange(ways, dtype=np.int32), queries)
    episode = {"support_x": support_x, "support_y": support_y, "query_x": query_x, "query_y": query_y}
    if shapes is None:
        return episode
    max_ways, max_support, max_query = shapes
    out = {}
    for side, rows in (("support", max_support), ("query", max_query)):
        x, y = episode[f"{side}_x"], episode[f"{side}_y"]
        n = len(y)
        if n > rows:  # pragma: no cover - guarded by padded_shapes
            raise AssertionError(f"{side} set of {n} rows exceeds the padded size {rows}")
        out[f"{side}_x"] = np.concatenate([x, np.zeros((rows - n, *x.shape[1:]), x.dtype)])
        out[f"{side}_y"] = np.concatenate([y, np.zeros(rows - n, y.dtype)])
        out[f"{side}_mask"] = (np.arange(rows) < n).astype(dtype)
    out["way_mask"] = (np.arange(max_ways) < ways).astype(dtype)
    return out


def _to_float(x: np.ndarray, dtype: Any) -> np.ndarray:
    if x.dtype == np.uint8 and np.issubdtype(np.dtype(dtype), np.floating):
        return (x.astype(dtype) / 255.0).astype(dtype)
    return x.astype(dtype)


class ArraySource:
    """A class source over arrays already in memory: ``[classes, per_class, *features]`` or a sequence of per-class
    arrays ``[count_c, *features]`` (the interface :func:`fsl_jax.data.image_folder` also has).

    Example:
      >>> import numpy as np
      >>> from fsl_jax.data.episodes import ArraySource
      >>> source = ArraySource([np.zeros((4, 2)), np.ones((6, 2))])
      >>> source.counts.tolist(), source.feature_shape, source.load_many(1, [0, 5]).shape
      ([4, 6], (2,), (2, 2))
    """

    def __init__(self, data: Any, name: str = "data"):
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError(f"{name} must hold at least one class, got an empty sequence")
            classes = [np.asarray(c) for c in data]
        else:
            array = np.asarray(data)
            if array.ndim < 3:
                raise ValueError(
                    f"{name} must have shape [classes, per_class, *features] (rank >= 3), got rank "
                    f"{array.ndim} shape {array.shape}"
                )
            classes = list(array)
        shapes = {c.shape[1:] for c in classes}
        if any(c.ndim < 2 for c in classes) or len(shapes) != 1:
            raise ValueError(
                f"{name} as a sequence must hold per-class arrays [count, *features] with one feature "
                f"shape, got shapes {sorted({c.shape for c in classes})[:4]}"
            )
        self.classes = classes
        self.counts = np.array([len(c) for c in classes], np.int64)
        self.feature_shape = tuple(classes[0].shape[1:])
        self.class_names = tuple(str(i) for i in range(len(classes)))
        self.dtype = classes[0].dtype

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_many(self, class_index: int, indices: Sequence[int]) -> np.ndarray:
        return self.classes[class_index][np.asarray(indices)]

    @property
    def config(self) -> dict:
        from fsl_jax._config import describe

        return {
            "source": "arrays",
            "classes": len(self.classes),
            "examples": int(self.counts.sum()),
            "data": describe(self.classes[0]),
            "last_class": describe(self.classes[-1]),
        }

    def __repr__(self) -> str:
        return f"ArraySource(classes={self.num_classes}, features={self.feature_shape})"
