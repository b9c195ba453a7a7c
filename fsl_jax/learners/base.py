"""The learner contract and the losses every learner shares.

A learner is a few pure functions (a :class:`Learner`), written for **one** task. Batching over tasks is the caller's
``jax.vmap``; meta-gradients are ``jax.grad`` of :func:`meta_loss`.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fsl_jax.tasks import Task, validate_task

Array = Any
Params = Any
LossFn = Callable[..., Array]


class Learner(NamedTuple):
    """A meta-learner as pure functions over pytrees.

    Attributes:
      init: ``(key, task) -> params``: meta-parameters from an example (unbatched) task.
      adapt: ``(params, task, key) -> adapted``: task-specific state computed from the support set only.
      predict: ``(params, adapted, x) -> outputs``: predictions (logits or regression outputs) for inputs ``x``.
      loss: ``(predictions, targets, mask) -> scalar``: the outer (query) loss; ``mask`` may be ``None``. For a task
        with a ``way_mask`` (an episode padded to a fixed number of classes) it is called with ``way_mask=`` as well,
        and must then give the padded classes no weight (the built-in classification losses do).
      meta_grad: optional ``(params, task, key) -> (grads, (loss, aux))`` for learners whose update is not the
        gradient of the query loss (Reptile). ``None`` means ``jax.grad`` of :func:`meta_loss`.
      kind: ``"classification"`` or ``"regression"``; selects the evaluation metric.
      name: a short name used in logs and tables.
      extra_loss: optional ``(params, adapted, task, key) -> scalar`` added to the query loss during meta-training
        (a regulariser or an ELBO term); not counted in evaluation metrics.
      config: the constructor's name and arguments as a JSON-able dict (set by every built-in constructor;
        ``None`` for a hand-made learner). :func:`fsl_jax.meta_train` stores it with each checkpoint and refuses to
        resume a run whose learner was built with other settings.
      uses_step: the learner follows a schedule over meta-steps (MAML++'s annealed multi-step loss and
        derivative order): :func:`meta_loss` then calls ``adapt(params, task, key, step)`` and
        ``extra_loss(params, adapted, task, key, step)`` with the meta-step count (an int32 scalar, traced, so one
        compilation serves every step); ``step=None`` (evaluation) means the end of the schedule.

    Example: nearest class mean on the raw inputs, with a learned input scale (``examples/custom_learner.py`` has a
    fuller one).

      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> def adapt(params, task, key):  # class means of the scaled support inputs, [ways, features]
      ...     onehot = jax.nn.one_hot(task.support_y, 2)
      ...     return onehot.T @ (task.support_x * params["scale"]) / onehot.sum(0)[:, None]
      >>> def predict(params, means, x):  # logits: minus squared distances to the class means
      ...     return -(((x * params["scale"])[:, None] - means[None]) ** 2).sum(-1)
      >>> learner = fj.Learner(init=lambda key, task: {"scale": jnp.ones(task.support_x.shape[1:])},
      ...                      adapt=adapt, predict=predict, loss=fj.xent_loss, name="centroid")
      >>> task = fj.Task(jnp.array([[0.0, 0.0], [1.0, 1.0]]), jnp.array([0, 1]),
      ...                jnp.array([[0.1, 0.2], [0.9, 0.8]]), jnp.array([0, 1]))
      >>> params = learner.init(jax.random.key(0), task)
      >>> learner.predict(params, learner.adapt(params, task, None), task.query_x).argmax(-1).tolist()
      [0, 1]
      >>> loss, aux = fj.meta_loss(learner, params, task, jax.random.key(1))
      >>> bool(loss < 0.5)
      True
    """

    init: Callable[[Array, Task], Params]
    adapt: Callable[[Params, Task, Array], Any]
    predict: Callable[[Params, Any, Array], Array]
    loss: LossFn
    meta_grad: Callable | None = None
    kind: str = "classification"
    name: str = "learner"
    extra_loss: Callable | None = None
    config: dict | None = None
    uses_step: bool = False


def _weighted_mean(values: Array, mask: Array | None) -> Array:
    if mask is None:
        return jnp.mean(values)
    if jnp.shape(mask) != values.shape:
        raise ValueError(f"mask must have one value per example, shape {values.shape}, got shape {jnp.shape(mask)}")
    mask = jnp.asarray(mask).astype(values.dtype)
    # where, not only a product: a padded example's value (even NaN or Inf) never reaches the sum or its gradient.
    return jnp.sum(jnp.where(mask != 0, values * mask, 0)) / jnp.maximum(jnp.sum(mask), 1.0)


def _check_way_mask(way_mask: Array, classes: int) -> Array:
    way_mask = jnp.asarray(way_mask)
    if way_mask.shape != (classes,):
        raise ValueError(f"way_mask must have one value per class, shape ({classes},), got shape {way_mask.shape}")
    return way_mask


def mask_classes(logits: Array, way_mask: Array | None) -> Array:
    """``logits`` with the classes whose ``way_mask`` entry is 0 set to a large negative finite value.

    That value is half the most negative number of the logits' dtype: a softmax gives those classes exactly 0
    probability (in float32 and float64 alike), an arg-max never picks them while any class is real, and no gradient
    flows through their original logits. ``way_mask=None`` returns ``logits`` unchanged.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> logits = mask_classes(jnp.array([[1.0, 2.0, 50.0]]), jnp.array([1, 1, 0]))
      >>> jax.nn.softmax(logits)[0, 2].item(), bool(jnp.isfinite(logits).all())
      (0.0, True)
    """
    if way_mask is None:
        return logits
    logits = jnp.asarray(logits)
    way_mask = _check_way_mask(way_mask, logits.shape[-1])
    low = jnp.asarray(jnp.finfo(logits.dtype).min / 2, logits.dtype)
    return jnp.where(way_mask > 0, logits, low)


def way_mask_kwargs(task: Task) -> dict:
    """``{"way_mask": task.way_mask}`` for a task padded to a fixed number of classes, else ``{}``: what
    :func:`meta_loss` passes to a learner's loss, so that a loss without a ``way_mask`` argument keeps working on
    tasks without one."""
    return {} if task.way_mask is None else {"way_mask": task.way_mask}


def mse_loss(predictions: Array, targets: Array, mask: Array | None = None, way_mask: Array | None = None) -> Array:
    """Mean squared error, averaged over examples (and output dimensions).

    ``mask`` (one 0/1 value per example) leaves padded examples out of the mean. This is the loss behind
    ``loss="mse"`` and the one to give a custom :class:`Learner` for regression. Regression has no classes: a
    ``way_mask`` is a ``ValueError``.

    Example:
      >>> import jax.numpy as jnp
      >>> import fsl_jax as fj
      >>> float(fj.mse_loss(jnp.array([[1.0], [3.0]]), jnp.array([[0.0], [0.0]])))
      5.0
      >>> float(fj.mse_loss(jnp.array([[1.0], [3.0]]), jnp.array([[0.0], [0.0]]), mask=jnp.array([1, 0])))
      1.0
    """
    if way_mask is not None:
        raise ValueError(
            "mse_loss got a way_mask: a task padded to a number of classes (way_mask) needs a "
            "classification loss ('xent'); regression has no classes"
        )
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    if targets.ndim == 0 or predictions.size != targets.size:
        raise ValueError(
            f"predictions and targets must hold the same number of values with a leading example axis, "
            f"got predictions of shape {predictions.shape} and targets of shape {targets.shape}"
        )
    predictions = jnp.reshape(predictions, targets.shape)
    per_example = jnp.reshape((predictions - targets) ** 2, (targets.shape[0], -1)).mean(axis=1)
    return _weighted_mean(per_example, mask)


def xent_loss(logits: Array, labels: Array, mask: Array | None = None, way_mask: Array | None = None) -> Array:
    """Softmax cross-entropy with integer labels, averaged over examples.

    ``mask`` (one 0/1 value per example) leaves padded examples out of the mean. ``way_mask`` (one 0/1 value per
    class) leaves padded classes out of the softmax (:func:`mask_classes`: they get exactly 0 probability and their
    logits no gradient), so a task padded to more classes has the loss of the unpadded task. This is the loss behind
    ``loss="xent"`` and the one to give a custom :class:`Learner` for classification.

    Example:
      >>> import jax.numpy as jnp
      >>> import fsl_jax as fj
      >>> round(float(fj.xent_loss(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)  # uniform over 4 classes: log 4
      1.3863
      >>> round(float(fj.xent_loss(jnp.array([[5.0, 0.0], [0.0, 5.0]]), jnp.array([0, 0]), mask=jnp.array([1, 0]))), 4)
      0.0067
      >>> round(float(fj.xent_loss(jnp.zeros((2, 4)), jnp.array([0, 1]), way_mask=jnp.array([1, 1, 0, 0]))), 4)  # log 2
      0.6931
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have the shape of logits without its class axis, {logits.shape[:-1]}, got "
            f"labels of shape {labels.shape} for logits of shape {logits.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    logp = jax.nn.log_softmax(mask_classes(logits, way_mask), axis=-1)
    per_example = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return _weighted_mean(per_example, mask)


def resolve_loss(loss: str | Callable) -> tuple[LossFn, str]:
    """Turns ``"mse"``, ``"xent"`` or a callable into ``(loss_fn(pred, target, mask), kind)``.

    A user callable takes ``(predictions, targets)`` and returns a scalar; it cannot see masks, so tasks with masks
    (``support_mask``, ``query_mask`` or ``way_mask``) need a built-in loss.
    """
    if isinstance(loss, str):
        if loss == "mse":
            return mse_loss, "regression"
        if loss == "xent":
            return xent_loss, "classification"
        raise ValueError(f"loss must be 'mse', 'xent' or a callable (predictions, targets) -> scalar, got {loss!r}")
    if not callable(loss):
        raise TypeError(f"loss must be 'mse', 'xent' or a callable, got {type(loss).__name__}")

    def user_loss(predictions, targets, mask=None, way_mask=None):
        if mask is not None:
            raise ValueError("a task with support_mask/query_mask needs loss='mse' or loss='xent', not a callable")
        if way_mask is not None:
            raise ValueError(
                "a task with a way_mask (padded classes) needs loss='xent', not a callable: a callable "
                "(predictions, targets) cannot leave the padded classes out"
            )
        return loss(predictions, targets)

    return user_loss, "regression"


def accuracy(logits: Array, labels: Array, mask: Array | None = None, way_mask: Array | None = None) -> Array:
    """Fraction of correct arg-max predictions, weighted by ``mask``; classes whose ``way_mask`` is 0 are never
    predicted.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[0.0, 1.0, 9.0], [2.0, 1.0, 9.0], [0.0, 0.0, 0.0]])
      >>> float(accuracy(logits, jnp.array([1, 0, 1]), mask=jnp.array([1, 1, 0]), way_mask=jnp.array([1, 1, 0])))
      1.0
    """
    logits = mask_classes(logits, way_mask)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _weighted_mean(correct, mask)


def meta_loss(
    learner: Learner, params: Params, task: Task, key: Array, step: Array | None = None
) -> tuple[Array, dict]:
    """Adapts on the support set of one task and returns the query loss.

    Args:
      learner: a :class:`Learner`.
      params: meta-parameters.
      task: one task (no leading task axis).
      key: a PRNG key for stochastic adaptation.
      step: the meta-step count, for learners with ``uses_step`` (``None``: the end of their schedule); ignored by
        the others.

    Returns:
      ``(loss, aux)`` where ``aux`` holds ``"query_loss"`` (the loss without extra terms) and, for classifiers,
      ``"accuracy"``.

    Padded tasks: the query loss and accuracy are weighted by ``query_mask``; with a ``way_mask`` the learner's loss
    is called with ``way_mask=task.way_mask`` (only then, so a loss without that argument works on other tasks) and
    the accuracy never predicts a padded class. Every built-in learner also masks its support-side computation, so
    a padded task has the loss and meta-gradient of the unpadded one (:func:`fsl_jax.data.pad_task`).

    Example:
      >>> import jax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((40, 40), 1), "mse", inner_lr=0.01, inner_steps=1)
      >>> task = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 5, 10), 0)
      >>> params = learner.init(jax.random.key(1), task)
      >>> loss, aux = fj.meta_loss(learner, params, task, jax.random.key(2))
    """
    validate_task(task, check_values=False)  # shapes only: free at trace time, names the field that is wrong
    adapt_key, extra_key = jax.random.split(key)
    at_step = (step,) if learner.uses_step else ()
    adapted = learner.adapt(params, task, adapt_key, *at_step)
    predictions = learner.predict(params, adapted, task.query_x)
    query_loss = learner.loss(predictions, task.query_y, task.query_mask, **way_mask_kwargs(task))
    aux = {"query_loss": query_loss}
    if learner.kind == "classification":
        aux["accuracy"] = accuracy(predictions, task.query_y, task.query_mask, task.way_mask)
    total = query_loss
    if learner.extra_loss is not None:
        total = total + learner.extra_loss(params, adapted, task, extra_key, *at_step)
    return total, aux


def task_grad(
    learner: Learner, params: Params, task: Task, key: Array, step: Array | None = None
) -> tuple[Params, tuple[Array, dict]]:
    """The meta-gradient contribution of one task: ``(grads, (loss, aux))``."""
    if learner.meta_grad is not None:
        return learner.meta_grad(params, task, key, *((step,) if learner.uses_step else ()))
    (loss, aux), grads = jax.value_and_grad(lambda p: meta_loss(learner, p, task, key, step), has_aux=True)(params)
    return grads, (loss, aux)
