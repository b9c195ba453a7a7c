"""Episode samplers and sinusoid tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fsl_jax as fj

CLASSES, PER_CLASS = 12, 9


def _data():
    # Every example encodes (class, index) so a sampled episode can be decoded exactly.
    c, i = np.meshgrid(np.arange(CLASSES), np.arange(PER_CLASS), indexing="ij")
    return np.stack([c, i], axis=-1).astype(np.float32)  # [classes, per_class, 2]


def _check_episode(support_x, support_y, query_x, query_y, ways, shots, queries):
    support_x, query_x = np.asarray(support_x), np.asarray(query_x)
    support_y, query_y = np.asarray(support_y), np.asarray(query_y)
    assert support_x.shape == (ways * shots, 2) and query_x.shape == (ways * queries, 2)
    # labels: a permutation of 0..N-1 with `shots` (`queries`) of each
    assert sorted(np.unique(support_y)) == list(range(ways))
    assert np.all(np.bincount(support_y, minlength=ways) == shots)
    assert np.all(np.bincount(query_y, minlength=ways) == queries)
    # one true class per label, distinct classes across labels
    label_to_class = {}
    for x, y in zip(np.concatenate([support_x, query_x]), np.concatenate([support_y, query_y])):
        assert label_to_class.setdefault(int(y), int(x[0])) == int(x[0])
    assert len(set(label_to_class.values())) == ways
    # support and query disjoint, no repeats
    examples = [tuple(x) for x in np.concatenate([support_x, query_x])]
    assert len(set(examples)) == len(examples)
    return [label_to_class[y] for y in range(ways)]


def test_device_sampler_episodes_under_jit_and_vmap():
    sampler = fj.data.DeviceSampler(_data(), ways=5, shots=2, queries=3)
    tasks = jax.jit(sampler.sample, static_argnums=1)(jax.random.key(0), 50)
    assert tasks.support_x.shape == (50, 10, 2) and tasks.query_y.shape == (50, 15)
    for t in range(50):
        _check_episode(tasks.support_x[t], tasks.support_y[t], tasks.query_x[t], tasks.query_y[t], 5, 2, 3)
    one = jax.vmap(sampler.sample_one)(jax.random.split(jax.random.key(0), 50))
    np.testing.assert_array_equal(one.support_x, tasks.support_x)


def _class_frequencies(episodes):
    counts = np.zeros(CLASSES)
    first_label_class = np.zeros(CLASSES)
    for classes in episodes:
        counts[classes] += 1
        first_label_class[classes[0]] += 1
    return counts / counts.sum(), first_label_class / first_label_class.sum()


def test_host_sampler_matches_device_sampler_distribution():
    data = _data()
    n = 400
    device = fj.data.DeviceSampler(data, ways=4, shots=1, queries=2).sample(jax.random.key(1), n)
    host = fj.data.HostSampler(data, ways=4, shots=1, queries=2, seed=3).sample(n)
    dev_eps = [_check_episode(*(np.asarray(f[t]) for f in device[:4]), 4, 1, 2) for t in range(n)]
    host_eps = [_check_episode(*(f[t] for f in host[:4]), 4, 1, 2) for t in range(n)]
    for freqs in (_class_frequencies(dev_eps), _class_frequencies(host_eps)):
        # uniform over classes, and the class behind label 0 uniform too (labels are a random permutation)
        np.testing.assert_allclose(freqs[0], 1 / CLASSES, atol=0.03)
        np.testing.assert_allclose(freqs[1], 1 / CLASSES, atol=0.045)
    # examples within a class are uniform as well
    for tasks in (device, host):
        idx = np.asarray(tasks.query_x)[..., 1].ravel().astype(int)
        np.testing.assert_allclose(np.bincount(idx, minlength=PER_CLASS) / idx.size, 1 / PER_CLASS, atol=0.02)


def test_host_sampler_is_deterministic_and_ragged():
    classes = [np.full((n, 3), c, np.float32) for c, n in enumerate([5, 9, 6, 7])]
    sampler = fj.data.HostSampler(classes, ways=3, shots=2, queries=3, seed=0)
    a, b = sampler.sample(4), sampler.sample(4)
    assert not np.array_equal(a.support_x, b.support_x)
    np.testing.assert_array_equal(sampler.sample(4, index=0).support_x, a.support_x)
    np.testing.assert_array_equal(fj.data.HostSampler(classes, 3, 2, 3, seed=0).sample(4).query_x, a.query_x)


def test_uint8_data_is_scaled():
    data = np.full((6, 4, 3, 3, 1), 255, np.uint8)
    task = fj.data.DeviceSampler(data, 2, 1, 1).sample_one(jax.random.key(0))
    assert task.support_x.dtype == jnp.float32 and float(task.support_x.max()) == 1.0
    host = fj.data.HostSampler(data, 2, 1, 1).sample(1)
    assert host.support_x.dtype == np.float32 and host.support_x.max() == 1.0


@pytest.mark.parametrize("cls", [fj.data.DeviceSampler, fj.data.HostSampler])
@pytest.mark.parametrize(
    "data_shape, kwargs, match",
    [
        ((12, 9, 2), {"ways": 13}, "ways"),
        ((12, 9, 2), {"shots": 5, "queries": 5}, "shots \\+ queries"),
        ((12, 9, 2), {"ways": 0}, "ways"),
        ((12, 9, 2), {"shots": -1}, "shots"),
        ((12, 9, 2), {"queries": 2.5}, "queries"),
        ((12, 9), {}, "rank"),
    ],
)
def test_sampler_bad_arguments(cls, data_shape, kwargs, match):
    args = {"ways": 5, "shots": 1, "queries": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        cls(np.zeros(data_shape, np.float32), **args)


def test_sinusoid_tasks():
    tasks = jax.jit(fj.data.sinusoid_tasks, static_argnums=(1, 2, 3))(jax.random.key(0), 64, 5, 7)
    assert tasks.support_x.shape == (64, 5, 1) and tasks.query_y.shape == (64, 7, 1)
    x = np.concatenate([tasks.support_x, tasks.query_x], axis=1)[..., 0]
    y = np.concatenate([tasks.support_y, tasks.query_y], axis=1)[..., 0]
    assert x.min() >= -5 and x.max() <= 5
    amp, phase = fj.data.sinusoid_params(jax.random.split(jax.random.key(0))[0], 64)
    np.testing.assert_allclose(y, np.asarray(amp)[:, None] * np.sin(x - np.asarray(phase)[:, None]), atol=1e-5)
    assert 0.1 <= float(amp.min()) and float(amp.max()) <= 5.0
    assert 0.0 <= float(phase.min()) and float(phase.max()) <= np.pi
    with pytest.raises(ValueError, match="shots"):
        fj.data.sinusoid_tasks(jax.random.key(0), 2, 0, 5)


def test_task_validation():
    ok = fj.Task(np.zeros((5, 2)), np.arange(5), np.zeros((3, 2)), np.arange(3))
    assert ok.validate(num_ways=5) is ok
    with pytest.raises(ValueError, match="support_y"):
        fj.Task(np.zeros((5, 2)), np.arange(4), np.zeros((3, 2)), np.arange(3)).validate()
    with pytest.raises(ValueError, match="features"):
        fj.Task(np.zeros((5, 2)), np.arange(5), np.zeros((3, 3)), np.arange(3)).validate()
    with pytest.raises(ValueError, match="query_y labels must lie in 0..2"):
        fj.Task(np.zeros((5, 2)), np.arange(5) % 3, np.zeros((3, 2)), np.arange(3) + 1).validate(num_ways=3)
    with pytest.raises(ValueError, match="NaN"):
        fj.Task(np.full((5, 2), np.nan), np.arange(5), np.zeros((3, 2)), np.arange(3)).validate()
    with pytest.raises(ValueError, match="leading task axis"):
        fj.Task(np.zeros((2, 5, 2)), np.zeros((3, 5)), np.zeros((2, 3, 2)), np.zeros((2, 3))).validate(batched=True)
    with pytest.raises(TypeError, match="fsl_jax.Task"):
        fj.validate_task((1, 2, 3, 4))
