"""EpisodeLoader: the same batches with any number of workers and after restarts, Meta-Dataset's episode rules,
several sources, bad input, worker failures, and meta-training from it."""

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fsl_jax as fj
from fsl_jax.data.episodes import EpisodeSpec, sample_sizes

FIELDS = ("support_x", "support_y", "query_x", "query_y", "support_mask", "query_mask", "way_mask")


def _data(classes=30, per_class=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (classes, per_class, 6, 6, 1), dtype=np.uint8)


def _equal(a, b):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_fixed_episodes_are_host_sampler_episodes():
    """Fixed ways / shots / queries over one array: the HostSampler's batches, row for row (an independent sampler)."""
    data = _data()
    loader = fj.data.EpisodeLoader(data, ways=5, shots=2, queries=3, seed=7)
    host = fj.data.HostSampler(data, ways=5, shots=2, queries=3, seed=7)
    for index in (0, 3, 11):
        _equal(loader.sample(6, index=index), host.sample(6, index=index))
    assert loader.sample(6).support_mask is None and loader.ways == 5


def test_batches_are_the_same_with_0_1_2_workers_after_a_restart_and_in_parts():
    loader = fj.data.EpisodeLoader(_data(), ways="meta-dataset", seed=3)
    reference = [loader.sample(4, index=i) for i in range(5, 9)]
    for workers in (0, 1, 2):
        loader.workers = workers
        with loader.iterate(4, start_index=5) as batches:
            got = [next(batches) for _ in range(4)]
            assert batches.state()["next_index"] == 9
        for a, b in zip(got, reference):
            _equal(a, b)
    loader.workers = 0
    with loader.iterate(4, start_index=7) as restarted:  # a restart needs only the batch number
        _equal(next(restarted), reference[2])
    with loader.iterate(4, start_index=6, start=1, stop=3) as part:  # one process's rows of the global batch
        rows = next(part)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(rows, name), getattr(reference[1], name)[1:3])


def test_meta_dataset_rules_hold_on_many_episodes():
    """Ways in [5, min(50, classes)] (both ends reached), one query count min(10, floor(min images / 2)) for every
    class, support size in [ways, min(500, sum_c min(100, remaining_c))], each class between 1 and its remaining
    images, and the size roughly uniform between those bounds (beta ~ U(0, 1))."""
    spec = EpisodeSpec.create("meta-dataset")
    rng = np.random.default_rng(0)
    counts = rng.integers(4, 300, size=80)
    ways_seen, capped = set(), []
    for e in range(3000):
        r = np.random.default_rng([1, e])
        classes, support, queries = sample_sizes(r, counts, spec)
        ways = len(classes)
        ways_seen.add(ways)
        assert 5 <= ways <= 50 and len(set(classes.tolist())) == ways
        chosen = counts[classes]
        assert queries == min(10, chosen.min() // 2)
        remaining = chosen - queries
        bound = min(500, int(np.minimum(100, remaining).sum()))
        assert np.all(support >= 1) and np.all(support <= remaining)
        assert ways <= support.sum() <= bound
        capped.append(support.sum() > 450)
    assert min(ways_seen) == 5 and max(ways_seen) == 50
    assert 0.2 < np.mean(capped) < 0.9  # big classes: the 500 cap binds often, not always
    # below the cap the size is uniform between ways and the bound (less what the per-class limits clip)
    fractions = []
    for e in range(2000):
        classes, support, queries = sample_sizes(
            np.random.default_rng([4, e]), np.full(40, 22), EpisodeSpec.create((5, 20))
        )
        bound = int(np.minimum(100, 22 - queries) * len(classes))
        fractions.append((support.sum() - len(classes)) / (bound - len(classes)))
    assert 0.35 < np.mean(fractions) < 0.55 and np.percentile(fractions, 5) < 0.05 < 0.75 < np.max(fractions)
    small = np.array([7, 9, 30, 40, 50, 60, 8])  # fewer classes than 50: ways up to 7
    seen = {len(sample_sizes(np.random.default_rng([2, e]), small, spec)[0]) for e in range(300)}
    assert seen == {5, 6, 7}


def test_support_shares_follow_class_size():
    """Per-class shares are class size x exp(U(log 0.5, log 2)): a class with 4x the images gets more support."""
    spec = EpisodeSpec.create(ways=(2, 2), max_support=500)
    counts = np.array([40, 160])
    big = []
    for e in range(500):
        classes, support, _ = sample_sizes(np.random.default_rng([3, e]), counts, spec)
        share = dict(zip(classes.tolist(), support.tolist()))
        big.append(share[1] / (share[0] + share[1]))
    assert np.mean(big) > 0.7


def test_padded_episodes_are_consistent_and_static():
    data = _data(classes=12, per_class=20)
    loader = fj.data.EpisodeLoader(data, ways=(3, 8), queries=4, seed=1)
    batch = loader.sample(16)
    ways, support, query = loader.shapes
    assert (ways, query) == (8, 32) and batch.support_x.shape == (16, support, 6, 6, 1)
    for k in range(16):
        n = int(batch.way_mask[k].sum())
        assert 3 <= n <= 8 and np.all(batch.way_mask[k][:n] == 1)
        real_q = batch.query_mask[k] > 0
        assert np.bincount(batch.query_y[k][real_q], minlength=n).tolist() == [4] * n
        real_s = batch.support_mask[k] > 0
        assert set(batch.support_y[k][real_s].tolist()) == set(range(n))
        assert np.all(batch.support_x[k][~real_s] == 0) and np.all(batch.query_x[k][~real_q] == 0)
    # pixels: uint8 scaled to [0, 1], exactly the stored images
    flat = (data.reshape(-1, 6, 6, 1).astype(np.float32) / 255.0).reshape(len(data.reshape(-1, 36)), -1)
    stored = {row.tobytes() for row in flat}
    assert all(x.reshape(-1).tobytes() in stored for x in batch.query_x[0][batch.query_mask[0] > 0])


def test_several_sources_mix_by_weight_and_each_episode_has_one_source():
    a = np.zeros((10, 8, 3), np.float32)
    b = np.ones((7, 8, 3), np.float32)
    loader = fj.data.EpisodeLoader(
        [fj.data.ArraySource(a), fj.data.ArraySource(b)], ways=(3, 5), shots=1, queries=2, weights=[0.8, 0.2], seed=0
    )
    batch = loader.sample(400)
    from_b = []
    for k in range(400):
        real = batch.support_x[k][batch.support_mask[k] > 0]
        assert np.all(real == real[0, 0])  # one source per episode
        from_b.append(real[0, 0] == 1)
    assert abs(np.mean(from_b) - 0.2) < 0.06
    assert loader.shapes[0] == 5
    with pytest.raises(ValueError, match=r"one feature shape.*\(3,\).*\(4,\)"):
        fj.data.EpisodeLoader(
            [fj.data.ArraySource(a), fj.data.ArraySource(np.ones((7, 8, 4), np.float32))], ways=3, shots=1, queries=1
        )
    with pytest.raises(ValueError, match="weights must be 2 non-negative"):
        fj.data.EpisodeLoader(
            [fj.data.ArraySource(a), fj.data.ArraySource(b)], ways=3, shots=1, queries=1, weights=[1.0, -1.0]
        )
    # a list of arrays is one source's classes (images per class here), as for HostSampler
    per_class = [np.zeros((n, 4, 4, 1), np.uint8) for n in (5, 6, 7, 8)]
    one = fj.data.EpisodeLoader(per_class, ways=3, shots=1, queries=2)
    assert len(one.sources) == 1 and one.sources[0].counts.tolist() == [5, 6, 7, 8]


def test_bad_arguments_are_named():
    data = _data(classes=6, per_class=4)
    with pytest.raises(ValueError, match="ways=7 needs 7 classes but sources has 6"):
        fj.data.EpisodeLoader(data, ways=7, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"class '0' of sources has 4 images, fewer than the 5"):
        fj.data.EpisodeLoader(data, ways=3, shots=2, queries=3)
    with pytest.raises(ValueError, match="ways must be an int, a \\(min, max\\) pair or 'meta-dataset', got 'md'"):
        fj.data.EpisodeLoader(data, ways="md")
    with pytest.raises(ValueError, match=r"ways=\(min, max\) needs min <= max, got \(5, 3\)"):
        fj.data.EpisodeLoader(data, ways=(5, 3), shots=1, queries=1)
    with pytest.raises(ValueError, match="workers must be an int >= 0, got -1"):
        fj.data.EpisodeLoader(data, ways=3, shots=1, queries=1, workers=-1)
    with pytest.raises(ValueError, match="shots must be a positive int or None, got 0"):
        fj.data.EpisodeLoader(data, ways=3, shots=0, queries=1)
    with pytest.raises(TypeError, match="sources must be a class source"):
        fj.data.EpisodeLoader("folder/", ways=3, shots=1, queries=1)
    loader = fj.data.EpisodeLoader(data, ways=3, shots=1, queries=1)
    with pytest.raises(ValueError, match="start and stop must satisfy"):
        loader.sample(4, start=3, stop=2)


class FailingSource(fj.data.ArraySource):
    """Fails in grain's worker processes only (the main process builds the example task fine)."""

    def __init__(self, data, how):
        super().__init__(data)
        self.how, self.main = how, os.getpid()

    def load_many(self, class_index, indices):
        if os.getpid() != self.main:
            if self.how == "kill":
                os.kill(os.getpid(), 9)
            raise OSError("cannot decode image /data/c07/00003.png: image file is truncated")
        return super().load_many(class_index, indices)


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_worker_failure_surfaces_in_the_main_process(how):
    loader = fj.data.EpisodeLoader(
        FailingSource(np.zeros((6, 4, 2), np.float32), how), ways=2, shots=1, queries=1, workers=1
    )
    t0 = time.time()
    expected = (OSError, "00003.png: image file is truncated") if how == "raise" else (RuntimeError, "terminated")
    with pytest.raises(expected[0], match=expected[1]):
        with loader.iterate(2) as batches:
            next(batches)
    assert time.time() - t0 < 60


def test_meta_train_from_a_loader_with_workers_equals_without(tmp_path):
    """Padded Meta-Dataset-style episodes, MAML with a head of the padded width: the run with a grain worker equals
    the run built in the main thread, and its checkpoints hold the loader's position."""
    data = np.random.default_rng(0).normal(size=(10, 8, 3)).astype(np.float32)
    learner = fj.maml(fj.models.MLP(hidden=(8,), out=4), "xent", inner_lr=0.1, inner_steps=1)
    finals = []
    for workers in (0, 1):
        loader = fj.data.EpisodeLoader(data, ways=(2, 4), queries=2, seed=2, workers=workers)
        state, history = fj.meta_train(
            learner,
            optax.adam(1e-2),
            loader,
            steps=12,
            meta_batch=4,
            key=jax.random.key(0),
            log_every=4,
            checkpoint_dir=tmp_path / str(workers),
            checkpoint_every=6,
            progress=False,
        )
        finals.append(jax.tree_util.tree_leaves(state.params))
        assert np.all(np.isfinite(history.series("loss")))
        assert fj.read_loader_state(tmp_path / str(workers), 6) == {"next_index": 6, "seed": 2}
        with open(tmp_path / str(workers) / "metrics.jsonl") as f:
            stop = [json.loads(line) for line in f][-1]
        assert stop["event"] == "stop" and 0 < stop["input_seconds"] < stop["seconds"], stop
    for x, y in zip(*finals):
        np.testing.assert_array_equal(x, y)
    # the loader is part of the run's configuration: another seed is another run
    other = fj.data.EpisodeLoader(data, ways=(2, 4), queries=2, seed=3)
    with pytest.raises(ValueError, match="seed"):
        fj.meta_train(
            learner,
            optax.adam(1e-2),
            other,
            steps=14,
            meta_batch=4,
            key=jax.random.key(0),
            checkpoint_dir=tmp_path / "0",
            progress=False,
        )


def test_a_classifier_narrower_than_the_padded_ways_is_an_error():
    data = np.random.default_rng(0).normal(size=(10, 8, 3)).astype(np.float32)
    loader = fj.data.EpisodeLoader(data, ways=(2, 4), queries=2, seed=2)
    learner = fj.maml(fj.models.MLP(hidden=(8,), out=3), "xent", inner_lr=0.1, inner_steps=1)
    with pytest.raises(ValueError, match="4 classes.*outputs 3 logits"):
        fj.meta_train(learner, optax.adam(1e-2), loader, steps=2, meta_batch=2, key=jax.random.key(0), progress=False)


def test_meta_dataset_spec_needs_two_images_per_class():
    spec = EpisodeSpec.create("meta-dataset")
    assert spec.min_examples() == 2 and not spec.fixed
    assert EpisodeSpec.create(5, 1, 15).min_examples() == 16
    assert math.isclose(EpisodeSpec.create((5, 10), shots=3).min_examples(), 6)


def test_evaluate_takes_a_loader_and_scores_its_padded_episodes():
    """fj.evaluate(loader): episodes drawn from a seed taken from the key; each score equals meta_loss's accuracy on
    the same padded episode computed here."""
    data = np.random.default_rng(0).normal(size=(10, 8, 3)).astype(np.float32)
    loader = fj.data.EpisodeLoader(data, ways=(2, 4), queries=2, seed=2)
    learner = fj.protonet(fj.models.MLP(hidden=(8,), out=4), ways=4)
    params = learner.init(jax.random.key(0), fj.task_at(jax.tree_util.tree_map(np.asarray, loader.sample(1)), 0))
    key = jax.random.key(5)
    result = fj.evaluate(learner, params, loader, episodes=6, batch_size=3, key=key, progress=False)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    drawn = fj.data.EpisodeLoader(data, ways=(2, 4), queries=2, seed=seed)
    expected = []
    for b in range(2):
        batch = drawn.sample(3, index=b)
        for j in range(3):
            task = jax.tree_util.tree_map(jnp.asarray, fj.task_at(batch, j))
            _, aux = fj.meta_loss(learner, params, task, jax.random.key(0))
            expected.append(float(aux["accuracy"]))
    np.testing.assert_allclose(result.values, expected, atol=1e-6)
    assert len(set(np.round(expected, 6))) > 1  # not a constant score
