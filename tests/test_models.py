"""Backbones: the im2col convolution equals XLA's, pooling equals flax's, per-task normalisation under vmap."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fsl_jax as fj
from fsl_jax.models.conv import im2col_conv, max_pool_2x2


@pytest.mark.parametrize("k", [1, 3, 5])
def test_im2col_conv_equals_xla_conv(k):
    x = jax.random.normal(jax.random.key(0), (3, 9, 7, 4))
    w = jax.random.normal(jax.random.key(1), (k, k, 4, 6))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(im2col_conv(x, w), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
def test_im2col_conv_hand_written_derivatives_equal_xla_conv_to_third_order(k):
    """im2col_conv's custom VJP (data gradient = conv with the flipped kernel, kernel gradient = one product, and that
    product's own VJP) against autodiff of lax.conv, float64: first order, MAML-style second order through an inner
    gradient step on both inputs, a third-order gradient, and under vmap over per-task kernels."""

    def ref(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3, 9, 7, 4), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (k, k, 4, 6), jnp.float64)
        g = jax.random.normal(jax.random.key(2), (3, 9, 7, 6), jnp.float64)

        def first(conv):
            return jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) * g), argnums=(0, 1))

        def second(conv):
            def outer(x, w):
                gx, gw = first(conv)(x, w)
                return jnp.sum(jnp.sin(conv(x + 0.1 * gx, w - 0.1 * gw)))

            return jax.grad(outer, argnums=(0, 1))

        def third(conv):
            return jax.grad(lambda x, w: jnp.sum(second(conv)(x, w)[1] ** 2), argnums=(0, 1))

        for order in (first, second, third):
            for got, want in zip(order(im2col_conv)(x, w), order(ref)(x, w)):
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(want))))
        xs, ws = x.reshape(3, 1, 9, 7, 4), jnp.stack([w, 2 * w, -w])
        per_task = lambda conv: jax.vmap(second(conv))(xs, ws)
        for got, want in zip(per_task(im2col_conv), per_task(ref)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(want))))


def test_im2col_conv_rejects_a_kernel_that_does_not_fit_naming_its_shape():
    x = jnp.zeros((1, 5, 5, 4))
    for kernel_shape in [(3, 3, 2, 6), (2, 2, 4, 6), (3, 1, 4, 6)]:  # wrong in-channels, even size, not square
        with pytest.raises(
            ValueError, match=r"odd square kernel \[k, k, 4, out\], got " + re.escape(str(kernel_shape))
        ):
            im2col_conv(x, jnp.zeros(kernel_shape))


@pytest.mark.parametrize("size", [28, 7, 5])
def test_max_pool_equals_flax(size):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2), "VALID"))


def test_conv_impls_share_parameters_and_outputs():
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    a, b = fj.models.Conv4(num_classes=5, conv_impl="im2col"), fj.models.Conv4(num_classes=5, conv_impl="xla")
    variables = a.init(jax.random.key(1), x)
    np.testing.assert_allclose(a.apply(variables, x), b.apply(variables, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, embedding", [(28, 64), (84, 64 * 5 * 5)])
def test_conv4_shapes(size, embedding):
    x = jnp.zeros((2, size, size, 3))
    enc = fj.models.Conv4()
    assert enc.apply(enc.init(jax.random.key(0), x), x).shape == (2, embedding)
    clf = fj.models.Conv4(num_classes=5)
    variables = clf.init(jax.random.key(0), x)
    assert clf.apply(variables, x).shape == (2, 5)
    assert list(variables["params"]) == ["block0", "block1", "block2", "block3", "head"]


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_norm_is_per_task_under_vmap(norm):
    model = fj.models.Conv4(num_classes=3, hidden=4, norm=norm, blocks=2)
    xs = jax.random.normal(jax.random.key(0), (3, 5, 8, 8, 1)) * jnp.arange(1.0, 4.0)[:, None, None, None, None]
    variables = model.init(jax.random.key(1), xs[0])
    per_task_weights = jax.tree_util.tree_map(lambda p: jnp.stack([p, p * 1.1, p * 0.9]), variables)
    batched = jax.vmap(model.apply)(per_task_weights, xs)
    for t in range(3):
        single = model.apply(jax.tree_util.tree_map(lambda p: p[t], per_task_weights), xs[t])
        np.testing.assert_allclose(batched[t], single, rtol=1e-5, atol=1e-5)


def test_batch_norm_uses_batch_statistics():
    x = jax.random.normal(jax.random.key(0), (6, 4, 4, 3)) * 5 + 2
    norm = fj.models.Norm("batch")
    y = norm.apply(norm.init(jax.random.key(0), x), x)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1, atol=1e-3)


def test_bad_model_input():
    with pytest.raises(ValueError, match="shape"):
        fj.models.Conv4().init(jax.random.key(0), jnp.zeros((28, 28, 1)))
    with pytest.raises(ValueError, match="norm"):
        fj.models.Conv4(norm="group").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="conv_impl"):
        fj.models.Conv4(conv_impl="fast").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.parametrize("learner_name", ["protonet", "maml"])
def test_jitted_vmapped_gradient_equals_per_task_eager_gradients(learner_name):
    # Regression: with reduce_max pooling after a batch-statistics norm, XLA:CPU fused the max's equality mask
    # differently from the max itself and jit(vmap(grad)) was off by O(1) while each task's eager gradient was right.
    images = jax.random.uniform(jax.random.key(2), (10, 8, 8, 8, 1))
    tasks = fj.data.DeviceSampler(images, 3, 1, 2).sample(jax.random.key(3), 8)
    if learner_name == "protonet":
        learner = fj.protonet(fj.models.Conv4(hidden=4, blocks=2, conv_impl="xla"), ways=3)
    else:
        learner = fj.maml(fj.models.Conv4(num_classes=3, hidden=4, blocks=2, conv_impl="xla"), "xent", 0.1, 1)
    params = learner.init(jax.random.key(0), fj.task_at(tasks, 0))
    loss = lambda p, t: fj.meta_loss(learner, p, t, jax.random.key(0))[0]
    batched = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, tasks)
    for i in (0, 3, 7):  # first, middle and last task (eager MAML re-traces its inner scan: ~5 s a task)
        eager = jax.grad(loss)(params, fj.task_at(tasks, i))
        for a, b in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(eager)):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-4)


def test_max_pool_gradient_goes_to_one_element_per_window():
    x = jnp.array([[1.0, 3.0], [2.0, 3.0]]).reshape(1, 2, 2, 1)  # tie between two corners
    g = jax.grad(lambda v: jnp.sum(max_pool_2x2(v)))(x)
    assert float(jnp.sum(g)) == 1.0 and float(jnp.max(g)) == 1.0
    hess = jax.hessian(lambda v: jnp.sum(max_pool_2x2(v) ** 2))(x)
    assert float(jnp.sum(hess)) == 2.0
