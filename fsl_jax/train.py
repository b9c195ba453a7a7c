"""Meta-training: the train state, the one compiled meta-step, and the training loop.

``make_meta_step`` builds one ``jax.jit`` function: (optionally sample a task batch on device) -> adapt every task
(``vmap``) -> query loss -> meta-gradient -> optax update, with the train state donated. ``meta_train`` drives it
with a progress bar, reads metrics back only every ``log_every`` steps, checkpoints with orbax and resumes exactly.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from fsl_jax.learners.base import Learner, meta_loss, task_grad
from fsl_jax.tasks import Task, validate_task

Array = Any
TaskSource = Callable[[Array, int], Task]


class TrainState(flax.struct.PyTreeNode):
    """Meta-parameters, optimiser state and counters: a pytree, donated to every meta-step.

    Attributes:
      step: meta-steps taken (int32 scalar).
      params: meta-parameters.
      opt_state: the optax state.
      nonfinite_steps: steps whose loss or gradient was NaN/Inf (int32 scalar).
      first_nonfinite_step: the first such step, or -1.
      tx: the optax ``GradientTransformation`` (static).

    Example:
      >>> import jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse")
      >>> tasks = fj.data.sinusoid_tasks(jax.random.key(0), 4, 5, 5)
      >>> state = fj.TrainState.create(learner, learner.init(jax.random.key(1), fj.task_at(tasks, 0)), optax.sgd(1e-3))
      >>> state, metrics = fj.make_meta_step(learner, optax.sgd(1e-3))(state, tasks, jax.random.key(2))
      >>> int(state.step), int(state.nonfinite_steps), int(state.first_nonfinite_step)
      (1, 0, -1)
    """

    step: Array
    params: Any
    opt_state: Any
    nonfinite_steps: Array
    first_nonfinite_step: Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, learner: Learner, params: Any, optimizer: optax.GradientTransformation) -> "TrainState":
        """A fresh state at step 0.

        Example:
          >>> import jax, optax, fsl_jax as fj
          >>> learner = fj.maml(fj.models.MLP(), "mse")
          >>> params = learner.init(jax.random.key(0), fj.task_at(fj.data.sinusoid_tasks(jax.random.key(1), 1, 5, 5), 0))
          >>> state = fj.TrainState.create(learner, params, optax.adam(1e-3))
          >>> int(state.step)
          0
        """
        if not isinstance(learner, Learner):
            raise TypeError(f"learner must be a fsl_jax.Learner, got {type(learner).__name__}")
        _check_optimizer(optimizer)
        leaves = jax.tree_util.tree_leaves(params)
        if not leaves:
            raise ValueError("params is empty: nothing to meta-train")
        params = jax.tree_util.tree_map(jnp.asarray, params)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            nonfinite_steps=jnp.zeros((), jnp.int32),
            first_nonfinite_step=jnp.full((), -1, jnp.int32),
            tx=optimizer,
        )


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")


def _check_positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def batch_grads(
    learner: Learner, params: Any, tasks: Task, key: Array, task_chunk: int | None = None
) -> tuple[Any, Array, dict]:
    """Mean meta-gradient, loss and metrics over a batch of tasks (``vmap`` over the task axis).

    With ``task_chunk``, tasks are processed ``task_chunk`` at a time in a ``lax.scan`` (gradients accumulated), so
    peak memory holds one chunk's activations instead of the whole batch's.
    """
    total = jax.tree_util.tree_leaves(tasks.support_x)[0].shape[0]
    keys = jax.random.split(key, total)

    def chunk_grads(params, chunk: Task, chunk_keys):
        if learner.meta_grad is None:

            def mean_loss(p):
                losses, aux = jax.vmap(meta_loss, in_axes=(None, None, 0, 0))(learner, p, chunk, chunk_keys)
                return jnp.sum(losses), (losses, aux)

            grads, (losses, aux) = jax.grad(mean_loss, has_aux=True)(params)
        else:
            per_task, (losses, aux) = jax.vmap(task_grad, in_axes=(None, None, 0, 0))(learner, params, chunk, chunk_keys)
            grads = jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0), per_task)
        aux = jax.tree_util.tree_map(jnp.sum, aux)
        return grads, jnp.sum(losses), aux

    if task_chunk is None or task_chunk >= total:
        grads, loss_sum, aux_sum = chunk_grads(params, tasks, keys)
    else:
        if total % task_chunk:
            raise ValueError(f"task_chunk={task_chunk} must divide the task batch size {total}")
        chunks = total // task_chunk
        reshape = lambda x: x.reshape((chunks, task_chunk) + x.shape[1:])  # noqa: E731
        chunked_tasks = jax.tree_util.tree_map(reshape, tasks)
        chunked_keys = reshape(keys)

        def body(carry, xs):
            chunk, chunk_keys = xs
            grads, loss, aux = chunk_grads(params, chunk, chunk_keys)
            return jax.tree_util.tree_map(jnp.add, carry, (grads, loss, aux)), None

        zeros = jax.eval_shape(chunk_grads, params, jax.tree_util.tree_map(lambda x: x[0], chunked_tasks), chunked_keys[0])
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
        (grads, loss_sum, aux_sum), _ = jax.lax.scan(body, zeros, (chunked_tasks, chunked_keys))
    scale = 1.0 / total
    grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
    metrics = {name: value * scale for name, value in aux_sum.items()}
    return grads, loss_sum * scale, metrics


def make_meta_step(
    learner: Learner,
    optimizer: optax.GradientTransformation,
    *,
    sampler: TaskSource | None = None,
    meta_batch: int | None = None,
    task_chunk: int | None = None,
    skip_nonfinite: bool = False,
    donate: bool = True,
    mesh: Any = None,
) -> Callable:
    """Builds the jit-compiled, state-donating meta-training step.

    Args:
      learner: a :class:`~fsl_jax.Learner`.
      optimizer: the outer optax optimiser (must be the one the state was created with).
      sampler: optional ``(key, num_tasks) -> Task`` sampled *inside* the step (e.g. ``DeviceSampler.sample`` or
        ``functools.partial(fj.data.sinusoid_tasks, shots=10, queries=10)``). Then the step is
        ``step(state, key)`` and the batch key is ``fold_in(key, state.step)``: pass the same key every step.
      meta_batch: tasks per step when ``sampler`` is given.
      task_chunk: process the task batch this many tasks at a time (bounded memory; same gradient).
      skip_nonfinite: when the loss or gradient is NaN/Inf, keep the previous parameters and optimiser state (the
        step is counted in ``state.nonfinite_steps``) instead of applying the update.
      donate: donate the state's buffers to the step (the input state must not be used afterwards).
      mesh: a ``jax.sharding.Mesh`` from :func:`fsl_jax.parallel.task_mesh`: the task batch is split across its
        ``"tasks"`` axis, parameters and optimiser state replicated.

    Returns:
      ``step(state, tasks, key) -> (state, metrics)`` or, with ``sampler``, ``step(state, key) -> (state, metrics)``.
      ``metrics`` holds ``loss``, ``query_loss``, ``grad_norm``, ``finite`` and, for classifiers, ``accuracy``
      (device scalars: reading them syncs with the host).

    Example:
      >>> import functools, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP(), "mse", inner_lr=0.01, inner_steps=1)
      >>> source = functools.partial(fj.data.sinusoid_tasks, shots=10, queries=10)
      >>> params = learner.init(jax.random.key(0), fj.task_at(source(jax.random.key(1), 1), 0))
      >>> state = fj.TrainState.create(learner, params, optax.adam(1e-3))
      >>> step = fj.make_meta_step(learner, optax.adam(1e-3), sampler=source, meta_batch=25)
      >>> state, metrics = step(state, jax.random.key(2))
    """
    if not isinstance(learner, Learner):
        raise TypeError(f"learner must be a fsl_jax.Learner, got {type(learner).__name__}")
    _check_optimizer(optimizer)
    if sampler is not None:
        if not callable(sampler):
            raise TypeError(f"sampler must be callable (key, num_tasks) -> Task, got {type(sampler).__name__}")
        meta_batch = _check_positive_int("meta_batch", meta_batch)
    elif meta_batch is not None:
        raise ValueError("meta_batch is only used with sampler=; without a sampler the batch size is the task axis")
    if task_chunk is not None:
        task_chunk = _check_positive_int("task_chunk", task_chunk)
        if meta_batch is not None and meta_batch % task_chunk:
            raise ValueError(f"task_chunk={task_chunk} must divide meta_batch={meta_batch}")

    task_sharding = None
    if mesh is not None:
        from fsl_jax.parallel import task_sharding as _task_sharding

        task_sharding = _task_sharding(mesh)

    def update(state: TrainState, tasks: Task, key: Array):
        if task_sharding is not None:
            total = tasks.support_x.shape[0]
            if total % mesh.size:
                raise ValueError(
                    f"the task batch ({total} tasks) must divide evenly over the mesh's {mesh.size} devices"
                )
            tasks = jax.lax.with_sharding_constraint(tasks, task_sharding)
        grads, loss, metrics = batch_grads(learner, state.params, tasks, key, task_chunk)
        finite = jnp.logical_and(jnp.isfinite(loss), _all_finite(grads))
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if skip_nonfinite:
            keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        bad = jnp.logical_not(finite)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            nonfinite_steps=state.nonfinite_steps + bad.astype(jnp.int32),
            first_nonfinite_step=jnp.where(bad & (state.first_nonfinite_step < 0), state.step, state.first_nonfinite_step),
        )
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads), "finite": finite}
        return new_state, metrics

    donate_argnums = (0,) if donate else ()
    if sampler is None:
        return jax.jit(update, donate_argnums=donate_argnums)

    def sampled_update(state: TrainState, key: Array):
        step_key = jax.random.fold_in(key, state.step)
        sample_key, adapt_key = jax.random.split(step_key)
        tasks = sampler(sample_key, meta_batch)
        return update(state, tasks, adapt_key)

    return jax.jit(sampled_update, donate_argnums=donate_argnums)


class NonFiniteError(FloatingPointError):
    """Raised by :func:`meta_train` when a meta-step produced a NaN/Inf loss or gradient.

    Its message names the first such step; ``meta_train(..., skip_nonfinite=True)`` skips those steps instead.

    Example:
      >>> import jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse", inner_lr=1e30)  # diverges at once
      >>> source = lambda key, n: fj.data.sinusoid_tasks(key, n, 5, 5)
      >>> try:
      ...     fj.meta_train(learner, optax.sgd(1e-3), source, steps=5, meta_batch=2, key=jax.random.key(0))
      ... except fj.NonFiniteError as err:
      ...     print(type(err).__name__)
      NonFiniteError
    """


class History(NamedTuple):
    """Logged metrics of a :func:`meta_train` run: ``steps[i]`` is the step at which ``metrics[i]`` was read.

    Example:
      >>> import jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse")
      >>> source = lambda key, n: fj.data.sinusoid_tasks(key, n, 5, 5)
      >>> state, history = fj.meta_train(learner, optax.adam(1e-3), source, steps=20, meta_batch=2,
      ...                                key=jax.random.key(0), log_every=10)
      >>> history.steps
      [10, 20]
      >>> history.series("loss").shape
      (2,)
    """

    steps: list
    metrics: list

    def series(self, name: str) -> np.ndarray:
        """The logged values of metric ``name`` (e.g. ``"loss"``), one per logged step."""
        return np.asarray([m[name] for m in self.metrics])


def meta_train(
    learner: Learner,
    optimizer: optax.GradientTransformation,
    source: Any,
    *,
    steps: int,
    meta_batch: int,
    key: Array,
    params: Any = None,
    state: TrainState | None = None,
    task_chunk: int | None = None,
    log_every: int = 100,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int = 3,
    log_dir: str | os.PathLike | None = None,
    skip_nonfinite: bool = False,
    progress: bool = True,
    desc: str | None = None,
    mesh: Any = None,
    max_seconds: float | None = None,
) -> tuple[TrainState, History]:
    """Meta-trains ``learner`` for ``steps`` meta-steps.

    Args:
      learner: a :class:`~fsl_jax.Learner`.
      optimizer: the outer optax optimiser.
      source: where tasks come from: a jittable ``(key, num_tasks) -> Task`` (sampled inside the compiled step,
        e.g. ``DeviceSampler.sample``) or a :class:`~fsl_jax.data.HostSampler` (sampled on the host, batch ``i``
        for step ``i``).
      steps: total meta-steps (a resumed run continues up to this number).
      meta_batch: tasks per meta-step.
      key: the run's PRNG key; step ``i`` uses ``fold_in(key, i)``, so a resumed run draws exactly what an
        uninterrupted one would.
      params: initial meta-parameters (default: ``learner.init`` on a sampled task).
      state: a :class:`TrainState` to continue from (overrides ``params``).
      task_chunk: see :func:`make_meta_step`.
      log_every: read metrics back to the host every this many steps (the only host syncs of the loop).
      checkpoint_dir: save a checkpoint there every ``checkpoint_every`` steps and at the end; if it already holds
        checkpoints, training resumes from the latest one.
      checkpoint_every: steps between checkpoints (default: ``log_every * 10``).
      keep: checkpoints kept.
      log_dir: append the logged metrics to ``log_dir/metrics.jsonl`` (default: ``checkpoint_dir``, if any).
      skip_nonfinite: skip non-finite updates instead of stopping.
      progress: show a tqdm progress bar.
      desc: the progress bar's label.
      mesh: shard task batches over this mesh (see :mod:`fsl_jax.parallel`).
      max_seconds: stop at the first logging point after this much wall time (a time-budgeted run); the state
        then holds fewer than ``steps`` steps.

    Returns:
      ``(state, history)``.

    Raises:
      NonFiniteError: a step produced a NaN/Inf loss or gradient (and ``skip_nonfinite`` is off). The last
        checkpoint written before it is kept.

    Example:
      >>> import functools, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP(), "mse", inner_lr=0.01)
      >>> source = functools.partial(fj.data.sinusoid_tasks, shots=10, queries=10)
      >>> state, history = fj.meta_train(learner, optax.adam(1e-3), source, steps=200, meta_batch=25,
      ...                                key=jax.random.key(0), progress=False)
    """
    from fsl_jax.checkpoint import latest_step, restore_checkpoint, save_checkpoint
    from fsl_jax.data.sampler import HostSampler

    steps = _check_positive_int("steps", steps)
    meta_batch = _check_positive_int("meta_batch", meta_batch)
    log_every = _check_positive_int("log_every", log_every)
    checkpoint_every = _check_positive_int("checkpoint_every", checkpoint_every or log_every * 10)
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number or None, got {max_seconds!r}")
    host = isinstance(source, HostSampler)
    if not host and not callable(source):
        raise TypeError(f"source must be a HostSampler or a callable (key, num_tasks) -> Task, got {type(source).__name__}")
    init_key, run_key = jax.random.split(key)

    if state is None:
        if params is None:
            example = source.sample(1, index=0) if host else source(init_key, 1)
            validate_task(example, batched=True)
            params = learner.init(init_key, jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), example))
        state = TrainState.create(learner, params, optimizer)
    if checkpoint_dir is not None and latest_step(checkpoint_dir) is not None:
        state = restore_checkpoint(checkpoint_dir, state)

    if mesh is not None:
        from fsl_jax.parallel import replicate

        state = replicate(state, mesh)
    if host:
        step_fn = make_meta_step(learner, optimizer, task_chunk=task_chunk, skip_nonfinite=skip_nonfinite, mesh=mesh)
    else:
        step_fn = make_meta_step(learner, optimizer, sampler=source, meta_batch=meta_batch, task_chunk=task_chunk,
                                 skip_nonfinite=skip_nonfinite, mesh=mesh)

    # XLA:CPU runs every simulated device's part of a step on one shared thread pool, and a participant that reaches
    # a collective blocks its thread until all have arrived. With many steps in flight (asynchronous dispatch), the
    # participants of a later step can hold every thread while a participant of an earlier step waits for one: the
    # all-reduce never completes and XLA aborts the process after 40 s. One step in flight avoids that, at the cost
    # of a host sync per step (cheap next to a step; real accelerators keep asynchronous dispatch).
    sync_each_step = mesh is not None and mesh.size > 1 and all(d.platform == "cpu" for d in mesh.devices.flat)
    history = History([], [])
    start = int(state.step)
    bar = tqdm(total=steps, initial=start, desc=desc or learner.name, disable=not progress, dynamic_ncols=True)
    metrics = None
    t0 = time.perf_counter()
    for i in range(start, steps):
        if host:
            tasks = jax.tree_util.tree_map(jnp.asarray, source.sample(meta_batch, index=i))
            state, metrics = step_fn(state, tasks, jax.random.fold_in(run_key, i))
        else:
            state, metrics = step_fn(state, run_key)
        if sync_each_step:
            jax.block_until_ready(state.step)
        done = i + 1
        last = done == steps
        logging = done % log_every == 0 or last
        if logging and max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            last = True
        if logging:
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            history.steps.append(done)
            history.metrics.append(values)
            if int(state.first_nonfinite_step) >= 0 and not skip_nonfinite:
                bar.close()
                bad = int(state.first_nonfinite_step)
                term = "loss" if not math.isfinite(values["loss"]) else "gradient"
                raise NonFiniteError(
                    f"meta-step {bad} produced a non-finite {term} (detected at step {done}); "
                    f"last checkpoint: {latest_step(checkpoint_dir) if checkpoint_dir else None}"
                )
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "accuracy")})
        if checkpoint_dir is not None and (done % checkpoint_every == 0 or last):
            save_checkpoint(checkpoint_dir, state, keep=keep)
        bar.update(1)
        if last:
            break
    bar.close()
    if metrics is not None:
        jax.block_until_ready(state.params)
    log_dir = log_dir if log_dir is not None else checkpoint_dir
    if log_dir is not None and history.steps:
        _append_metrics(log_dir, history, start, time.perf_counter() - t0)
    return state, history


def _append_metrics(directory: str | os.PathLike, history: History, start: int, seconds: float) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "metrics.jsonl"), "a") as f:
        for step, values in zip(history.steps, history.metrics):
            f.write(json.dumps({"step": step, **values}) + "\n")
        f.write(json.dumps({"event": "segment", "from_step": start, "to_step": history.steps[-1], "seconds": seconds}) + "\n")

