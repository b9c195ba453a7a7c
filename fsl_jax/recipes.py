"""Ready-made learner configurations for image episodes, shared by the CLI, the examples and the benchmarks.

``image_learner("protonet", ways=5, image_shape=(28, 28, 1))`` returns a learner and its outer optimiser with the
settings this project measured with; every value can be overridden by building the learner directly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import optax

from fsl_jax.learners import (
    Learner,
    anil,
    cvae_classifier,
    imaml,
    maml,
    matching_net,
    meta_sgd,
    protonet,
    relation_net,
    reptile,
    siamese,
)
from fsl_jax.learners.relation import RelationEncoder
from fsl_jax.models.conv import Conv4

GRADIENT_BASED = ("maml", "fomaml", "anil", "meta_sgd", "reptile", "maml++", "imaml")
METRIC_BASED = ("protonet", "matching_net", "relation_net", "siamese", "cvae")
BASELINES = ("pixel_nn",)
IMAGE_LEARNERS = GRADIENT_BASED + METRIC_BASED + BASELINES


class Recipe(NamedTuple):
    """A learner with the outer optimiser it is trained with (``trainable=False`` for fixed baselines)."""

    learner: Learner
    optimizer: optax.GradientTransformation
    trainable: bool = True


class Pixels(nn.Module):
    """The identity embedding: flattened pixels (for the nearest-neighbour baseline)."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        return x.reshape(x.shape[0], -1)


def image_learner(
    name: str,
    ways: int,
    *,
    image_shape: tuple[int, ...] = (28, 28, 1),
    inner_lr: float | None = None,
    inner_steps: int | None = None,
    learning_rate: float = 1e-3,
    hidden: int | None = None,
) -> Recipe:
    """A learner for ``ways``-way image episodes, with defaults that train on a CPU in minutes.

    Args:
      name: one of :data:`IMAGE_LEARNERS`.
      ways: classes per task.
      image_shape: ``(height, width, channels)``; images under 16 px get a three-block backbone.
      inner_lr, inner_steps: inner loop of the gradient-based learners (defaults: 0.4 and 1; ANIL 5 steps; Reptile
        0.1 and 5 steps; MAML++ 0.4 and 3 steps with all four of its options; iMAML 0.4 and 10 steps, ``lam=0.2``,
        5 CG iterations: chosen on the glyph "val" split among lam 0.2 / 0.5 / 1 / 2 / 5 and 5 / 10 steps).
      learning_rate: Adam learning rate of the outer loop.
      hidden: backbone channels (default 32 for second-order learners on CPU, 64 otherwise).

    Example:
      >>> from fsl_jax.recipes import image_learner
      >>> recipe = image_learner("protonet", ways=5)
      >>> recipe.learner.name, recipe.trainable
      ('protonet', True)
      >>> image_learner("pixel_nn", ways=5).trainable  # the nearest-neighbour baseline has nothing to train
      False
    """
    if name not in IMAGE_LEARNERS:
        raise ValueError(f"learner must be one of {IMAGE_LEARNERS}, got {name!r}")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (height, width, channels), got {image_shape}")
    small = min(image_shape[:2]) < 16
    blocks = 3 if small else 4
    optimizer = optax.adam(learning_rate)
    if name in GRADIENT_BASED:
        width = hidden or (32 if name in ("maml", "meta_sgd", "maml++", "imaml") else 64)
        model = Conv4(num_classes=ways, hidden=width, blocks=blocks)
        if name in ("maml", "fomaml"):
            learner = maml(model, "xent", inner_lr or 0.4, inner_steps or 1, first_order=name == "fomaml")
        elif name == "anil":
            learner = anil(model, "xent", inner_lr or 0.4, inner_steps or 5)
        elif name == "meta_sgd":
            learner = meta_sgd(model, "xent", inner_lr or 0.4, inner_steps or 1)
        elif name == "maml++":
            learner = maml(
                model,
                "xent",
                inner_lr or 0.4,
                inner_steps or 3,
                per_step_lr=True,
                multi_step_loss=100,
                per_step_norm=True,
                first_order_steps=50,
            )
        elif name == "imaml":
            learner = imaml(model, "xent", inner_lr or 0.4, inner_steps or 10, lam=0.2, cg_steps=5)
        else:
            learner = reptile(model, "xent", inner_lr or 0.1, inner_steps or 5)
        return Recipe(learner, optimizer)
    encoder = Conv4(hidden=hidden or 64, blocks=blocks)
    if name == "protonet":
        learner = protonet(encoder, ways)
    elif name == "matching_net":
        learner = matching_net(encoder, ways)
    elif name == "relation_net":
        learner = relation_net(RelationEncoder(hidden=hidden or 64, pooled=1 if small else 2), None, ways)
    elif name == "siamese":
        learner = siamese(encoder, ways)
    elif name == "cvae":
        learner = cvae_classifier(None, None, 16, ways)
    else:
        return Recipe(siamese(Pixels(), ways)._replace(name="pixel_nn"), optimizer, trainable=False)  # 1-NN
    return Recipe(learner, optimizer)
