"""Many-episode evaluation: adapt on each test task's support set, score its query set, report mean and 95 % CI."""

import copy
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import _validate, parallel
from fsl_jax._progress import progress as progress_bar
from fsl_jax.learners.base import Learner, meta_loss
from fsl_jax.tasks import Task, task_at, validate_task

Array = Any


class EvalResult(NamedTuple):
    """Per-episode scores and their summary.

    Attributes:
      metric: ``"accuracy"`` (classifiers) or ``"mse"`` (regression).
      mean: mean of the metric over episodes.
      ci95: half-width of the normal 95 % confidence interval of the mean (1.96 * std / sqrt(episodes)).
      std: sample standard deviation over episodes.
      values: the per-episode metric, ``[episodes]``.
      loss: the mean query loss.

    Example:
      >>> import numpy as np
      >>> from fsl_jax.evaluate import EvalResult
      >>> print(EvalResult("accuracy", 0.9, 0.02, 0.1, np.full(100, 0.9), 0.3))
      accuracy 90.00 +- 2.00 % (100 episodes)
    """

    metric: str
    mean: float
    ci95: float
    std: float
    values: np.ndarray
    loss: float

    def __str__(self) -> str:
        if self.metric == "accuracy":
            return f"accuracy {100 * self.mean:.2f} +- {100 * self.ci95:.2f} % ({len(self.values)} episodes)"
        return f"{self.metric} {self.mean:.4f} +- {self.ci95:.4f} ({len(self.values)} episodes)"


def _batched_scores(learner: Learner, mesh: Any = None):
    def scores(params, tasks: Task, key):
        if mesh is not None:
            tasks = jax.lax.with_sharding_constraint(tasks, parallel.task_sharding(mesh))
        keys = jax.random.split(key, tasks.support_x.shape[0])
        losses, aux = jax.vmap(meta_loss, in_axes=(None, None, 0, 0))(learner, params, tasks, keys)
        metric = aux["accuracy"] if learner.kind == "classification" else aux["query_loss"]
        if mesh is not None:  # every process gets every episode's score
            metric, losses = jax.lax.with_sharding_constraint((metric, aux["query_loss"]), parallel.replicated(mesh))
            return metric, losses
        return metric, aux["query_loss"]

    return scores


def evaluate(
    learner: Learner,
    params: Any,
    source: Any,
    episodes: int = 600,
    *,
    key: Array | None = None,
    batch_size: int = 50,
    progress: bool = False,
    mesh: Any = None,
) -> EvalResult:
    """Evaluates ``learner`` over many test episodes.

    Args:
      learner: a :class:`~fsl_jax.Learner`.
      params: meta-parameters.
      source: a jittable ``(key, num_tasks) -> Task`` sampler (``DeviceSampler.sample``, a ``DeviceSampler``, or a
        ``partial`` of :func:`fsl_jax.data.sinusoid_tasks`), a :class:`~fsl_jax.data.HostSampler` or
        :class:`~fsl_jax.data.EpisodeLoader` (its episodes drawn with a seed from ``key``), or a batched
        :class:`~fsl_jax.Task` (then every task in it is one episode; ``episodes`` must still be valid but is not
        used).
      episodes: number of test episodes.
      key: PRNG key for sampling and stochastic adaptation (required unless ``source`` is a Task).
      batch_size: episodes evaluated per compiled call (with a mesh, rounded up to a multiple of its ``"tasks"``
        axis; the episodes drawn depend on it, so compare runs at the same batch size).
      progress: show a progress report.
      mesh: split each batch of episodes over this mesh's ``"tasks"`` axis (default in a multi-process run: all
        devices of all processes). Every process gets every score, so the mean +- CI is the single-device figure.

    Returns:
      An :class:`EvalResult`; ``str(result)`` reads e.g. ``accuracy 97.10 +- 0.40 % (600 episodes)``.

    Padded episodes (:func:`fsl_jax.data.pad_task`): each episode's score is over its real queries (``query_mask``)
    and real classes (``way_mask``), exactly the unpadded episode's score; every episode counts once in the mean.

    Example:
      >>> import functools, jax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP(), "mse", inner_lr=0.01)
      >>> source = functools.partial(fj.data.sinusoid_tasks, shots=10, queries=100)
      >>> params = learner.init(jax.random.key(0), fj.task_at(source(jax.random.key(1), 1), 0))
      >>> result = fj.evaluate(learner, params, source, episodes=100, key=jax.random.key(2))
      >>> result.metric
      'mse'
    """
    from fsl_jax.data.pipeline import EpisodeLoader
    from fsl_jax.data.sampler import DeviceSampler, HostSampler

    if not isinstance(learner, Learner):
        raise TypeError(f"learner must be a fsl_jax.Learner, got {type(learner).__name__}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 2:
        raise ValueError(f"episodes must be an int >= 2 (a confidence interval needs two), got {episodes!r}")
    if mesh is None and jax.process_count() > 1:
        mesh = parallel.task_mesh()
    devices = 1
    if mesh is not None:
        parallel.check_mesh(mesh)
        devices = parallel.task_devices(mesh)
        params = parallel.replicate(params, mesh)
    scores = jax.jit(_batched_scores(learner, mesh))
    metric_name = "accuracy" if learner.kind == "classification" else "mse"
    metrics, losses = [], []

    def padded(chunk: Task) -> tuple[Task, int]:
        """A chunk with a multiple of the mesh's task devices (extra copies of its first task, scores dropped)."""
        n = int(np.shape(chunk.support_x)[0])
        extra = -n % devices
        if extra:
            chunk = jax.tree_util.tree_map(lambda x: np.concatenate([x, np.repeat(x[:1], extra, 0)]), chunk)
        return chunk, n

    if isinstance(source, Task):
        validate_task(source, batched=True)
        # Episodes padded to a number of classes (way_mask): the model's width is checked against that number.
        padded_ways = None if source.way_mask is None else int(np.shape(source.way_mask)[-1])
        _validate.check_output_width(learner, params, task_at(source, 0), padded_ways)
        key = jax.random.key(0) if key is None else key
        total = int(np.shape(source.support_x)[0])
        batch_size = -(-batch_size // devices) * devices
        for start in progress_bar(range(0, total, batch_size), disable=not progress, desc="evaluate"):
            chunk, n = padded(jax.tree_util.tree_map(lambda x: np.asarray(x[start : start + batch_size]), source))
            chunk = (
                parallel.shard_tasks(chunk, mesh) if mesh is not None else jax.tree_util.tree_map(jnp.asarray, chunk)
            )
            m, l = scores(params, chunk, jax.random.fold_in(key, start))
            metrics.append(np.asarray(m)[:n])
            losses.append(np.asarray(l)[:n])
    else:
        if key is None:
            raise ValueError("key is required when sampling episodes (pass key=jax.random.key(seed))")
        batch_size = -(-min(batch_size, episodes) // devices) * devices
        ways = _validate.source_ways(source)
        if isinstance(source, DeviceSampler):
            source = source.sample
        if isinstance(source, (HostSampler, EpisodeLoader)):
            seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
            host: HostSampler | EpisodeLoader | None
            if isinstance(source, EpisodeLoader):  # the same episodes' rules, drawn from the key (in this thread)
                host = copy.copy(source)
                host.seed = seed
            else:
                host = HostSampler(
                    source.classes, source.ways, source.shots, source.queries, seed=seed, dtype=source.dtype
                )
            sample_and_score: Callable | None = None
            rows = parallel.local_rows(mesh, batch_size) if mesh is not None else (0, batch_size)
        elif callable(source):
            host = None

            @jax.jit
            def sample_and_score(params, k):
                k_sample, k_adapt = jax.random.split(k)
                return _batched_scores(learner, mesh)(params, source(k_sample, batch_size), k_adapt)
        else:
            raise TypeError(
                f"source must be a sampler, a callable (key, num_tasks) -> Task or a Task, got {type(source).__name__}"
            )
        if ways is not None:  # the model's output width against the episodes' ways, from shapes only
            example = (
                jax.eval_shape(lambda k: task_at(source(k, 1), 0), key)
                if host is None
                else task_at(host.sample(1, index=0), 0)
            )
            _validate.check_output_width(learner, params, example, ways)
        batches = -(-episodes // batch_size)
        for b in progress_bar(range(batches), disable=not progress, desc="evaluate"):
            k = jax.random.fold_in(key, b)
            if host is not None:
                local = host.sample(batch_size, index=b, start=rows[0], stop=rows[1])
                tasks = (
                    parallel.global_tasks(local, mesh, batch_size)
                    if mesh is not None
                    else jax.tree_util.tree_map(jnp.asarray, local)
                )
                m, l = scores(params, tasks, k)
            else:
                assert sample_and_score is not None  # set whenever host is None
                m, l = sample_and_score(params, k)
            metrics.append(np.asarray(m))
            losses.append(np.asarray(l))

    values = np.concatenate(metrics)
    if not isinstance(source, Task):
        values = values[:episodes]
    loss_values = np.concatenate(losses)[: len(values)]
    from fsl_jax.report import mean_ci

    summary = mean_ci(values)
    return EvalResult(
        metric_name, float(summary.mean), float(summary.ci95), float(summary.std), values, float(np.mean(loss_values))
    )
