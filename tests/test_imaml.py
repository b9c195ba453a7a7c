"""Implicit MAML: the meta-gradient against the closed form, CG convergence, flat memory, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
import pytest
from jax.flatten_util import ravel_pytree

import fsl_jax as fj


class Linear(nn.Module):
    """y = x @ w (no bias): the support loss is quadratic, so the inner solution has a closed form."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, use_bias=False, dtype=jnp.float64, param_dtype=jnp.float64, name="w")(x)


def _regression_task(key, dim=6, n_support=10, n_query=12, scale=None):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    sx = jax.random.normal(k1, (n_support, dim), jnp.float64)
    if scale is not None:  # spread the Hessian's eigenvalues: CG needs several iterations
        sx = sx * scale
    return fj.Task(
        sx,
        jax.random.normal(k2, (n_support, 1), jnp.float64),
        jax.random.normal(k3, (n_query, dim), jnp.float64),
        jax.random.normal(k4, (n_query, 1), jnp.float64),
    )


def _closed_form(theta, task, lam):
    """phi* = argmin mean((X phi - y)^2) + lam/2 ||phi - theta||^2 and d L_Q(phi*) / d theta, with numpy solves."""
    x, y = np.asarray(task.support_x), np.asarray(task.support_y)[:, 0]
    z, t = np.asarray(task.query_x), np.asarray(task.query_y)[:, 0]
    n, m, d = len(x), len(z), x.shape[1]
    hessian = 2.0 / n * x.T @ x
    phi = np.linalg.solve(hessian + lam * np.eye(d), 2.0 / n * x.T @ y + lam * theta)
    grad_query = 2.0 / m * z.T @ (z @ phi - t)
    return phi, lam * np.linalg.solve(hessian + lam * np.eye(d), grad_query)  # = (I + H / lam)^-1 grad L_Q


def _meta_grad(learner, params, task):
    return jax.jit(jax.grad(lambda p: fj.meta_loss(learner, p, task, jax.random.key(0))[0]))(params)


def test_imaml_meta_gradient_equals_the_closed_form_when_the_inner_solution_is_exact():
    with jax.enable_x64(True):
        task = _regression_task(jax.random.key(0))
        lam = 2.0
        learner = fj.imaml(Linear(), "mse", inner_lr=0.1, inner_steps=400, lam=lam, cg_steps=6)
        params = learner.init(jax.random.key(1), task)
        theta = np.asarray(params["params"]["w"]["kernel"])[:, 0]
        phi_star, expected = _closed_form(theta, task, lam)
        adapted = jax.jit(lambda p: learner.adapt(p, task, None))(params)
        np.testing.assert_allclose(np.asarray(adapted["params"]["w"]["kernel"])[:, 0], phi_star, rtol=1e-10, atol=1e-12)
        got = np.asarray(_meta_grad(learner, params, task)["params"]["w"]["kernel"])[:, 0]
        np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
        # and it is not MAML's gradient through the trajectory, nor the first-order one
        first_order = (
            2.0
            / len(task.query_x)
            * np.asarray(task.query_x).T
            @ (np.asarray(task.query_x) @ phi_star - np.asarray(task.query_y)[:, 0])
        )
        assert np.linalg.norm(got - first_order) > 1e-3 * np.linalg.norm(got)


def test_imaml_matches_the_implicit_formula_on_a_nonlinear_model():
    """A tanh network: the Hessian changes with the parameters, so it must be taken at phi*, not at theta.
    Reference: phi* from the same inner loop, H = jax.hessian of the flattened support loss at phi*, numpy solve."""
    with jax.enable_x64(True):
        model = fj.models.MLP((3,), 1, dtype=jnp.float64)
        task = _regression_task(jax.random.key(7), dim=2)
        lam = 4.0
        learner = fj.imaml(model, "mse", inner_lr=0.05, inner_steps=200, lam=lam, cg_steps=40)
        params = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), learner.init(jax.random.key(8), task))
        phi = jax.jit(lambda p: learner.adapt(p, task, None))(params)["params"]
        flat_phi, unravel = ravel_pytree(phi)
        support = lambda v: fj.mse_loss(model.apply({"params": unravel(v)}, task.support_x), task.support_y)
        query = lambda v: fj.mse_loss(model.apply({"params": unravel(v)}, task.query_x), task.query_y)
        hessian = np.asarray(jax.hessian(support)(flat_phi))
        expected = np.linalg.solve(np.eye(len(flat_phi)) + hessian / lam, np.asarray(jax.grad(query)(flat_phi)))
        got = ravel_pytree(_meta_grad(learner, params, task)["params"])[0]
        np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10)
        theta = ravel_pytree(params["params"])[0]
        at_theta = np.linalg.solve(
            np.eye(len(theta)) + np.asarray(jax.hessian(support)(theta)) / lam, np.asarray(jax.grad(query)(flat_phi))
        )
        assert np.abs(at_theta - expected).max() > 1e-4  # the test tells the two apart


def test_conjugate_gradient_error_falls_as_cg_steps_grow():
    with jax.enable_x64(True):
        task = _regression_task(jax.random.key(3), dim=8, scale=jnp.logspace(-0.5, 0.5, 8))
        lam = 0.5
        errors = []
        for cg_steps in (1, 2, 4, 8):
            learner = fj.imaml(Linear(), "mse", inner_lr=0.04, inner_steps=2000, lam=lam, cg_steps=cg_steps)
            params = learner.init(jax.random.key(4), task)
            theta = np.asarray(params["params"]["w"]["kernel"])[:, 0]
            _, expected = _closed_form(theta, task, lam)
            got = np.asarray(_meta_grad(learner, params, task)["params"]["w"]["kernel"])[:, 0]
            errors.append(np.linalg.norm(got - expected) / np.linalg.norm(expected))
        assert all(a > b for a, b in zip(errors, errors[1:])), errors
        assert errors[0] > 1e-2 and errors[-1] < 1e-6, errors  # 8 iterations solve an 8-dimensional system


def test_conjugate_gradient_solves_a_pytree_system():
    a = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
    b = {"u": jnp.array([1.0, -2.0]), "v": jnp.array([0.5])}
    flat_b, unravel = ravel_pytree(b)
    x = fj.learners.conjugate_gradient(lambda t: unravel(a @ ravel_pytree(t)[0]), b, 3)
    np.testing.assert_allclose(ravel_pytree(x)[0], np.linalg.solve(np.asarray(a), np.asarray(flat_b)), rtol=1e-5)


def test_forward_and_reverse_hessian_vector_products_agree_and_conv4_works():
    """Conv-4's im2col convolution has reverse-only rules: "auto" falls back to reverse-over-reverse there."""
    with jax.enable_x64(True):
        task = _regression_task(jax.random.key(5))
        grads = [
            ravel_pytree(
                _meta_grad(
                    fj.imaml(Linear(), "mse", 0.1, 30, lam=1.0, cg_steps=3, hvp=h),
                    fj.imaml(Linear(), "mse").init(jax.random.key(1), task),
                    task,
                )
            )[0]
            for h in ("forward", "reverse")
        ]
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10)
    data = jax.random.uniform(jax.random.key(0), (6, 4, 4, 4, 1))
    image_task = fj.data.DeviceSampler(data, 3, 1, 2).sample_one(jax.random.key(1))
    model = fj.models.Conv4(num_classes=3, hidden=2, blocks=1, conv_impl="im2col")
    with pytest.raises(TypeError, match="forward-mode"):
        learner = fj.imaml(model, "xent", 0.1, 2, hvp="forward")
        _meta_grad(learner, learner.init(jax.random.key(2), image_task), image_task)
    learner = fj.imaml(model, "xent", 0.1, 1, hvp="auto", cg_steps=1)
    grad = ravel_pytree(_meta_grad(learner, learner.init(jax.random.key(2), image_task), image_task))[0]
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_imaml_memory_is_flat_in_the_number_of_inner_steps_while_maml_grows():
    model = fj.models.MLP(hidden=(64, 64), out=1)
    task = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 20, 20), 0)
    memory = {}
    for name, make in (
        ("imaml", lambda n: fj.imaml(model, "mse", 0.01, n, lam=1.0, cg_steps=3)),
        ("maml", lambda n: fj.maml(model, "mse", 0.01, n)),
    ):
        for steps in (5, 80):
            learner = make(steps)
            params = learner.init(jax.random.key(1), task)
            memory[name, steps] = _temp_bytes(lambda p: _meta_grad(learner, p, task), params)
    assert memory["imaml", 80] <= 1.1 * memory["imaml", 5], memory
    assert memory["maml", 80] > 4 * memory["maml", 5], memory


def test_imaml_trains_through_make_meta_step_with_task_chunks():
    learner = fj.imaml(fj.models.MLP((16,), 1), "mse", 0.01, 5, lam=1.0, cg_steps=3)
    tasks = fj.data.sinusoid_tasks(jax.random.key(0), 4, 8, 8)
    params = learner.init(jax.random.key(1), fj.task_at(tasks, 0))
    results = []
    for chunk in (None, 2):
        state = fj.TrainState.create(learner, params, optax.sgd(0.1))
        state, metrics = fj.make_meta_step(learner, optax.sgd(0.1), task_chunk=chunk, donate=False)(
            state, tasks, jax.random.key(2)
        )
        results.append(ravel_pytree(state.params)[0])
        assert bool(metrics["finite"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(results[0] - ravel_pytree(params)[0]).max()) > 0


def test_imaml_padded_task_has_the_unpadded_gradient():
    with jax.enable_x64(True):
        model = fj.models.MLP((5,), 3, dtype=jnp.float64)
        key = jax.random.key(0)
        task = fj.Task(
            jax.random.normal(key, (6, 2), jnp.float64),
            jnp.array([0, 1, 2, 0, 1, 2]),
            jax.random.normal(jax.random.key(1), (6, 2), jnp.float64),
            jnp.array([2, 1, 0, 0, 1, 2]),
        )
        padded = fj.data.pad_task(task, support=9, query=8)
        learner = fj.imaml(model, "xent", 0.1, 20, lam=1.0, cg_steps=4)
        params = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), learner.init(jax.random.key(2), task))
        np.testing.assert_allclose(
            ravel_pytree(_meta_grad(learner, params, padded))[0],
            ravel_pytree(_meta_grad(learner, params, task))[0],
            rtol=1e-9,
            atol=1e-12,
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": 0.0}, "lam must be a positive"),
        ({"lam": -1.0}, "lam must be a positive"),
        ({"cg_steps": 0}, "cg_steps must be a positive int"),
        ({"cg_steps": 2.5}, "cg_steps must be a positive int"),
        ({"inner_steps": 0}, "inner_steps must be a positive int"),
        ({"inner_lr": float("nan")}, "inner_lr must be a positive"),
        ({"hvp": "exact"}, "hvp must be 'auto', 'forward' or 'reverse', got 'exact'"),
    ],
)
def test_imaml_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fj.imaml(
            fj.models.MLP((4,), 1), "mse", **{"inner_lr": 0.1, "inner_steps": 3, "lam": 1.0, "cg_steps": 2, **kwargs}
        )
