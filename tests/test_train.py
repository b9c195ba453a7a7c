"""One compiled, donated meta-step; chunking; non-finite guard; checkpoints and exact resume."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fsl_jax as fj
from fsl_jax.train import batch_grads

SOURCE = functools.partial(fj.data.sinusoid_tasks, shots=5, queries=5)


def _setup(learner=None, optimizer=None):
    learner = learner or fj.maml(fj.models.MLP(hidden=(16, 16)), "mse", inner_lr=0.01, inner_steps=2)
    optimizer = optimizer or optax.adam(1e-3)
    params = learner.init(jax.random.key(0), fj.task_at(SOURCE(jax.random.key(1), 1), 0))
    return learner, optimizer, fj.TrainState.create(learner, params, optimizer)


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_step_compiles_once_donates_and_never_syncs():
    learner, optimizer, state = _setup()
    traced = learner._replace(adapt=chex.assert_max_traces(learner.adapt, n=1))
    step = fj.make_meta_step(traced, optimizer)
    tasks = [SOURCE(jax.random.key(i), 8) for i in range(4)]
    keys = [jax.random.key(100 + i) for i in range(4)]
    state, _ = step(state, tasks[0], keys[0])  # compile
    old_params = state.params
    with jax.transfer_guard("disallow"):  # no implicit host<->device transfer inside the loop
        for t, k in zip(tasks[1:], keys[1:]):
            state, metrics = step(state, t, k)
    assert step._cache_size() == 1
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(old_params)), "state was not donated"
    assert int(state.step) == 4 and bool(metrics["finite"])


def test_sampling_inside_the_step_uses_fold_in_of_the_step():
    learner, optimizer, state = _setup()
    step = fj.make_meta_step(learner, optimizer, sampler=SOURCE, meta_batch=8, donate=False)
    manual = fj.make_meta_step(learner, optimizer, donate=False)
    key = jax.random.key(7)
    s1, m1 = step(state, key)
    sample_key, adapt_key = jax.random.split(jax.random.fold_in(key, 0))
    s2, m2 = manual(state, SOURCE(sample_key, 8), adapt_key)
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)


def test_meta_gradient_is_the_mean_over_tasks():
    learner, _, state = _setup()
    tasks = SOURCE(jax.random.key(3), 6)
    key = jax.random.key(4)
    grads, loss, _ = batch_grads(learner, state.params, tasks, key)
    keys = jax.random.split(key, 6)
    per_task = [
        jax.grad(lambda p: fj.meta_loss(learner, p, fj.task_at(tasks, i), keys[i])[0])(state.params) for i in range(6)
    ]
    mean = jax.tree_util.tree_map(lambda *g: sum(g) / 6, *per_task)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(mean)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [fj.maml, fj.reptile])
def test_task_chunks_give_the_same_gradient(make):
    learner, _, state = _setup(make(fj.models.MLP(hidden=(16,)), "mse", 0.01, 2))
    tasks = SOURCE(jax.random.key(3), 8)
    full = batch_grads(learner, state.params, tasks, jax.random.key(5))
    chunked = jax.jit(functools.partial(batch_grads, learner, task_chunk=2))(state.params, tasks, jax.random.key(5))
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(chunked)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="task_chunk"):
        batch_grads(learner, state.params, tasks, jax.random.key(5), task_chunk=3)


def test_nonfinite_steps_are_flagged_and_optionally_skipped():
    learner, optimizer, state = _setup()
    tasks = SOURCE(jax.random.key(3), 4)
    bad = tasks._replace(query_y=tasks.query_y.at[0, 0, 0].set(jnp.nan))
    skip = fj.make_meta_step(learner, optimizer, skip_nonfinite=True, donate=False)
    after, metrics = skip(state, bad, jax.random.key(0))
    assert not bool(metrics["finite"])
    assert _leaves_equal(after.params, state.params) and int(after.nonfinite_steps) == 1
    assert int(after.first_nonfinite_step) == 0
    plain = fj.make_meta_step(learner, optimizer, donate=False)
    after, _ = plain(state, bad, jax.random.key(0))
    assert not all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(after.params))


def test_meta_train_stops_on_nan_with_the_step_number():
    learner, optimizer, _ = _setup()

    def poisoned(key, n):
        tasks = SOURCE(key, n)
        return tasks._replace(query_y=tasks.query_y * jnp.nan)

    with pytest.raises(fj.NonFiniteError, match="meta-step 0"):
        fj.meta_train(learner, optimizer, poisoned, steps=5, meta_batch=2, key=jax.random.key(0), progress=False)


def test_meta_train_learns_sinusoids():
    learner, optimizer, start = _setup(optimizer=optax.adam(3e-3))
    state, history = fj.meta_train(
        learner, optimizer, SOURCE, steps=1500, meta_batch=16, key=jax.random.key(0), log_every=500, progress=False
    )
    assert history.steps == [500, 1000, 1500] and len(history.series("loss")) == 3
    test = SOURCE(jax.random.key(99), 200)
    before = fj.evaluate(learner, start.params, test)
    after = fj.evaluate(learner, state.params, test)
    assert after.metric == "mse" and after.mean < 0.5 * before.mean


def test_resume_after_stop_is_bit_identical(tmp_path):
    learner, optimizer, _ = _setup()
    kwargs = dict(meta_batch=4, key=jax.random.key(11), log_every=5, progress=False)
    full, _ = fj.meta_train(learner, optimizer, SOURCE, steps=30, **kwargs)
    ckpt = tmp_path / "ckpt"
    first, _ = fj.meta_train(learner, optimizer, SOURCE, steps=13, checkpoint_dir=ckpt, checkpoint_every=5, **kwargs)
    assert fj.latest_step(ckpt) == 13
    resumed, history = fj.meta_train(learner, optimizer, SOURCE, steps=30, checkpoint_dir=ckpt, **kwargs)
    assert int(resumed.step) == 30
    assert history.steps == [15, 20, 25, 30]  # the resumed run really started at step 13, not from scratch
    assert _leaves_equal(resumed.params, full.params)
    assert _leaves_equal(resumed.opt_state, full.opt_state)


def test_host_sampler_resume_is_bit_identical(tmp_path):
    data = np.random.default_rng(0).normal(size=(12, 10, 6)).astype(np.float32)
    sampler = fj.data.HostSampler(data, ways=3, shots=2, queries=3, seed=5)
    learner = fj.maml(fj.models.MLP(hidden=(8,), out=3), "xent", 0.1, 1)
    kwargs = dict(meta_batch=4, key=jax.random.key(1), log_every=4, progress=False)
    full, _ = fj.meta_train(learner, optax.sgd(0.1), sampler, steps=12, **kwargs)
    fj.meta_train(learner, optax.sgd(0.1), sampler, steps=7, checkpoint_dir=tmp_path, **kwargs)
    resumed, history = fj.meta_train(learner, optax.sgd(0.1), sampler, steps=12, checkpoint_dir=tmp_path, **kwargs)
    assert history.steps == [8, 12]  # started at the checkpoint's step 7
    assert _leaves_equal(resumed.params, full.params)


def test_checkpoint_round_trip_and_errors(tmp_path):
    learner, optimizer, state = _setup()
    step = fj.make_meta_step(learner, optimizer)
    state, _ = step(state, SOURCE(jax.random.key(0), 4), jax.random.key(1))
    fj.save_checkpoint(tmp_path, state)
    _, _, fresh = _setup()
    restored = fj.restore_checkpoint(tmp_path, fresh)
    assert int(restored.step) == 1
    assert _leaves_equal(restored.params, state.params) and _leaves_equal(restored.opt_state, state.opt_state)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fj.restore_checkpoint(tmp_path / "empty", fresh)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fj.restore_checkpoint(tmp_path / "missing", fresh)
    other = fj.TrainState.create(
        learner,
        fj.maml(fj.models.MLP(hidden=(3, 16)), "mse").init(
            jax.random.key(0), fj.task_at(SOURCE(jax.random.key(1), 1), 0)
        ),
        optimizer,
    )
    with pytest.raises(
        ValueError,
        match=r"checkpoint 1 in .* leaf params/params/dense0/bias has shape \(16,\), target has "
        r"\(3,\) \(and 8 more leaves differ\)",
    ):
        fj.restore_checkpoint(tmp_path, other)
    wider = fj.TrainState.create(
        learner,
        fj.maml(fj.models.MLP(hidden=(16, 16, 16)), "mse").init(
            jax.random.key(0), fj.task_at(SOURCE(jax.random.key(1), 1), 0)
        ),
        optimizer,
    )
    with pytest.raises(ValueError, match=r"does not match target: it has 22 arrays, target has 28"):
        fj.restore_checkpoint(tmp_path, wider)


def test_keep_last_n_checkpoints(tmp_path):
    learner, optimizer, state = _setup()
    step = fj.make_meta_step(learner, optimizer, sampler=SOURCE, meta_batch=2)
    for _ in range(5):
        state, _ = step(state, jax.random.key(0))
        fj.save_checkpoint(tmp_path, state, keep=2)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [4, 5]
    assert fj.latest_step(tmp_path) == 5 == int(fj.restore_checkpoint(tmp_path, state).step)
    (tmp_path / "6.orbax-checkpoint-tmp-0").mkdir()  # an unfinished save (a writer killed mid-save) is not a step
    assert fj.latest_step(tmp_path) == 5
    assert fj.latest_step(tmp_path / "missing") is None


def test_bad_arguments():
    learner, optimizer, state = _setup()
    with pytest.raises(TypeError, match="optimizer"):
        fj.make_meta_step(learner, "adam")
    with pytest.raises(ValueError, match="meta_batch"):
        fj.make_meta_step(learner, optimizer, sampler=SOURCE, meta_batch=0)
    with pytest.raises(ValueError, match="meta_batch"):
        fj.make_meta_step(learner, optimizer, meta_batch=4)
    with pytest.raises(ValueError, match="task_chunk"):
        fj.make_meta_step(learner, optimizer, sampler=SOURCE, meta_batch=6, task_chunk=4)
    with pytest.raises(ValueError, match="steps"):
        fj.meta_train(learner, optimizer, SOURCE, steps=0, meta_batch=2, key=jax.random.key(0))
    with pytest.raises(TypeError, match="source"):
        fj.meta_train(learner, optimizer, [1, 2], steps=2, meta_batch=2, key=jax.random.key(0))
    with pytest.raises(TypeError, match="learner"):
        fj.TrainState.create("maml", state.params, optimizer)


def test_time_budget_stops_at_a_logging_point():
    learner, optimizer, _ = _setup()
    state, history = fj.meta_train(
        learner,
        optimizer,
        SOURCE,
        steps=10_000,
        meta_batch=2,
        key=jax.random.key(0),
        log_every=7,
        max_seconds=1e-6,
        progress=False,
    )
    assert int(state.step) == 7 and history.steps == [7]
    with pytest.raises(ValueError, match="max_seconds"):
        fj.meta_train(learner, optimizer, SOURCE, steps=5, meta_batch=2, key=jax.random.key(0), max_seconds=-1)


def test_meta_train_reads_the_device_only_at_logging_points(monkeypatch):
    """No per-step host sync, NaN guard included: implicit device-to-host transfers are forbidden during the whole
    run, and the explicit reads are two at the start (the run key for its configuration, the step counter) plus one
    per logging point."""
    learner, optimizer, state = _setup()
    reads = []
    real_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or real_get(x))

    def poisoned(key, n):
        tasks = SOURCE(key, n)
        return tasks._replace(query_y=tasks.query_y * jnp.nan)

    with jax.transfer_guard_device_to_host("disallow"):
        trained, history = fj.meta_train(
            learner,
            optimizer,
            SOURCE,
            steps=30,
            meta_batch=2,
            key=jax.random.key(0),
            state=state,
            log_every=10,
            progress=False,
        )
        assert len(reads) == 2 + 3 and history.steps == [10, 20, 30]
        reads.clear()
        with pytest.raises(fj.NonFiniteError, match=r"meta-step 0 produced a non-finite loss \(detected at step 10\)"):
            fj.meta_train(
                learner,
                optimizer,
                poisoned,
                steps=30,
                meta_batch=2,
                key=jax.random.key(0),
                state=trained.replace(step=jnp.zeros((), jnp.int32)),
                log_every=10,
                progress=False,
            )
        assert len(reads) == 2 + 1  # found at the first logging point, with no read before it
