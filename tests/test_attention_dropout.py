"""The transformer kernels written for speed: the attention core's hand-written backward pass and Philox dropout.

Each is checked against an independent computation: the attention core (value, gradients with respect to q, k, v
and the bias, second order, forward-over-reverse, vmap, with and without a dropout mask) against JAX's autodiff of
the textbook ``softmax(q k^T * scale + bias) v`` in float64; dropout's rate and independence statistically, and a
BERT with dropout on against a finite difference of its own loss (the masks are fixed by the key).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models.bert import Bert, BertConfig, _attention, attention_bias, dot_product_attention
from fsl_jax.models.dropout import Dropout, apply_mask, dropout, keep_mask

B, T, H, D = 2, 5, 3, 4
SCALE = 0.5


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _inputs():
    q, k, v = (jax.random.normal(jax.random.key(i), (B, T, H, D), jnp.float64) for i in range(3))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
    bias = attention_bias(mask, jnp.float64) + 0.1 * jax.random.normal(jax.random.key(9), (B, 1, T, T), jnp.float64)
    keep = jax.random.bernoulli(jax.random.key(5), 0.7, (B, H, T, T))
    return q, k, v, bias, keep


def _reference(q, k, v, bias, keep, rate):
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * SCALE + bias
    probs = jax.nn.softmax(scores, axis=-1)
    if keep is not None:
        probs = jnp.where(keep, probs / (1 - rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


@pytest.mark.parametrize("with_dropout", [False, True])
def test_attention_core_matches_autodiff_of_the_textbook_formula(with_dropout):
    q, k, v, bias, keep = _inputs()
    keep, rate = (keep, 0.3) if with_dropout else (None, 0.0)

    def ours(q, k, v, bias):
        return jnp.sum(jnp.sin(_attention(q, k, v, bias, keep, rate, SCALE)))

    def ref(q, k, v, bias):
        return jnp.sum(jnp.sin(_reference(q, k, v, bias, keep, rate)))

    # every check is jitted: op-by-op float64 dispatch of these graphs took a minute
    np.testing.assert_allclose(jax.jit(ours)(q, k, v, bias), jax.jit(ref)(q, k, v, bias), rtol=1e-12)
    grads = [jax.jit(jax.grad(f, (0, 1, 2, 3)))(q, k, v, bias) for f in (ours, ref)]
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)  # q, k, v and the bias

    def second(f):  # grad of a function of the gradient: reverse over reverse
        return jax.jit(jax.grad(lambda q: jnp.sum(jax.grad(f)(q, k, v, bias) ** 2)))(q)

    np.testing.assert_allclose(second(ours), second(ref), rtol=1e-9, atol=1e-11)
    u = jax.random.normal(jax.random.key(3), q.shape, jnp.float64)

    def hvp(f):  # forward over reverse, as iMAML's hvp="forward" takes it
        return jax.jit(lambda q: jax.jvp(lambda q: jax.grad(f)(q, k, v, bias), (q,), (u,))[1])(q)

    np.testing.assert_allclose(hvp(ours), hvp(ref), rtol=1e-9, atol=1e-11)
    batch = jnp.stack([q, 2 * q])
    np.testing.assert_allclose(
        jax.jit(jax.vmap(lambda q: jax.grad(ours)(q, k, v, bias)))(batch),
        jax.jit(jax.vmap(lambda q: jax.grad(ref)(q, k, v, bias)))(batch),
        rtol=1e-10,
        atol=1e-12,
    )


def test_attention_core_broadcast_bias_gradient_and_fully_masked_rows():
    q, k, v, _, _ = _inputs()
    bias = jnp.zeros((B, 1, 1, T), jnp.float64)  # the padding-mask shape: summed over heads and queries
    g = jax.grad(lambda b: jnp.sum(jnp.sin(_attention(q, k, v, b, None, 0.0, SCALE))))(bias)
    want = jax.grad(lambda b: jnp.sum(jnp.sin(_reference(q, k, v, b, None, 0.0))))(bias)
    assert g.shape == bias.shape
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)
    # a query that may attend to nothing: zeros with a -inf bias (and a zero gradient), the uniform average with
    # attention_bias's finite minimum (as transformers)
    blocked = jnp.full((B, 1, 1, T), -jnp.inf)
    np.testing.assert_array_equal(_attention(q, k, v, blocked, None, 0.0, SCALE), jnp.zeros_like(q))
    g = jax.grad(lambda q: jnp.sum(_attention(q, k, v, blocked, None, 0.0, SCALE)))(q)
    np.testing.assert_array_equal(g, jnp.zeros_like(q))
    minimum = attention_bias(jnp.zeros((B, 1, 1, T), bool), jnp.float64)
    out = _attention(q, k, v, minimum, None, 0.0, SCALE)
    np.testing.assert_allclose(out, jnp.broadcast_to(v.mean(axis=1, keepdims=True), out.shape), rtol=1e-12)


def test_dot_product_attention_rejects_a_flax_dropout_and_a_bad_bias():
    import flax.linen as nn

    q, k, v, bias, _ = _inputs()
    with pytest.raises(ValueError, match=r"bias must be 4-d"):
        dot_product_attention(q, k, v, bias[0], None, True, SCALE)

    class Uses(nn.Module):
        @nn.compact
        def __call__(self, q):
            return dot_product_attention(q, k, v, bias, nn.Dropout(0.1), False, SCALE)

    with pytest.raises(TypeError, match=r"dropout must be a fsl_jax.models.dropout.Dropout"):
        Uses().apply({}, q, rngs={"dropout": jax.random.key(0)})


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_and_scale(rate):
    n = 1_000_000
    x = jnp.ones((1000, 1000), jnp.float32)
    y = np.asarray(dropout(x, rate, jax.random.key(0)))
    dropped = float(np.mean(y == 0))
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(np.unique(y[y != 0]), [1 / (1 - rate)], rtol=1e-6)  # kept values scaled exactly
    assert abs(float(np.mean(y)) - 1.0) < 5 * np.sqrt(rate / (1 - rate) / n)  # unbiased


def test_dropout_masks_are_independent():
    rate, n = 0.3, 1_000_000
    a = np.asarray(keep_mask(jax.random.key(0), rate, (n,)), np.float64)
    b = np.asarray(keep_mask(jax.random.key(1), rate, (n,)), np.float64)
    tol = 5 / np.sqrt(n)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < tol  # neighbours within one mask
    assert abs(np.corrcoef(a[: n // 2], a[n // 2 :])[0, 1]) < tol  # far apart within one mask
    assert abs(np.corrcoef(a, b)[0, 1]) < tol  # two keys
    grid = np.asarray(keep_mask(jax.random.key(2), rate, (1000, 1000)), np.float64)
    assert abs(np.corrcoef(grid[:-1].ravel(), grid[1:].ravel())[0, 1]) < tol  # rows of a 2-d mask
    # the same key draws the same mask; a typed key of another implementation and a raw uint32 key work too
    np.testing.assert_array_equal(keep_mask(jax.random.key(0), rate, (n,)), a.astype(bool))
    for key in (jax.random.key(0, impl="rbg"), jax.random.PRNGKey(0)):
        assert abs(float(jnp.mean(keep_mask(key, rate, (n,)))) - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)


def test_dropout_module_layers_draw_different_masks_and_edge_rates():
    import flax.linen as nn

    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Dropout(0.5)(x, deterministic=False), Dropout(0.5)(x, deterministic=False)

    x = jnp.ones((100_000,))
    first, second = Two().apply({}, x, rngs={"dropout": jax.random.key(0)})
    agree = float(jnp.mean((first == 0) == (second == 0)))
    assert abs(agree - 0.5) < 0.01  # independent masks agree half the time at rate 0.5
    np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(dropout(x, 0.0, jax.random.key(0)), x)
    np.testing.assert_array_equal(dropout(x, 1.0, jax.random.key(0)), jnp.zeros_like(x))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
            dropout(x, bad, jax.random.key(0))
    with pytest.raises(ValueError, match=r"rate must be < 1 to scale the kept values, got 1.0"):
        apply_mask(x, x > 0, 1.0)


def test_bert_with_dropout_gradient_matches_a_finite_difference():
    """With dropout on, the key fixes every mask, so the loss is a smooth function of the weights: its gradient
    (through the hand-written attention backward and the Philox masks) must match a central difference."""
    config = BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
        hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=0.3,
    )
    model = Bert(config, dtype=jnp.float64, param_dtype=jnp.float64, add_pooling_layer=False)
    ids = jnp.array([[1, 5, 7, 9, 0, 0], [1, 9, 3, 4, 6, 2]])
    mask = (ids != 0).astype(jnp.int32)
    params = model.init(jax.random.key(0), ids, mask)
    key = jax.random.key(42)

    @jax.jit
    def loss(p, key):
        h = model.apply(p, ids, mask, deterministic=False, rngs={"dropout": key}).last_hidden_state
        return jnp.sum(jnp.sin(h) * mask[..., None])

    assert float(loss(params, key)) != float(loss(params, jax.random.key(7)))  # dropout is on: the key matters
    grad = jax.jit(jax.grad(loss))(params, key)
    u = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.key(x.size), x.shape, x.dtype), params)
    eps = 1e-6
    plus = loss(jax.tree_util.tree_map(lambda p, d: p + eps * d, params, u), key)
    minus = loss(jax.tree_util.tree_map(lambda p, d: p - eps * d, params, u), key)
    directional = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(u)))
    np.testing.assert_allclose(float(directional), float((plus - minus) / (2 * eps)), rtol=1e-6)
