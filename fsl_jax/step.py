"""The compiled meta-step: the train state, the batch meta-gradient and the one jitted, state-donating step.

``make_meta_step`` builds one ``jax.jit`` function: (optionally sample a task batch on device) -> adapt every task
(``vmap``) -> query loss -> meta-gradient -> optax update, with the train state donated. The host loop that drives it
(progress, metrics, checkpoints, signals) is :func:`fsl_jax.meta_train` in ``train.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fsl_jax import _validate
from fsl_jax.learners.base import Learner, meta_loss, task_grad
from fsl_jax.tasks import Task, task_at, validate_task

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


def _all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def batch_grads(
    learner: Learner, params: Any, tasks: Task, key: Array, task_chunk: int | None = None, step: Array | None = None
) -> tuple[Any, Array, dict]:
    """Mean meta-gradient, loss and metrics over a batch of tasks (``vmap`` over the task axis).

    With ``task_chunk``, tasks are processed ``task_chunk`` at a time in a ``lax.scan`` (gradients accumulated), so
    peak memory holds one chunk's activations instead of the whole batch's. ``step`` (the meta-step count) reaches
    learners with ``uses_step`` (MAML++ schedules).
    """
    total = jax.tree_util.tree_leaves(tasks.support_x)[0].shape[0]
    keys = jax.random.split(key, total)

    def chunk_grads(params, chunk: Task, chunk_keys):
        if learner.meta_grad is None:

            def mean_loss(p):
                losses, aux = jax.vmap(meta_loss, in_axes=(None, None, 0, 0, None))(learner, p, chunk, chunk_keys, step)
                return jnp.sum(losses), (losses, aux)

            grads, (losses, aux) = jax.grad(mean_loss, has_aux=True)(params)
        else:
            per_task, (losses, aux) = jax.vmap(task_grad, in_axes=(None, None, 0, 0, None))(
                learner, params, chunk, chunk_keys, step
            )
            grads = jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0), per_task)
        aux = jax.tree_util.tree_map(jnp.sum, aux)
        return grads, jnp.sum(losses), aux

    if task_chunk is None or task_chunk >= total:
        grads, loss_sum, aux_sum = chunk_grads(params, tasks, keys)
    else:
        if total % task_chunk:
            raise ValueError(f"task_chunk={task_chunk} must divide the task batch size {total}")
        chunks = total // task_chunk
        reshape = lambda x: x.reshape((chunks, task_chunk) + x.shape[1:])
        chunked_tasks = jax.tree_util.tree_map(reshape, tasks)
        chunked_keys = reshape(keys)

        def body(carry, xs):
            chunk, chunk_keys = xs
            grads, loss, aux = chunk_grads(params, chunk, chunk_keys)
            return jax.tree_util.tree_map(jnp.add, carry, (grads, loss, aux)), None

        zeros = jax.eval_shape(
            chunk_grads, params, jax.tree_util.tree_map(lambda x: x[0], chunked_tasks), chunked_keys[0]
        )
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
    param_rule: Callable | None = None,
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
        ``"tasks"`` axis; parameters and optimiser state are sharded along its ``"model"`` axis (FSDP, see
        :func:`fsl_jax.parallel.state_shardings`) or replicated when it has size 1. In a multi-process run, every
        process calls the step with the same arguments (global arrays, or the same host values).
      param_rule: ``(path, shape) -> PartitionSpec`` overriding the default sharding of each state leaf along the
        ``"model"`` axis.

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
        meta_batch = _validate.positive_int("meta_batch", meta_batch)
    elif meta_batch is not None:
        raise ValueError("meta_batch is only used with sampler=; without a sampler the batch size is the task axis")
    if task_chunk is not None:
        task_chunk = _validate.positive_int("task_chunk", task_chunk)
        if meta_batch is not None and meta_batch % task_chunk:
            raise ValueError(f"task_chunk={task_chunk} must divide meta_batch={meta_batch}")

    if mesh is not None:
        from fsl_jax import parallel

        parallel.check_mesh(mesh)
        if meta_batch is not None:
            parallel.check_batch(meta_batch, mesh, f"meta_batch={meta_batch}")
        if param_rule is not None and not callable(param_rule):
            raise TypeError(
                f"param_rule must be a callable (path, shape) -> PartitionSpec, got {type(param_rule).__name__}"
            )
    elif param_rule is not None:
        raise ValueError("param_rule needs mesh= (a mesh with a 'model' axis, see fj.parallel.task_mesh)")

    ways = _validate.source_ways(sampler) if sampler is not None else None

    def update(state: TrainState, tasks: Task, key: Array):
        # Trace-time checks (shapes only, nothing at run time): the error names the Task field or the two widths.
        validate_task(tasks, batched=True, check_values=False)
        _validate.check_output_width(learner, state.params, task_at(tasks, 0), ways)
        if mesh is not None:
            parallel.check_batch(tasks.support_x.shape[0], mesh)
            tasks = jax.lax.with_sharding_constraint(tasks, parallel.task_sharding(mesh))
            shardings = parallel.state_shardings(state, mesh, param_rule)  # from shapes, at trace time
            state = jax.lax.with_sharding_constraint(state, shardings)
        grads, loss, metrics = batch_grads(learner, state.params, tasks, key, task_chunk, state.step)
        finite = jnp.logical_and(jnp.isfinite(loss), _all_finite(grads))
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if skip_nonfinite:
            keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        bad = jnp.logical_not(finite)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            nonfinite_steps=state.nonfinite_steps + bad.astype(jnp.int32),
            first_nonfinite_step=jnp.where(
                bad & (state.first_nonfinite_step < 0), state.step, state.first_nonfinite_step
            ),
        )
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads), "finite": finite}
        if mesh is not None:  # the state keeps its layout; metrics are global values every process can read
            new_state = jax.lax.with_sharding_constraint(new_state, shardings)
            metrics = jax.lax.with_sharding_constraint(metrics, parallel.replicated(mesh))
        return new_state, metrics

    donate_argnums = (0,) if donate else ()
    if sampler is None:
        return jax.jit(update, donate_argnums=donate_argnums)
    if meta_batch is None:  # not reached: meta_batch was checked to be a positive int when sampler is given
        raise ValueError("meta_batch must be a positive int when sampler= is given, got None")

    def sampled_update(state: TrainState, key: Array):
        step_key = jax.random.fold_in(key, state.step)
        sample_key, adapt_key = jax.random.split(step_key)
        tasks = sampler(sample_key, meta_batch)
        return update(state, tasks, adapt_key)

    return jax.jit(sampled_update, donate_argnums=donate_argnums)
