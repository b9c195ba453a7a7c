"""The MAML family: second order is real, first order is not, nothing leaks from the query set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fsl_jax as fj
from jaxpr_tools import REMAT, primitive_names
from fsl_jax.learners.base import mse_loss


def _tiny_task(key, n_support=6, n_query=7, dtype=jnp.float64):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return fj.Task(
        jax.random.normal(k1, (n_support, 2), dtype),
        jax.random.normal(k2, (n_support, 1), dtype),
        jax.random.normal(k3, (n_query, 2), dtype),
        jax.random.normal(k4, (n_query, 1), dtype),
    )


def _closed_form(model, variables, task, alpha, steps, first_order):
    """Meta-gradient by hand: prod_t (I - alpha H_s(theta_t)) grad L_q(theta_T), with explicit Hessians."""
    flat, unravel = ravel_pytree(variables["params"])

    def support_loss(v):
        return mse_loss(model.apply({"params": unravel(v)}, task.support_x), task.support_y)

    def query_loss(v):
        return mse_loss(model.apply({"params": unravel(v)}, task.query_x), task.query_y)

    thetas = [flat]
    for _ in range(steps):
        thetas.append(thetas[-1] - alpha * jax.grad(support_loss)(thetas[-1]))
    g = jax.grad(query_loss)(thetas[-1])
    if first_order:
        return g
    eye = jnp.eye(flat.size, dtype=flat.dtype)
    for theta in reversed(thetas[:-1]):
        g = (eye - alpha * jax.hessian(support_loss)(theta)) @ g
    return g


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_equals_closed_form_second_order(steps):
    with jax.enable_x64(True):
        model = fj.models.MLP(hidden=(5,), out=1, dtype=jnp.float64)
        task = _tiny_task(jax.random.key(0))
        alpha = 0.3
        learner = fj.maml(model, "mse", inner_lr=alpha, inner_steps=steps)
        variables = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), learner.init(jax.random.key(1), task))
        grads = jax.grad(lambda p: fj.meta_loss(learner, p, task, jax.random.key(2))[0])(variables)
        ours = ravel_pytree(grads["params"])[0]
        expected = _closed_form(model, variables, task, alpha, steps, first_order=False)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-8)

        fo = fj.maml(model, "mse", inner_lr=alpha, inner_steps=steps, first_order=True)
        fo_grads = ravel_pytree(
            jax.grad(lambda p: fj.meta_loss(fo, p, task, jax.random.key(2))[0])(variables)["params"]
        )[0]
        np.testing.assert_allclose(
            fo_grads, _closed_form(model, variables, task, alpha, steps, True), rtol=1e-5, atol=1e-8
        )
        # The second-order terms matter here: FOMAML's gradient is measurably different.
        assert float(jnp.linalg.norm(fo_grads - ours)) > 1e-3 * float(jnp.linalg.norm(ours))

        remat = fj.maml(model, "mse", inner_lr=alpha, inner_steps=steps, remat=True)
        remat_grads = jax.grad(lambda p: fj.meta_loss(remat, p, task, jax.random.key(2))[0])(variables)
        np.testing.assert_allclose(ravel_pytree(remat_grads["params"])[0], ours, rtol=1e-10, atol=1e-12)


def test_inner_loop_is_a_scan():
    model = fj.models.MLP(hidden=(4,), out=1)
    task = _tiny_task(jax.random.key(0), dtype=jnp.float32)
    learner = fj.maml(model, "mse", inner_lr=0.1, inner_steps=7)
    params = learner.init(jax.random.key(1), task)
    jaxpr = jax.make_jaxpr(lambda p: learner.adapt(p, task, jax.random.key(0)))(params)
    scans = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 7


def test_meta_sgd_learning_rates_get_the_closed_form_gradient():
    with jax.enable_x64(True):
        model = fj.models.MLP(hidden=(3,), out=1, dtype=jnp.float64)
        task = _tiny_task(jax.random.key(3))
        learner = fj.meta_sgd(model, "mse", inner_lr=0.1, inner_steps=1)
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), learner.init(jax.random.key(4), task))
        assert set(params) == {"model", "inner_lr"}
        grads = jax.grad(lambda p: fj.meta_loss(learner, p, task, jax.random.key(0))[0])(params)
        # d L_q(theta - lr * g_s) / d lr = -g_s * grad L_q(theta')
        flat, unravel = ravel_pytree(params["model"]["params"])
        lrs = ravel_pytree(params["inner_lr"])[0]
        s_loss = lambda v: mse_loss(model.apply({"params": unravel(v)}, task.support_x), task.support_y)
        q_loss = lambda v: mse_loss(model.apply({"params": unravel(v)}, task.query_x), task.query_y)
        g_s = jax.grad(s_loss)(flat)
        expected = -g_s * jax.grad(q_loss)(flat - lrs * g_s)
        np.testing.assert_allclose(ravel_pytree(grads["inner_lr"])[0], expected, rtol=1e-6, atol=1e-12)


def _mse(predictions, targets):
    return jnp.mean((predictions - targets) ** 2)


def _unrolled_query_loss(model, task, params, lrs, steps, adapted=None, first_order=False):
    """The query loss after ``steps`` SGD steps on the support loss, as a plain Python loop (no scan, nothing from
    fsl_jax): only the top-level subtrees named in ``adapted`` move (all of them when ``None``); ``lrs`` is a scalar
    or a tree of per-parameter learning rates shaped like ``params``."""
    names = list(params) if adapted is None else list(adapted)
    fixed = {k: v for k, v in params.items() if k not in names}
    fast = {k: params[k] for k in names}

    def support_loss(f):
        return _mse(model.apply({"params": {**fixed, **f}}, task.support_x), task.support_y)

    for _ in range(steps):
        grads = jax.grad(support_loss)(fast)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        if isinstance(lrs, float):
            fast = jax.tree_util.tree_map(lambda p, g: p - lrs * g, fast, grads)
        else:
            fast = jax.tree_util.tree_map(lambda p, g, lr: p - lr * g, fast, grads, {k: lrs[k] for k in names})
    return _mse(model.apply({"params": {**fixed, **fast}}, task.query_x), task.query_y)


def _rel_diff(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_anil_meta_gradient_is_second_order():
    """ANIL's meta-gradient after 3 inner steps on the head equals jax.grad of the unrolled loop, for the head and
    for the body (whose gradient flows through the head's adaptation); the head part also equals the closed form
    prod_t (I - a H_head(theta_t)) grad_head L_q. First-order ANIL differs measurably, in the head and in the body."""
    with jax.enable_x64(True):
        model = fj.models.MLP(hidden=(5,), out=1, dtype=jnp.float64)
        task = _tiny_task(jax.random.key(5))
        alpha, steps = 0.3, 3
        learner = fj.anil(model, "mse", inner_lr=alpha, inner_steps=steps, head="head")
        variables = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), learner.init(jax.random.key(6), task))
        params = variables["params"]
        assert sorted(params) == ["dense0", "head"]
        grads = jax.grad(lambda p: fj.meta_loss(learner, p, task, jax.random.key(0))[0])(variables)["params"]
        expected = jax.grad(lambda p: _unrolled_query_loss(model, task, p, alpha, steps, ["head"]))(params)
        for name in ("dense0", "head"):
            np.testing.assert_allclose(
                ravel_pytree(grads[name])[0], ravel_pytree(expected[name])[0], rtol=1e-8, atol=1e-12, err_msg=name
            )

        # Closed form over the head alone (the body fixed).
        head0, unravel = ravel_pytree(params["head"])

        def with_head(v):
            return {"params": {**params, "head": unravel(v)}}

        s_loss = lambda v: _mse(model.apply(with_head(v), task.support_x), task.support_y)
        q_loss = lambda v: _mse(model.apply(with_head(v), task.query_x), task.query_y)
        heads = [head0]
        for _ in range(steps):
            heads.append(heads[-1] - alpha * jax.grad(s_loss)(heads[-1]))
        g = jax.grad(q_loss)(heads[-1])
        eye = jnp.eye(head0.size, dtype=head0.dtype)
        for h in reversed(heads[:-1]):
            g = (eye - alpha * jax.hessian(s_loss)(h)) @ g
        np.testing.assert_allclose(ravel_pytree(grads["head"])[0], g, rtol=1e-8, atol=1e-12)

        first = fj.anil(model, "mse", inner_lr=alpha, inner_steps=steps, head="head", first_order=True)
        fo = jax.grad(lambda p: fj.meta_loss(first, p, task, jax.random.key(0))[0])(variables)["params"]
        fo_expected = jax.grad(
            lambda p: _unrolled_query_loss(model, task, p, alpha, steps, ["head"], first_order=True)
        )(params)
        for name in ("dense0", "head"):
            ours, fo_name = ravel_pytree(grads[name])[0], ravel_pytree(fo[name])[0]
            np.testing.assert_allclose(fo_name, ravel_pytree(fo_expected[name])[0], rtol=1e-8, atol=1e-12)
            assert _rel_diff(fo_name, ours) > 1e-2, name  # the second-order terms matter in both parts


def test_meta_sgd_meta_gradient_is_second_order():
    """Meta-SGD after 3 inner steps with a different learning rate per parameter: the gradients with respect to the
    weights and to the learning rates equal jax.grad of the unrolled loop; first order differs in both."""
    with jax.enable_x64(True):
        model = fj.models.MLP(hidden=(4,), out=1, dtype=jnp.float64)
        task = _tiny_task(jax.random.key(7))
        steps = 3
        learner = fj.meta_sgd(model, "mse", inner_lr=0.1, inner_steps=steps)
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), learner.init(jax.random.key(8), task))
        flat_lr, unravel_lr = ravel_pytree(params["inner_lr"])
        lrs = unravel_lr(jax.random.uniform(jax.random.key(9), flat_lr.shape, jnp.float64, 0.05, 0.4))
        params = {"model": params["model"], "inner_lr": lrs}

        def ours(lr_learner):
            g = jax.grad(lambda p: fj.meta_loss(lr_learner, p, task, jax.random.key(0))[0])(params)
            return ravel_pytree(g["model"]["params"])[0], ravel_pytree(g["inner_lr"])[0]

        def by_hand(first_order):
            g_w, g_lr = jax.grad(
                lambda w, lr: _unrolled_query_loss(model, task, w, lr, steps, first_order=first_order), argnums=(0, 1)
            )(params["model"]["params"], lrs)
            return ravel_pytree(g_w)[0], ravel_pytree(g_lr)[0]

        g_w, g_lr = ours(learner)
        e_w, e_lr = by_hand(False)
        np.testing.assert_allclose(g_w, e_w, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(g_lr, e_lr, rtol=1e-8, atol=1e-12)
        fo_w, fo_lr = ours(fj.meta_sgd(model, "mse", inner_lr=0.1, inner_steps=steps, first_order=True))
        h_w, h_lr = by_hand(True)
        np.testing.assert_allclose(fo_w, h_w, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(fo_lr, h_lr, rtol=1e-8, atol=1e-12)
        assert _rel_diff(fo_w, g_w) > 1e-2 and _rel_diff(fo_lr, g_lr) > 1e-2


@pytest.mark.parametrize("maker", [fj.maml, fj.anil, fj.meta_sgd], ids=["maml", "anil", "meta_sgd"])
def test_remat_is_in_the_meta_gradient_jaxpr(maker):
    """remat=True puts a jax.checkpoint in the meta-gradient's program (and remat=False none), with the same
    meta-gradient."""
    model = fj.models.MLP(hidden=(4,), out=1)
    task = _tiny_task(jax.random.key(0), dtype=jnp.float32)
    grads = {}
    for remat in (False, True):
        learner = maker(model, "mse", inner_lr=0.1, inner_steps=3, remat=remat)
        params = learner.init(jax.random.key(1), task)
        meta_grad = jax.grad(lambda p: fj.meta_loss(learner, p, task, jax.random.key(2))[0])
        names = primitive_names(jax.make_jaxpr(meta_grad)(params))
        assert "scan" in names
        assert (REMAT in names) == remat, (remat, sorted(set(names)))
        grads[remat] = ravel_pytree(meta_grad(params))[0]
    np.testing.assert_allclose(grads[True], grads[False], rtol=1e-5, atol=1e-7)


def _variants():
    model = fj.models.Conv4(num_classes=3, hidden=4, blocks=2)
    return {
        "maml": fj.maml(model, "xent", 0.1, 2),
        "fomaml": fj.maml(model, "xent", 0.1, 2, first_order=True),
        "anil": fj.anil(model, "xent", 0.1, 2),
        "meta_sgd": fj.meta_sgd(model, "xent", 0.1, 2),
        "reptile": fj.reptile(model, "xent", 0.1, 2),
    }


def _image_task(key, ways=3, shots=2, queries=4):
    data = jax.random.uniform(key, (6, 10, 8, 8, 1))
    return fj.data.DeviceSampler(data, ways, shots, queries).sample_one(jax.random.fold_in(key, 1))


@pytest.mark.parametrize("name", list(_variants()))
def test_query_set_never_leaks_into_adaptation(name):
    learner = _variants()[name]
    task = _image_task(jax.random.key(0))
    params = learner.init(jax.random.key(1), task)
    adapted = learner.adapt(params, task, jax.random.key(2))
    changed = task._replace(query_y=(task.query_y + 1) % 3, query_x=task.query_x * 0 + 0.5)
    adapted_changed = learner.adapt(params, changed, jax.random.key(2))
    for a, b in zip(jax.tree_util.tree_leaves(adapted), jax.tree_util.tree_leaves(adapted_changed)):
        np.testing.assert_array_equal(a, b)
    # ...while the support set does drive adaptation.
    moved = learner.adapt(params, task._replace(support_y=(task.support_y + 1) % 3), jax.random.key(2))
    assert any(
        not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(adapted), jax.tree_util.tree_leaves(moved))
    )


def test_anil_adapts_only_the_head():
    learner = _variants()["anil"]
    task = _image_task(jax.random.key(0))
    params = learner.init(jax.random.key(1), task)
    adapted = learner.adapt(params, task, jax.random.key(2))
    for name in params["params"]:
        same = all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree_util.tree_leaves(params["params"][name]), jax.tree_util.tree_leaves(adapted["params"][name])
            )
        )
        assert same == (name != "head"), name


def test_maml_init_returns_exactly_the_flax_variables():
    model = fj.models.Conv4(num_classes=3, hidden=4, blocks=2)
    task = _image_task(jax.random.key(0))
    params = fj.maml(model, "xent").init(jax.random.key(5), task)
    expected = model.init(jax.random.key(5), task.support_x)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(a, b)


def test_reptile_direction_is_params_minus_adapted():
    learner = _variants()["reptile"]
    task = _image_task(jax.random.key(0))
    params = learner.init(jax.random.key(1), task)
    grads, (loss, aux) = learner.meta_grad(params, task, jax.random.key(2))
    adapted = learner.adapt(params, task, jax.random.key(2))
    for g, p, a in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(adapted)
    ):
        np.testing.assert_allclose(g, p - a, rtol=1e-6, atol=1e-7)
    assert 0.0 <= float(aux["accuracy"]) <= 1.0 and np.isfinite(float(loss))


def test_custom_callable_loss():
    learner = fj.maml(fj.models.MLP(), lambda p, t: jnp.mean(jnp.abs(p - t)), inner_lr=0.01)
    task = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 5, 5), 0)
    params = learner.init(jax.random.key(1), task)
    loss, _ = fj.meta_loss(learner, params, task, jax.random.key(2))
    adapted = learner.adapt(params, task, jax.random.key(2))
    expected = jnp.mean(jnp.abs(learner.predict(params, adapted, task.query_x) - task.query_y))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inner_lr": -1.0}, "inner_lr"),
        ({"inner_lr": 0.0}, "inner_lr"),
        ({"inner_steps": 0}, "inner_steps"),
        ({"inner_steps": 1.5}, "inner_steps"),
        ({"loss": "hinge"}, "loss"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    args = {"loss": "mse", "inner_lr": 0.01, "inner_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        fj.maml(fj.models.MLP(), **args)


def test_bad_model_and_head():
    with pytest.raises(TypeError, match="model"):
        fj.maml(lambda x: x, "mse")
    learner = fj.anil(fj.models.MLP(), "mse", head="classifier")
    task = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 5, 5), 0)
    with pytest.raises(ValueError, match="classifier"):
        learner.init(jax.random.key(0), task)


def test_masked_support_examples_do_not_count():
    learner = fj.maml(fj.models.MLP(), "mse", inner_lr=0.05, inner_steps=2)
    task = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 8, 5), 0)
    params = learner.init(jax.random.key(1), task)
    mask = jnp.array([1, 1, 1, 1, 1, 0, 0, 0])
    padded = task._replace(support_y=task.support_y.at[5:].set(1e3), support_mask=mask)
    trimmed = fj.Task(task.support_x[:5], task.support_y[:5], task.query_x, task.query_y)
    a = learner.adapt(params, padded, jax.random.key(0))
    b = learner.adapt(params, trimmed, jax.random.key(0))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_exported_losses_match_numpy_with_and_without_masks():
    """fj.xent_loss / fj.mse_loss (what custom learners use) against numpy written out: the mask drops examples."""
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, size=6)
    mask = np.array([1, 0, 1, 1, 0, 1])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_example = -logp[np.arange(6), labels]
    np.testing.assert_allclose(fj.xent_loss(jnp.asarray(logits), jnp.asarray(labels)), per_example.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        fj.xent_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask)),
        per_example[mask == 1].mean(),
        rtol=1e-5,
    )
    pred, target = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    squared = ((pred - target) ** 2).mean(-1)
    np.testing.assert_allclose(fj.mse_loss(jnp.asarray(pred), jnp.asarray(target)), squared.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        fj.mse_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask)), squared[mask == 1].mean(), rtol=1e-5
    )


def test_exported_losses_reject_mismatched_shapes_naming_them():
    """A label/target batch that does not match the predictions is a ValueError naming both shapes, not a broadcast."""
    logits, labels = jnp.zeros((6, 4)), jnp.zeros(6, jnp.int32)
    with pytest.raises(ValueError, match=r"labels .*\(5,\).*\(6, 4\)"):
        fj.xent_loss(logits, labels[:5])
    with pytest.raises(TypeError, match="labels must be integer"):
        fj.xent_loss(logits, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"mask must have one value per example, shape \(6,\), got shape \(4,\)"):
        fj.xent_loss(logits, labels, jnp.ones(4))
    with pytest.raises(ValueError, match=r"predictions of shape \(6, 3\) and targets of shape \(6, 1\)"):
        fj.mse_loss(jnp.zeros((6, 3)), jnp.zeros((6, 1)))  # would broadcast to (6, 3) silently
    np.testing.assert_allclose(fj.mse_loss(jnp.ones((6,)), jnp.zeros((6, 1))), 1.0)  # same values, other layout: fine
