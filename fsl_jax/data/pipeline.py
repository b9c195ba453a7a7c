"""Episodes streamed from class sources through a grain pipeline: worker processes, any number of JAX processes, exact
resume.

:class:`EpisodeLoader` defines batch ``i`` (and episode ``j`` inside it) as a pure function of ``(seed, i, j)``:
episode ``j`` is drawn from ``numpy.random.default_rng([seed, i, j])`` alone. Hence the same batches with 0 or N
workers, after a restart (only the batch number is needed) and on any number of processes (each builds only its own
rows of the global batch, see :func:`fsl_jax.parallel.local_rows`).

The pipeline is grain's: ``MapDataset.range(first, ...)`` -> ``map(build batch i)`` -> ``to_iter_dataset()`` ->
``mp_prefetch`` with ``workers`` processes (none with ``workers=0``). An error in a worker (an unreadable image, say)
is raised in the main process as the original exception.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator, Sequence

import numpy as np

from fsl_jax.data.episodes import ArraySource, EpisodeSpec, build_episode
from fsl_jax.data.sampler import check_rows
from fsl_jax.tasks import Task

_END = 2**62  # batches are numbered 0, 1, ... without end: a run takes what it needs


def _as_source(value: Any, where: str) -> Any:
    if hasattr(value, "load_many") and hasattr(value, "counts"):
        return value
    if isinstance(value, (np.ndarray, list, tuple)) or hasattr(value, "__array__"):
        return ArraySource(value, name=where)
    raise TypeError(
        f"{where} must be a class source (fj.data.image_folder(...), a [classes, per_class, ...] array or a "
        f"list of per-class arrays), got {type(value).__name__}"
    )


def _grain():
    try:
        import grain
    except ImportError as exc:  # pragma: no cover - grain is a dependency
        raise ImportError("EpisodeLoader with workers > 0 needs grain (pip install grain)") from exc
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads absl flags; a program without absl.app has not parsed them
        flags.FLAGS.mark_as_parsed()
    return grain


class EpisodeLoader:
    r"""Few-shot episodes from one or more class sources, built by grain worker processes.

    Args:
      sources: a class source (:func:`fsl_jax.data.image_folder`, a ``[classes, per_class, *features]`` array or a
        list of per-class arrays), or a list of class source objects (``image_folder``\ s,
        :class:`~fsl_jax.data.ArraySource`\ s); each episode comes from one source.
      ways: an int, a ``(min, max)`` range, or ``"meta-dataset"`` (Meta-Dataset's variable episodes, 5..50 ways).
      shots: support examples per class; ``None`` with variable ways: Meta-Dataset's support rule.
      queries: query examples per class; ``None`` with variable ways: Meta-Dataset's query rule.
      seed: episode ``j`` of batch ``i`` is drawn from ``default_rng([seed, i, j])``.
      weights: the probability of each source (default: equal).
      workers: grain worker processes building batches ahead of the training step (0: built in the calling thread).
      buffer: batches each worker keeps ready.
      dtype: the dtype of inputs (uint8 images become ``dtype`` in [0, 1]).
      max_support, max_support_per_class, max_query: Meta-Dataset's caps (500, 100, 10).

    Fixed ``ways``, ``shots`` and ``queries`` give ordinary episodes, the same as
    :class:`~fsl_jax.data.HostSampler`'s with the same seed for a single source. Anything variable gives episodes
    padded to static shapes (see :mod:`fsl_jax.data.episodes`): ``support_mask``, ``query_mask`` and ``way_mask``
    mark what is real.

    Worker processes are started with ``spawn`` (forking a process that runs JAX is unsafe) and import the main
    script again: a script that uses ``workers > 0`` runs its code under ``if __name__ == "__main__":``.

    Classes with fewer images than an episode needs (``shots + queries``; 2 for Meta-Dataset's rules) are an error
    naming the class; drop them up front with ``fj.data.image_folder(..., min_per_class=n, small_classes="skip")``.

    It is a host source for :func:`fsl_jax.meta_train` (``sample(num_tasks, index)``), which uses its prefetching
    :meth:`iterate` and stores the loader's position with every checkpoint.

    Example:
      >>> import numpy as np, fsl_jax as fj
      >>> data = np.random.default_rng(0).integers(0, 255, (30, 12, 8, 8, 1), dtype=np.uint8)
      >>> loader = fj.data.EpisodeLoader(data, ways="meta-dataset", seed=0)
      >>> batch = loader.sample(4, index=0)
      >>> batch.support_x.shape, batch.way_mask.shape, bool(batch.way_mask.sum(1).min() >= 5)
      ((4, 330, 8, 8, 1), (4, 30), True)
      >>> fixed = fj.data.EpisodeLoader(data, ways=5, shots=1, queries=3, seed=0, workers=0)
      >>> with fixed.iterate(8, start_index=10) as batches:
      ...     first = next(batches)
      >>> first.query_x.shape, bool(np.array_equal(first.query_x, fixed.sample(8, index=10).query_x))
      ((8, 15, 8, 8, 1), True)
    """

    def __init__(
        self,
        sources: Any,
        ways: Any,
        shots: int | None = None,
        queries: int | None = None,
        *,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        workers: int = 0,
        buffer: int = 2,
        dtype: Any = np.float32,
        max_support: int = 500,
        max_support_per_class: int = 100,
        max_query: int = 10,
    ):
        # a list of class sources is several sources; a list of arrays is one source's classes (as for HostSampler):
        # wrap arrays in fj.data.ArraySource to mix several of them
        if isinstance(sources, (list, tuple)) and sources and all(hasattr(s, "load_many") for s in sources):
            items = list(sources)
        else:
            items = [sources]
        self.sources = [_as_source(s, f"sources[{k}]" if len(items) > 1 else "sources") for k, s in enumerate(items)]
        self.spec = EpisodeSpec.create(
            ways,
            shots,
            queries,
            max_support=max_support,
            max_support_per_class=max_support_per_class,
            max_query=max_query,
        )
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        if not isinstance(buffer, (int, np.integer)) or isinstance(buffer, bool) or buffer < 1:
            raise ValueError(f"buffer must be an int >= 1, got {buffer!r}")
        self.seed, self.workers, self.buffer = int(seed), int(workers), int(buffer)
        self.dtype = np.dtype(dtype)
        shapes = {tuple(s.feature_shape) for s in self.sources}
        if len(shapes) != 1:
            raise ValueError(
                f"sources must share one feature shape (resize image folders to one size), got "
                f"{[tuple(s.feature_shape) for s in self.sources]}"
            )
        self.feature_shape = shapes.pop()
        need = self.spec.min_examples()
        for k, source in enumerate(self.sources):
            name = f"sources[{k}]" if len(self.sources) > 1 else "sources"
            if self.spec.min_ways > source.num_classes:
                raise ValueError(
                    f"ways={ways!r} needs {self.spec.min_ways} classes but {name} has {source.num_classes}"
                )
            small = np.flatnonzero(np.asarray(source.counts) < need)
            if len(small):
                c = int(small[0])
                folder = getattr(source, "files", None)
                where = f" ({source.root}/{source.class_names[c]})" if folder is not None else ""
                raise ValueError(
                    f"class {source.class_names[c]!r}{where} of {name} has {int(source.counts[c])} images, fewer "
                    f"than the {need} an episode needs ({len(small)} such classes); drop them with "
                    f"fj.data.image_folder(..., min_per_class={need}, small_classes='skip')"
                )
        if weights is None:
            self.weights = np.full(len(self.sources), 1.0 / len(self.sources))
        else:
            w = np.asarray(weights, np.float64)
            if w.shape != (len(self.sources),) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
                raise ValueError(
                    f"weights must be {len(self.sources)} non-negative numbers (one per source) with a "
                    f"positive sum, got {weights!r}"
                )
            self.weights = w / w.sum()
        self.shapes: tuple[int, int, int] | None = None
        if not self.spec.fixed:
            per_source = [self.spec.padded_shapes(s.num_classes, int(np.max(s.counts))) for s in self.sources]
            ways, support, query = (max(p[k] for p in per_source) for k in range(3))
            self.shapes = (ways, support, query)

    # -- the host-source protocol of fj.meta_train --------------------------------------------------------------

    @property
    def ways(self) -> int | None:
        """The number of ways of fixed episodes (``None`` for variable ones)."""
        return self.spec.max_ways if self.spec.fixed else None

    @property
    def max_ways(self) -> int:
        """The output width a classifier needs: the ways of every episode, or the padded ways."""
        return self.spec.max_ways if self.shapes is None else self.shapes[0]

    def episode(self, index: int, j: int) -> dict[str, np.ndarray]:
        """Episode ``j`` of batch ``index`` as a dict of numpy arrays (the fields of a :class:`~fsl_jax.Task`)."""
        rng = np.random.default_rng([self.seed, int(index), int(j)])
        source = (
            self.sources[0] if len(self.sources) == 1 else self.sources[rng.choice(len(self.sources), p=self.weights)]
        )
        return build_episode(rng, source, self.spec, self.shapes, self.dtype)

    def sample(self, num_tasks: int, index: int = 0, *, start: int = 0, stop: int | None = None) -> Task:
        """Rows ``start:stop`` (default: all) of batch ``index`` of ``num_tasks`` episodes, built in this thread."""
        start, stop = check_rows(num_tasks, start, stop)
        return _stack([self.episode(index, j) for j in range(start, stop)])

    def iterate(
        self,
        num_tasks: int,
        *,
        start_index: int = 0,
        start: int = 0,
        stop: int | None = None,
    ) -> "EpisodeIterator":
        """An iterator over batches ``start_index, start_index + 1, ...`` (rows ``start:stop`` of each), built ahead by
        the loader's worker processes. Close it (or use it in a ``with`` block) to stop the workers."""
        start, stop = check_rows(num_tasks, start, stop)
        if not isinstance(start_index, (int, np.integer)) or start_index < 0:
            raise ValueError(f"start_index must be an int >= 0, got {start_index!r}")
        return EpisodeIterator(self, int(num_tasks), int(start_index), start, stop)

    @property
    def config(self) -> dict:
        """What defines this loader's episodes (stored with checkpoints; ``workers`` is not part of it)."""
        return {
            "sampler": "EpisodeLoader",
            "spec": dataclasses.asdict(self.spec),
            "seed": self.seed,
            "weights": [round(float(w), 6) for w in self.weights],
            "dtype": self.dtype.name,
            "sources": [s.config for s in self.sources],
        }

    def __repr__(self) -> str:
        ways = (
            self.spec.max_ways if self.spec.min_ways == self.spec.max_ways else (self.spec.min_ways, self.spec.max_ways)
        )
        return (
            f"EpisodeLoader(sources={len(self.sources)}, ways={ways}, shots={self.spec.shots}, "
            f"queries={self.spec.queries}, padded={self.shapes}, seed={self.seed}, workers={self.workers})"
        )


def _stack_fields(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.stack([e[name] for e in episodes]) for name in episodes[0]}


def _stack(episodes: list[dict[str, np.ndarray]]) -> Task:
    return Task(**_stack_fields(episodes))


def _init_worker(worker_index: int, worker_count: int) -> None:
    """grain's worker_init_fn. A worker runs at a lower CPU priority than the training process (whose XLA threads
    stall when a core is taken from them mid-operation), and exits within a second when the training process dies
    (SIGKILL, preemption) instead of living on as an orphan."""
    import os
    import threading

    parent = os.getppid()
    try:
        os.nice(10)
    except (OSError, AttributeError):  # pragma: no cover - platforms without nice
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="fsl_jax-parent-watch", daemon=True).start()


class _BuildBatch:
    """Batch ``i`` -> the rows of it this process builds (picklable: grain sends it to the workers)."""

    def __init__(self, loader: EpisodeLoader, start: int, stop: int):
        self.loader, self.start, self.stop = loader, start, stop

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        batch: dict[str, Any] = _stack_fields([self.loader.episode(index, j) for j in range(self.start, self.stop)])
        batch["index"] = np.int64(index)
        return batch


class EpisodeIterator(Iterator[Task]):
    """Batches of a :class:`EpisodeLoader` in order, prefetched by grain workers.

    Attributes:
      next_index: the batch number the next ``next()`` returns (the loader's position, stored with checkpoints).
      wait_seconds: the total time ``next()`` waited for a batch that was not ready.
    """

    def __init__(self, loader: EpisodeLoader, num_tasks: int, start_index: int, start: int, stop: int):
        self.loader, self.num_tasks, self.rows = loader, num_tasks, (start, stop)
        self.next_index = start_index
        self.wait_seconds = 0.0
        self._build = _BuildBatch(loader, start, stop)
        self._closed = False
        if loader.workers > 0:
            grain = _grain()
            dataset = grain.MapDataset.range(start_index, _END).map(self._build).to_iter_dataset()
            options = grain.MultiprocessingOptions(num_workers=loader.workers, per_worker_buffer_size=loader.buffer)
            self._iterator = iter(dataset.mp_prefetch(options, worker_init_fn=_init_worker))
        else:
            self._iterator = None

    def __next__(self) -> Task:
        if self._closed:
            raise StopIteration
        t0 = time.perf_counter()
        if self._iterator is None:
            batch = self._build(self.next_index)
        else:
            # plain arrays: grain's shared-memory blocks are released as soon as these copies are made
            batch = {name: np.array(value) for name, value in next(self._iterator).items()}
        self.wait_seconds += time.perf_counter() - t0
        index = int(batch.pop("index"))
        if index != self.next_index:  # pragma: no cover - grain keeps order
            raise RuntimeError(f"EpisodeLoader: expected batch {self.next_index}, got batch {index}")
        self.next_index += 1
        return Task(**batch)

    def state(self) -> dict:
        """The loader's position: ``{"next_index": ..., "seed": ..., "rows": ...}`` (JSON-able)."""
        return {"next_index": self.next_index, "seed": self.loader.seed, "num_tasks": self.num_tasks}

    def close(self) -> None:
        """Stops the worker processes."""
        self._closed = True
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()

    def __enter__(self) -> "EpisodeIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass
