"""Knowledge distillation (Hinton et al. 2015): train a student on a teacher's softened logits plus hard labels.

``loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * xent(student, labels)``

The teacher's logits are computed **once** up front (in fixed-size chunks); training is one jitted optax step
(parameters and optimiser state donated) that samples a minibatch on the device. Labels may be partial: entries
``< 0`` mark unlabelled inputs, which only get the distillation term (the hard-label term averages over the labelled
inputs of the batch), so a teacher can transfer what it knows about unlabelled data to the student.

The student is any Flax module returning logits (``student.apply(params, *inputs)``): a smaller
:class:`~fsl_jax.llm.text_models.BertClassifier` for a BERT teacher, a ``fj.models.Conv4(num_classes=...)`` or
``fj.models.MLP`` for image / feature learners, or a plain callable ``student(params, *inputs) -> logits``.

Example:
    >>> import jax, jax.numpy as jnp, fsl_jax as fj
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> teacher = fj.models.MLP((32,), 3)
    >>> t_params = teacher.init(jax.random.key(1), x)
    >>> student = fj.models.MLP((8,), 3)
    >>> s_params = student.init(jax.random.key(2), x)
    >>> agreement(teacher.apply(t_params, x), student.apply(s_params, x))  # before: about chance (1/3)
    0.265625
    >>> s_params, history = distill(lambda xb: teacher.apply(t_params, xb), student, s_params, x, steps=200,
    ...                             key=jax.random.key(3), return_history=True)
    >>> len(history["loss"]), history["loss"][-1] < history["loss"][0]
    (200, True)
    >>> agreement(teacher.apply(t_params, x), student.apply(s_params, x)) > 0.5  # 0.73 here
    True
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax import _validate

__all__ = ["agreement", "distill", "distill_loss", "kl_divergence", "teacher_logits"]

Array = Any


def kl_divergence(teacher_logits: Array, student_logits: Array, temperature: float = 1.0) -> Array:
    """Per-example ``KL(softmax(teacher / T) || softmax(student / T))`` ``[n]``.

    Example:
        >>> float(kl_divergence(jnp.array([[1.0, 2.0]]), jnp.array([[1.0, 2.0]]))[0])
        0.0
    """
    p_log = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    q_log = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)


def agreement(teacher_logits: Array, student_logits: Array) -> float:
    """Fraction of inputs where teacher and student predict the same class."""
    return float(jnp.mean(jnp.argmax(teacher_logits, -1) == jnp.argmax(student_logits, -1)))


def distill_loss(
    student_logits: Array,
    teacher_logits: Array,
    labels: Array | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> tuple[Array, dict]:
    """The distillation objective on one batch (see the module docstring).

    Args:
      student_logits, teacher_logits: ``[B, C]``.
      labels: ``[B]`` int labels, ``< 0`` for unlabelled; ``None``: no hard-label term (``alpha`` treated as 1).
      temperature: softening temperature ``T`` (> 0).
      alpha: weight of the soft term.

    Returns:
      ``(loss, {"kl": ..., "xent": ...})``.

    Example:
        >>> loss, parts = distill_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.array([0, -1]), alpha=0.0)
        >>> round(float(loss), 4)  # log 3, from the one labelled example
        1.0986
    """
    kl = jnp.mean(kl_divergence(teacher_logits, student_logits, temperature))
    if labels is None:
        return temperature**2 * kl, {"kl": kl, "xent": jnp.zeros(())}
    labelled = (labels >= 0).astype(jnp.float32)
    logp = jax.nn.log_softmax(student_logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[:, None].astype(jnp.int32), axis=-1)[:, 0]
    xent = jnp.sum(nll * labelled) / jnp.maximum(jnp.sum(labelled), 1.0)
    return alpha * temperature**2 * kl + (1.0 - alpha) * xent, {"kl": kl, "xent": xent}


def _as_tuple(inputs: Any) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def teacher_logits(teacher_apply: Callable[..., Array], inputs: Any, batch_size: int = 256) -> Array:
    """``teacher_apply(*batch)`` over ``inputs`` (an array or a tuple of arrays with a shared leading axis) in
    chunks of ``batch_size`` (the last chunk padded, so the teacher sees one shape); returns ``[n, C]`` float32."""
    arrays = _as_tuple(inputs)
    n = int(np.shape(arrays[0])[0])
    out = []
    for start in range(0, n, batch_size):
        chunk = [np.asarray(a[start : start + batch_size]) for a in arrays]
        short = batch_size - chunk[0].shape[0]
        if short and n > batch_size:
            chunk = [np.concatenate([c, np.repeat(c[:1], short, 0)]) for c in chunk]
        logits = jnp.asarray(teacher_apply(*chunk), jnp.float32)
        out.append(logits[: min(batch_size, n - start)])
    return jnp.concatenate(out)


def distill(
    teacher_apply: Callable[..., Array],
    student: nn.Module | Callable[..., Array],
    student_params: Any,
    inputs: Any,
    labels: Array | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    steps: int = 500,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    key: Array | None = None,
    optimizer: optax.GradientTransformation | None = None,
    teacher_batch_size: int = 256,
    return_history: bool = False,
) -> Any:
    """Trains ``student`` to match ``teacher_apply``'s logits on ``inputs`` (and the hard ``labels``).

    Args:
      teacher_apply: ``(*batch) -> [B, C]`` teacher logits, e.g. ``lambda ids: teacher.apply(t_params, ids)``;
        called once per chunk of ``inputs`` before training.
      student: a Flax module (``student.apply(params, *batch)`` gives logits) or a callable
        ``(params, *batch) -> logits``.
      student_params: the student's initial variables (not modified; a copy is trained).
      inputs: an array ``[n, ...]`` or a tuple of arrays with a shared leading axis (the module's positional
        inputs, e.g. token ids).
      labels: ``[n]`` int hard labels, ``< 0`` for unlabelled inputs; ``None`` for pure distillation.
      temperature: softening temperature ``T``.
      alpha: weight of the distillation term (``1 - alpha`` on the hard labels).
      steps: optimisation steps; batch_size: inputs per step (sampled with replacement on the device).
      learning_rate: Adam learning rate (ignored when ``optimizer`` is given).
      key: PRNG key of the minibatches (default ``jax.random.key(0)``).
      optimizer: an optax optimiser (default ``optax.adam(learning_rate)``).
      teacher_batch_size: chunk size of the teacher pass.
      return_history: also return ``{"loss", "kl", "xent"}`` per step.

    Returns:
      The trained student variables (and the history when ``return_history``).

    Raises:
      ValueError: bad ``temperature`` / ``alpha`` / ``steps`` / ``batch_size``, mismatched lengths, or teacher
        logits that are not ``[n, C]``.
    """
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    alpha = _validate.fraction("alpha", alpha)
    steps = _validate.positive_int("steps", steps)
    batch_size = _validate.positive_int("batch_size", batch_size)
    teacher_batch_size = _validate.positive_int("teacher_batch_size", teacher_batch_size)
    arrays = tuple(jnp.asarray(a) for a in _as_tuple(inputs))
    if not arrays or any(a.ndim == 0 for a in arrays):
        raise ValueError(f"inputs must be arrays with a leading example axis, got shapes {[a.shape for a in arrays]}")
    n = int(arrays[0].shape[0])
    if n == 0:
        raise ValueError("inputs is empty")
    for i, a in enumerate(arrays):
        if a.shape[0] != n:
            raise ValueError(f"inputs[{i}] has {a.shape[0]} rows, inputs[0] has {n}")
    targets = teacher_logits(teacher_apply, arrays, teacher_batch_size)
    if targets.ndim != 2 or targets.shape[0] != n:
        raise ValueError(f"teacher logits must be [n={n}, classes], got shape {targets.shape}")
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        if int(jnp.max(labels)) >= targets.shape[1]:
            raise ValueError(f"labels go up to {int(jnp.max(labels))} but the teacher has {targets.shape[1]} classes")

    apply = student.apply if isinstance(student, nn.Module) else student
    try:
        out = jax.eval_shape(apply, student_params, *(a[:1] for a in arrays))
    except Exception as e:  # noqa: BLE001 - any failure here is a model / input mismatch
        raise ValueError(
            f"student cannot be applied to inputs of shapes {[a.shape for a in arrays]}: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    if getattr(out, "shape", None) != (1, targets.shape[1]):
        raise ValueError(
            f"student logits must be [batch, {targets.shape[1]}] like the teacher's, got shape "
            f"{getattr(out, 'shape', None)} for one input"
        )
    optimizer = optimizer if optimizer is not None else optax.adam(learning_rate)
    params = jax.tree_util.tree_map(jnp.array, student_params)
    opt_state = optimizer.init(params)
    key = jax.random.key(0) if key is None else key
    has_labels = labels is not None

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, step_key, arrays, targets, labels):
        idx = jax.random.randint(step_key, (batch_size,), 0, n)
        batch = tuple(a[idx] for a in arrays)

        def loss_fn(p):
            logits = apply(p, *batch).astype(jnp.float32)
            return distill_loss(
                logits, targets[idx], labels[idx] if has_labels else None, temperature=temperature, alpha=alpha
            )

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **parts}

    dummy = jnp.zeros((n,), jnp.int32) if labels is None else labels
    history = []
    for i in range(steps):
        params, opt_state, metrics = step(params, opt_state, jax.random.fold_in(key, i), arrays, targets, dummy)
        if return_history:
            history.append(metrics)
    if return_history:
        history = jax.device_get(history)
        return params, {k: [float(m[k]) for m in history] for k in ("loss", "kl", "xent")}
    return params
