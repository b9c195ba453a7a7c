"""Metric and generative learners: each one's math against an independent computation, and that each trains."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import fsl_jax as fj
from fsl_jax.learners.matching import matching_net
from fsl_jax.learners.protonet import class_prototypes, protonet
from fsl_jax.learners.relation import RelationEncoder, RelationModule, relation_mse_loss, relation_net, relation_pairs
from fsl_jax.learners.siamese import contrastive_loss, siamese
from fsl_jax.learners.vae import (
    VAEDecoder,
    VAEEncoder,
    cvae_classifier,
    gaussian_kl,
    gaussian_log_density,
    product_of_gaussians,
)
from fsl_jax.models.resnet import ResNet12

WAYS, SHOTS, QUERIES, DIM = 3, 2, 3, 8


def _tasks(seed, n_tasks, ways=WAYS, shots=SHOTS, queries=QUERIES, dim=DIM, noise=0.3, image=None):
    """Easy tasks (numpy: no compilation): per task, random class centres; x = sigmoid(3 * centre + noise).

    With ``image=s``, inputs are reshaped to ``[s, s, 1]`` images (``dim`` is then ``s * s``).
    """
    rng = np.random.default_rng(seed)
    if image is not None:
        dim = image * image
    centres = rng.normal(size=(n_tasks, ways, 1, dim))
    sx = centres + noise * rng.normal(size=(n_tasks, ways, shots, dim))
    qx = centres + noise * rng.normal(size=(n_tasks, ways, queries, dim))
    shape = (dim,) if image is None else (image, image, 1)

    def squash(a, k):
        return (1 / (1 + np.exp(-3 * a))).reshape((n_tasks, ways * k) + shape).astype(np.float32)

    def labels(k):
        return np.tile(np.repeat(np.arange(ways, dtype=np.int32), k), (n_tasks, 1))

    return fj.Task(*map(jnp.asarray, (squash(sx, shots), labels(shots), squash(qx, queries), labels(queries))))


def _image_tasks(seed, n_tasks, size=8):
    return _tasks(seed, n_tasks, image=size)


def _init(learner, key, task):
    return jax.jit(learner.init)(key, task)


def _apply(module, variables, *args):
    return module.apply(variables, *args)


def _mlp(out=8):
    return fj.models.MLP(hidden=(16,), out=out)


LEARNERS = {
    "protonet": lambda: protonet(_mlp(), WAYS),
    "protonet_cosine": lambda: protonet(_mlp(), WAYS, distance="cosine", temperature=0.2, learn_temperature=True),
    "matching": lambda: matching_net(_mlp(), WAYS),
    "matching_fce": lambda: matching_net(_mlp(), WAYS, fce=True, fce_steps=1),
    "relation_mlp": lambda: relation_net(_mlp(), RelationModule(channels=8, hidden=8), WAYS),
    "relation_conv": lambda: relation_net(
        RelationEncoder(hidden=4, blocks=1, pooled=1), RelationModule(channels=4, hidden=4), WAYS
    ),
    "siamese_pairs": lambda: siamese(_mlp(), WAYS, pairs=16, query_loss_weight=0.5),
    "cvae": lambda: cvae_classifier(VAEEncoder(4, hidden=(16,)), VAEDecoder(DIM, hidden=(16,)), 4, WAYS),
    "cvae_iwae": lambda: cvae_classifier(None, None, 4, WAYS, estimator="iwae", num_samples=2),
}
IMAGE_LEARNERS = {"relation_conv"}


def _batch(name, seed, n_tasks):
    return _image_tasks(seed, n_tasks) if name in IMAGE_LEARNERS else _tasks(seed, n_tasks)


# ---------------------------------------------------------------- core math against independent computations


def test_protonet_logits_match_hand_computed_class_means():
    task = fj.task_at(_tasks(0, 1), 0)
    encoder = _mlp()
    mask = jnp.array([1, 0, 1, 1, 1, 1], jnp.float32)  # drop the second example of class 0
    for distance, temp, m in (("sqeuclidean", 2.0, None), ("sqeuclidean", 1.0, mask), ("cosine", 0.5, mask)):
        learner = protonet(encoder, WAYS, distance=distance, temperature=temp)
        params = _init(learner, jax.random.key(1), task)
        t = task._replace(support_mask=m)
        logits = jax.jit(lambda p, t: learner.predict(p, learner.adapt(p, t, None), t.query_x))(params, t)
        es = np.asarray(_apply(encoder, params, task.support_x), np.float64)
        eq = np.asarray(_apply(encoder, params, task.query_x), np.float64)
        keep = np.ones(len(es), bool) if m is None else np.asarray(m) > 0
        ys = np.asarray(task.support_y)
        means = np.stack([es[(ys == c) & keep].mean(axis=0) for c in range(WAYS)])
        if distance == "sqeuclidean":
            expected = -((eq[:, None, :] - means[None]) ** 2).sum(-1) / temp
        else:
            unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
            expected = unit(eq) @ unit(means).T / temp
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_class_prototypes_sum_and_empty_class():
    emb = jnp.array([[1.0, 2.0], [3.0, 4.0], [10.0, 10.0]])
    labels = jnp.array([0, 0, 1])
    np.testing.assert_allclose(class_prototypes(emb, labels, 3, reduce="sum"), [[4, 6], [10, 10], [0, 0]])
    np.testing.assert_allclose(class_prototypes(emb, labels, 3), [[2, 3], [10, 10], [0, 0]])


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_matching_net_attention_by_hand(temperature):
    task = fj.task_at(_tasks(2, 1), 0)
    encoder = _mlp()
    learner = matching_net(encoder, WAYS, temperature=temperature)
    params = _init(learner, jax.random.key(3), task)
    logits = jax.jit(lambda p: learner.predict(p, learner.adapt(p, task, None), task.query_x))(params)
    g = np.asarray(_apply(encoder, params, task.support_x), np.float64)
    f = np.asarray(_apply(encoder, params, task.query_x), np.float64)
    cos = (f @ g.T) / np.linalg.norm(f, axis=1)[:, None] / np.linalg.norm(g, axis=1)[None, :]
    a = np.exp(cos / temperature)
    a /= a.sum(axis=1, keepdims=True)
    probs = a @ np.eye(WAYS)[np.asarray(task.support_y)]
    np.testing.assert_allclose(logits, np.log(probs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(logits)).sum(axis=1), 1.0, rtol=1e-5)


def test_matching_net_fce_uses_the_support_set_and_respects_the_mask():
    task = fj.task_at(_tasks(4, 1), 0)
    learner = matching_net(_mlp(), WAYS, fce=True, fce_steps=3)
    params = _init(learner, jax.random.key(5), task)
    assert set(params) == {"encoder", "fce"}
    adapt, predict = jax.jit(learner.adapt), jax.jit(learner.predict)
    key = jax.random.key(0)
    full = task._replace(support_mask=jnp.ones(WAYS * SHOTS, jnp.float32))
    adapted = adapt(params, full, key)
    logits = predict(params, adapted, task.query_x)
    assert logits.shape == (WAYS * QUERIES, WAYS) and bool(jnp.all(jnp.isfinite(logits)))
    # Full context: changing the last support example changes the first one's embedding.
    changed = full._replace(support_x=full.support_x.at[-1].set(1.0 - full.support_x[-1]))
    assert not np.allclose(adapt(params, changed, key)["support"][0], adapted["support"][0])
    # No leakage: the query set does not reach adapt.
    other = full._replace(query_x=full.query_x[::-1], query_y=(full.query_y + 1) % WAYS)
    for x, y in zip(jax.tree_util.tree_leaves(adapted), jax.tree_util.tree_leaves(adapt(params, other, key))):
        np.testing.assert_array_equal(x, y)
    # A masked-out support example gets zero attention: its class loses that example's probability mass.
    only_class0_masked = task._replace(support_mask=jnp.array([0, 0, 1, 1, 1, 1], jnp.float32))
    probs = jnp.exp(predict(params, adapt(params, only_class0_masked, key), task.query_x))
    assert float(jnp.max(probs[:, 0])) < 1e-5


def test_relation_pairs_and_scores_by_hand():
    q = jnp.arange(6.0).reshape(3, 2)
    p = 10 + jnp.arange(4.0).reshape(2, 2)
    pairs = relation_pairs(q, p)
    assert pairs.shape == (6, 4)
    np.testing.assert_array_equal(pairs[1 * 2 + 1], jnp.concatenate([q[1], p[1]]))

    task = fj.task_at(_tasks(6, 1), 0)
    encoder, module = _mlp(), RelationModule(channels=8, hidden=4)
    learner = relation_net(encoder, module, WAYS, aggregate="sum")
    params = _init(learner, jax.random.key(7), task)
    scores = jax.jit(lambda p: learner.predict(p, learner.adapt(p, task, None), task.query_x))(params)
    fs = np.asarray(_apply(encoder, params["encoder"], task.support_x))
    fq = np.asarray(_apply(encoder, params["encoder"], task.query_x))
    ys = np.asarray(task.support_y)
    sums = np.stack([fs[ys == c].sum(axis=0) for c in range(WAYS)])
    hand_pairs = np.stack([np.concatenate([fq[i], sums[k]], axis=-1) for i in range(len(fq)) for k in range(WAYS)])
    expected = np.asarray(_apply(module, params["relation"], jnp.asarray(hand_pairs))).reshape(len(fq), WAYS)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1

    onehot = np.eye(WAYS)[np.asarray(task.query_y)]
    np.testing.assert_allclose(
        relation_mse_loss(scores, task.query_y), ((np.asarray(scores) - onehot) ** 2).mean(), rtol=1e-5
    )


def test_relation_encoder_keeps_feature_maps_and_the_conv_module_scores_them():
    x = jnp.zeros((2, 28, 28, 1))
    encoder = RelationEncoder(hidden=4)
    variables = jax.eval_shape(encoder.init, jax.random.key(0), x)
    maps = jax.eval_shape(encoder.apply, variables, x)
    assert maps.shape == (2, 7, 7, 4)
    pairs = jax.ShapeDtypeStruct((6, 7, 7, 8), jnp.float32)
    module = RelationModule(channels=4)
    out = jax.eval_shape(module.apply, jax.eval_shape(module.init, jax.random.key(0), pairs), pairs)
    assert out.shape == (6,)


def test_siamese_nearest_neighbour_and_contrastive_loss_by_hand():
    task = fj.task_at(_tasks(8, 1), 0)
    encoder, margin = _mlp(), 0.7
    learner = siamese(encoder, WAYS, margin=margin)
    params = _init(learner, jax.random.key(9), task)
    adapted = jax.jit(learner.adapt)(params, task, jax.random.key(0))
    logits = jax.jit(learner.predict)(params, adapted, task.query_x)
    es = np.asarray(_apply(encoder, params, task.support_x), np.float64)
    eq = np.asarray(_apply(encoder, params, task.query_x), np.float64)
    dist = np.linalg.norm(eq[:, None] - es[None], axis=-1)
    ys = np.asarray(task.support_y)
    expected = np.stack([-dist[:, ys == c].min(axis=1) for c in range(WAYS)], axis=1)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)

    # All-pairs contrastive term: mean over positive pairs of d^2 + mean over negative pairs of max(0, m - d)^2.
    z = np.concatenate([es, eq])
    y = np.concatenate([ys, np.asarray(task.query_y)])
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    off = ~np.eye(len(y), dtype=bool)
    pos = (y[:, None] == y[None]) & off
    neg = (y[:, None] != y[None]) & off
    hand = (d[pos] ** 2).mean() + (np.maximum(margin - d[neg], 0) ** 2).mean()
    extra = jax.jit(learner.extra_loss)(params, adapted, task, jax.random.key(0))
    np.testing.assert_allclose(extra, hand, rtol=1e-4)
    np.testing.assert_allclose(
        contrastive_loss(jnp.array([4.0, 0.04, 9.0]), jnp.array([True, False, False]), 1.0),
        4.0 + (0.8**2 + 0.0) / 2,
        rtol=1e-6,
    )

    # Balanced sampled pairs estimate the same quantity (equal class sizes make it unbiased).
    sampled = siamese(encoder, WAYS, margin=margin, pairs=4000)
    estimate = jax.jit(sampled.extra_loss)(params, adapted, task, jax.random.key(1))
    np.testing.assert_allclose(estimate, hand, rtol=0.1)


def test_siamese_query_loss_weight_scales_only_the_gradient():
    """The query cross-entropy's value is the plain cross-entropy whatever query_loss_weight is, and its gradient is
    the weight times softmax - onehot (numpy). Through the whole objective, the meta-gradient at weight w is the
    one at weight 0 (the contrastive term alone) plus w times the gradient of the plain query cross-entropy, and the
    reported loss does not depend on w."""
    task = fj.task_at(_tasks(10, 1), 0)
    learners = {w: siamese(_mlp(), WAYS, query_loss_weight=w) for w in (0.0, 1.0, 0.5, 2.0)}
    zero = learners[0.0]
    params = _init(zero, jax.random.key(11), task)

    @jax.jit
    def everything(p):  # one compilation for all of it
        def query_logits(q):
            return zero.predict(q, zero.adapt(q, task, None), task.query_x)

        def plain_query_xent(q):
            logp = jax.nn.log_softmax(query_logits(q))
            return -jnp.mean(jnp.take_along_axis(logp, task.query_y[:, None], axis=1))

        meta = {
            w: jax.value_and_grad(lambda q: fj.meta_loss(learners[w], q, task, jax.random.key(3))[0])(p)
            for w in (0.0, 0.5, 2.0)
        }
        return query_logits(p), jax.grad(plain_query_xent)(p), meta

    logits, query_grad, meta = everything(params)
    z = np.asarray(logits, np.float64)
    y = np.asarray(task.query_y)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    xent = -logp[np.arange(len(y)), y].mean()
    dxent = (np.exp(logp) - np.eye(WAYS)[y]) / len(y)  # d xent / d logits
    assert np.abs(dxent).max() > 1e-3
    for w, learner in learners.items():
        np.testing.assert_allclose(learner.loss(logits, task.query_y), xent, rtol=1e-5)
        g = np.asarray(jax.grad(lambda l: learner.loss(l, task.query_y))(logits))
        if w == 0.0:
            assert float(np.max(np.abs(g))) == 0.0
        np.testing.assert_allclose(g, w * dxent, rtol=1e-4, atol=1e-7, err_msg=f"weight {w}")
    total0, g0 = meta[0.0][0], ravel_pytree(meta[0.0][1])[0]
    q = ravel_pytree(query_grad)[0]
    assert float(jnp.linalg.norm(q)) > 1e-2 * float(jnp.linalg.norm(g0))
    for w in (0.5, 2.0):
        total, g = meta[w][0], ravel_pytree(meta[w][1])[0]
        np.testing.assert_allclose(g, g0 + w * q, rtol=1e-4, atol=1e-6, err_msg=f"weight {w}")
        np.testing.assert_allclose(total, total0, rtol=1e-6)


def test_gaussian_kl_and_product_of_gaussians_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 5))
    s1, s2 = np.exp(rng.normal(size=(2, 5)) * 0.5)
    expected = np.sum(np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5)
    ours = gaussian_kl(jnp.asarray(m1), jnp.asarray(2 * np.log(s1)), jnp.asarray(m2), jnp.asarray(2 * np.log(s2)))
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    same = gaussian_kl(jnp.asarray(m1), jnp.zeros(5), jnp.asarray(m1), jnp.zeros(5))
    np.testing.assert_allclose(same, 0.0, atol=1e-6)

    # Product of the prior and the class's Gaussians: its log density differs from the sum of the factors' log
    # densities by a constant in z, and its precision is 1 + sum of the factors' precisions.
    means = rng.normal(size=(4, 3))
    log_vars = rng.normal(size=(4, 3)) * 0.5
    labels = np.array([0, 0, 1, 0])
    weights = np.eye(2)[labels]
    mc, lvc = product_of_gaussians(jnp.asarray(means), jnp.asarray(log_vars), jnp.asarray(weights))
    members = labels == 0
    precision = 1 + np.sum(np.exp(-log_vars[members]), axis=0)
    np.testing.assert_allclose(np.exp(-np.asarray(lvc[0])), precision, rtol=1e-5)
    np.testing.assert_allclose(
        mc[0], np.sum(means[members] * np.exp(-log_vars[members]), axis=0) / precision, rtol=1e-5
    )
    zs = rng.normal(size=(6, 3))
    z = jnp.asarray(zs)
    factors = gaussian_log_density(z, 0.0, 0.0) + sum(
        gaussian_log_density(z, jnp.asarray(means[i]), jnp.asarray(log_vars[i])) for i in np.where(members)[0]
    )
    diff = np.asarray(factors - gaussian_log_density(z, mc[0], lvc[0]))
    np.testing.assert_allclose(diff - diff[0], 0.0, atol=1e-4)


@pytest.mark.parametrize("estimator", ["elbo", "iwae"])
def test_cvae_logits_by_hand(estimator):
    task = fj.task_at(_tasks(12, 1), 0)
    enc, dec, latent = VAEEncoder(3, hidden=(8,)), VAEDecoder(DIM, hidden=(8,)), 3
    learner = cvae_classifier(enc, dec, latent, WAYS, estimator=estimator, num_samples=1)
    params = _init(learner, jax.random.key(13), task)
    adapted = jax.jit(learner.adapt)(params, task, jax.random.key(14))
    logits = np.asarray(jax.jit(learner.predict)(params, adapted, task.query_x), np.float64)

    f64 = lambda t: np.asarray(t, np.float64)
    ms, lvs = map(f64, _apply(enc, params["encoder"], task.support_x))
    mq, lvq = map(f64, _apply(enc, params["encoder"], task.query_x))
    ys = np.asarray(task.support_y)
    prec = np.stack([1 + np.exp(-lvs[ys == c]).sum(0) for c in range(WAYS)])
    mean_c = np.stack([(ms[ys == c] * np.exp(-lvs[ys == c])).sum(0) for c in range(WAYS)]) / prec
    var_c = 1 / prec
    np.testing.assert_allclose(adapted["mean"], mean_c, rtol=1e-4, atol=1e-5)
    eps = f64(adapted["eps"])[0]
    z = mq + np.exp(0.5 * lvq) * eps
    x = np.asarray(task.query_x, np.float64)
    out = f64(_apply(dec, params["decoder"], jnp.asarray(z, jnp.float32)))
    log_px = np.sum(x * out - np.logaddexp(0, out), axis=1)
    if estimator == "elbo":
        vq = np.exp(lvq)
        kl = 0.5 * np.sum(
            np.log(var_c[None]) - lvq[:, None] + (vq[:, None] + (mq[:, None] - mean_c[None]) ** 2) / var_c[None] - 1,
            axis=-1,
        )
        expected = log_px[:, None] - kl
    else:

        def log_n(z, m, v):
            return -0.5 * np.sum(np.log(2 * np.pi * v) + (z - m) ** 2 / v, axis=-1)

        log_q_c = log_n(z[:, None], mean_c[None], var_c[None])
        expected = (log_px - log_n(z, mq, np.exp(lvq)))[:, None] + log_q_c
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- training, retracing, leakage


# One variant per learner (plus the options that change the computation most); the rest are covered above.
TRAINED = ["protonet_cosine", "matching_fce", "relation_conv", "siamese_pairs", "cvae"]
UNLEAKED = ["protonet", "matching", "relation_mlp", "siamese_pairs", "cvae_iwae"]  # fce: in its own test


@pytest.mark.parametrize("name", TRAINED)
def test_trains_in_one_compiled_step_and_loss_decreases(name):
    learner = LEARNERS[name]()
    optimizer = optax.adam(3e-3)
    fixed = _batch(name, 20, 4)
    params = _init(learner, jax.random.key(21), fj.task_at(fixed, 0))
    state = fj.TrainState.create(learner, params, optimizer)
    step = fj.make_meta_step(learner, optimizer)
    for i in range(3):
        state, metrics = step(state, _batch(name, 30 + i, 4), jax.random.key(40 + i))
    assert step._cache_size() == 1
    assert bool(metrics["finite"])
    losses = []
    for i in range(20):
        state, metrics = step(state, fixed, jax.random.key(7))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    assert step._cache_size() == 1


@pytest.mark.parametrize("name", UNLEAKED)
def test_adapt_never_sees_the_query_set(name):
    learner = LEARNERS[name]()
    task = fj.task_at(_batch(name, 50, 1), 0)
    params = _init(learner, jax.random.key(51), task)
    other = task._replace(query_y=(task.query_y + 1) % WAYS, query_x=task.query_x[::-1] * 0.5)
    adapt = jax.jit(learner.adapt)
    a, b = adapt(params, task, jax.random.key(52)), adapt(params, other, jax.random.key(52))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- ResNet-12 and argument checks


@pytest.mark.parametrize("size", [28, 84])
def test_resnet12_shapes(size):
    # Shapes only (tracing, no compilation): 84 -> 42 -> 21 -> 10 -> 5 and 28 -> 14 -> 7 -> 3 -> 1 before the pool.
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    model = ResNet12(channels=(2, 3, 4, 5))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 5)
    assert variables["params"]["block3"]["conv2"]["kernel"].shape == (3, 3, 5, 5)
    assert variables["params"]["block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 3, 2)
    head = ResNet12(num_classes=7, channels=(2, 3, 4, 5))
    head_vars = jax.eval_shape(head.init, jax.random.key(0), x)
    assert "head" in head_vars["params"]
    assert jax.eval_shape(head.apply, head_vars, x).shape == (2, 7)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: protonet(_mlp(), 1), "ways"),
        (lambda: protonet(_mlp(), 2.5), "ways"),
        (lambda: protonet(_mlp(), 5, distance="l1"), "distance"),
        (lambda: protonet(_mlp(), 5, temperature=0.0), "temperature"),
        (lambda: matching_net(_mlp(), 1), "ways"),
        (lambda: matching_net(_mlp(), 5, fce=True, fce_steps=0), "fce_steps"),
        (lambda: relation_net(_mlp(), None, 0), "ways"),
        (lambda: relation_net(_mlp(), None, 5, aggregate="max"), "aggregate"),
        (lambda: siamese(_mlp(), 5, margin=-1.0), "margin"),
        (lambda: siamese(_mlp(), 5, pairs=1), "pairs"),
        (lambda: siamese(_mlp(), 5, query_loss_weight=-1.0), "query_loss_weight"),
        (lambda: siamese(_mlp(), True), "ways"),
        (lambda: cvae_classifier(None, None, 0, 5), "latent_dim"),
        (lambda: cvae_classifier(None, None, 4, 1), "ways"),
        (lambda: cvae_classifier(None, None, 4, 5, estimator="mc"), "estimator"),
        (lambda: cvae_classifier(None, None, 4, 5, likelihood="poisson"), "likelihood"),
        (lambda: cvae_classifier(None, None, 4, 5, num_samples=0), "num_samples"),
        (lambda: cvae_classifier(None, None, 4, 5, beta=-1.0), "beta"),
        (lambda: ResNet12(channels=(1, 2, 3)).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))), "channels"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_non_module_encoder_is_a_type_error():
    with pytest.raises(TypeError, match="encoder"):
        protonet(lambda x: x, 5)
    with pytest.raises(TypeError, match="relation_module"):
        relation_net(_mlp(), "conv", 5)
