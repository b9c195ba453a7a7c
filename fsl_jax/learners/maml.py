"""MAML and its family as options of one inner loop: MAML, FOMAML, ANIL and Meta-SGD.

The inner loop is a ``lax.scan`` of SGD steps on the support loss. The outer ``jax.grad`` differentiates through the
inner ``jax.grad``, so MAML's meta-gradient is second order with no extra code; FOMAML stops the gradient through the
inner gradients; ANIL adapts only the head's parameters; Meta-SGD learns one inner learning rate per parameter.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, resolve_loss, way_mask_kwargs
from fsl_jax.tasks import Task

Array = Any


def _check_common(model: Any, inner_lr: float, inner_steps: int) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a flax.linen.Module, got {type(model).__name__}")
    if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
        raise ValueError(f"inner_steps must be a positive int, got {inner_steps!r}")
    if not isinstance(inner_lr, (int, float)) or isinstance(inner_lr, bool) or not 0 < inner_lr < float("inf"):
        raise ValueError(f"inner_lr must be a positive finite number, got {inner_lr!r}")


def inner_loop(
    loss_of_fast: Callable[[Any], Array],
    fast: Any,
    lrs: Any,
    steps: int,
    *,
    first_order: bool = False,
    remat: bool = False,
) -> Any:
    """Runs ``steps`` SGD steps ``fast <- fast - lr * grad(loss_of_fast)(fast)`` as a ``lax.scan``.

    Args:
      loss_of_fast: the support loss as a function of the adapted parameters.
      fast: initial adapted parameters (a pytree).
      lrs: a scalar or a pytree of learning rates shaped like ``fast`` (Meta-SGD).
      steps: number of inner steps.
      first_order: stop the gradient through the inner gradients (FOMAML).
      remat: recompute each inner step's activations in the backward pass (``jax.checkpoint``): less memory, more time.
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

    if remat:
        step = jax.checkpoint(step)
    fast, _ = jax.lax.scan(step, fast, None, length=steps)
    return fast


def _split_head(params: dict, head: Sequence[str]) -> tuple[dict, dict]:
    missing = [name for name in head if name not in params]
    if missing:
        raise ValueError(f"head {list(head)!r}: no parameter subtree named {missing} (top-level names: {list(params)})")
    head_part = {k: v for k, v in params.items() if k in head}
    body_part = {k: v for k, v in params.items() if k not in head}
    return head_part, body_part


def _make(
    model: nn.Module,
    loss: str | Callable,
    inner_lr: float,
    inner_steps: int,
    *,
    first_order: bool,
    remat: bool,
    head: str | Sequence[str] | None,
    learn_lr: bool,
    name: str,
) -> Learner:
    _check_common(model, inner_lr, inner_steps)
    loss_fn, kind = resolve_loss(loss)
    heads: tuple[str, ...] | None = None
    if head is not None:
        heads = (head,) if isinstance(head, str) else tuple(head)
        if not heads or not all(isinstance(h, str) for h in heads):
            raise ValueError(f"head must be a parameter name or a sequence of names, got {head!r}")

    def variables_of(params):
        return params["model"] if learn_lr else params

    def init(key: Array, task: Task):
        variables = model.init(key, task.support_x)
        if "params" not in variables:
            raise ValueError("model.init returned no 'params' collection; nothing to meta-learn")
        if heads is not None:
            _split_head(dict(variables["params"]), heads)
        if not learn_lr:
            return variables
        lrs = jax.tree_util.tree_map(lambda p: jnp.full_like(p, inner_lr), variables["params"])
        return {"model": variables, "inner_lr": lrs}

    def adapt(params, task: Task, key: Array):
        del key
        variables = variables_of(params)
        others = {k: v for k, v in variables.items() if k != "params"}
        all_params = dict(variables["params"])
        lrs: Any = params["inner_lr"] if learn_lr else inner_lr
        if heads is None:
            fixed: dict = {}
            fast = all_params
        else:
            fast, fixed = _split_head(all_params, heads)
            if learn_lr:
                lrs, _ = _split_head(dict(lrs), heads)

        def support_loss(fast_params):
            full = {**others, "params": {**fixed, **fast_params}}
            predictions = model.apply(full, task.support_x)
            return loss_fn(predictions, task.support_y, task.support_mask, **way_mask_kwargs(task))

        fast = inner_loop(support_loss, fast, lrs, inner_steps, first_order=first_order, remat=remat)
        return {**others, "params": {**fixed, **fast}}

    def predict(params, adapted, x):
        del params
        return model.apply(adapted, x)

    return Learner(init=init, adapt=adapt, predict=predict, loss=loss_fn, kind=kind, name=name)


@records_config
def maml(
    model: nn.Module,
    loss: str | Callable = "xent",
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    remat: bool = False,
) -> Learner:
    """Model-Agnostic Meta-Learning (Finn et al., 2017).

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
      inner_lr: inner SGD learning rate.
      inner_steps: inner SGD steps.
      first_order: FOMAML: ignore second-order terms.
      remat: ``jax.checkpoint`` each inner step (same gradient, less memory, more compute).

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
    """
    return _make(model, loss, inner_lr, inner_steps, first_order=first_order, remat=remat, head=None,
                 learn_lr=False, name="fomaml" if first_order else "maml")


@records_config
def anil(
    model: nn.Module,
    loss: str | Callable = "xent",
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    head: str | Sequence[str] = "head",
    first_order: bool = False,
    remat: bool = False,
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
    return _make(model, loss, inner_lr, inner_steps, first_order=first_order, remat=remat, head=head,
                 learn_lr=False, name="anil")


@records_config
def meta_sgd(
    model: nn.Module,
    loss: str | Callable = "xent",
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    remat: bool = False,
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
    return _make(model, loss, inner_lr, inner_steps, first_order=first_order, remat=remat, head=None,
                 learn_lr=True, name="meta_sgd")
