"""Siamese networks with a contrastive loss (Koch et al., 2015; Hadsell et al., 2006), as an episodic learner.

The twin network is the encoder applied to both members of a pair. Training minimises the contrastive loss on
pairs of examples drawn from each task's support and query sets; a query is classified by its nearest support
example.

Mapping onto the :class:`~fsl_jax.Learner` contract:

* ``extra_loss`` is the contrastive term (on support + query examples; query labels are only seen here, never in
  ``adapt``);
* ``loss`` is the nearest-neighbour cross-entropy on the query logits. Its *value* is always reported (``query_loss``
  in the metrics), but its *gradient* is scaled by ``query_loss_weight``, 0 by default, so the default objective is
  the contrastive term alone, as in the paper. The reported total ``loss`` is the sum of both values.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax import _validate
from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, xent_loss
from fsl_jax.learners.protonet import class_weights, embed, sqeuclidean
from fsl_jax.tasks import Task

Array = Any
_EPS = 1e-12
_FAR = 1e9


def contrastive_loss(sq_dist: Array, same: Array, margin: float, weights: Array | None = None) -> Array:
    """Balanced contrastive loss: ``mean_pos(d^2) + mean_neg(max(0, margin - d)^2)``.

    Args:
      sq_dist: squared distances of the pairs, any shape.
      same: whether each pair has the same label (bool, like ``sq_dist``).
      margin: the margin of negative pairs (in distance units).
      weights: optional pair weights (0 drops a pair).

    Returns:
      the mean over positive pairs of ``d^2`` plus the mean over negative pairs of ``max(0, margin - d)^2``
      (each mean is 0 when there is no such pair).

    Example:
      >>> import jax.numpy as jnp
      >>> float(contrastive_loss(jnp.array([1.0, 0.25]), jnp.array([True, False]), margin=1.0))
      1.25
    """
    w = jnp.ones_like(sq_dist) if weights is None else weights.astype(sq_dist.dtype)
    pos = w * same.astype(sq_dist.dtype)
    neg = w - pos
    d = jnp.sqrt(jnp.maximum(sq_dist, _EPS))
    pos_term = jnp.sum(pos * sq_dist) / jnp.maximum(jnp.sum(pos), 1.0)
    neg_term = jnp.sum(neg * jnp.square(jax.nn.relu(margin - d))) / jnp.maximum(jnp.sum(neg), 1.0)
    return pos_term + neg_term


def _scaled_gradient(loss_fn, weight: float):
    """``loss_fn`` whose value is unchanged but whose gradient is multiplied by ``weight``."""
    if weight == 1.0:
        return loss_fn

    def scaled(predictions, targets, mask=None, **kwargs):
        value = loss_fn(predictions, targets, mask, **kwargs)
        return jax.lax.stop_gradient(value) + weight * (value - jax.lax.stop_gradient(value))

    return scaled


def nearest_neighbour_logits(queries: Array, support: Array, labels_onehot: Array) -> Array:
    """``[n, ways]`` logits: minus the Euclidean distance to the nearest support example of each class.

    A class without (unmasked) support examples gets a logit of ``-1e9``.

    Args:
      queries: ``[n, d]`` query embeddings.
      support: ``[m, d]`` support embeddings.
      labels_onehot: ``[m, ways]`` one-hot support labels (zero rows are ignored).
    """
    dist = jnp.sqrt(jnp.maximum(sqeuclidean(queries, support), _EPS))  # [n, m]
    in_class = labels_onehot.T[None, :, :] > 0  # [1, ways, m]
    per_class = jnp.where(in_class, dist[:, None, :], _FAR)  # [n, ways, m]
    return -jnp.min(per_class, axis=-1)


@records_config
def siamese(
    encoder: nn.Module,
    ways: int,
    margin: float = 1.0,
    pairs: int | None = None,
    query_loss_weight: float = 0.0,
) -> Learner:
    """A siamese network trained with the contrastive loss, classifying by the nearest support example.

    * ``params``: the encoder's Flax variables.
    * ``adapt``: ``{"support": [n_support, features] embeddings, "labels": [n_support, ways] one-hot (zero rows for
      masked examples)}``.
    * ``predict``: ``[n, ways]`` logits, minus the Euclidean distance from each query to the nearest support example
      of each class.
    * ``extra_loss``: the contrastive loss (:func:`contrastive_loss`) over pairs among the task's support and query
      examples (positive = same label): with ``pairs=None`` every pair (distances of all pairs cost one matmul once
      the examples are embedded); with ``pairs=P``, ``P`` pairs (rounded down to even) drawn with the key, half
      positive and half negative, each from a uniformly drawn anchor to a uniformly drawn eligible partner.
    * ``loss``: the query cross-entropy of the nearest-neighbour logits, whose gradient is scaled by
      ``query_loss_weight`` (0: the contrastive term alone trains the encoder; see the module docstring).

    Padded tasks (:func:`fsl_jax.data.pad_task`): padded rows are in no pair and are nobody's nearest neighbour,
    padded classes get no probability (``way_mask`` in the loss), and sampled pairs depend only on the real examples
    and their order, so the loss and meta-gradient equal the unpadded task's for the same key.

    Args:
      encoder: a ``flax.linen.Module`` mapping inputs to embeddings.
      ways: number of classes per task (static).
      margin: contrastive margin (> 0), in embedding distance units.
      pairs: number of sampled pairs per task, or ``None`` for all pairs.
      query_loss_weight: weight (>= 0) of the query cross-entropy's gradient.

    Returns:
      a :class:`~fsl_jax.Learner` with ``kind="classification"``.

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> learner = fj.siamese(fj.models.MLP(hidden=(32,), out=16), ways=2, margin=1.0, pairs=32)
      >>> x = jax.random.normal(jax.random.key(0), (10, 8))
      >>> task = fj.Task(x[:4], jnp.array([0, 0, 1, 1]), x[4:], jnp.array([0, 1, 0, 1, 0, 1]))
      >>> params = learner.init(jax.random.key(1), task)
      >>> learner.predict(params, learner.adapt(params, task, None), task.query_x).shape
      (6, 2)
      >>> loss, aux = fj.meta_loss(learner, params, task, jax.random.key(2))
      >>> sorted(aux), bool(loss > aux["query_loss"])  # loss = query cross-entropy + contrastive loss
      (['accuracy', 'query_loss'], True)
    """
    _validate.module("encoder", encoder)
    ways = _validate.ways(ways)
    margin = _validate.number("margin", margin)
    pairs = _validate.integer("pairs", pairs, 2, allow_none=True)
    query_loss_weight = _validate.number("query_loss_weight", query_loss_weight, allow_zero=True)

    def init(key: Array, task: Task):
        return encoder.init(key, task.support_x)

    def adapt(params, task: Task, key: Array) -> dict:
        del key
        support = embed(encoder, params, task.support_x)
        return {"support": support, "labels": class_weights(task.support_y, ways, task.support_mask, support.dtype)}

    def predict(params, adapted: dict, x: Array) -> Array:
        return nearest_neighbour_logits(embed(encoder, params, x), adapted["support"], adapted["labels"])

    def extra_loss(params, adapted: dict, task: Task, key: Array) -> Array:
        z = jnp.concatenate([adapted["support"], embed(encoder, params, task.query_x)])
        y = jnp.concatenate([task.support_y, task.query_y]).astype(jnp.int32)
        n_s, n_q = task.support_y.shape[0], task.query_y.shape[0]
        valid = (
            jnp.concatenate(
                [
                    jnp.ones(n_s) if task.support_mask is None else task.support_mask.astype(jnp.float32),
                    jnp.ones(n_q) if task.query_mask is None else task.query_mask.astype(jnp.float32),
                ]
            )
            > 0
        )
        sq = sqeuclidean(z, z)
        same = y[:, None] == y[None, :]
        allowed = valid[:, None] & valid[None, :] & ~jnp.eye(y.shape[0], dtype=bool)
        if pairs is None:
            return contrastive_loss(sq, same, margin, allowed)
        half = pairs // 2
        # Uniform choice among eligible indices = arg-max of uniform noise over them (one random draw for all; drawn
        # flat and reshaped: XLA:CPU compiles multi-dimensional draws under vmap many times slower). Each example's
        # noise is the slice of the draw at its rank among the real examples, so padding (wherever it sits) leaves
        # the pairs drawn for a key unchanged: threefry draws are prefix-consistent (jax_threefry_partitionable).
        n = y.shape[0]
        rank = jnp.clip(jnp.cumsum(valid) - 1, 0, n - 1)
        noise = jax.random.uniform(key, (n * 2 * 2 * half,)).reshape(n, 2, 2 * half)[rank]
        noise = jnp.moveaxis(noise, 0, -1)  # [2, 2 * half, n]
        anchors = jnp.argmax(jnp.where(valid[None], noise[0], -1.0), axis=1)
        eligible = jnp.concatenate([(allowed & same)[anchors[:half]], (allowed & ~same)[anchors[half:]]])
        partners = jnp.argmax(jnp.where(eligible, noise[1], -1.0), axis=1)
        # An anchor with no eligible partner (e.g. a 1-shot class without queries) gives a pair of weight 0.
        weights = jnp.any(eligible, axis=1)
        pair_same = jnp.arange(2 * half) < half
        return contrastive_loss(sq[anchors, partners], pair_same, margin, weights)

    return Learner(
        init=init,
        adapt=adapt,
        predict=predict,
        loss=_scaled_gradient(xent_loss, float(query_loss_weight)),
        kind="classification",
        name="siamese",
        extra_loss=extra_loss,
    )
