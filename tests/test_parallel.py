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


MODEL_AXIS_SCRIPT = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    import fsl_jax as fj
    from fsl_jax.models.bert import BertConfig

    assert jax.device_count() == 8
    out = {}

    def run(learner, tasks, mesh, steps=3, rule=None):
        params = learner.init(jax.random.key(0), fj.task_at(tasks, 0))
        opt = optax.sgd(0.1)
        state = fj.TrainState.create(learner, params, opt)
        step = fj.make_meta_step(learner, opt, mesh=mesh, donate=False, param_rule=rule)
        if mesh is not None:
            state = fj.parallel.shard_state(state, mesh, rule)
            tasks = fj.parallel.shard_tasks(tasks, mesh)
        first = state
        for i in range(steps):
            state, metrics = step(state, tasks, jax.random.key(i))
        compiled = step.lower(first, tasks, jax.random.key(0)).compile()
        # what one device holds of the state (its shard of every leaf), and of the compiled step's arguments
        device = jax.devices()[0]
        state_bytes = sum(shard.data.nbytes for leaf in jax.tree_util.tree_leaves(first)
                          for shard in getattr(leaf, "addressable_shards", []) if shard.device == device)
        return state, (state_bytes, compiled.memory_analysis().argument_size_in_bytes), metrics

    def leaves(state):
        return [np.asarray(jax.device_get(x)) for x in jax.tree_util.tree_leaves(state.params)]

    images = jax.random.uniform(jax.random.key(2), (10, 8, 8, 8, 1))
    conv_tasks = fj.data.DeviceSampler(images, 3, 1, 2).sample(jax.random.key(3), 8)
    ids = jax.random.randint(jax.random.key(4), (8, 12, 10), 1, 128)
    labels = jnp.tile(jnp.arange(3).repeat(2), (8, 1))
    text_tasks = fj.Task(ids[:, :6], labels, ids[:, 6:], labels)
    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    learners = {
        "conv4": (fj.maml(fj.models.Conv4(num_classes=3, hidden=8, blocks=2), "xent", 0.1, 1), conv_tasks),
        "bert": (fj.maml(fj.llm.BertClassifier(config, num_classes=3), "xent", 0.1, 1), text_tasks),
    }
    for name, (learner, tasks) in learners.items():
        single, _, _ = run(learner, tasks, None)
        ref = leaves(single)
        state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(jax.device_get(single.params)))
        full = sum(x.nbytes for x in jax.tree_util.tree_leaves(jax.device_get(single)))  # the unsharded state
        for shape in ((4, 2), (2, 4)):
            mesh = fj.parallel.task_mesh(model=shape[1])
            assert dict(mesh.shape) == {"tasks": shape[0], "model": shape[1]}
            state, arg_bytes, metrics = run(learner, tasks, mesh)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(leaves(state), ref))
            assert diff < 1e-5, (name, shape, diff)
            kernels = [s.spec for s in jax.tree_util.tree_leaves(fj.parallel.state_shardings(state.params, mesh))]
            if shape[1] > 1:
                assert any("model" in tuple(spec) for spec in kernels), kernels
            out[f"{name} {shape[0]}x{shape[1]}"] = {"max_diff": diff, "state_bytes_per_device": int(arg_bytes[0]),
                                                    "compiled_argument_bytes_per_device": int(arg_bytes[1]),
                                                    "param_bytes": int(state_bytes)}
        # parameters and optimiser state sharded along "model": what each device holds shrinks with the model axis
        # (vectors stay replicated, so a bit more than 1/model)
        a2, a4 = (out[f"{name} {k}"]["state_bytes_per_device"] for k in ("4x2", "2x4"))
        assert a2 < 0.65 * full and a4 < 0.65 * a2, (name, full, a2, a4)

    # a user rule: replicate everything but the embeddings
    rule = lambda path, shape: P("model") if path.endswith("word_embeddings/embedding") else P()
    mesh = fj.parallel.task_mesh(model=2)
    specs = fj.parallel.state_shardings(jax.eval_shape(lambda: learners["bert"][0].init(
        jax.random.key(0), fj.task_at(text_tasks, 0))), mesh, rule)
    sharded = [path for path, s in jax.tree_util.tree_leaves_with_path(specs) if tuple(s.spec) == ("model",)]
    assert len(sharded) == 1, sharded

    # bad input
    def raises(fn, *parts):
        try:
            fn()
        except (ValueError, TypeError) as exc:
            assert all(p in str(exc) for p in parts), (str(exc), parts)
        else:
            raise AssertionError(f"no error, expected {parts}")

    from jax.sharding import Mesh
    raises(lambda: fj.make_meta_step(learners["conv4"][0], optax.sgd(0.1), mesh=Mesh(np.asarray(jax.devices()),
           ("data",))), "mesh must have an axis named 'tasks'", "('data',)")
    raises(lambda: fj.parallel.task_mesh(model=3), "model=3 must divide the number of devices, 8")
    odd = fj.maml(fj.models.MLP(hidden=(5,), out=3), "xent", 0.1, 1)
    raises(lambda: fj.parallel.state_shardings(odd.init(jax.random.key(0), fj.Task(np.zeros((3, 7)), np.arange(3),
           np.zeros((3, 7)), np.arange(3))), fj.parallel.task_mesh(model=2)), "model axis size 2 divides no dimension",
           "(7, 5)")
    raises(lambda: fj.make_meta_step(learners["conv4"][0], optax.sgd(0.1), sampler=fj.data.DeviceSampler(
           images, 3, 1, 2).sample, meta_batch=6, mesh=fj.parallel.task_mesh(model=2)),
           "meta_batch=6 (6 tasks) must divide evenly over the 4 devices of the mesh's 'tasks' axis")
    print("RESULTS", json.dumps(out))
    """
)


def test_model_axis_shards_parameters_and_gives_the_single_device_step():
    """MAML over a small BERT classifier and over Conv-4 on 8 devices as 4 x 2 and 2 x 4 ("tasks" x "model")
    equals one device to 1e-5, and the compiled per-device argument bytes shrink as the model axis grows."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", MODEL_AXIS_SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "RESULTS" in result.stdout
