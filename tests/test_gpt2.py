"""fsl_jax's Flax GPT-2 against transformers' FlaxGPT2LMHeadModel (4.x, test-only reference): weights loading,
logits with and without left padding, the KV cache, generate, and the loader's errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fsl_jax.models.gpt2 import GPT2, GPT2Config, generate
from fsl_jax.models.hub import from_pretrained, save_pretrained

transformers = pytest.importorskip("transformers")

VOCAB = 1000
TOL = 1e-4


def flax_reference(name: str):
    """transformers' Flax class ``name``, the parity reference; transformers 5 removed the Flax classes, so there
    (``make test-compat``) the parity tests are skipped and the rest of the file runs."""
    cls = getattr(transformers, name, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {name} (Flax classes were removed in 5.x)")
    return cls


def _hf_names(flax_params):
    """transformers' Flax GPT-2 params -> PyTorch names, by HF's generic rule (kernel = weight.T)."""
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(flax_params)[0]:
        keys = [k.key for k in path]
        value = np.asarray(value)
        if keys[-1] == "kernel":
            keys[-1], value = "weight", value.T
        elif keys[-1] in ("scale", "embedding"):
            keys[-1] = "weight"
        out[".".join(keys)] = np.ascontiguousarray(value)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random transformers GPT-2, written as a PyTorch-named model.safetensors (+ the buffers real checkpoints
    carry), and what fsl_jax loads from it."""
    hf_config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1
    )
    ref = flax_reference("FlaxGPT2LMHeadModel")(hf_config, seed=0)
    folder = tmp_path_factory.mktemp("gpt2")
    hf_config.save_pretrained(folder)
    state = _hf_names(ref.params)
    for i in range(hf_config.n_layer):  # causal-mask buffers, as in real checkpoints
        state[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    module, params, tokenizer = from_pretrained(folder)
    return ref, folder, module, params, tokenizer


def _left_padded_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB - 1, size=(3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def _positions(mask):
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)


def test_loaded_weights_are_the_references(reference):
    ref, folder, module, params, tokenizer = reference
    assert isinstance(module, GPT2) and tokenizer is None
    assert module.config.n_embd == 64 and module.config.n_layer == 2
    # The file's names are right: transformers' own converter reads it back to the same params.
    again = flax_reference("FlaxGPT2LMHeadModel").from_pretrained(folder)
    np.testing.assert_array_equal(
        again.params["transformer"]["h"]["1"]["mlp"]["c_fc"]["kernel"],
        ref.params["transformer"]["h"]["1"]["mlp"]["c_fc"]["kernel"],
    )


def test_logits_match_reference_without_padding(reference):
    ref, _, module, params, _ = reference
    ids, _ = _left_padded_batch()
    expected = np.asarray(ref(ids).logits)
    out = jax.jit(module.apply)(params, ids)
    assert np.abs(np.asarray(out.logits) - expected).max() <= TOL
    assert len(out.hidden_states) == module.config.n_layer + 1


def test_logits_match_reference_with_left_padding(reference):
    ref, _, module, params, _ = reference
    ids, mask = _left_padded_batch()
    expected = np.asarray(ref(ids, attention_mask=mask, position_ids=_positions(mask)).logits)
    got = np.asarray(jax.jit(module.apply)(params, ids, mask).logits)  # positions derived from the mask
    real = mask.astype(bool)
    assert np.abs(got[real] - expected[real]).max() <= TOL
    # A padded row's real tokens give the logits of the same tokens unpadded.
    alone = np.asarray(module.apply(params, ids[2:, 6:]).logits)
    assert np.abs(got[2, 6:] - alone[0]).max() <= TOL


def test_kv_cache_decoding_equals_full_forward(reference):
    _, _, module, params, _ = reference
    ids, mask = _left_padded_batch()
    full = np.asarray(module.apply(params, ids, mask).logits)

    @jax.jit
    def incremental(ids, mask):
        cache = module.init_cache(ids.shape[0], ids.shape[1] + 2)
        prefix = module.apply(params, ids[:, :5], mask[:, :5], cache=cache)

        def step(cache, inputs):
            token, m = inputs
            out = module.apply(params, token[:, None], m[:, None], cache=cache)
            return out.cache, out.logits[:, 0]

        cache, rest = jax.lax.scan(step, prefix.cache, (ids[:, 5:].T, mask[:, 5:].T))
        return jnp.concatenate([prefix.logits, rest.transpose(1, 0, 2)], axis=1), cache

    got, cache = incremental(ids, mask)
    real = mask.astype(bool)
    assert np.abs(np.asarray(got)[real] - full[real]).max() <= TOL
    assert int(cache.index) == ids.shape[1]
    np.testing.assert_array_equal(cache.position, mask.sum(-1))
    assert cache.key[0].shape == (3, ids.shape[1] + 2, 4, 16)


def _manual_greedy(module, params, ids, mask, steps):
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    apply = jax.jit(module.apply)
    for _ in range(steps):
        nxt = jnp.argmax(apply(params, ids, mask).logits[:, -1], axis=-1).astype(jnp.int32)
        ids = jnp.concatenate([ids, nxt[:, None]], axis=1)
        mask = jnp.concatenate([mask, jnp.ones_like(mask[:, :1])], axis=1)
    return np.asarray(ids)


def test_greedy_generate_equals_manual_argmax_loop(reference):
    _, _, module, params, _ = reference
    ids, mask = _left_padded_batch()
    out = np.asarray(generate(module, params, ids, mask, max_new_tokens=6))
    np.testing.assert_array_equal(out, _manual_greedy(module, params, ids, mask, 6))
    # top_k=1 sampling is greedy too.
    sampled = generate(module, params, ids, mask, 6, key=jax.random.key(3), temperature=0.7, top_k=1)
    np.testing.assert_array_equal(sampled, out)


def test_generate_pads_after_eos_and_samples_reproducibly(reference):
    _, _, module, params, _ = reference
    ids, mask = _left_padded_batch()
    greedy = np.asarray(generate(module, params, ids, mask, max_new_tokens=6))
    eos = int(greedy[0, ids.shape[1] + 1])  # row 0's second new token plays the stop token
    stopped = np.asarray(generate(module, params, ids, mask, 6, eos_token_id=eos, pad_token_id=7))
    for row in range(3):
        new = greedy[row, ids.shape[1] :]
        hits = np.flatnonzero(new == eos)
        end = hits[0] + 1 if hits.size else len(new)
        np.testing.assert_array_equal(stopped[row, ids.shape[1] :][:end], new[:end])
        assert (stopped[row, ids.shape[1] :][end:] == 7).all()
    a = generate(module, params, ids, mask, 5, key=jax.random.key(0), temperature=1.0, top_k=20)
    b = generate(module, params, ids, mask, 5, key=jax.random.key(0), temperature=1.0, top_k=20)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="key"):
        generate(module, params, ids, mask, 2, temperature=1.0)


def test_save_pretrained_round_trip_and_transformers_reads_it(reference, tmp_path):
    ref, _, module, params, _ = reference
    save_pretrained(tmp_path, module, params)
    loaded, loaded_params, _ = from_pretrained(tmp_path)
    assert loaded == module
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded_params, params)
    hf = flax_reference("FlaxGPT2LMHeadModel").from_pretrained(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, hf.params, ref.params)


def test_dropout_is_used_when_not_deterministic(reference):
    _, _, module, params, _ = reference
    ids, _ = _left_padded_batch()
    a = module.apply(params, ids, deterministic=False, rngs={"dropout": jax.random.key(0)}).logits
    b = module.apply(params, ids, deterministic=False, rngs={"dropout": jax.random.key(1)}).logits
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_missing_and_unexpected_weights_are_named(reference, tmp_path):
    _, folder, *_ = reference
    state = load_file(folder / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.weight"]
    state["transformer.h.0.attn.rotary.weight"] = np.zeros(3, np.float32)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing weights \['h\.1\.mlp\.c_fc\.weight'\]") as info:
        from_pretrained(tmp_path)
    assert "h.0.attn.rotary.weight" in str(info.value)


def test_missing_files_are_named(reference, tmp_path):
    _, folder, *_ = reference
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        from_pretrained(tmp_path / "does-not-exist")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors") as info:
        from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        from_pretrained(empty)


def test_tokenizer_gets_eos_as_pad(reference, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    _, folder, module, params, _ = reference
    vocab = {"<|endoftext|>": 0, "hello": 1, "world": 2, "[UNK]": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="[UNK]")
    assert tok.pad_token is None
    save_pretrained(tmp_path, module, params, tokenizer=tok)
    _, _, loaded = from_pretrained(tmp_path)
    assert loaded.pad_token == "<|endoftext|>" and loaded.padding_side == "left"
    batch = loaded(["hello world hello", "world"], padding=True, return_tensors="np")
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1], [0, 0, 1]])
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"


def test_config_ignores_unknown_keys_and_validates():
    config = GPT2Config.from_dict({"n_embd": 32, "n_head": 4, "n_ctx": 128, "summary_type": "cls_index"})
    assert config.n_embd == 32 and config.inner_size == 128
    with pytest.raises(ValueError, match="activation"):
        GPT2Config(activation_function="nope")
    with pytest.raises(ValueError, match="n_head"):
        GPT2Config(n_embd=30, n_head=4)
