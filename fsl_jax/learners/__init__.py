"""Meta-learners, each a constructor returning a :class:`~fsl_jax.Learner`."""

from fsl_jax.learners.base import (
    Learner,
    accuracy,
    mask_classes,
    meta_loss,
    mse_loss,
    resolve_loss,
    task_grad,
    xent_loss,
)
from fsl_jax.learners.imaml import conjugate_gradient, imaml
from fsl_jax.learners.maml import anil, inner_loop, maml, meta_sgd, msl_weights, remat_block
from fsl_jax.learners.matching import FullContextEmbedding, matching_net
from fsl_jax.learners.protonet import class_prototypes, protonet
from fsl_jax.learners.relation import RelationEncoder, RelationModule, relation_mse_loss, relation_net
from fsl_jax.learners.reptile import reptile
from fsl_jax.learners.siamese import contrastive_loss, siamese
from fsl_jax.learners.vae import VAEDecoder, VAEEncoder, cvae_classifier

__all__ = [
    "FullContextEmbedding",
    "Learner",
    "RelationEncoder",
    "RelationModule",
    "VAEDecoder",
    "VAEEncoder",
    "accuracy",
    "anil",
    "class_prototypes",
    "conjugate_gradient",
    "contrastive_loss",
    "cvae_classifier",
    "imaml",
    "inner_loop",
    "maml",
    "mask_classes",
    "matching_net",
    "meta_loss",
    "meta_sgd",
    "msl_weights",
    "remat_block",
    "mse_loss",
    "protonet",
    "relation_mse_loss",
    "relation_net",
    "reptile",
    "resolve_loss",
    "siamese",
    "task_grad",
    "xent_loss",
]
