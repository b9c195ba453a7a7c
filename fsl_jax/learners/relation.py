"""Relation Networks (Sung et al., 2018): a learned comparator scores (query, class) pairs in [0, 1].

The encoder should keep spatial feature maps: :class:`RelationEncoder` is the paper's four conv blocks (max-pooling
after the first two only) and returns ``[n, h, w, c]``. ``fj.models.Conv4`` flattens its output; with it, or any
encoder returning flat vectors, :class:`RelationModule` becomes an MLP on concatenated vectors.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax import _validate
from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, _check_way_mask, _weighted_mean
from fsl_jax.learners.protonet import class_prototypes
from fsl_jax.models.conv import Conv2d, Norm, max_pool_2x2
from fsl_jax.models.precision import check_precision, output_dtype
from fsl_jax.tasks import Task

Array = Any
AGGREGATES = ("sum", "mean")


class RelationEncoder(nn.Module):
    """The Relation Network embedding: ``blocks`` x (conv 3x3 -> norm -> ReLU), max-pool 2x2 after the first
    ``pooled`` blocks; returns feature maps ``[n, h, w, hidden]`` (28x28 -> 7x7, 84x84 -> 21x21 with the defaults).

    Attributes:
      hidden: channels of every block.
      blocks: conv blocks.
      pooled: how many of the first blocks are followed by a max-pool.
      norm: ``"batch"`` (per-batch statistics, no running averages), ``"layer"`` or ``"none"``.
      conv_impl: see :class:`fsl_jax.models.Conv2d`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.zeros((2, 28, 28, 1))
      >>> m = RelationEncoder(hidden=8)
      >>> m.apply(m.init(jax.random.key(0), x), x).shape
      (2, 7, 7, 8)
    """

    hidden: int = 64
    blocks: int = 4
    pooled: int = 2
    norm: str = "batch"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"RelationEncoder expects images [batch, height, width, channels], got shape {x.shape}")
        param_dtype = check_precision("RelationEncoder", self.dtype, self.param_dtype)
        for i in range(self.blocks):
            conv = Conv2d(
                self.hidden, conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=param_dtype, name=f"conv{i}"
            )
            x = nn.relu(Norm(self.norm, param_dtype=param_dtype, name=f"norm{i}")(conv(x)))
            if i < self.pooled:
                x = max_pool_2x2(x)
        return x


class RelationModule(nn.Module):
    """The relation module ``g``: concatenated (query, class) features -> relation score in [0, 1].

    On feature maps ``[n, h, w, 2c]``: two blocks of conv 3x3 (``channels``) -> norm -> ReLU -> max-pool 2x2 (the
    pool is skipped on maps smaller than 2x2), flatten, dense ``hidden`` + ReLU, dense 1 + sigmoid (Sung et al.).
    On vectors ``[n, 2d]``: dense ``channels`` + ReLU, dense ``hidden`` + ReLU, dense 1 + sigmoid.

    Attributes:
      channels: conv channels (or first dense width for vectors).
      hidden: width of the hidden dense layer (8 in the paper).
      norm, conv_impl: as in :class:`RelationEncoder`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> pairs = jnp.zeros((4, 7, 7, 16))  # 4 (query, class) pairs of two 7x7x8 feature maps
      >>> m = RelationModule(channels=8)
      >>> m.apply(m.init(jax.random.key(0), pairs), pairs).shape
      (4,)
    """

    channels: int = 64
    hidden: int = 8
    norm: str = "batch"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = None

    @nn.compact
    def __call__(self, pairs: Array) -> Array:
        param_dtype = check_precision("RelationModule", self.dtype, self.param_dtype)

        def dense(width: int, name: str) -> nn.Dense:
            return nn.Dense(width, dtype=self.dtype, param_dtype=param_dtype, name=name)

        x = pairs
        if x.ndim == 4:
            for i in range(2):
                conv = Conv2d(
                    self.channels, conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=param_dtype, name=f"conv{i}"
                )
                x = nn.relu(Norm(self.norm, param_dtype=param_dtype, name=f"norm{i}")(conv(x)))
                if x.shape[1] >= 2 and x.shape[2] >= 2:
                    x = max_pool_2x2(x)
        elif x.ndim == 2:
            x = nn.relu(dense(self.channels, "dense0")(x))
        else:
            raise ValueError(f"RelationModule expects pairs [n, h, w, c] or [n, d], got shape {x.shape}")
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(dense(self.hidden, "fc1")(x))
        # float32 at least (bfloat16 compute gives float32 scores), float64 when computing in float64.
        return nn.sigmoid(dense(1, "fc2")(x).astype(output_dtype(self.dtype)))[:, 0]


def relation_pairs(queries: Array, prototypes: Array) -> Array:
    """All (query, class) pairs concatenated along the last (channel) axis.

    Args:
      queries: ``[n, *features]``.
      prototypes: ``[ways, *features]``.

    Returns:
      ``[n * ways, *features[:-1], 2 * features[-1]]``; pair ``i * ways + k`` is ``concat(queries[i], prototypes[k])``.
    """
    n, ways = queries.shape[0], prototypes.shape[0]
    q = jnp.broadcast_to(queries[:, None], (n, ways) + queries.shape[1:])
    p = jnp.broadcast_to(prototypes[None], (n, ways) + prototypes.shape[1:])
    pairs = jnp.concatenate([q, p], axis=-1)
    return pairs.reshape((n * ways,) + pairs.shape[2:])


def relation_mse_loss(
    predictions: Array, labels: Array, mask: Array | None = None, way_mask: Array | None = None
) -> Array:
    """Mean squared error between relation scores ``[n, ways]`` and the one-hot of integer ``labels`` ``[n]``.

    Per example, the mean over the classes (only those whose ``way_mask`` entry is 1, when given: padded classes
    count neither in the sum nor in the number of classes, so a padded task has the unpadded value); then the mean
    over examples, weighted by ``mask``.

    Example:
      >>> import jax.numpy as jnp
      >>> float(relation_mse_loss(jnp.array([[1.0, 0.0], [0.5, 0.5]]), jnp.array([0, 1])))
      0.125
      >>> float(relation_mse_loss(jnp.array([[1.0, 0.0, 0.9], [0.5, 0.5, 0.9]]), jnp.array([0, 1]),
      ...                         way_mask=jnp.array([1, 1, 0])))  # the third class is padding
      0.125
    """
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    if predictions.ndim < 1 or labels.shape != predictions.shape[:-1]:
        raise ValueError(
            f"relation_mse_loss needs scores [n, ways] and labels [n], got scores of shape "
            f"{predictions.shape} and labels of shape {labels.shape}"
        )
    targets = jax.nn.one_hot(labels, predictions.shape[-1], dtype=predictions.dtype)
    squared = jnp.square(predictions - targets)
    if way_mask is None:
        per_example = jnp.mean(squared, axis=-1)
    else:
        real = _check_way_mask(way_mask, predictions.shape[-1]) > 0
        count = jnp.maximum(jnp.sum(real), 1).astype(predictions.dtype)
        per_example = jnp.sum(jnp.where(real, squared, 0), axis=-1) / count
    return _weighted_mean(per_example, mask)


@records_config
def relation_net(
    encoder: nn.Module,
    relation_module: nn.Module | None,
    ways: int,
    aggregate: str = "sum",
) -> Learner:
    """Relation Networks: a learned relation module scores every (query, class) pair.

    * ``params``: ``{"encoder": encoder variables, "relation": relation module variables}``.
    * ``adapt``: ``[ways, *features]`` class features: the element-wise ``"sum"`` (the paper, for K-shot) or
      ``"mean"`` of the class's support embeddings (masked by ``support_mask``).
    * ``predict``: ``[n, ways]`` relation scores in [0, 1] (sigmoid outputs, not logits; arg-max is the prediction).
    * ``loss``: :func:`relation_mse_loss`, MSE to the one-hot labels, as in the paper.

    Padded tasks (:func:`fsl_jax.data.pad_task`): padded support rows are left out of the class features, and with a
    ``way_mask`` the loss averages over the real classes only, so the loss and meta-gradient are those of the unpadded
    task (with ``ways`` its number of classes). Exact only when the encoder and the relation module treat rows
    independently: ``norm="batch"`` (the default of :class:`RelationEncoder` and :class:`RelationModule`) normalises
    with statistics over all rows and pairs, padding included; use ``norm="layer"`` or ``"none"`` with padding.

    Args:
      encoder: a ``flax.linen.Module``; keep spatial maps (:class:`RelationEncoder`) for the paper's conv relation
        module, or return flat vectors for an MLP relation module.
      relation_module: maps concatenated pairs ``[n, ..., 2c]`` to ``[n]`` scores in [0, 1]; ``None`` means
        ``RelationModule()``.
      ways: number of classes per task (static).
      aggregate: ``"sum"`` or ``"mean"`` over each class's support embeddings.

    Returns:
      a :class:`~fsl_jax.Learner` with ``kind="classification"``.

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> from fsl_jax.learners.relation import RelationEncoder, RelationModule
      >>> learner = fj.relation_net(RelationEncoder(hidden=8), RelationModule(channels=8), ways=2)
      >>> x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
      >>> task = fj.Task(x[:2], jnp.array([0, 1]), x[2:], jnp.array([1, 0]))  # 2-way 1-shot, 1 query per class
      >>> params = learner.init(jax.random.key(1), task)
      >>> features = learner.adapt(params, task, None)
      >>> features.shape  # per class: the sum of its support feature maps
      (2, 7, 7, 8)
      >>> scores = learner.predict(params, features, task.query_x)
      >>> scores.shape, bool(jnp.all((scores >= 0) & (scores <= 1)))
      ((2, 2), True)
    """
    _validate.module("encoder", encoder)
    if relation_module is None:
        relation_module = RelationModule()
    relation_module = _validate.module("relation_module", relation_module)
    ways = _validate.ways(ways)
    _validate.choice("aggregate", aggregate, AGGREGATES)

    def init(key: Array, task: Task):
        enc_key, rel_key = jax.random.split(key)
        enc_vars = encoder.init(enc_key, task.support_x)
        features = encoder.apply(enc_vars, task.support_x)
        rel_vars = relation_module.init(rel_key, relation_pairs(features[:1], features[:1]))
        return {"encoder": enc_vars, "relation": rel_vars}

    def adapt(params, task: Task, key: Array) -> Array:
        del key
        features = encoder.apply(params["encoder"], task.support_x)
        return class_prototypes(features, task.support_y, ways, task.support_mask, reduce=aggregate)

    def predict(params, prototypes: Array, x: Array) -> Array:
        queries = encoder.apply(params["encoder"], x)
        scores: Any = relation_module.apply(params["relation"], relation_pairs(queries, prototypes))
        return scores.reshape(x.shape[0], ways)

    return Learner(
        init=init, adapt=adapt, predict=predict, loss=relation_mse_loss, kind="classification", name="relation_net"
    )
