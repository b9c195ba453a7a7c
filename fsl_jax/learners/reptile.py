"""Reptile (Nichol et al., 2018): move the meta-parameters toward the task-adapted parameters."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, accuracy, way_mask_kwargs
from fsl_jax.learners.maml import maml
from fsl_jax.tasks import Task

Array = Any


@records_config
def reptile(
    model: nn.Module,
    loss: str | Callable = "xent",
    inner_lr: float = 0.01,
    inner_steps: int = 5,
) -> Learner:
    """Reptile: the meta-"gradient" of a task is ``params - adapted_params``.

    With ``optax.sgd(epsilon)`` as the outer optimiser, one meta-step is the Reptile update
    ``theta <- theta + epsilon * mean_tasks(phi_task - theta)``; any optax optimiser may be used on that direction.
    Adaptation is ``inner_steps`` SGD steps on the support set (first order by construction: no gradient flows
    through the inner loop). The reported loss is the query loss after adaptation.

    Args:
      model: a ``flax.linen.Module``.
      loss: ``"mse"``, ``"xent"`` or a callable, as in :func:`fsl_jax.maml`.
      inner_lr: inner SGD learning rate.
      inner_steps: inner SGD steps (Reptile needs more than one to differ from joint training).

    Padded tasks: as in :func:`fsl_jax.maml` (masked support loss), so the Reptile direction of a padded task is the
    unpadded one, and 0 on the head's columns of padded classes.

    Example:
      >>> import fsl_jax as fj
      >>> learner = fj.reptile(fj.models.MLP((40, 40), 1), "mse", inner_lr=0.02, inner_steps=5)
      >>> learner.name, learner.kind
      ('reptile', 'regression')
    """
    base = maml(model, loss, inner_lr, inner_steps, first_order=True)

    def meta_grad(params, task: Task, key: Array):
        adapted = jax.lax.stop_gradient(base.adapt(params, task, key))
        grads = {
            name: jax.tree_util.tree_map(lambda p, a: p - a, tree, adapted[name])
            if name == "params"
            else jax.tree_util.tree_map(jnp.zeros_like, tree)
            for name, tree in params.items()
        }
        predictions = base.predict(params, adapted, task.query_x)
        query_loss = base.loss(predictions, task.query_y, task.query_mask, **way_mask_kwargs(task))
        aux = {"query_loss": query_loss}
        if base.kind == "classification":
            aux["accuracy"] = accuracy(predictions, task.query_y, task.query_mask, task.way_mask)
        return grads, (query_loss, aux)

    return base._replace(meta_grad=meta_grad, name="reptile")
