"""Implicit MAML (Rajeswaran et al., 2019): a second-order meta-gradient that stores no inner trajectory.

The inner loop minimises the proximal support loss ``L_S(phi) + lam / 2 * ||phi - theta||^2`` from ``phi = theta``.
At its minimum ``phi*``, ``d phi* / d theta = (I + H / lam)^-1`` with ``H`` the Hessian of ``L_S`` at ``phi*``, so the
meta-gradient of the query loss is ``(I + H / lam)^-1 grad L_Q(phi*)``: a linear solve, done here by conjugate
gradient on Hessian-vector products (forward-over-reverse). The inner loop itself runs without differentiation, so
memory does not grow with the number of inner steps.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import _validate
from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, resolve_loss, way_mask_kwargs
from fsl_jax.tasks import Task

Array = Any


def _tree_dot(a: Any, b: Any) -> Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def conjugate_gradient(matvec: Callable[[Any], Any], b: Any, steps: int) -> Any:
    """``steps`` iterations of conjugate gradient for ``matvec(x) = b`` (symmetric positive definite), from ``x = 0``.

    Works on pytrees; a fixed number of iterations (a ``fori_loop``), stopping early only in effect: once the
    residual is exactly zero the iterate no longer moves.

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> [round(v, 4) for v in conjugate_gradient(lambda x: a @ x, jnp.array([1.0, 2.0]), 2).tolist()]
      [0.0909, 0.6364]
    """
    x = jax.tree_util.tree_map(jnp.zeros_like, b)
    r = b
    p = b
    rs = _tree_dot(r, r)

    def body(_, state):
        x, r, p, rs = state
        ap = matvec(p)
        pap = _tree_dot(p, ap)
        alpha = jnp.where(pap > 0, rs / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = jax.tree_util.tree_map(lambda a, b: a + alpha * b, x, p)
        r = jax.tree_util.tree_map(lambda a, b: a - alpha * b, r, ap)
        new_rs = _tree_dot(r, r)
        beta = jnp.where(rs > 0, new_rs / jnp.where(rs > 0, rs, 1.0), 0.0)
        p = jax.tree_util.tree_map(lambda a, b: a + beta * b, r, p)
        return x, r, p, new_rs

    x, *_ = jax.lax.fori_loop(0, steps, body, (x, r, p, rs))
    return x


def _has_reverse_only_rules(jaxpr: Any) -> bool:
    """Whether a program holds a ``jax.custom_vjp`` rule (which forward mode cannot differentiate)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if "custom_vjp" in eqn.primitive.name:
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if (hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns")) and _has_reverse_only_rules(
                    sub
                ):
                    return True
    return False


def _zero_cotangent(x: Array) -> Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


@records_config
def imaml(
    model: nn.Module,
    loss: str | Callable = "xent",
    inner_lr: float = 0.01,
    inner_steps: int = 10,
    lam: float = 1.0,
    cg_steps: int = 5,
    hvp: str = "auto",
) -> Learner:
    """Implicit MAML: the meta-gradient ``(I + H / lam)^-1 grad L_Q(phi*)`` by conjugate gradient.

    ``adapt`` runs ``inner_steps`` SGD steps (rate ``inner_lr``) on ``L_S(phi) + lam / 2 * ||phi - theta||^2`` from
    ``phi = theta``; ``theta`` are the model's ``params``. The gradient of :func:`fsl_jax.meta_loss` with respect to
    ``theta`` is the implicit one (a ``jax.custom_vjp`` on the inner solution): ``cg_steps`` iterations of conjugate
    gradient on ``v -> v + H v / lam``, each one Hessian-vector product of the support loss at ``phi*``
    (forward-over-reverse), so ``make_meta_step``, ``task_chunk``, sharding and the CLI work unchanged, and memory does
    not grow with ``inner_steps``. The gradient is exact when ``phi*`` is the exact minimiser and CG has converged;
    more ``inner_steps`` and ``cg_steps`` approach it. Collections other than ``params`` (none for the built-in
    models) are passed through unadapted and get no gradient.

    Args:
      model: a ``flax.linen.Module``, ``model.apply(variables, x)``.
      loss: ``"mse"``, ``"xent"`` or ``(predictions, targets) -> scalar``.
      inner_lr: inner SGD learning rate (on the proximal loss; stable for ``inner_lr * (lam + max curvature) < 2``).
      inner_steps: inner SGD steps.
      lam: the proximal regularisation strength ``lam > 0``: large keeps ``phi*`` near ``theta``.
      cg_steps: conjugate-gradient iterations (>= 1).
      hvp: how Hessian-vector products are taken: ``"forward"`` (forward-over-reverse, ``jax.jvp`` of
        ``jax.grad``: the cheapest), ``"reverse"`` (reverse-over-reverse: for models with reverse-only derivative
        rules, such as the im2col convolution that ``Conv4`` uses on CPU), or ``"auto"``: forward unless the model
        cannot be differentiated in forward mode. Both give the same product.

    Example:
      >>> import jax, optax, fsl_jax as fj
      >>> learner = fj.imaml(fj.models.MLP((40, 40), 1), "mse", inner_lr=0.01, inner_steps=10, lam=1.0, cg_steps=5)
      >>> tasks = fj.data.sinusoid_tasks(jax.random.key(0), 4, 10, 10)
      >>> params = learner.init(jax.random.key(1), fj.task_at(tasks, 0))
      >>> state = fj.TrainState.create(learner, params, optax.adam(1e-3))
      >>> state, metrics = fj.make_meta_step(learner, optax.adam(1e-3))(state, tasks, jax.random.key(2))
      >>> int(state.step), bool(metrics["finite"])
      (1, True)
    """
    _validate.module("model", model)
    for name, count in (("inner_steps", inner_steps), ("cg_steps", cg_steps)):
        _validate.positive_int(name, count)
    for name, value in (("inner_lr", inner_lr), ("lam", lam)):
        _validate.number(name, value)
    if hvp not in ("auto", "forward", "reverse"):
        raise ValueError(f"hvp must be 'auto', 'forward' or 'reverse', got {hvp!r}")
    loss_fn, kind = resolve_loss(loss)

    def support_loss(phi: Any, data: tuple) -> Array:
        others, task = data
        predictions = model.apply({**others, "params": phi}, task.support_x)
        return loss_fn(predictions, task.support_y, task.support_mask, **way_mask_kwargs(task))

    def inner_solution(theta: Any, data: tuple) -> Any:
        def step(phi, _):
            grads = jax.grad(support_loss)(phi, data)
            phi = jax.tree_util.tree_map(lambda p, g, t: p - inner_lr * (g + lam * (p - t)), phi, grads, theta)
            return phi, None

        phi, _ = jax.lax.scan(step, theta, None, length=inner_steps)
        return phi

    @jax.custom_vjp
    def solve(theta: Any, data: tuple) -> Any:
        return inner_solution(theta, data)

    def solve_fwd(theta, data):
        phi = inner_solution(theta, data)
        return phi, (phi, data)

    def solve_bwd(residuals, v):
        phi, data = residuals
        grad_support = lambda p: jax.grad(support_loss)(p, data)

        def forward_over_reverse(u):
            return jax.jvp(grad_support, (phi,), (u,))[1]

        def reverse_over_reverse(u):
            return jax.grad(lambda p: _tree_dot(grad_support(p), jax.lax.stop_gradient(u)))(phi)

        reverse = hvp == "reverse" or (hvp == "auto" and _has_reverse_only_rules(jax.make_jaxpr(grad_support)(phi)))
        product = reverse_over_reverse if reverse else forward_over_reverse

        def matvec(u):  # (I + H / lam) u
            return jax.tree_util.tree_map(lambda a, b: a + b / lam, u, product(u))

        theta_bar = conjugate_gradient(matvec, v, cg_steps)
        return theta_bar, jax.tree_util.tree_map(_zero_cotangent, data)

    solve.defvjp(solve_fwd, solve_bwd)

    def init(key: Array, task: Task):
        variables = model.init(key, task.support_x)
        if "params" not in variables:
            raise ValueError("model.init returned no 'params' collection; nothing to meta-learn")
        return variables

    def adapt(params, task: Task, key: Array):
        del key
        others = {k: jax.lax.stop_gradient(v) for k, v in params.items() if k != "params"}
        phi = solve(params["params"], (others, task))
        return {**others, "params": phi}

    def predict(params, adapted, x):
        del params
        return model.apply(adapted, x)

    return Learner(init=init, adapt=adapt, predict=predict, loss=loss_fn, kind=kind, name="imaml")
