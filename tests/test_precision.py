"""Mixed precision (bfloat16 compute, float32 parameters), the attention kernels and the per-backend convolution.

Each bfloat16 claim is checked against the float32 computation of the same thing; the tolerances are stated here and
in the README (bfloat16 keeps 8 mantissa bits: a relative error of a few 1e-3 per operation).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import fsl_jax as fj
from fsl_jax.models import conv as conv_module
from fsl_jax.models.bert import Bert, BertConfig
from fsl_jax.models.gpt2 import GPT2, GPT2Config, generate
from fsl_jax.llm.text_models import BertClassifier

# Meta-gradients in bfloat16 against float32: relative L2 error and cosine similarity of the flattened gradients,
# per model (measured on three seeds: MLP MAML 0.005; Conv-4 MAML with batch statistics 0.06-0.20, cosine >= 0.979,
# without normalisation 0.04-0.06; ProtoNet 0.03-0.07; BERT classifier under 0.1; the bounds leave about 1.5x room).


def _sinusoid_task():
    return fj.task_at(fj.data.sinusoid_tasks(jax.random.key(0), num_tasks=1, shots=10, queries=10), 0)


def _class_task(seed=0, ways=3, shots=4, queries=4, size=8, noise=1.0):
    """Classes that overlap enough that the loss is not saturated: a near-zero loss has a gradient made of rounding
    (at noise 0.3 ProtoNet's loss is 1e-5 and its gradient norm 7e-4, where bfloat16 differs by 30 %)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ways, 1, size, size, 1))
    sx = (centres + noise * rng.normal(size=(ways, shots, size, size, 1))).reshape(-1, size, size, 1)
    qx = (centres + noise * rng.normal(size=(ways, queries, size, size, 1))).reshape(-1, size, size, 1)
    sy, qy = np.repeat(np.arange(ways), shots), np.repeat(np.arange(ways), queries)
    return fj.Task(jnp.asarray(sx, jnp.float32), jnp.asarray(sy), jnp.asarray(qx, jnp.float32), jnp.asarray(qy))


def _meta_grad(learner, params, task):
    grad = jax.jit(jax.grad(lambda p: fj.meta_loss(learner, p, task, jax.random.key(3))[0]))(params)
    return grad


def _compare(grad16, grad32, rel_tol, cos_min):
    for leaf in jax.tree_util.tree_leaves(grad16):
        assert leaf.dtype == jnp.float32, "gradients of float32 parameters must be float32 under bfloat16 compute"
    a, b = np.asarray(ravel_pytree(grad16)[0], np.float64), np.asarray(ravel_pytree(grad32)[0], np.float64)
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert rel < rel_tol and cos > cos_min, (rel, cos)
    assert rel > 0, "the bfloat16 gradient is bit-identical: the forward did not run in bfloat16"
    return rel, cos


def test_maml_second_order_meta_gradient_in_bfloat16_is_close_to_float32():
    task = _sinusoid_task()

    def learner(dtype):
        return fj.maml(fj.models.MLP((40, 40), 1, dtype=dtype), "mse", 0.01, 2)

    params = learner(jnp.float32).init(jax.random.key(1), task)
    params16 = learner(jnp.bfloat16).init(jax.random.key(1), task)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params16))
    _compare(
        _meta_grad(learner(jnp.bfloat16), params, task), _meta_grad(learner(jnp.float32), params, task), 0.02, 0.999
    )


def test_maml_conv4_meta_gradient_in_bfloat16_is_close_to_float32():
    task = _class_task()

    def learner(dtype):
        return fj.maml(fj.models.Conv4(num_classes=3, hidden=8, blocks=2, dtype=dtype), "xent", 0.1, 1)

    params = learner(jnp.float32).init(jax.random.key(1), task)
    _compare(_meta_grad(learner(jnp.bfloat16), params, task), _meta_grad(learner(jnp.float32), params, task), 0.3, 0.97)


def test_protonet_meta_gradient_in_bfloat16_is_close_to_float32():
    task = _class_task(seed=1)

    def learner(dtype):
        return fj.protonet(fj.models.Conv4(hidden=8, blocks=2, dtype=dtype), 3)

    params = learner(jnp.float32).init(jax.random.key(1), task)
    _compare(
        _meta_grad(learner(jnp.bfloat16), params, task), _meta_grad(learner(jnp.float32), params, task), 0.12, 0.99
    )


SMALL_BERT = BertConfig(
    vocab_size=60,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def test_bert_classifier_gradient_in_bfloat16_is_close_to_float32():
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 60, size=(6, 10)), jnp.int32).at[:, 7:].set(0)
    labels = jnp.asarray([0, 1, 2, 0, 1, 2])

    def loss(dtype):
        model = BertClassifier(SMALL_BERT, 3, dtype=dtype)
        return lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, ids), labels).mean()

    params = BertClassifier(SMALL_BERT, 3).init(jax.random.key(0), ids)
    logits16 = BertClassifier(SMALL_BERT, 3, dtype=jnp.bfloat16).apply(params, ids)
    assert logits16.dtype == jnp.float32
    _compare(jax.jit(jax.grad(loss(jnp.bfloat16)))(params), jax.jit(jax.grad(loss(jnp.float32)))(params), 0.1, 0.99)


def _meta_train(learner, params, sample, steps):
    """``steps`` Adam (1e-3) meta-steps of ``learner`` from ``params`` on tasks ``sample(key)``, in one jitted scan
    (key 1); the final :class:`fj.TrainState`."""
    opt = optax.adam(1e-3)
    state = fj.TrainState.create(learner, params, opt)
    step = fj.make_meta_step(learner, opt)

    @jax.jit
    def run(state, key):
        def body(s, k):
            k1, k2 = jax.random.split(k)
            return step(s, sample(k1), k2)[0], None

        return jax.lax.scan(body, state, jax.random.split(key, steps))[0]

    return run(state, jax.random.key(1))


def _train_sinusoid(dtype, steps=300):
    """Test MSE after adaptation of MAML meta-trained for ``steps`` steps, and of the untrained initialisation."""
    learner = fj.maml(fj.models.MLP((40, 40), 1, dtype=dtype), "mse", 0.01, 1)
    source = fj.data.sinusoid_tasks
    params = learner.init(jax.random.key(0), fj.task_at(source(jax.random.key(0), 1, shots=10, queries=10), 0))
    state = _meta_train(learner, params, lambda k: source(k, 8, shots=10, queries=10), steps)
    for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32, "meta-parameters and optimiser state stay float32"
    test = source(jax.random.key(99), 100, shots=10, queries=10)
    untrained = float(fj.evaluate(learner, params, test, key=jax.random.key(5)).mean)
    return float(fj.evaluate(learner, state.params, test, key=jax.random.key(5)).mean), untrained


def test_sinusoid_maml_in_bfloat16_reaches_the_float32_loss():
    (mse32, untrained), (mse16, _) = _train_sinusoid(jnp.float32), _train_sinusoid(jnp.bfloat16)
    # Stated margin: the bfloat16 test MSE within 15 % of float32's after the same 300 meta-steps.
    assert mse16 < 1.15 * mse32, (mse16, mse32)
    assert mse32 < 0.5 * untrained, (mse32, untrained)  # it did learn (about 10 -> 3.8 in these 300 steps)


def _train_digits(dtype, steps=80):
    data = fj.data.digits().data  # classes 0-4 train, 5-9 are held out
    learner = fj.protonet(fj.models.Conv4(hidden=8, blocks=2, dtype=dtype), 5)
    sampler = fj.data.DeviceSampler(data[:5], 5, 1, 5)
    params = learner.init(jax.random.key(0), fj.task_at(sampler.sample(jax.random.key(0), 1), 0))
    state = _meta_train(learner, params, lambda k: sampler.sample(k, 8), steps)
    held_out = fj.data.DeviceSampler(data[5:], 5, 1, 5)
    return float(fj.evaluate(learner, state.params, held_out.sample, 100, key=jax.random.key(7)).mean)


def test_digits_protonet_in_bfloat16_reaches_the_float32_accuracy():
    acc32, acc16 = _train_digits(jnp.float32), _train_digits(jnp.bfloat16)
    # Stated margin: bfloat16 accuracy on held-out classes within 3 points of float32's, same episodes and keys.
    assert acc16 > acc32 - 0.03, (acc16, acc32)
    assert acc32 > 0.5, acc32  # well above the 20 % of chance


# ---------------------------------------------------------------------------------------------------------------
# Attention kernels: jax.nn.dot_product_attention against the einsum path
# ---------------------------------------------------------------------------------------------------------------


def _bert_outputs(impl, ids, mask):
    model = Bert(dataclasses.replace(SMALL_BERT, attention_impl=impl))
    params = Bert(SMALL_BERT).init(jax.random.key(0), ids, mask)
    return np.asarray(jax.jit(model.apply)(params, ids, mask).last_hidden_state)


@pytest.mark.parametrize("impl", ["auto", "xla"])  # "auto" is the einsum form on CPU, the fused call elsewhere
def test_bert_fused_attention_matches_the_einsum_path_with_padding(impl):
    ids = jnp.asarray(np.random.default_rng(1).integers(1, 60, size=(3, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None, :] < np.array([[12], [7], [3]]), jnp.int32)
    reference = _bert_outputs("einsum", ids, mask)
    np.testing.assert_allclose(_bert_outputs(impl, ids, mask), reference, atol=2e-5, rtol=2e-5)


def test_bert_attention_dropout_still_runs_on_the_einsum_path():
    config = dataclasses.replace(SMALL_BERT, attention_probs_dropout_prob=0.5, attention_impl="xla")
    ids = jnp.ones((2, 6), jnp.int32)
    model = Bert(config)
    params = model.init(jax.random.key(0), ids)
    run = jax.jit(lambda k: model.apply(params, ids, deterministic=False, rngs={"dropout": k}).last_hidden_state)
    assert np.abs(np.asarray(run(jax.random.key(1)) - run(jax.random.key(2)))).max() > 1e-3


SMALL_GPT2 = GPT2Config(
    vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
)


def test_gpt2_fused_attention_matches_the_einsum_path_with_padding_and_the_kv_cache():
    ids = jnp.asarray(np.random.default_rng(2).integers(1, 50, size=(2, 6)), jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], jnp.int32)  # left padding, as generation uses
    params = GPT2(SMALL_GPT2).init(jax.random.key(0), ids)
    models = {impl: GPT2(dataclasses.replace(SMALL_GPT2, attention_impl=impl)) for impl in ("einsum", "xla")}
    logits = {i: np.asarray(jax.jit(m.apply)(params, ids, mask).logits) for i, m in models.items()}
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(logits["xla"][real], logits["einsum"][real], atol=2e-5, rtol=2e-5)
    tokens = {i: np.asarray(generate(m, params, ids, mask, max_new_tokens=6)) for i, m in models.items()}
    np.testing.assert_array_equal(tokens["xla"], tokens["einsum"])


# ---------------------------------------------------------------------------------------------------------------
# The convolution is chosen per backend
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "expected"), [("cpu", "im2col"), ("gpu", "xla"), ("tpu", "xla")])
def test_conv_impl_auto_is_chosen_per_backend(monkeypatch, backend, expected):
    monkeypatch.setattr(conv_module.jax, "default_backend", lambda: backend)
    assert conv_module._resolve_impl("auto") == expected
    model = fj.models.Conv4(num_classes=2, hidden=4, blocks=1)
    x = jnp.zeros((1, 8, 8, 1))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(model.apply)(params, x))
    assert ("conv_general_dilated" in jaxpr) == (expected == "xla"), expected
    assert conv_module._resolve_impl("im2col") == "im2col" and conv_module._resolve_impl("xla") == "xla"


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (fj.models.MLP(dtype=jnp.int32), "MLP: dtype must be a floating type .* got int32"),
        (fj.models.Conv4(2, dtype="bool"), "Conv4: dtype must be a floating type .* got bool"),
        (fj.models.MLP(param_dtype=jnp.bfloat16), "param_dtype=bfloat16 is less precise than dtype=float32"),
        (fj.models.ResNet12(2, dtype=jnp.float32, param_dtype=jnp.float16), "ResNet12: param_dtype=float16"),
        (Bert(SMALL_BERT, dtype=jnp.float32, param_dtype=jnp.bfloat16), "Bert: param_dtype=bfloat16"),
    ],
)
def test_bad_precision_is_an_error_naming_the_argument(model, message):
    x = jnp.zeros((1, 16, 16, 1)) if not isinstance(model, (fj.models.MLP, Bert)) else None
    if isinstance(model, fj.models.MLP):
        x = jnp.zeros((1, 1))
    if isinstance(model, Bert):
        x = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.key(0), x)


def test_bad_attention_impl_is_an_error_naming_the_argument():
    with pytest.raises(ValueError, match="attention_impl must be one of .* got 'flash'"):
        BertConfig(attention_impl="flash")
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        GPT2Config(attention_impl="sdpa")
    if jax.default_backend() != "gpu":
        model = Bert(dataclasses.replace(SMALL_BERT, attention_impl="cudnn"))
        with pytest.raises(ValueError, match="attention_impl='cudnn' needs a CUDA GPU .* backend is 'cpu'"):
            model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))


# ---------------------------------------------------------------------------------------------------------------
# benchmarks/accelerator.py cannot rot: its dry run (tiny sizes, every workload, both dtypes) runs here
# ---------------------------------------------------------------------------------------------------------------


def test_accelerator_benchmark_dry_run(tmp_path):
    import importlib.util
    import json
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "accelerator.py")
    spec = importlib.util.spec_from_file_location("accelerator_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "acc.json"
    result = bench.main(["--dry-run", "--alternate-dtypes", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    names = {(r["workload"], r["dtype"]) for r in written["rows"]}
    expected = {(w, ("float32", "bfloat16")[i % 2]) for i, w in enumerate(bench.workloads(True))}
    assert names == expected and {d for _, d in names} == {"float32", "bfloat16"}
    for row in written["rows"]:
        assert row["loss_finite"] and row["gflop_per_step"] > 0 and row["steps_per_s"] > 0, row
        assert set(row["roofline_steps_per_s"]) == set(bench.HARDWARE)
    assert "| conv_maml_mb8 | float32 |" in (tmp_path / "acc.md").read_text()
