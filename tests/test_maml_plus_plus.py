"""Long inner loops (remat schedules) and MAML++'s options, each against an independent computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
import pytest
from flax import traverse_util
from jax.flatten_util import ravel_pytree

import fsl_jax as fj
from jaxpr_tools import REMAT
from fsl_jax.learners.base import xent_loss

STEPS = 3


class NormNet(nn.Module):
    """dense -> layer norm (named 'norm') -> tanh -> head, in float64."""

    @nn.compact
    def __call__(self, x):
        f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
        x = nn.Dense(6, name="dense", **f64)(x)
        x = nn.LayerNorm(name="norm", **f64)(x)
        return nn.Dense(3, name="head", **f64)(jnp.tanh(x))


def _task(key):
    k1, k2 = jax.random.split(key)
    return fj.Task(
        jax.random.normal(k1, (9, 4), jnp.float64),
        jnp.tile(jnp.arange(3), 3),
        jax.random.normal(k2, (12, 4), jnp.float64),
        jnp.tile(jnp.arange(3), 4),
    )


def _perturb(params, key, scale=0.3):
    """Different values in every per-step slot, so that using the wrong step's rate or norm would show."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten(
        [
            v + scale * jax.random.normal(k, v.shape, v.dtype) * (0.1 if v.ndim == 1 and v.shape[0] == STEPS else 1)
            for v, k in zip(leaves, keys)
        ]
    )


def _reference_loss(params, task, *, per_step_lr, per_step_norm, weights, first_order, inner_lr=0.2):
    """MAML++ by hand: a Python loop over inner steps with explicit per-step rates and norm sets."""
    model = NormNet()
    variables = params["model"] if per_step_lr else params
    flat = traverse_util.flatten_dict(variables["params"])
    is_norm = lambda path: per_step_norm and path[0] == "norm"
    norm_sets = {k: v for k, v in flat.items() if is_norm(k)}
    phi = {k: v for k, v in flat.items() if not is_norm(k)}
    lrs = traverse_util.flatten_dict(params["inner_lr"]) if per_step_lr else None

    def with_norm(phi, k):
        return {"params": traverse_util.unflatten_dict({**phi, **{p: v[k] for p, v in norm_sets.items()}})}

    def loss_on(phi, k, x, y):
        return xent_loss(model.apply(with_norm(phi, k), x), y)

    query_losses = []
    for i in range(STEPS):
        grads = jax.grad(loss_on)(phi, i, task.support_x, task.support_y)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        phi = {k: v - (lrs[k][i] if per_step_lr else inner_lr) * grads[k] for k, v in phi.items()}
        query_losses.append(loss_on(phi, i + 1, task.query_x, task.query_y))
    return sum(w * q for w, q in zip(weights, query_losses))


OPTIONS = {  # each option alone is covered by "all" (every one changes the result); per_step_norm alone keeps the
    # plain parameter layout (no "model" / "inner_lr" split), so it is checked on its own as well
    "per_step_norm": dict(per_step_norm=True),
    "all": dict(per_step_lr=True, per_step_norm=True, multi_step_loss=10),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_maml_plus_plus_options_match_a_hand_unrolled_inner_loop(name):
    options = OPTIONS[name]
    with jax.enable_x64(True):
        task = _task(jax.random.key(0))
        learner = fj.maml(NormNet(), "xent", 0.2, STEPS, **options)
        params = _perturb(learner.init(jax.random.key(1), task), jax.random.key(2))
        step = 4
        if options.get("multi_step_loss"):
            early = (1 - step / 10) / STEPS
            weights = [early, early, 1 - 2 * early]
        else:
            weights = [0.0, 0.0, 1.0]
        reference = lambda p: _reference_loss(
            p,
            task,
            per_step_lr=options.get("per_step_lr", False),
            per_step_norm=options.get("per_step_norm", False),
            weights=weights,
            first_order=False,
        )
        ours = lambda p: fj.meta_loss(learner, p, task, jax.random.key(3), step)[0]
        (value, grad), (ref_value, ref_grad) = (jax.jit(jax.value_and_grad(f))(params) for f in (ours, reference))
        np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-12)
        np.testing.assert_allclose(ravel_pytree(grad)[0], ravel_pytree(ref_grad)[0], rtol=1e-9, atol=1e-12)
        variables = params["model"] if options.get("per_step_lr") else params
        assert variables["params"]["norm"]["scale"].shape == (STEPS + 1, 6)  # one set per number of updates taken
        if options.get("per_step_lr"):
            assert params["inner_lr"]["dense"]["kernel"].shape == (STEPS,)  # one rate per tensor and step


def test_multi_step_loss_ends_as_maml_and_reports_the_last_step_query_loss():
    with jax.enable_x64(True):
        task = _task(jax.random.key(0))
        plus = fj.maml(NormNet(), "xent", 0.2, STEPS, multi_step_loss=10)
        plain = fj.maml(NormNet(), "xent", 0.2, STEPS)
        params = plain.init(jax.random.key(1), task)
        key = jax.random.key(2)
        loss_plain, aux_plain = fj.meta_loss(plain, params, task, key)
        for step in (10, 50, None):  # at and after the annealing, and in evaluation
            loss, aux = fj.meta_loss(plus, params, task, key, step)
            np.testing.assert_allclose(float(loss), float(loss_plain), rtol=1e-12)
        loss0, aux0 = fj.meta_loss(plus, params, task, key, 0)
        np.testing.assert_allclose(float(aux0["query_loss"]), float(aux_plain["query_loss"]), rtol=1e-12)
        assert abs(float(loss0) - float(loss_plain)) > 1e-5  # uniform weights at step 0: a different loss
        np.testing.assert_allclose(fj.learners.msl_weights(3, 4, 6).tolist(), [0.125, 0.125, 0.125, 0.625])


def test_derivative_order_annealing_is_first_order_then_second_order_in_one_compilation():
    with jax.enable_x64(True):
        task = _task(jax.random.key(0))
        annealed = fj.maml(NormNet(), "xent", 0.2, STEPS, first_order_steps=2)
        params = annealed.init(jax.random.key(1), task)
        key = jax.random.key(2)

        def grad_of(learner, step=None):
            grad = jax.jit(jax.grad(lambda p: fj.meta_loss(learner, p, task, key, step)[0]))(params)
            return ravel_pytree(grad)[0]

        first = grad_of(fj.maml(NormNet(), "xent", 0.2, STEPS, first_order=True))
        second = grad_of(fj.maml(NormNet(), "xent", 0.2, STEPS))
        assert np.linalg.norm(first - second) > 1e-3 * np.linalg.norm(second)
        for step, expected in ((0, first), (1, first), (2, second), (7, second)):
            np.testing.assert_allclose(grad_of(annealed, step), expected, rtol=1e-9, atol=1e-12)
        # through make_meta_step: the state's step decides, and the jitted step compiles once
        meta_step = fj.make_meta_step(annealed, optax.sgd(1.0), donate=False)
        tasks = jax.tree_util.tree_map(lambda x: x[None], task)
        state = fj.TrainState.create(annealed, params, optax.sgd(1.0))
        updates = []
        for _ in range(3):
            new_state, _ = meta_step(state, tasks, key)
            updates.append(ravel_pytree(state.params)[0] - ravel_pytree(new_state.params)[0])
            state = new_state
        assert meta_step._cache_size() == 1
        fo_grad = ravel_pytree(
            jax.grad(
                lambda p: fj.meta_loss(
                    fj.maml(NormNet(), "xent", 0.2, STEPS, first_order=True), p, task, jax.random.split(key, 1)[0]
                )[0]
            )(params)
        )[0]
        np.testing.assert_allclose(updates[0], fo_grad, rtol=1e-9, atol=1e-12)


def _meta_grad(learner, params, task):
    return ravel_pytree(jax.jit(jax.grad(lambda p: fj.meta_loss(learner, p, task, jax.random.key(0))[0]))(params))[0]


# remat=True (per step) is tests/test_maml.py::test_remat_is_in_the_meta_gradient_jaxpr
@pytest.mark.parametrize("remat", ["sqrt", 2, 7])  # blocks of 3 + a remainder of 1; of 2 + 1; one block
def test_every_remat_schedule_gives_plain_maml_gradient(remat):
    with jax.enable_x64(True):
        task = _task(jax.random.key(0))
        plain = fj.maml(NormNet(), "xent", 0.2, 7)
        params = plain.init(jax.random.key(1), task)
        expected = _meta_grad(plain, params, task)
        got = _meta_grad(fj.maml(NormNet(), "xent", 0.2, 7, remat=remat), params, task)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)  # in float64 it is in fact exact


def _remat_depth(jaxpr, depth=0):
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    deepest = depth
    for eqn in jaxpr.eqns:
        inner = depth + (eqn.primitive.name == REMAT)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    deepest = max(deepest, _remat_depth(sub, inner))
        deepest = max(deepest, inner)
    return deepest


def test_nested_schedule_checkpoints_blocks_of_checkpointed_steps_and_uses_sublinear_memory():
    model = fj.models.MLP(hidden=(64, 64), out=1)
    task = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 40, 10), 0)
    memory = {}
    for remat in (False, "sqrt"):
        for steps in (16, 64):
            learner = fj.maml(model, "mse", 0.01, steps, remat=remat)
            params = learner.init(jax.random.key(1), task)
            grad = jax.grad(lambda p: fj.meta_loss(learner, p, task, jax.random.key(0))[0])
            if steps == 16:
                assert _remat_depth(jax.make_jaxpr(grad)(params)) == (2 if remat else 0)
            memory[remat, steps] = jax.jit(grad).lower(params).compile().memory_analysis().temp_size_in_bytes
    plain_growth = memory[False, 64] / memory[False, 16]
    nested_growth = memory["sqrt", 64] / memory["sqrt", 16]
    assert plain_growth > 3.0, memory  # linear: 4x the steps
    assert nested_growth < 2.5, memory  # about sqrt: 2x
    assert memory["sqrt", 64] < 0.5 * memory[False, 64], memory


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"remat": 0}, r"remat=0 \(a block size\) must be between 1 and inner_steps=4"),
        ({"remat": 5}, r"remat=5 \(a block size\) must be between 1 and inner_steps=4"),
        ({"remat": "cube"}, "remat must be False, True, 'step', 'sqrt' or a block size"),
        ({"first_order": True, "first_order_steps": 10}, "first_order_steps=10 .* contradicts first_order=True"),
        ({"first_order_steps": -1}, "first_order_steps must be an int >= 0, got -1"),
        ({"multi_step_loss": 2.5}, "multi_step_loss must be an int >= 0, got 2.5"),
        ({"inner_steps": 1, "multi_step_loss": 100}, "multi_step_loss=100 .* needs inner_steps >= 2"),
        ({"per_step_lr": "yes"}, "per_step_lr must be a bool"),
    ],
)
def test_bad_maml_options_name_the_argument(kwargs, match):
    args = {"inner_lr": 0.1, "inner_steps": 4, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        fj.maml(fj.models.MLP((4,), 1), "mse", **args)


def test_per_step_norm_without_a_norm_layer_is_an_error_naming_it():
    learner = fj.maml(fj.models.MLP((4,), 1), "mse", 0.1, 2, per_step_norm=True)
    task = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 5, 5), 0)
    with pytest.raises(ValueError, match="per_step_norm=True needs normalisation parameters"):
        learner.init(jax.random.key(1), task)


class SmallNormNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, name="head")(jnp.tanh(nn.LayerNorm(name="norm")(nn.Dense(16, name="dense")(x))))


def test_maml_plus_plus_meta_trains_and_evaluates():
    """All four options and a nested remat schedule through meta_train (make_meta_step passes the step) and
    evaluate (the end of the schedule)."""
    source = lambda key, n: fj.data.sinusoid_tasks(key, n, 5, 5)
    learner = fj.maml(
        SmallNormNet(),
        "mse",
        0.01,
        4,
        remat="sqrt",
        per_step_lr=True,
        multi_step_loss=2,
        per_step_norm=True,
        first_order_steps=1,
    )
    assert learner.name == "maml++" and learner.uses_step
    state, history = fj.meta_train(
        learner, optax.adam(1e-3), source, steps=3, meta_batch=2, key=jax.random.key(1), progress=False, log_every=1
    )
    assert int(state.step) == 3 and np.isfinite(history.series("loss")).all() and len(history.steps) == 3
    result = fj.evaluate(learner, state.params, source, episodes=4, key=jax.random.key(2))
    assert np.isfinite(result.mean)
