"""Padded episodes: every learner gives a padded task the loss and meta-gradient of the unpadded task.

A random 3-way episode with uneven shots is padded to 5 ways and more support / query rows, (a) with zero rows at the
end (``fj.data.pad_task``) and (b) with the rows shuffled so that padding sits between real rows, padded rows holding
random inputs and labels (the masks, not zeros, must do the work). Each is compared in float64 with an independent
unpadded computation: the real rows alone (in the order they appear in the padded task), and a learner built for the
3 real ways (a head of width 3 holding the first 3 columns of the padded learner's head).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fsl_jax as fj
from fsl_jax.learners import mask_classes
from fsl_jax.learners.relation import RelationModule
from fsl_jax.learners.vae import VAEDecoder, VAEEncoder

N, W, DIM = 3, 5, 4  # real ways, padded ways, input features
F64 = jnp.float64
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _mlp(out, hidden=(8,)):
    return fj.models.MLP(hidden=hidden, out=out, dtype=F64)


# name -> (build(ways), whether the learner's output head has one column per way)
LEARNERS = {
    "maml": (lambda w: fj.maml(_mlp(w), "xent", inner_lr=0.5, inner_steps=2), True),
    "fomaml": (lambda w: fj.maml(_mlp(w), "xent", inner_lr=0.5, inner_steps=2, first_order=True), True),
    "maml_remat": (lambda w: fj.maml(_mlp(w), "xent", inner_lr=0.5, inner_steps=1, remat=True), True),
    "anil": (lambda w: fj.anil(_mlp(w), "xent", inner_lr=0.5, inner_steps=2), True),
    "meta_sgd": (lambda w: fj.meta_sgd(_mlp(w), "xent", inner_lr=0.5, inner_steps=1), True),
    "reptile": (lambda w: fj.reptile(_mlp(w), "xent", inner_lr=0.5, inner_steps=2), True),
    "protonet": (lambda w: fj.protonet(_mlp(6), w), False),
    "protonet_cosine": (
        lambda w: fj.protonet(_mlp(6), w, distance="cosine", temperature=0.3, learn_temperature=True),
        False,
    ),
    "matching": (lambda w: fj.matching_net(_mlp(6), w, temperature=0.5), False),
    "matching_fce": (lambda w: fj.matching_net(_mlp(6), w, fce=True, fce_steps=1), False),
    "relation_sum": (lambda w: fj.relation_net(_mlp(6), RelationModule(channels=8, hidden=4, dtype=F64), w), False),
    "relation_mean": (
        lambda w: fj.relation_net(_mlp(6), RelationModule(channels=8, hidden=4, dtype=F64), w, aggregate="mean"),
        False,
    ),
    "siamese": (lambda w: fj.siamese(_mlp(6), w, margin=1.5, query_loss_weight=0.5), False),
    "siamese_pairs": (lambda w: fj.siamese(_mlp(6), w, margin=1.5, pairs=16, query_loss_weight=1.0), False),
    "cvae": (
        lambda w: fj.cvae_classifier(
            VAEEncoder(3, hidden=(8,), dtype=F64), VAEDecoder(DIM, hidden=(8,), dtype=F64), 3, w
        ),
        False,
    ),
    "cvae_iwae": (
        lambda w: fj.cvae_classifier(
            VAEEncoder(3, hidden=(8,), dtype=F64),
            VAEDecoder(DIM, hidden=(8,), dtype=F64),
            3,
            w,
            estimator="iwae",
            num_samples=2,
            likelihood="gaussian",
        ),
        False,
    ),
}


def _episode(seed):
    """An unpadded 3-way episode (numpy, float64): uneven shots (1..3) and queries (1..2) per class, shuffled."""
    rng = np.random.default_rng(seed)
    shots, queries = rng.integers(1, 4, N), rng.integers(1, 3, N)
    centres = rng.normal(size=(N, DIM))

    def side(counts):
        y = np.repeat(np.arange(N, dtype=np.int32), counts)
        y = y[rng.permutation(len(y))]
        return centres[y] + 0.5 * rng.normal(size=(len(y), DIM)), y

    sx, sy = side(shots)
    qx, qy = side(queries)
    return fj.Task(sx, sy, qx, qy)


def _shuffled_with_garbage(padded, seed):
    """``padded`` with its rows permuted (padding between real rows) and random inputs / labels on padded rows."""
    rng = np.random.default_rng(seed)
    fields = padded._asdict()
    for side in ("support", "query"):
        x, y, m = (np.array(fields[f"{side}_{k}"]) for k in ("x", "y", "mask"))
        pad = m == 0
        x[pad] = 3.0 * rng.normal(size=x[pad].shape)
        y[pad] = rng.integers(0, W, size=int(pad.sum()))
        perm = rng.permutation(len(y))
        fields.update({f"{side}_x": x[perm], f"{side}_y": y[perm], f"{side}_mask": m[perm]})
    return fj.Task(**fields)


def _real_rows(task):
    """The unpadded task: the real rows of ``task`` in their order, no masks."""
    s, q = np.asarray(task.support_mask) > 0, np.asarray(task.query_mask) > 0
    return fj.Task(
        np.asarray(task.support_x)[s],
        np.asarray(task.support_y)[s],
        np.asarray(task.query_x)[q],
        np.asarray(task.query_y)[q],
    )


def _is_head(path):
    return any(getattr(k, "key", None) == "head" for k in path)


def _slice_head(tree, n):
    """The first ``n`` output columns of every leaf under a ``head`` subtree (kernel [h, W], bias [W])."""
    return jax.tree_util.tree_map_with_path(lambda path, x: x[..., :n] if _is_head(path) else x, tree)


def _f64(tree):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, F64) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.asarray(x), tree
    )


def _loss_and_grads(learner):
    @jax.jit
    def run(params, task, key):
        grads, (loss, aux) = fj.learners.task_grad(learner, params, task, key)
        return loss, aux, grads

    return run


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_padded_equals_unpadded(name):
    build, has_head = LEARNERS[name]
    padded_learner, small_learner = build(W), build(N)
    episode = _episode(7)
    at_end = fj.data.pad_task(episode, support=episode.num_support + 3, query=episode.num_query + 2, ways=W)
    shuffled = _shuffled_with_garbage(at_end, 8)
    key = jax.random.key(3)
    params = _f64(padded_learner.init(jax.random.key(1), jax.tree_util.tree_map(jnp.asarray, at_end)))
    small_params = _slice_head(params, N) if has_head else params
    assert jax.tree_util.tree_leaves(params)[0].dtype == F64

    run_padded, run_small = _loss_and_grads(padded_learner), _loss_and_grads(small_learner)
    for variant, padded in (("at_end", at_end), ("shuffled_garbage", shuffled)):
        padded = _f64(jax.tree_util.tree_map(jnp.asarray, padded))
        reference = _f64(jax.tree_util.tree_map(jnp.asarray, _real_rows(padded)))
        assert padded.support_x.dtype == F64 and reference.query_x.dtype == F64
        loss, aux, grads = run_padded(params, padded, key)
        ref_loss, ref_aux, ref_grads = run_small(small_params, reference, key)
        assert loss.dtype == F64 and np.isfinite(float(loss))
        msg = f"{name}, {variant}"
        np.testing.assert_allclose(loss, ref_loss, **TOL, err_msg=msg)
        for k in ref_aux:
            np.testing.assert_allclose(aux[k], ref_aux[k], **TOL, err_msg=f"{msg}: aux[{k!r}]")
        flat = jax.tree_util.tree_leaves_with_path(grads)
        ref_flat = jax.tree_util.tree_leaves(ref_grads)
        assert len(flat) == len(ref_flat)
        assert sum(float(jnp.abs(g).sum()) for g in ref_flat) > 1e-3, "the gradient must not be trivially 0"
        for (path, g), ref in zip(flat, ref_flat):
            where = f"{msg}: d/d{jax.tree_util.keystr(path)}"
            if has_head and _is_head(path):
                np.testing.assert_array_equal(g[..., N:], 0.0, err_msg=f"{where} on padded classes")
                g = g[..., :N]
            np.testing.assert_allclose(g, ref, **TOL, err_msg=where)


def test_evaluate_scores_padded_episodes_like_unpadded_ones():
    learner = fj.protonet(_mlp(6), W)
    small = fj.protonet(_mlp(6), N)
    episodes = [_episode(seed) for seed in range(4)]
    padded = [fj.data.pad_task(e, support=12, query=9, ways=W) for e in episodes]
    batch = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *padded)
    params = _f64(learner.init(jax.random.key(0), jax.tree_util.tree_map(jnp.asarray, padded[0])))
    result = fj.evaluate(learner, params, _f64(batch), episodes=4, batch_size=2)
    expected = [
        fj.meta_loss(small, params, _f64(jax.tree_util.tree_map(jnp.asarray, e)), jax.random.key(0))[1]
        for e in episodes
    ]
    np.testing.assert_allclose(result.values, [float(a["accuracy"]) for a in expected], **TOL)
    np.testing.assert_allclose(result.loss, np.mean([float(a["query_loss"]) for a in expected]), **TOL)


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_masked_classes_get_exactly_zero_probability_and_gradient(dtype):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, W)) * 30, dtype)
    labels = jnp.array([0, 2, 1, 2])
    way_mask = jnp.array([1, 1, 1, 0, 0], dtype)
    masked = mask_classes(logits, way_mask)
    assert masked.dtype == dtype and bool(jnp.all(jnp.isfinite(masked)))
    np.testing.assert_array_equal(jax.nn.softmax(masked)[:, N:], 0.0)
    np.testing.assert_allclose(
        fj.xent_loss(logits, labels, way_mask=way_mask),
        fj.xent_loss(logits[:, :N], labels),
        rtol=1e-6 if dtype == jnp.float32 else 1e-12,
    )
    grad = jax.grad(lambda z: fj.xent_loss(z, labels, way_mask=way_mask))(logits)
    np.testing.assert_array_equal(grad[:, N:], 0.0)
    assert float(fj.learners.accuracy(logits.at[:, N:].set(1e6), labels, way_mask=way_mask)) == float(
        fj.learners.accuracy(logits[:, :N], labels)
    )


def test_relation_mse_loss_averages_over_real_classes_only():
    rng = np.random.default_rng(1)
    scores, labels, mask = rng.uniform(size=(6, W)), rng.integers(0, N, 6), np.array([1, 1, 0, 1, 0, 1])
    way_mask = np.array([1, 1, 1, 0, 0])
    expected = ((scores[:, :N] - np.eye(N)[labels]) ** 2).mean(1)[mask > 0].mean()
    loss = fj.learners.relation_mse_loss
    np.testing.assert_allclose(
        loss(jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(mask), way_mask=jnp.asarray(way_mask)),
        expected,
        rtol=1e-12,
    )
    g = jax.grad(lambda s: loss(s, jnp.asarray(labels), way_mask=jnp.asarray(way_mask)))(jnp.asarray(scores))
    np.testing.assert_array_equal(g[:, N:], 0.0)
    with pytest.raises(ValueError, match="way_mask"):
        loss(jnp.asarray(scores), jnp.asarray(labels), way_mask=jnp.ones(N))


def test_way_mask_errors_for_regression_and_callables_and_custom_losses_still_work():
    with pytest.raises(ValueError, match="way_mask"):
        fj.mse_loss(jnp.zeros((2, 1)), jnp.zeros((2, 1)), way_mask=jnp.ones(3))
    with pytest.raises(ValueError, match="shape"):
        fj.xent_loss(jnp.zeros((2, 4)), jnp.array([0, 1]), way_mask=jnp.ones(3))
    user, _ = fj.learners.resolve_loss(lambda p, t: jnp.mean((p - t) ** 2))
    with pytest.raises(ValueError, match="way_mask"):
        user(jnp.zeros((2, 3)), jnp.array([0, 1]), way_mask=jnp.ones(3))

    episode = jax.tree_util.tree_map(jnp.asarray, _episode(0))
    padded = fj.data.pad_task(episode, support=episode.num_support, query=episode.num_query, ways=W)
    regression = fj.maml(_mlp(W), "mse")
    params = regression.init(jax.random.key(0), episode)
    with pytest.raises(ValueError, match="way_mask"):
        fj.meta_loss(regression, params, padded._replace(support_mask=None, query_mask=None), jax.random.key(0))

    # A hand-made learner whose loss takes no way_mask keeps working on tasks without one.
    def loss3(logits, labels, mask):
        return fj.xent_loss(logits, labels, mask)

    prototypes = fj.learners.class_prototypes
    centroid = fj.Learner(
        init=lambda key, task: {"s": jnp.ones(())},
        adapt=lambda p, task, key: prototypes(task.support_x * p["s"], task.support_y, N),
        predict=lambda p, protos, x: -((x[:, None] * p["s"] - protos[None]) ** 2).sum(-1),
        loss=loss3,
    )
    loss, aux = fj.meta_loss(centroid, {"s": jnp.ones(())}, episode, jax.random.key(0))
    assert np.isfinite(float(loss)) and 0.0 <= float(aux["accuracy"]) <= 1.0


# ---------------------------------------------------------------- pad_task


def test_pad_task_shapes_masks_and_array_kinds():
    episode = _episode(3)
    s, q = episode.num_support, episode.num_query
    padded = fj.data.pad_task(episode, support=s + 2, query=q + 1, ways=W)
    assert isinstance(padded.support_x, np.ndarray) and isinstance(padded.way_mask, np.ndarray)
    assert padded.support_x.shape == (s + 2, DIM) and padded.query_x.shape == (q + 1, DIM)
    assert padded.support_mask.tolist() == [1.0] * s + [0.0] * 2 and padded.query_mask.tolist() == [1.0] * q + [0.0]
    assert padded.way_mask.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0] and padded.support_mask.dtype == np.float64
    np.testing.assert_array_equal(padded.support_x[s:], 0.0)
    np.testing.assert_array_equal(padded.support_y[s:], 0)
    np.testing.assert_array_equal(padded.support_x[:s], episode.support_x)
    assert padded.support_y.dtype == episode.support_y.dtype
    assert fj.data.pad_task(episode, support=s, query=q).way_mask is None  # no ways: no way_mask

    # jax in, jax out; existing masks are combined; an existing way_mask gives the number of classes.
    jtask = jax.tree_util.tree_map(jnp.asarray, episode)._replace(
        support_mask=jnp.ones(s).at[0].set(0.0), way_mask=jnp.array([1.0, 1.0, 1.0, 0.0])
    )
    again = fj.data.pad_task(jtask, support=s + 1, query=q, ways=6)
    assert isinstance(again.support_x, jax.Array)
    assert again.support_mask.tolist() == [0.0] + [1.0] * (s - 1) + [0.0]
    assert again.way_mask.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert fj.data.pad_task(jtask, support=s, query=q).way_mask.tolist() == [1.0, 1.0, 1.0, 0.0]  # kept as is
    traced = jax.jit(lambda t: fj.data.pad_task(t, support=s + 3, query=q + 3, ways=W))(jtask)
    assert traced.way_mask.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0] and traced.query_mask.shape == (q + 3,)

    regression = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 5, 4), 0)
    padded = fj.data.pad_task(regression, support=7, query=4)
    assert padded.support_y.shape == (7, 1) and padded.support_mask.tolist() == [1.0] * 5 + [0.0] * 2


def test_pad_task_errors_name_the_argument():
    episode = _episode(4)
    s, q = episode.num_support, episode.num_query
    with pytest.raises(ValueError, match=f"support={s - 1} is smaller"):
        fj.data.pad_task(episode, support=s - 1, query=q)
    with pytest.raises(ValueError, match=f"query={q - 1} is smaller"):
        fj.data.pad_task(episode, support=s, query=q - 1)
    with pytest.raises(ValueError, match="ways=2 is smaller than the task's 3 classes"):
        fj.data.pad_task(episode, support=s, query=q, ways=2)
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="support must be a positive int"):
            fj.data.pad_task(episode, support=bad, query=q)
    with pytest.raises(ValueError, match="ways"):
        fj.data.pad_task(episode, support=s, query=q, ways=0)
    regression = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), 1, 5, 4), 0)
    with pytest.raises(ValueError, match="ways is for classification"):
        fj.data.pad_task(regression, support=5, query=4, ways=3)
    beyond = episode._replace(query_y=np.where(episode.query_y == 0, 3, episode.query_y))  # class 3 has no support
    with pytest.raises(ValueError, match="query_y has real labels"):
        fj.data.pad_task(beyond, support=s, query=q, ways=W)
    with pytest.raises(TypeError, match="Task"):
        fj.data.pad_task(episode._asdict(), support=s, query=q)
