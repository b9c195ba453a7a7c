"""A conditional-VAE generative few-shot classifier.

A VAE (encoder ``q(z|x) = N(mu(x), diag sigma^2(x))``, decoder ``p(x|z)``) is shared by all tasks. For a task, each
class ``c`` gets a latent distribution ``q(z|c)`` estimated from its support examples as a **product of Gaussians**:
the standard-normal prior times every support posterior of the class,

    precision_c = 1 + sum_i 1 / sigma_i^2,    mu_c = (sum_i mu_i / sigma_i^2) / precision_c,

(the Bayesian posterior of a shared class latent when each ``q(z|x_i)`` is read as a Gaussian likelihood of it, as in
the product-of-experts of Wu & Goodman, 2018; a class with no support example falls back to the prior). A query is
scored per class by an estimate of ``log p(x|c)`` with ``q(z|c)`` as the class-conditional prior:

* ``estimator="elbo"``: ``E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || q(z|c))`` (the KL in closed form, the expectation
  with ``num_samples`` reparameterised samples). Only the KL depends on the class, so the class decision is the
  closed-form KL; the reconstruction term makes the logits a bound on ``log p(x|c)``.
* ``estimator="iwae"``: ``log mean_s p(x|z_s) q(z_s|c) / q(z_s|x)``, ``z_s ~ q(z|x)`` (importance-weighted, tighter
  with more samples; the decoder then takes part in the decision).

Those scores are the logits: the learner is trained episodically on the query cross-entropy over them, plus
(``extra_loss``) ``elbo_weight`` times the negative ELBO (standard-normal prior, ``beta``-weighted KL) of the
task's support and query inputs, in nats per input dimension so that it is on the scale of the cross-entropy.

``predict`` takes no key: ``adapt`` draws the ``num_samples`` standard-normal noise vectors with its key and stores
them in the adapted state (shared by all queries of the task).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import _validate
from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, xent_loss
from fsl_jax.learners.protonet import class_weights
from fsl_jax.models.precision import check_precision, output_dtype
from fsl_jax.tasks import Task

Array = Any
LIKELIHOODS = ("bernoulli", "gaussian")
ESTIMATORS = ("elbo", "iwae")
LOG_VAR_RANGE = (-10.0, 10.0)


class VAEEncoder(nn.Module):
    """MLP Gaussian encoder: flattened input -> ``(mean, log_variance)``, each ``[n, latent_dim]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = VAEEncoder(latent_dim=4, hidden=(16,))
      >>> mu, log_var = m.apply(m.init(jax.random.key(0), jnp.zeros((3, 8, 8, 1))), jnp.zeros((3, 8, 8, 1)))
      >>> mu.shape, log_var.shape
      ((3, 4), (3, 4))
    """

    latent_dim: int
    hidden: Sequence[int] = (256,)
    dtype: Any = jnp.float32
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        param_dtype = check_precision("VAEEncoder", self.dtype, self.param_dtype)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=param_dtype, name=f"dense{i}")(x))
        mean = nn.Dense(self.latent_dim, dtype=self.dtype, param_dtype=param_dtype, name="mean")(x)
        log_var = nn.Dense(
            self.latent_dim,
            dtype=self.dtype,
            param_dtype=param_dtype,
            name="log_var",
            kernel_init=nn.initializers.zeros,
        )(x)
        out = output_dtype(self.dtype)  # the KL and likelihood terms in float32
        return mean.astype(out), log_var.astype(out)


class VAEDecoder(nn.Module):
    """MLP decoder: latent ``[n, latent_dim]`` -> ``[n, out_dim]`` (Bernoulli logits or Gaussian means).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = VAEDecoder(out_dim=64, hidden=(16,))
      >>> m.apply(m.init(jax.random.key(0), jnp.zeros((3, 4))), jnp.zeros((3, 4))).shape
      (3, 64)
    """

    out_dim: int
    hidden: Sequence[int] = (256,)
    dtype: Any = jnp.float32
    param_dtype: Any = None

    @nn.compact
    def __call__(self, z: Array) -> Array:
        param_dtype = check_precision("VAEDecoder", self.dtype, self.param_dtype)
        for i, width in enumerate(self.hidden):
            z = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=param_dtype, name=f"dense{i}")(z))
        out = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=param_dtype, name="out")(z)
        return out.astype(output_dtype(self.dtype))


def gaussian_kl(mean1: Array, log_var1: Array, mean2: Array, log_var2: Array) -> Array:
    """``KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2)))`` for diagonal Gaussians, summed over the last axis.

    Example:
      >>> import jax.numpy as jnp
      >>> float(gaussian_kl(jnp.zeros(2), jnp.zeros(2), jnp.ones(2), jnp.zeros(2)))
      1.0
    """
    return 0.5 * jnp.sum(
        log_var2 - log_var1 + (jnp.exp(log_var1) + jnp.square(mean1 - mean2)) * jnp.exp(-log_var2) - 1.0, axis=-1
    )


def gaussian_log_density(z: Array, mean: Array, log_var: Array) -> Array:
    """``log N(z; mean, exp(log_var))`` for a diagonal Gaussian, summed over the last axis."""
    return -0.5 * jnp.sum(math.log(2 * math.pi) + log_var + jnp.square(z - mean) * jnp.exp(-log_var), axis=-1)


def product_of_gaussians(mean: Array, log_var: Array, weights: Array) -> tuple[Array, Array]:
    """Per-class product of the standard-normal prior and the weighted per-example Gaussians.

    Args:
      mean, log_var: ``[n, latent]`` per-example Gaussians.
      weights: ``[n, ways]`` (one-hot labels, zero rows for padding).

    Returns:
      ``(mean_c, log_var_c)``, each ``[ways, latent]``: ``precision_c = 1 + sum_i w_ic / var_i``,
      ``mean_c = sum_i w_ic mean_i / var_i / precision_c``.

    Example:
      >>> import jax.numpy as jnp
      >>> m, lv = product_of_gaussians(jnp.array([[2.0]]), jnp.array([[0.0]]), jnp.array([[1.0, 0.0]]))
      >>> m.tolist(), jnp.exp(lv).tolist()
      ([[1.0], [0.0]], [[0.5], [1.0]])
    """
    inv_var = jnp.exp(-log_var)
    precision = 1.0 + weights.T @ inv_var
    class_mean = (weights.T @ (mean * inv_var)) / precision
    return class_mean, -jnp.log(precision)


def log_likelihood(x: Array, decoded: Array, likelihood: str, obs_std: float) -> Array:
    """``log p(x|z)`` summed over the flattened input dimensions; ``x`` and ``decoded`` are ``[..., D]``."""
    if likelihood == "bernoulli":
        return jnp.sum(x * decoded - jax.nn.softplus(decoded), axis=-1)
    return -0.5 * jnp.sum(jnp.square((x - decoded) / obs_std) + 2 * math.log(obs_std) + math.log(2 * math.pi), axis=-1)


def _normal(key: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    """Standard-normal draws, generated flat and reshaped (XLA:CPU compiles multi-dimensional draws under ``vmap``
    many times slower)."""
    return jax.random.normal(key, (int(np.prod(shape)),), dtype).reshape(shape)


@records_config
def cvae_classifier(
    encoder: nn.Module | None,
    decoder: nn.Module | None,
    latent_dim: int,
    ways: int,
    beta: float = 1.0,
    num_samples: int = 1,
    estimator: str = "elbo",
    likelihood: str = "bernoulli",
    obs_std: float = 1.0,
    elbo_weight: float = 1.0,
) -> Learner:
    """A conditional-VAE generative classifier (see the module docstring for the model).

    * ``params``: ``{"encoder": encoder variables, "decoder": decoder variables}``.
    * ``adapt``: ``{"mean": [ways, latent], "log_var": [ways, latent], "eps": [num_samples, latent]}``: the class
      latents ``q(z|c)`` (product of Gaussians over the class's support posteriors and the prior; ``support_mask``
      respected) and the noise used by ``predict``.
    * ``predict``: ``[n, ways]`` per-class estimates of ``log p(x|c)`` (logits).
    * ``extra_loss``: ``elbo_weight`` * negative ELBO per input dimension of the support and query inputs.

    Padded tasks (:func:`fsl_jax.data.pad_task`): padded support rows are left out of the class latents, padded rows
    out of the ELBO (whose noise depends only on the real examples and their order), and padded classes get no
    probability (``way_mask`` in the loss): the loss and meta-gradient equal the unpadded task's for the same key,
    when the encoder and decoder treat rows independently.

    Args:
      encoder: maps ``[n, *input]`` to ``(mean, log_var)`` (a tuple, or one array ``[n, 2 * latent_dim]`` split in
        half); ``None`` means ``VAEEncoder(latent_dim)``. Log-variances are clipped to [-10, 10].
      decoder: maps ``[n, latent_dim]`` to ``[n, D]`` with ``D`` the flattened input size: Bernoulli logits or
        Gaussian means; ``None`` means ``VAEDecoder(D)``.
      latent_dim: latent size.
      ways: number of classes per task (static).
      beta: weight of the KL term in the training ELBO (beta-VAE); the class scores use the plain ELBO.
      num_samples: reparameterised samples per query (and per example in the training ELBO).
      estimator: ``"elbo"`` or ``"iwae"``.
      likelihood: ``"bernoulli"`` (inputs in [0, 1]) or ``"gaussian"`` (fixed ``obs_std``).
      obs_std: standard deviation of the Gaussian likelihood.
      elbo_weight: weight (>= 0) of the ELBO term in training.

    Returns:
      a :class:`~fsl_jax.Learner` with ``kind="classification"`` and the cross-entropy loss.

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> learner = fj.cvae_classifier(None, None, latent_dim=8, ways=2)
      >>> x = jax.random.uniform(jax.random.key(0), (10, 16))  # inputs in [0, 1] (Bernoulli likelihood)
      >>> task = fj.Task(x[:4], jnp.array([0, 0, 1, 1]), x[4:], jnp.array([0, 1, 0, 1, 0, 1]))
      >>> params = learner.init(jax.random.key(1), task)
      >>> list(params)
      ['encoder', 'decoder']
      >>> latents = learner.adapt(params, task, jax.random.key(2))
      >>> latents["mean"].shape, latents["log_var"].shape, latents["eps"].shape  # q(z|c) per class, the noise
      ((2, 8), (2, 8), (1, 8))
      >>> learner.predict(params, latents, task.query_x).shape  # log p(x|c) per query and class
      (6, 2)
      >>> loss, aux = fj.meta_loss(learner, params, task, jax.random.key(3))
      >>> sorted(aux), bool(loss > aux["query_loss"])  # loss = query cross-entropy + negative ELBO
      (['accuracy', 'query_loss'], True)
    """
    latent_dim = _validate.positive_int("latent_dim", latent_dim)
    encoder = VAEEncoder(latent_dim) if encoder is None else _validate.module("encoder", encoder)
    if decoder is not None:
        _validate.module("decoder", decoder)
    ways = _validate.ways(ways)
    beta = _validate.number("beta", beta) if beta != 0 else 0.0
    num_samples = _validate.positive_int("num_samples", num_samples)
    _validate.choice("estimator", estimator, ESTIMATORS)
    _validate.choice("likelihood", likelihood, LIKELIHOODS)
    obs_std = _validate.number("obs_std", obs_std)
    elbo_weight = _validate.number("elbo_weight", elbo_weight, allow_zero=True)

    def decoder_for(x: Array) -> nn.Module:
        return decoder if decoder is not None else VAEDecoder(int(np.prod(x.shape[1:])))

    def posterior(params, x: Array) -> tuple[Array, Array]:
        out = encoder.apply(params["encoder"], x)
        if isinstance(out, (tuple, list)):
            mean, log_var = out
        else:
            mean, log_var = jnp.split(out, 2, axis=-1)
        if mean.shape != (x.shape[0], latent_dim) or log_var.shape != mean.shape:
            raise ValueError(
                f"encoder must return (mean, log_var) of shape {(x.shape[0], latent_dim)} (latent_dim={latent_dim}), "
                f"got {mean.shape} and {log_var.shape}"
            )
        return mean, jnp.clip(log_var, *LOG_VAR_RANGE)

    def decode_log_likelihood(params, x: Array, z: Array) -> Array:
        """``log p(x|z)`` for ``z`` ``[S, n, latent]`` -> ``[S, n]``."""
        s, n = z.shape[:2]
        decoded: Any = decoder_for(x).apply(params["decoder"], z.reshape(s * n, latent_dim))
        decoded = decoded.reshape(s, n, -1)
        return log_likelihood(x.reshape(1, n, -1), decoded, likelihood, obs_std)

    def init(key: Array, task: Task):
        enc_key, dec_key = jax.random.split(key)
        enc_vars = encoder.init(enc_key, task.support_x)
        n = task.support_x.shape[0]
        dec_vars = decoder_for(task.support_x).init(dec_key, jnp.zeros((n, latent_dim), jnp.float32))
        return {"encoder": enc_vars, "decoder": dec_vars}

    def adapt(params, task: Task, key: Array) -> dict:
        mean, log_var = posterior(params, task.support_x)
        weights = class_weights(task.support_y, ways, task.support_mask, mean.dtype)
        class_mean, class_log_var = product_of_gaussians(mean, log_var, weights)
        eps = _normal(key, (num_samples, latent_dim), mean.dtype)
        return {"mean": class_mean, "log_var": class_log_var, "eps": eps}

    def predict(params, adapted: dict, x: Array) -> Array:
        mean, log_var = posterior(params, x)  # [n, L]
        z = mean[None] + jnp.exp(0.5 * log_var)[None] * adapted["eps"][:, None, :]  # [S, n, L]
        log_px = decode_log_likelihood(params, x, z)  # [S, n]
        if estimator == "elbo":
            kl = gaussian_kl(mean[:, None], log_var[:, None], adapted["mean"][None], adapted["log_var"][None])
            return jnp.mean(log_px, axis=0)[:, None] - kl  # [n, ways]
        log_q_x = gaussian_log_density(z, mean[None], log_var[None])  # [S, n]
        log_q_c = gaussian_log_density(z[:, :, None], adapted["mean"][None, None], adapted["log_var"][None, None])
        log_w = (log_px - log_q_x)[:, :, None] + log_q_c  # [S, n, ways]
        return jax.nn.logsumexp(log_w, axis=0) - math.log(num_samples)

    def negative_elbo(params, x: Array, mask: Array | None, key: Array) -> Array:
        mean, log_var = posterior(params, x)
        # Each example's noise is the slice of one draw at its rank among the real examples, so padding (wherever
        # it sits) leaves every real example's noise unchanged (threefry draws are prefix-consistent).
        n = mean.shape[0]
        rank = jnp.arange(n) if mask is None else jnp.clip(jnp.cumsum(mask > 0) - 1, 0, n - 1)
        eps = jnp.moveaxis(_normal(key, (n, num_samples, latent_dim), mean.dtype)[rank], 0, 1)  # [S, n, L]
        z = mean[None] + jnp.exp(0.5 * log_var)[None] * eps
        recon = jnp.mean(decode_log_likelihood(params, x, z), axis=0)
        kl = gaussian_kl(mean, log_var, jnp.zeros_like(mean), jnp.zeros_like(log_var))
        per_example = -(recon - beta * kl) / np.prod(x.shape[1:])
        if mask is None:
            return jnp.mean(per_example)
        mask = mask.astype(per_example.dtype)
        return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    def extra_loss(params, adapted: dict, task: Task, key: Array) -> Array:
        del adapted
        if elbo_weight == 0:
            return jnp.zeros((), jnp.float32)
        # Support and query inputs in one encoder/decoder pass (one set of batch statistics, if the modules use any).
        x = jnp.concatenate([task.support_x, task.query_x])
        masks = (task.support_mask, task.query_mask)
        mask = None
        if any(m is not None for m in masks):
            sizes = (task.support_x.shape[0], task.query_x.shape[0])
            mask = jnp.concatenate([jnp.ones(n) if m is None else m.astype(jnp.float32) for m, n in zip(masks, sizes)])
        return elbo_weight * negative_elbo(params, x, mask, key)

    return Learner(
        init=init,
        adapt=adapt,
        predict=predict,
        loss=xent_loss,
        kind="classification",
        name="cvae_classifier",
        extra_loss=extra_loss,
    )
