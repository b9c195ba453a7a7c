"""MAML and its family as options of one inner loop: MAML, FOMAML, ANIL and Meta-SGD.

The inner loop is a ``lax.scan`` of SGD steps on the support loss. The outer ``jax.grad`` differentiates through the
inner ``jax.grad``, so MAML's meta-gradient is second order with no extra code; FOMAML stops the gradient through the
inner gradients; ANIL adapts only the head's parameters; Meta-SGD learns one inner learning rate per parameter.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from fsl_jax import _validate
from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, resolve_loss, way_mask_kwargs
from fsl_jax.tasks import Task

Array = Any


def _check_common(model: Any, inner_lr: float, inner_steps: int) -> None:
    _validate.module("model", model)
    _validate.positive_int("inner_steps", inner_steps)
    _validate.number("inner_lr", inner_lr)


RematSchedule = Any  # False | True | "step" | "sqrt" | int


def remat_block(remat: Any, steps: int) -> int | None:
    """The block size of a ``remat`` schedule for ``steps`` inner steps: ``None`` for no blocks.

    ``False``: nothing recomputed. ``True`` or ``"step"``: every inner step is checkpointed (its activations are
    recomputed in the backward pass; the ``steps`` parameter carries are kept). ``"sqrt"`` or an int ``b``: nested
    checkpointing: the scan runs blocks of ``b`` steps (``b = round(sqrt(steps))`` for ``"sqrt"``; a last, shorter
    block takes the remainder), only each block's input carry is kept, and a block's steps are recomputed (each
    step checkpointed again) when the backward pass reaches it. Memory then holds about ``steps / b + b`` carries
    and one step's activations, instead of ``steps`` of each.

    Example:
      >>> remat_block("sqrt", 100), remat_block(5, 20), remat_block(True, 20), remat_block(False, 20)
      (10, 5, None, None)
    """
    if remat is False or remat is True or remat == "step":
        return None
    if remat == "sqrt":
        return max(1, round(math.sqrt(steps)))
    if isinstance(remat, int) and not isinstance(remat, bool):
        if not 1 <= remat <= steps:
            raise ValueError(f"remat={remat} (a block size) must be between 1 and inner_steps={steps}")
        return remat
    raise ValueError(
        f"remat must be False, True, 'step', 'sqrt' or a block size (an int in 1..inner_steps), got {remat!r}"
    )


def _scan_steps(step: Callable, carry: Any, xs: Any, length: int, remat: RematSchedule) -> tuple[Any, Any]:
    """``lax.scan(step, carry, xs, length)`` under a ``remat`` schedule (see :func:`remat_block`)."""
    block = remat_block(remat, length)
    if remat is False:
        return jax.lax.scan(step, carry, xs, length=length)
    step = jax.checkpoint(step)
    if block is None:
        return jax.lax.scan(step, carry, xs, length=length)
    blocks, rest = divmod(length, block)
    split = lambda x, a, b: jax.tree_util.tree_map(lambda v: v[a:b], x)
    head_xs = jax.tree_util.tree_map(lambda v: v[: blocks * block].reshape((blocks, block) + v.shape[1:]), xs)

    @jax.checkpoint
    def run_block(c, bx):
        return jax.lax.scan(step, c, bx, length=block)

    carry, ys = jax.lax.scan(run_block, carry, head_xs, length=blocks)
    ys = jax.tree_util.tree_map(lambda v: v.reshape((blocks * block,) + v.shape[2:]), ys)
    if rest:
        carry, tail = jax.lax.scan(step, carry, split(xs, blocks * block, length), length=rest)
        ys = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ys, tail)
    return carry, ys


def inner_loop(
    loss_of_fast: Callable[[Any], Array],
    fast: Any,
    lrs: Any,
    steps: int,
    *,
    first_order: bool = False,
    remat: RematSchedule = False,
) -> Any:
    """Runs ``steps`` SGD steps ``fast <- fast - lr * grad(loss_of_fast)(fast)`` as a ``lax.scan``.

    Args:
      loss_of_fast: the support loss as a function of the adapted parameters.
      fast: initial adapted parameters (a pytree).
      lrs: a scalar or a pytree of learning rates shaped like ``fast`` (Meta-SGD).
      steps: number of inner steps.
      first_order: stop the gradient through the inner gradients (FOMAML).
      remat: what the backward pass recomputes instead of storing: ``False``, ``True`` / ``"step"`` (each step),
        ``"sqrt"`` or a block size (nested checkpointing, memory sub-linear in ``steps``; see :func:`remat_block`).
        Every schedule gives the same gradient.

    Example:
      >>> import jax.numpy as jnp
      >>> float(inner_loop(lambda w: (w - 3.0) ** 2, jnp.array(0.0), 0.25, 2))  # 0 -> 1.5 -> 2.25
      2.25
    """

    def step(fast, _):
        grads = jax.grad(loss_of_fast)(fast)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        if isinstance(lrs, (int, float)):
            fast = jax.tree_util.tree_map(lambda p, g: p - lrs * g, fast, grads)
        else:
            fast = jax.tree_util.tree_map(lambda p, g, lr: p - lr * g, fast, grads, lrs)
        return fast, None

    fast, _ = _scan_steps(step, fast, None, steps, remat)
    return fast


def _split_head(params: dict, head: Sequence[str]) -> tuple[dict, dict]:
    missing = [name for name in head if name not in params]
    if missing:
        raise ValueError(f"head {list(head)!r}: no parameter subtree named {missing} (top-level names: {list(params)})")
    head_part = {k: v for k, v in params.items() if k in head}
    body_part = {k: v for k, v in params.items() if k not in head}
    return head_part, body_part


def _is_norm(path: tuple) -> bool:
    return any("norm" in str(part).lower() for part in path[:-1])


def _check_plus_plus(
    first_order: bool,
    inner_steps: int,
    per_step_lr: bool,
    multi_step_loss: Any,
    per_step_norm: bool,
    first_order_steps: Any,
    learn_lr: bool,
) -> None:
    for name, value in (("per_step_lr", per_step_lr), ("per_step_norm", per_step_norm)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    for name, value in (("multi_step_loss", multi_step_loss), ("first_order_steps", first_order_steps)):
        _validate.integer(name, value, 0)  # meta-steps; 0 turns it off
    if first_order and first_order_steps:
        raise ValueError(
            f"first_order_steps={first_order_steps} (first order for the first meta-steps, then second "
            f"order) contradicts first_order=True (first order throughout): use one of them"
        )
    if multi_step_loss and inner_steps < 2:
        raise ValueError(
            f"multi_step_loss={multi_step_loss} weights the query loss after each inner step, so it "
            f"needs inner_steps >= 2, got inner_steps={inner_steps}"
        )
    if per_step_lr and learn_lr:
        raise ValueError(
            "per_step_lr=True (one learned rate per layer and step) contradicts Meta-SGD's learned rate "
            "per parameter element: use one of them"
        )


def _make(
    model: nn.Module,
    loss: str | Callable,
    inner_lr: float,
    inner_steps: int,
    *,
    first_order: bool,
    remat: RematSchedule,
    head: str | Sequence[str] | None,
    learn_lr: bool,
    name: str,
    per_step_lr: bool = False,
    multi_step_loss: int = 0,
    per_step_norm: bool = False,
    first_order_steps: int = 0,
) -> Learner:
    _check_common(model, inner_lr, inner_steps)
    remat_block(remat, inner_steps)
    _check_plus_plus(first_order, inner_steps, per_step_lr, multi_step_loss, per_step_norm, first_order_steps, learn_lr)
    loss_fn, kind = resolve_loss(loss)
    heads: tuple[str, ...] | None = None
    if head is not None:
        heads = (head,) if isinstance(head, str) else tuple(head)
        if not heads or not all(isinstance(h, str) for h in heads):
            raise ValueError(f"head must be a parameter name or a sequence of names, got {head!r}")
    has_lrs = learn_lr or per_step_lr
    uses_step = bool(multi_step_loss or first_order_steps)

    def variables_of(params):
        return params["model"] if has_lrs else params

    def split(all_params: dict) -> tuple[dict, dict, dict]:
        """(adapted, fixed, per-step norm) parameters, each a flat {path: leaf} dict."""
        flat = traverse_util.flatten_dict(all_params)
        norm = {k: v for k, v in flat.items() if per_step_norm and _is_norm(k)}
        rest = {k: v for k, v in flat.items() if k not in norm}
        if heads is None:
            return rest, {}, norm
        _split_head(all_params, heads)
        fast = {k: v for k, v in rest.items() if k[0] in heads}
        return fast, {k: v for k, v in rest.items() if k[0] not in heads}, norm

    def init(key: Array, task: Task):
        variables = model.init(key, task.support_x)
        if "params" not in variables:
            raise ValueError("model.init returned no 'params' collection; nothing to meta-learn")
        variables = dict(variables)
        fast, _, norm = split(dict(variables["params"]))
        if per_step_norm:
            if not norm:
                raise ValueError(
                    f"per_step_norm=True needs normalisation parameters (a module whose name contains "
                    f"'norm'), found none in {sorted('/'.join(map(str, k)) for k in fast)[:6]}"
                )
            flat = traverse_util.flatten_dict(dict(variables["params"]))
            for path, leaf in norm.items():  # one set per number of updates taken: 0..inner_steps
                flat[path] = jnp.broadcast_to(leaf, (inner_steps + 1,) + leaf.shape)
            variables["params"] = traverse_util.unflatten_dict(flat)
        if not has_lrs:
            return variables
        if per_step_lr:
            lrs = {k: jnp.full((inner_steps,), inner_lr, jnp.result_type(float)) for k in fast}
        else:
            lrs = {k: jnp.full_like(v, inner_lr) for k, v in fast.items()}
        return {"model": variables, "inner_lr": traverse_util.unflatten_dict(lrs)}

    def run(params, task: Task, order_first: bool, trajectory: bool):
        variables = variables_of(params)
        others = {k: v for k, v in variables.items() if k != "params"}
        fast, fixed, norm = split(dict(variables["params"]))
        if has_lrs:
            flat_lrs = traverse_util.flatten_dict(dict(params["inner_lr"]))
            lrs: Any = {k: flat_lrs[k] for k in fast}
        else:
            lrs = inner_lr

        def full(fast_params, k):  # the Flax variables after k updates (norm set k)
            norm_k = {p: v[k] for p, v in norm.items()}
            return {**others, "params": traverse_util.unflatten_dict({**fixed, **norm_k, **fast_params})}

        def step(fast_params, i):
            def support_loss(f):
                predictions = model.apply(full(f, i), task.support_x)
                return loss_fn(predictions, task.support_y, task.support_mask, **way_mask_kwargs(task))

            grads = jax.grad(support_loss)(fast_params)
            if order_first:
                grads = jax.lax.stop_gradient(grads)
            lr_i = jax.tree_util.tree_map(lambda lr: lr[i], lrs) if per_step_lr else lrs
            if isinstance(lr_i, (int, float)):
                new = {k: p - lr_i * grads[k] for k, p in fast_params.items()}
            else:
                new = {k: p - lr_i[k] * grads[k] for k, p in fast_params.items()}
            return new, (full(new, i + 1) if trajectory else None)

        fast, path = _scan_steps(step, fast, jnp.arange(inner_steps), inner_steps, remat)
        final = full(fast, inner_steps)
        return {"final": final, "steps": path} if trajectory else final

    def adapt(params, task: Task, key: Array, step: Array | None = None):
        del key
        trajectory = bool(multi_step_loss) and step is not None
        if first_order_steps and step is not None:
            return jax.lax.cond(
                step < first_order_steps,
                lambda p: run(p, task, True, trajectory),
                lambda p: run(p, task, False, trajectory),
                params,
            )
        return run(params, task, first_order, trajectory)

    def final(adapted):
        return adapted["final"] if isinstance(adapted, dict) and "final" in adapted and "steps" in adapted else adapted

    def predict(params, adapted, x):
        del params
        return model.apply(final(adapted), x)

    extra_loss = None
    if multi_step_loss:

        def extra_loss(params, adapted, task: Task, key: Array, step: Array | None = None):
            del params, key
            if step is None or not (isinstance(adapted, dict) and "steps" in adapted):
                return jnp.zeros(())
            weights = msl_weights(step, inner_steps, multi_step_loss)

            def weighted(_):
                def query_loss(variables):
                    predictions = model.apply(variables, task.query_x)
                    return loss_fn(predictions, task.query_y, task.query_mask, **way_mask_kwargs(task))

                losses = jax.lax.map(query_loss, adapted["steps"])  # after 1..inner_steps updates
                # total = sum_i w_i L_i, written as L_n + sum_{i<n} w_i (L_i - L_n) since meta_loss adds L_n
                return jnp.sum(weights[:-1] * (losses[:-1] - losses[-1]))

            return jax.lax.cond(step < multi_step_loss, weighted, lambda _: jnp.zeros(()), None)

    return Learner(
        init=init,
        adapt=adapt,
        predict=predict,
        loss=loss_fn,
        kind=kind,
        name=name,
        extra_loss=extra_loss,
        uses_step=uses_step,
    )


def msl_weights(step: Array, inner_steps: int, anneal_steps: int) -> Array:
    """MAML++'s multi-step loss weights at meta-step ``step``: one weight per inner step, summing to 1.

    At step 0 every inner step's query loss weighs ``1 / inner_steps``; the weights of the steps before the last
    fall linearly to 0 at ``anneal_steps`` (the last step's weight takes the rest), after which the loss is MAML's.

    Example:
      >>> msl_weights(0, 4, 10).tolist(), msl_weights(5, 4, 10).tolist(), msl_weights(10, 4, 10).tolist()
      ([0.25, 0.25, 0.25, 0.25], [0.125, 0.125, 0.125, 0.625], [0.0, 0.0, 0.0, 1.0])
    """
    early = jnp.maximum(0.0, 1.0 - jnp.asarray(step, jnp.result_type(float)) / anneal_steps) / inner_steps
    weights = jnp.full((inner_steps,), early)
    return weights.at[-1].set(1.0 - early * (inner_steps - 1))


@records_config
def maml(
    model: nn.Module,
    loss: str | Callable = "xent",
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    remat: RematSchedule = False,
    *,
    per_step_lr: bool = False,
    multi_step_loss: int = 0,
    per_step_norm: bool = False,
    first_order_steps: int = 0,
) -> Learner:
    """Model-Agnostic Meta-Learning (Finn et al., 2017), with MAML++'s options (Antoniou et al., 2019).

    ``params = learner.init(key, task)`` is exactly the Flax variables that ``model.init`` returns. ``adapt`` runs
    ``inner_steps`` SGD steps on the support loss (a ``lax.scan``); the meta-gradient is ``jax.grad`` through it, so
    it is second order unless ``first_order=True`` (FOMAML).

    Padded tasks (:func:`fsl_jax.data.pad_task`): the support loss is weighted by ``support_mask`` and, with a
    ``way_mask``, leaves the padded classes out of the softmax, so the head's columns of padded classes get no
    gradient, inner or outer, and the real columns adapt as in the unpadded task. The model must treat rows
    independently (no batch-statistics norm) for the padded task to give exactly the unpadded result. The same
    holds for :func:`anil`, :func:`meta_sgd` and :func:`fsl_jax.reptile`.

    Args:
      model: a ``flax.linen.Module`` applied to one task's inputs, ``model.apply(variables, x)``.
      loss: ``"mse"``, ``"xent"`` (integer labels) or ``(predictions, targets) -> scalar``.
      inner_lr: inner SGD learning rate (the starting value of the learned rates with ``per_step_lr``).
      inner_steps: inner SGD steps.
      first_order: FOMAML: ignore second-order terms.
      remat: what the backward pass recomputes instead of storing, for long inner loops; every schedule gives the
        same gradient. ``False``; ``True`` / ``"step"``: each inner step's activations; ``"sqrt"`` or a block size
        ``b``: nested checkpointing of blocks of ``b`` (about ``sqrt(inner_steps)``) steps, so memory grows
        sub-linearly in ``inner_steps`` (:func:`fsl_jax.learners.remat_block`).
      per_step_lr: MAML++ LSLR: a learned inner learning rate per parameter tensor (layer weight or bias) and per
        inner step, meta-trained with the weights: ``params = {"model": variables, "inner_lr": {path: [inner_steps]}}``.
      multi_step_loss: MAML++ MSL: for the first ``multi_step_loss`` meta-steps the outer loss is a weighted sum of
        the query losses after every inner step, with weights annealed from uniform to the last step alone
        (:func:`fsl_jax.learners.msl_weights`); 0 turns it off. The reported ``query_loss`` is the last step's.
      per_step_norm: MAML++ BNWB: every normalisation layer (a module whose name contains ``norm``) gets its own
        scale and bias for each number of inner updates taken (``inner_steps + 1`` sets, stored stacked): the forward
        after ``k`` updates uses set ``k``; the sets are meta-learned, not adapted in the inner loop.
      first_order_steps: MAML++ derivative-order annealing: first order for the first ``first_order_steps``
        meta-steps, second order after (a ``lax.cond`` on the step count: one compilation).

    With ``multi_step_loss`` or ``first_order_steps`` the learner follows the meta-step count (``uses_step``):
    :func:`fsl_jax.make_meta_step` passes ``state.step``; evaluation uses the end of the schedule.

    Example:
      >>> import jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((40, 40), 1), "mse", inner_lr=0.01, inner_steps=1)
      >>> tasks = fj.data.sinusoid_tasks(jax.random.key(0), 4, 10, 10)
      >>> params = learner.init(jax.random.key(1), fj.task_at(tasks, 0))
      >>> state = fj.TrainState.create(learner, params, optax.adam(1e-3))
      >>> step = fj.make_meta_step(learner, optax.adam(1e-3))
      >>> state, metrics = step(state, tasks, jax.random.key(2))
      >>> int(state.step), round(float(metrics["loss"]), 2)  # mean query loss after one inner step
      (1, 5.95)

      MAML++ (all four options) on Conv-4, with 20 inner steps checkpointed in blocks of about sqrt(20):

      >>> plus = fj.maml(fj.models.Conv4(num_classes=5, norm="layer"), "xent", 0.1, 20, remat="sqrt",
      ...                per_step_lr=True, multi_step_loss=500, per_step_norm=True, first_order_steps=1000)
      >>> plus.uses_step
      True
    """
    plus_plus = per_step_lr or multi_step_loss or per_step_norm or first_order_steps
    name = "maml++" if plus_plus else "fomaml" if first_order else "maml"
    return _make(
        model,
        loss,
        inner_lr,
        inner_steps,
        first_order=first_order,
        remat=remat,
        head=None,
        learn_lr=False,
        name=name,
        per_step_lr=per_step_lr,
        multi_step_loss=multi_step_loss,
        per_step_norm=per_step_norm,
        first_order_steps=first_order_steps,
    )


@records_config
def anil(
    model: nn.Module,
    loss: str | Callable = "xent",
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    head: str | Sequence[str] = "head",
    first_order: bool = False,
    remat: RematSchedule = False,
) -> Learner:
    """Almost No Inner Loop (Raghu et al., 2020): MAML whose inner loop adapts only the head.

    Args:
      model: a ``flax.linen.Module``; its top-level parameter subtree(s) named by ``head`` are adapted.
      head: the name (or names) of the head's top-level parameter subtree, e.g. ``"head"`` for
        ``fj.models.Conv4(..., )`` whose classifier is called ``head``.
      loss, inner_lr, inner_steps, first_order, remat: as in :func:`maml`.

    Example:
      >>> import fsl_jax as fj
      >>> learner = fj.anil(fj.models.Conv4(num_classes=5), "xent", inner_lr=0.4, inner_steps=5)
      >>> learner.name, learner.kind
      ('anil', 'classification')
    """
    return _make(
        model, loss, inner_lr, inner_steps, first_order=first_order, remat=remat, head=head, learn_lr=False, name="anil"
    )


@records_config
def meta_sgd(
    model: nn.Module,
    loss: str | Callable = "xent",
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    remat: RematSchedule = False,
) -> Learner:
    """Meta-SGD (Li et al., 2017): MAML with a meta-learned learning rate for every parameter.

    ``params = {"model": flax_variables, "inner_lr": tree like flax_variables["params"]}``; the learning rates start
    at ``inner_lr`` and are meta-trained with the weights (their sign is free, so they also learn a direction).

    Example:
      >>> import jax, fsl_jax as fj
      >>> learner = fj.meta_sgd(fj.models.MLP((40, 40), 1), "mse", inner_lr=0.01)
      >>> task = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 5, 5), 0)
      >>> params = learner.init(jax.random.key(1), task)
      >>> list(params), params["inner_lr"]["dense0"]["kernel"].shape  # one learning rate per weight
      (['model', 'inner_lr'], (1, 40))
      >>> round(float(params["inner_lr"]["head"]["bias"][0]), 4)  # starts at inner_lr
      0.01
    """
    return _make(
        model,
        loss,
        inner_lr,
        inner_steps,
        first_order=first_order,
        remat=remat,
        head=None,
        learn_lr=True,
        name="meta_sgd",
    )
