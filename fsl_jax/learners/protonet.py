"""Prototypical Networks (Snell et al., 2017), and the helpers the other metric learners share.

Adaptation is a closed form: each class's prototype is the mean embedding of its support examples; a query is scored
by its (negative) distance to every prototype. Nothing is fitted per task, so the meta-gradient is ``jax.grad`` of the
query cross-entropy straight through the encoder.

The number of ways is a required, static argument of every metric learner. Labels are traced values inside ``jit``,
so it cannot be read off the task; class sums are ``one_hot(support_y, ways).T @ embeddings`` (a matmul, fast under
``vmap``). Support labels outside ``0..ways-1`` have an all-zero one-hot row and are ignored.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax import _validate
from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, xent_loss
from fsl_jax.tasks import Task

Array = Any
DISTANCES = ("sqeuclidean", "cosine")


def embed(encoder: nn.Module, variables: Any, x: Array) -> Array:
    """``encoder.apply(variables, x)`` flattened to ``[n, features]``."""
    z: Any = encoder.apply(variables, x)
    return jnp.reshape(z, (z.shape[0], -1))


def class_weights(labels: Array, ways: int, mask: Array | None = None, dtype: Any = jnp.float32) -> Array:
    """``[n, ways]`` one-hot labels, zeroed where ``mask`` is 0 (padding) or the label is outside ``0..ways-1``."""
    onehot = jax.nn.one_hot(labels, ways, dtype=dtype)
    if mask is not None:
        onehot = onehot * mask.astype(dtype)[:, None]
    return onehot


def class_prototypes(
    embeddings: Array, labels: Array, ways: int, mask: Array | None = None, reduce: str = "mean"
) -> Array:
    """Per-class mean (or sum) of embeddings.

    Args:
      embeddings: ``[n, *features]``.
      labels: ``[n]`` integer labels.
      ways: number of classes.
      mask: optional ``[n]`` weights; 0 drops an example.
      reduce: ``"mean"`` or ``"sum"``. A class with no (unmasked) example gets a zero prototype.

    Returns:
      ``[ways, *features]``.

    Example:
      >>> import jax.numpy as jnp
      >>> class_prototypes(jnp.array([[0.0], [2.0], [5.0]]), jnp.array([0, 0, 1]), 2).tolist()
      [[1.0], [5.0]]
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    feature_shape = embeddings.shape[1:]
    flat = jnp.reshape(embeddings, (embeddings.shape[0], -1))
    weights = class_weights(labels, ways, mask, flat.dtype)
    sums = weights.T @ flat
    if reduce == "mean":
        sums = sums / jnp.maximum(jnp.sum(weights, axis=0), 1.0)[:, None]
    return jnp.reshape(sums, (ways, *feature_shape))


def sqeuclidean(a: Array, b: Array) -> Array:
    """``[n, m]`` squared Euclidean distances between rows of ``a [n, d]`` and ``b [m, d]`` (matmul form, >= 0)."""
    d = jnp.sum(a * a, axis=1)[:, None] - 2.0 * (a @ b.T) + jnp.sum(b * b, axis=1)[None, :]
    return jnp.maximum(d, 0.0)


def cosine_similarity(a: Array, b: Array, eps: float = 1e-8) -> Array:
    """``[n, m]`` cosine similarities between rows of ``a [n, d]`` and ``b [m, d]``."""
    a = a * jax.lax.rsqrt(jnp.maximum(jnp.sum(a * a, axis=1, keepdims=True), eps))
    b = b * jax.lax.rsqrt(jnp.maximum(jnp.sum(b * b, axis=1, keepdims=True), eps))
    return a @ b.T


@records_config
def protonet(
    encoder: nn.Module,
    ways: int,
    distance: str = "sqeuclidean",
    temperature: float = 1.0,
    learn_temperature: bool = False,
) -> Learner:
    """Prototypical Networks: classify queries by distance to per-class mean support embeddings.

    * ``params``: the encoder's Flax variables (``encoder.init(key, task.support_x)``), or, with
      ``learn_temperature=True``, ``{"encoder": variables, "log_temperature": scalar}``.
    * ``adapt``: ``[ways, features]`` prototypes: the mean embedding of each class's support examples, weighted by
      ``support_mask`` when present (a class without support examples gets a zero prototype).
    * ``predict``: ``[n, ways]`` logits: ``-||f(x) - c_k||^2 / temperature`` (``"sqeuclidean"``, the paper's choice)
      or ``cos(f(x), c_k) / temperature`` (``"cosine"``). With cosine, logits lie in ``[-1/T, 1/T]``: use a small
      temperature (e.g. 0.1) or ``learn_temperature=True`` (initialised at ``temperature``, stored as its log).

    The encoder sees the support set and the query set in separate calls, so a batch-statistics norm
    (``Conv4(norm="batch")``) normalises each with its own statistics.

    Padded tasks (:func:`fsl_jax.data.pad_task`): prototypes come from the real support rows only, and with a
    ``way_mask`` the loss leaves the padded classes (zero prototypes) out of the softmax, so the loss and
    meta-gradient are those of the unpadded task with ``ways`` equal to its number of classes (given an encoder that
    treats rows independently: not ``norm="batch"``).

    Args:
      encoder: a ``flax.linen.Module`` mapping ``[n, *input]`` to ``[n, *features]`` (flattened), e.g.
        ``fj.models.Conv4()`` (``num_classes=None``).
      ways: number of classes per task (static).
      distance: ``"sqeuclidean"`` or ``"cosine"``.
      temperature: logits are divided by it (> 0).
      learn_temperature: meta-learn the temperature.

    Returns:
      a :class:`~fsl_jax.Learner` with ``kind="classification"`` and the softmax cross-entropy loss.

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> learner = fj.protonet(fj.models.MLP(hidden=(32,), out=16), ways=5)  # fj.models.Conv4() for images
      >>> x = jax.random.normal(jax.random.key(0), (30, 8))
      >>> task = fj.Task(x[:5], jnp.arange(5), x[5:], jnp.arange(25) % 5)  # 5-way 1-shot, 5 queries per class
      >>> params = learner.init(jax.random.key(1), task)
      >>> prototypes = learner.adapt(params, task, None)
      >>> prototypes.shape  # one 16-dimensional mean embedding per class
      (5, 16)
      >>> learner.predict(params, prototypes, task.query_x).shape  # a logit per query and class
      (25, 5)
      >>> loss, aux = fj.meta_loss(learner, params, task, jax.random.key(2))
      >>> sorted(aux), bool(0.0 <= aux["accuracy"] <= 1.0)
      (['accuracy', 'query_loss'], True)

    Meta-training is :func:`fsl_jax.make_meta_step` with this learner, e.g. on tasks drawn by a
    :class:`fsl_jax.data.DeviceSampler` (``sampler=sampler.sample``).
    """
    _validate.module("encoder", encoder)
    ways = _validate.ways(ways)
    _validate.choice("distance", distance, DISTANCES)
    temperature = _validate.number("temperature", temperature)

    def split(params):
        if learn_temperature:
            return params["encoder"], jnp.exp(params["log_temperature"])
        return params, temperature

    def init(key: Array, task: Task):
        variables = encoder.init(key, task.support_x)
        if learn_temperature:
            return {"encoder": variables, "log_temperature": jnp.log(jnp.asarray(temperature, jnp.float32))}
        return variables

    def adapt(params, task: Task, key: Array) -> Array:
        del key
        variables, _ = split(params)
        return class_prototypes(embed(encoder, variables, task.support_x), task.support_y, ways, task.support_mask)

    def predict(params, prototypes: Array, x: Array) -> Array:
        variables, temp = split(params)
        queries = embed(encoder, variables, x)
        if distance == "sqeuclidean":
            return -sqeuclidean(queries, prototypes) / temp
        return cosine_similarity(queries, prototypes) / temp

    return Learner(init=init, adapt=adapt, predict=predict, loss=xent_loss, kind="classification", name="protonet")
