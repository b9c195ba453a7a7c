"""Matching Networks (Vinyals et al., 2016): attention over the support set, optionally with full-context embeddings.

A query's class distribution is the attention-weighted sum of the support set's one-hot labels, the attention being a
softmax over cosine similarities between the query's and the support examples' embeddings.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax import _validate
from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, xent_loss
from fsl_jax.learners.protonet import class_weights, cosine_similarity, embed
from fsl_jax.tasks import Task

Array = Any


def _attention(queries: Array, support: Array, mask: Array | None, temperature: float) -> Array:
    """``[n_query, n_support]`` softmax over cosine similarities; masked support examples get zero weight."""
    scores = cosine_similarity(queries, support) / temperature
    if mask is not None:
        scores = jnp.where(mask[None, :] > 0, scores, -1e9)
    return jax.nn.softmax(scores, axis=-1)


class FullContextEmbedding(nn.Module):
    """The full-context embeddings of Matching Networks, on ``[n, features]`` embeddings.

    ``support(g, mask=None)``: ``g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i`` with a bidirectional LSTM (hidden size
    ``features``) run over the support set in its given order. With a ``mask``, the LSTMs run over the real rows
    only (in their given order, wherever the padded rows sit): a real row's embedding is the one of the support set
    without the padding; padded rows get finite values that mean nothing.

    ``query(f, g)``: the attention LSTM, ``steps`` times: ``h_hat, c = LSTM(f'(x), (h + r, c))``, ``h = h_hat + f'(x)``,
    ``r = attention(h, g) @ g``; returns ``h``. The paper's hidden state is the concatenation ``[h, r]``; the sum
    keeps the cell's width at ``features`` (as in common re-implementations).
    """

    features: int
    steps: int = 5

    def setup(self):
        self.bilstm = nn.Bidirectional(
            nn.RNN(nn.OptimizedLSTMCell(self.features)),
            nn.RNN(nn.OptimizedLSTMCell(self.features)),
            merge_fn=lambda a, b: a + b,
        )
        self.cell = nn.OptimizedLSTMCell(self.features)

    def support(self, g: Array, mask: Array | None = None) -> Array:
        zeros = jnp.zeros((1, g.shape[-1]), g.dtype)  # the LSTMs' zero initial state, in g's dtype (not float32)
        initial = ((zeros, zeros), (zeros, zeros))
        if mask is None:
            return g + self.bilstm(g[None], initial_carry=initial)[0]
        real = mask > 0
        # Real rows first (a stable sort keeps their order), then the LSTMs stop at their count (seq_lengths): the
        # backward LSTM starts from the last real row, and no padded row reaches a real row's state.
        order = jnp.argsort(~real, stable=True)
        lengths = jnp.sum(real, dtype=jnp.int32)[None]
        context = self.bilstm(jnp.where(real[:, None], g, 0)[order][None], initial_carry=initial, seq_lengths=lengths)[
            0
        ]
        return g + context[jnp.argsort(order)]

    def query(self, f: Array, g: Array, mask: Array | None = None) -> Array:
        h = jnp.zeros_like(f)
        c = jnp.zeros_like(f)
        r = jnp.zeros_like(f)
        for _ in range(self.steps):
            (c, h_hat), _ = self.cell((c, h + r), f)
            h = h_hat + f
            r = _attention_dot(h, g, mask) @ g
        return h

    def __call__(self, f: Array, g: Array) -> Array:
        return self.query(f, self.support(g))


def _attention_dot(h: Array, g: Array, mask: Array | None) -> Array:
    """The attention-LSTM's read: softmax over dot products (as in the paper's ``a(h, g) = softmax(h^T g)``)."""
    scores = h @ g.T
    if mask is not None:
        scores = jnp.where(mask[None, :] > 0, scores, -1e9)
    return jax.nn.softmax(scores, axis=-1)


@records_config
def matching_net(
    encoder: nn.Module,
    ways: int,
    fce: bool = False,
    fce_steps: int = 5,
    temperature: float = 1.0,
    eps: float = 1e-6,
) -> Learner:
    """Matching Networks: attention-weighted labels of the support set.

    * ``params``: the encoder's Flax variables, or with ``fce=True``
      ``{"encoder": variables, "fce": variables of a FullContextEmbedding}``.
    * ``adapt``: ``{"support": [n_support, features] embeddings (full-context with fce), "labels": [n_support, ways]
      one-hot labels (zero rows for masked examples), "mask": [n_support] (ones without support_mask)}``.
    * ``predict``: ``log(max(sum_i a(x, x_i) y_i, eps))`` with ``a`` the softmax over ``cos(f(x), g(x_i)) /
      temperature``: log-probabilities used as logits (the cross-entropy of the loss is then the negative log of the
      attention-weighted label distribution; ``eps`` keeps it finite).

    With ``fce=True`` (full-context embeddings, :class:`FullContextEmbedding`): support embeddings go through a
    bidirectional LSTM with a skip connection; each query embedding is refined by ``fce_steps`` steps of an attention
    LSTM reading the support set. Masked support examples are excluded from every attention and skipped by the
    bidirectional LSTM (it runs over the real examples only, in their order). The LSTMs' width equals the embedding
    width.

    Padded tasks (:func:`fsl_jax.data.pad_task`): padded support rows get zero attention and no label mass; with a
    ``way_mask`` the loss leaves the padded classes (whose log-probabilities are ``log(eps)``) out of the softmax,
    so the loss and meta-gradient are those of the unpadded task with ``ways`` equal to its number of classes.

    Args:
      encoder: a ``flax.linen.Module`` mapping inputs to embeddings, e.g. ``fj.models.Conv4()``.
      ways: number of classes per task (static).
      fce: use full-context embeddings.
      fce_steps: processing steps of the attention LSTM (``K`` in the paper).
      temperature: cosine similarities are divided by it before the softmax (1.0 is the paper's).
      eps: the floor of the predicted probabilities before the log.

    Returns:
      a :class:`~fsl_jax.Learner` with ``kind="classification"`` and the cross-entropy loss.

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> learner = fj.matching_net(fj.models.MLP(hidden=(32,), out=16), ways=2, fce=True)
      >>> x = jax.random.normal(jax.random.key(0), (10, 8))
      >>> task = fj.Task(x[:4], jnp.array([0, 0, 1, 1]), x[4:], jnp.array([0, 1, 0, 1, 0, 1]))
      >>> params = learner.init(jax.random.key(1), task)
      >>> list(params)
      ['encoder', 'fce']
      >>> log_probs = learner.predict(params, learner.adapt(params, task, None), task.query_x)
      >>> log_probs.shape, jnp.exp(log_probs).sum(-1).round(4).tolist()  # a distribution over the 2 classes
      ((6, 2), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    """
    _validate.module("encoder", encoder)
    ways = _validate.ways(ways)
    if not isinstance(fce, bool):
        raise ValueError(f"fce must be a bool, got {fce!r}")
    fce_steps = _validate.positive_int("fce_steps", fce_steps)
    temperature = _validate.number("temperature", temperature)
    eps = _validate.number("eps", eps)

    def encoder_vars(params):
        return params["encoder"] if fce else params

    def init(key: Array, task: Task):
        enc_key, fce_key = jax.random.split(key)
        variables = encoder.init(enc_key, task.support_x)
        if not fce:
            return variables
        g = embed(encoder, variables, task.support_x)
        module = FullContextEmbedding(g.shape[-1], fce_steps)
        return {"encoder": variables, "fce": module.init(fce_key, g[:1], g)}

    def adapt(params, task: Task, key: Array) -> dict:
        del key
        g = embed(encoder, encoder_vars(params), task.support_x)
        mask = task.support_mask
        if fce:
            g = FullContextEmbedding(g.shape[-1], fce_steps).apply(params["fce"], g, mask, method="support")
        mask = jnp.ones(g.shape[:1], g.dtype) if mask is None else mask.astype(g.dtype)
        return {"support": g, "labels": class_weights(task.support_y, ways, mask, g.dtype), "mask": mask}

    def predict(params, adapted: dict, x: Array) -> Array:
        f = embed(encoder, encoder_vars(params), x)
        if fce:
            module = FullContextEmbedding(f.shape[-1], fce_steps)
            f = module.apply(params["fce"], f, adapted["support"], adapted["mask"], method="query")
        attention = _attention(f, adapted["support"], adapted["mask"], temperature)
        return jnp.log(jnp.maximum(attention @ adapted["labels"], eps))

    return Learner(
        init=init,
        adapt=adapt,
        predict=predict,
        loss=xent_loss,
        kind="classification",
        name="matching_net_fce" if fce else "matching_net",
    )
