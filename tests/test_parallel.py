"""Sharded meta-steps on 8 fake CPU devices equal the single-device step.

The check runs in a subprocess because the device count is fixed when JAX starts.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import functools, jax, jax.numpy as jnp, numpy as np, optax
    import fsl_jax as fj

    assert jax.device_count() == 8, jax.devices()
    mesh = fj.parallel.task_mesh()

    def check(learner, tasks, name):
        params = learner.init(jax.random.key(0), fj.task_at(tasks, 0))
        opt = optax.sgd(0.1)  # adam would amplify float noise in the (zero) gradients of conv biases before norm
        single = fj.make_meta_step(learner, opt, donate=False)
        sharded = fj.make_meta_step(learner, opt, mesh=mesh, donate=False)
        s1 = s2 = fj.TrainState.create(learner, params, opt)
        s2 = fj.parallel.replicate(s2, mesh)
        placed = fj.parallel.shard_tasks(tasks, mesh)
        n = tasks.support_x.shape[0]
        shards = placed.support_x.addressable_shards  # split, not replicated: each device holds its own tasks
        assert len(shards) == 8 and all(sh.data.shape[0] == n // 8 for sh in shards), [sh.data.shape for sh in shards]
        np.testing.assert_array_equal(np.concatenate([np.asarray(sh.data) for sh in shards]), tasks.support_x)
        for i in range(3):
            s1, m1 = single(s1, tasks, jax.random.key(i))
            s2, m2 = sharded(s2, placed, jax.random.key(i))
        np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        print(name, "ok", float(m1["loss"]), float(m2["loss"]))

    sinusoids = fj.data.sinusoid_tasks(jax.random.key(1), 16, 5, 5)
    check(fj.maml(fj.models.MLP(hidden=(16, 16)), "mse", 0.01, 2), sinusoids, "maml")

    images = jax.random.uniform(jax.random.key(2), (10, 8, 8, 8, 1))
    tasks = fj.data.DeviceSampler(images, 3, 1, 2).sample(jax.random.key(3), 8)
    check(fj.maml(fj.models.Conv4(num_classes=3, hidden=4, blocks=2), "xent", 0.1, 1), tasks, "maml-conv")
    if hasattr(fj, "protonet"):
        check(fj.protonet(fj.models.Conv4(hidden=4, blocks=2), ways=3), tasks, "protonet")

    # sampling inside the step, sharded
    src = functools.partial(fj.data.sinusoid_tasks, shots=5, queries=5)
    learner = fj.maml(fj.models.MLP(hidden=(8,)), "mse", 0.01, 1)
    params = learner.init(jax.random.key(0), fj.task_at(src(jax.random.key(0), 1), 0))
    opt = optax.sgd(0.1)
    a = fj.make_meta_step(learner, opt, sampler=src, meta_batch=16, donate=False)
    b = fj.make_meta_step(learner, opt, sampler=src, meta_batch=16, mesh=mesh, donate=False)
    state = fj.TrainState.create(learner, params, opt)
    (sa, ma), (sb, mb) = a(state, jax.random.key(5)), b(fj.parallel.replicate(state, mesh), jax.random.key(5))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(sa.params), jax.tree_util.tree_leaves(sb.params)):  # the update too
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert max(float(np.abs(x - y).max()) for x, y in zip(jax.tree_util.tree_leaves(sa.params),
                                                          jax.tree_util.tree_leaves(state.params))) > 1e-4

    try:
        fj.parallel.shard_tasks(fj.data.sinusoid_tasks(jax.random.key(1), 12, 5, 5), mesh)
    except ValueError as exc:
        assert "12 tasks" in str(exc) and "8 devices" in str(exc), exc
    else:
        raise AssertionError("12 tasks over 8 devices must raise")
    try:
        fj.make_meta_step(learner, opt, mesh=mesh)(state, fj.data.sinusoid_tasks(jax.random.key(1), 12, 5, 5),
                                                  jax.random.key(0))
    except ValueError as exc:
        assert "12 tasks" in str(exc), exc
    else:
        raise AssertionError("an uneven task batch must raise")
    # meta_train over the mesh for more steps than log_every: without one step in flight on CPU devices, XLA:CPU's
    # all-reduce deadlocks on the shared thread pool and aborts the process
    trained, history = fj.meta_train(learner, opt, src, mesh=mesh, steps=300, meta_batch=16, key=jax.random.key(6),
                                     log_every=150, progress=False)
    assert int(trained.step) == 300 and history.steps == [150, 300], history.steps
    single, single_history = fj.meta_train(learner, opt, src, steps=300, meta_batch=16, key=jax.random.key(6),
                                           log_every=150, progress=False)
    np.testing.assert_allclose(history.series("loss"), single_history.series("loss"), rtol=1e-4)
    for x, y in zip(jax.tree_util.tree_leaves(trained.params), jax.tree_util.tree_leaves(single.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    print("ALL OK")
    """
)


def test_sharded_step_equals_single_device_on_8_fake_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL OK" in result.stdout
