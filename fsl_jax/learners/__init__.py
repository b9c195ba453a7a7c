"""Meta-learners, each a constructor returning a :class:`~fsl_jax.Learner`."""

from fsl_jax.learners.base import Learner, accuracy, meta_loss, mse_loss, resolve_loss, task_grad, xent_loss
from fsl_jax.learners.maml import anil, inner_loop, maml, meta_sgd
from fsl_jax.learners.reptile import reptile

__all__ = [
    "Learner", "accuracy", "anil", "inner_loop", "maml", "meta_loss", "meta_sgd", "mse_loss", "reptile",
    "resolve_loss", "task_grad", "xent_loss",
]
