"""Prompt-based GPT-2 classification (fsl_jax.llm.prompting), PET-style fine-tuning (lm_finetune) and the prompt CLI.

Everything runs on a tiny random GPT-2 and a word-level tokenizer built with ``tokenizers``, saved as a local model
folder with ``fj.models.save_pretrained``.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

import fsl_jax as fj
from fsl_jax.llm import prompting
from fsl_jax.llm.lm_finetune import LMFinetuneClassifier, trainable_labels
from fsl_jax.llm.prompt_cli import add_prompt_parser, run_prompt
from fsl_jax.llm.prompting import PromptClassifier, Template, Verbalizer, generate_text

WORDS = [
    "<|endoftext|>",
    "[UNK]",
    "Review",
    ":",
    "Sentiment",
    "good",
    "bad",
    "very",
    "great",
    "awful",
    "film",
    "plot",
    "acting",
    "the",
    "was",
    "not",
    "N",
    "/",
    "A",
    "It",
    "is",
    "about",
    ".",
]
WORDS += [f"p{i}" for i in range(6)] + [f"n{i}" for i in range(6)] + [f"f{i}" for i in range(8)] + ["yes", "no"]
TEMPLATE = "Review: {text}\nSentiment: {label}"


def make_tokenizer():
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="[UNK]")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(module, params, tokenizer) loaded back from a saved local folder, and the folder."""
    config = fj.models.GPT2Config(vocab_size=len(WORDS), n_positions=96, n_embd=32, n_layer=2, n_head=2)
    module = fj.models.GPT2(config)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    fj.models.save_pretrained(folder, module, params, tokenizer=make_tokenizer())
    loaded, loaded_params, tok = fj.models.from_pretrained(folder)
    assert tok is not None and tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"
    assert loaded.config == config
    assert jax.tree_util.tree_structure(loaded_params) == jax.tree_util.tree_structure(params)
    for saved, read in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded_params)):
        np.testing.assert_array_equal(np.asarray(read), np.asarray(saved))
    return loaded, loaded_params, tok, folder


@functools.lru_cache(maxsize=None)
def _forward(module):
    return jax.jit(lambda params, ids: jax.nn.log_softmax(module.apply(params, ids).logits[0], axis=-1))


def plain_score(module, params, tok, prompt: str, continuation: str, reduce: str = "sum") -> float:
    """Independent reference: a plain forward pass (no mask, no cache) over prompt + continuation, then the
    log-probs of the label tokens. The sequence is right-padded to the context length (causal attention: padding
    after the tokens cannot change them) so that one compiled shape serves every call."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = np.zeros((1, module.config.n_positions), np.int32)
    ids[0, : len(p) + len(c)] = p + c
    logp = np.asarray(_forward(module)(params, jnp.asarray(ids)))
    values = [float(logp[len(p) - 1 + t, c[t]]) for t in range(len(c))]
    return float(np.sum(values) if reduce == "sum" else np.mean(values))


SUPPORT = ["good film", "bad plot", "great acting", "awful film", "the plot was good", "the acting was bad"]
SUPPORT_Y = ["pos", "neg", "pos", "neg", "pos", "neg"]


def test_template_and_verbalizer():
    t = Template(TEMPLATE)
    assert t.prompt("good film") == "Review: good film\nSentiment:"
    assert t.label_continuation("good") == " good"
    assert t.render("x", "good") == "Review: x\nSentiment: good"
    assert Template("{text} It is {label}. ({topic})", topic="news").render("a", "b") == "a It is b. (news)"
    assert Template("{text}").label_continuation("good") == " good"  # no {label}: appended after a space
    v = Verbalizer.parse("pos=good,very good; neg=bad")
    assert v.labels == ("pos", "neg") and v.words["pos"] == ("good", "very good")
    with pytest.raises(ValueError, match=r"\{text\}"):
        Template("Sentiment: {label}")
    with pytest.raises(ValueError, match="topic"):
        Template("{text} {topic} {label}")
    with pytest.raises(ValueError, match="no label words"):
        Verbalizer({"pos": []})


def test_bad_inputs_name_the_value(lm):
    module, params, tok, _ = lm
    with pytest.raises(ValueError, match="'splendid'"):
        PromptClassifier(module, params, tok, TEMPLATE, {"pos": "splendid", "neg": "bad"})
    clf = PromptClassifier(module, params, tok, TEMPLATE, {"pos": "good"}, demonstrations=1)
    with pytest.raises(ValueError, match="'neg'"):
        clf.fit(SUPPORT, SUPPORT_Y)
    clf = PromptClassifier(module, params, tok, TEMPLATE, {"pos": "good", "neg": "bad"})
    with pytest.raises(ValueError, match="n_positions=96"):
        clf.predict([" ".join(["film"] * 120)])
    with pytest.raises(ValueError, match="selection"):
        PromptClassifier(module, params, tok, TEMPLATE, {"pos": "good"}, selection="closest")
    with pytest.raises(ValueError, match="embed_fn"):
        PromptClassifier(module, params, tok, TEMPLATE, {"pos": "good"}, demonstrations=2, selection="nearest")


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_scores_equal_plain_forward_pass(lm, reduce):
    module, params, tok, _ = lm
    # "very good" is two tokens, "bad" one; "pos" also has the one-token word "great" (logsumexp over words).
    verbalizer = {"pos": ["very good", "great"], "neg": ["bad"]}
    queries = ["good film", "the acting was not good", "awful"]
    for k in (0, 2):
        clf = PromptClassifier(
            module, params, tok, TEMPLATE, verbalizer, demonstrations=k, reduce=reduce, length_multiple=8
        ).fit(SUPPORT, SUPPORT_Y)
        scores = clf.score_labels(queries)
        prompts = clf.prompts(queries)
        for i in range(len(queries)):
            prompt = prompts[i][0]
            if k:
                assert prompt.count("Sentiment:") == k + 1
            pos = np.logaddexp(
                plain_score(module, params, tok, prompt, " very good", reduce),
                plain_score(module, params, tok, prompt, " great", reduce),
            )
            neg = plain_score(module, params, tok, prompt, " bad", reduce)
            np.testing.assert_allclose(scores[i], [pos, neg], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(clf.predict_proba(queries).sum(1), 1.0, rtol=1e-5)


def test_orders_average_and_calibration_formula(lm):
    module, params, tok, _ = lm
    verbalizer = {"pos": "good", "neg": "bad", "other": "plot"}
    queries = ["good film", "the acting was bad", "great plot", "awful acting"]
    # A strong bias towards "good": calibration has something to remove.
    p = jax.tree_util.tree_map(jnp.array, params)
    b = jax.random.normal(jax.random.key(3), (32,))
    p["params"]["ln_f"]["bias"] = 3.0 * b / jnp.linalg.norm(b)  # h = 0.1 * LN(x) + b: a near-constant bias
    p["params"]["ln_f"]["scale"] = 0.1 * p["params"]["ln_f"]["scale"]
    p["params"]["wte"]["embedding"] = (
        p["params"]["wte"]["embedding"].at[WORDS.index("good")].set(4.0 * b / jnp.linalg.norm(b))
    )
    kwargs = dict(demonstrations=2, orders=3, seed=1)
    raw = PromptClassifier(module, p, tok, TEMPLATE, verbalizer, **kwargs).fit(SUPPORT, SUPPORT_Y)
    cal = PromptClassifier(module, p, tok, TEMPLATE, verbalizer, calibrate=True, **kwargs).fit(SUPPORT, SUPPORT_Y)
    one = PromptClassifier(module, p, tok, TEMPLATE, verbalizer, demonstrations=2, seed=1).fit(SUPPORT, SUPPORT_Y)
    prompts = raw.prompts(queries)
    cf_prompts = raw.prompts(["N/A"])[0]
    assert len(prompts[0]) == 3 and len(set(prompts[0])) > 1  # three different orders of the same demonstrations
    words = [" good", " bad", " plot"]
    per_order = np.array(
        [
            [[plain_score(module, p, tok, prompts[i][o], w) for w in words] for o in range(3)]
            for i in range(len(queries))
        ]
    )
    cf = np.array([[plain_score(module, p, tok, cf_prompts[o], w) for w in words] for o in range(3)])
    np.testing.assert_allclose(raw.score_labels(queries), per_order.mean(1), rtol=1e-4, atol=1e-4)
    # Zhao et al.: p_cal = normalise(p / p_cf) per order, then the mean log-score over orders.
    prob = np.exp(per_order) / np.exp(per_order).sum(-1, keepdims=True)
    prob_cf = np.exp(cf) / np.exp(cf).sum(-1, keepdims=True)
    q = prob / prob_cf[None]
    q /= q.sum(-1, keepdims=True)
    expected = np.log(q).mean(1)
    np.testing.assert_allclose(cal.score_labels(queries), expected, rtol=1e-4, atol=1e-4)
    assert cal.predict(queries) == [list(verbalizer)[j] for j in expected.argmax(1)]
    assert raw.predict(queries) == ["pos"] * 4  # the bias wins everywhere ...
    assert cal.predict_proba(queries)[:, 0].mean() < raw.predict_proba(queries)[:, 0].mean() - 0.3  # ... not now
    # orders=1 takes the first order of the same demonstrations
    np.testing.assert_allclose(one.score_labels(queries), per_order[:, 0], rtol=1e-4, atol=1e-4)


def test_scoring_compiles_once_for_a_fixed_shape(lm):
    module, params, tok, _ = lm
    clf = PromptClassifier(
        module, params, tok, TEMPLATE, {"pos": "good", "neg": "bad"}, demonstrations=2, batch_size=4
    ).fit(SUPPORT, SUPPORT_Y)
    clf.predict(["good film", "bad"])
    traces, size = prompting.TRACE_COUNTS["score"], prompting._score._cache_size()
    clf.predict(["the plot was awful", "great acting", "bad film", "good", "the film"])  # 2 batches of 4
    clf.predict(["awful plot"])
    other = PromptClassifier(
        module, params, tok, TEMPLATE, {"pos": "great", "neg": "awful"}, demonstrations=2, batch_size=4
    ).fit(SUPPORT, SUPPORT_Y)  # another label set of the same shape
    other.predict(["good film", "acting"])
    assert prompting.TRACE_COUNTS["score"] == traces
    assert prompting._score._cache_size() == size


def test_selection_strategies(lm):
    module, params, tok, _ = lm
    verbalizer = {"pos": "good", "neg": "bad"}
    balanced = PromptClassifier(module, params, tok, TEMPLATE, verbalizer, demonstrations=2, selection="balanced")
    prompt = balanced.fit(SUPPORT, SUPPORT_Y).prompts(["film"])[0][0]
    assert prompt.count("Sentiment: good") == 1 and prompt.count("Sentiment: bad") == 1

    vocab = sorted({w for t in SUPPORT + ["acting film"] for w in t.split()})

    def embed(texts):  # bag of words
        return np.array([[t.split().count(w) for w in vocab] for t in texts], np.float32) + 1e-3

    nearest = PromptClassifier(
        module, params, tok, TEMPLATE, verbalizer, demonstrations=2, selection="nearest", embed_fn=embed
    ).fit(SUPPORT, SUPPORT_Y)
    prompt = nearest.prompts(["the acting was good"])[0][0]
    demos = prompt.split("\n\n")
    assert demos[-2].startswith("Review: the acting was bad") or demos[-2].startswith("Review: the plot was good")
    assert len(demos) == 3
    nearest.predict(["the acting was good", "film"])


LOO_TEXTS = [
    "good film",
    "bad plot",
    "great acting",
    "awful film",
    "the plot was good",
    "the acting was bad",
    "very good plot",
    "not good",
    "the film was awful",
    "great",
]
LOO_Y = ["pos", "neg", "pos", "neg", "pos", "neg", "pos", "neg", "neg", "pos"]
LOO_EMBEDDINGS = dict(zip(LOO_TEXTS, np.random.default_rng(9).normal(size=(len(LOO_TEXTS), 8))))


def _by_hand(pattern: str, text: str, word: str | None) -> str:
    """Fills a pattern with a single {label} slot: the query prompt (``word=None``: up to the slot, trailing blanks
    dropped) or a rendered demonstration (prompt, a space, the word, the rest of the pattern)."""
    before, after = pattern.split("{label}")
    prompt = before.replace("{text}", text).rstrip()
    return prompt if word is None else prompt + " " + word + after.replace("{text}", text)


def _loo_accuracy_by_hand(module, params, tok, pattern, verbalizer, k):
    """Leave-one-out accuracy written out: each text's demonstrations are the k most similar *other* texts (cosine of
    LOO_EMBEDDINGS, most similar last), each label scored by a plain forward pass (logsumexp over its words)."""
    emb = np.stack([LOO_EMBEDDINGS[t] for t in LOO_TEXTS])
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    words = {label: [w] if isinstance(w, str) else list(w) for label, w in verbalizer.items()}
    correct, margins = [], []
    for i, text in enumerate(LOO_TEXTS):
        others = [j for j in np.argsort(-sims[i]) if j != i][:k][::-1]
        demos = [_by_hand(pattern, LOO_TEXTS[j], words[LOO_Y[j]][0]) for j in others]
        prompt = "\n\n".join(demos + [_by_hand(pattern, text, None)])
        scores = [
            np.logaddexp.reduce([plain_score(module, params, tok, prompt, " " + w) for w in words[label]])
            for label in verbalizer
        ]
        correct.append(list(verbalizer)[int(np.argmax(scores))] == LOO_Y[i])
        margins.append(abs(scores[0] - scores[1]))
    return float(np.mean(correct)), min(margins)


@pytest.mark.parametrize("k", [0, 2])
def test_prompt_search_leave_one_out_accuracies_match_a_hand_computation(lm, k):
    """Every (template, verbaliser) accuracy in search_prompts' table equals the leave-one-out accuracy computed by
    hand (demonstrations from the other texts only, plain forward passes); the best is the first maximum."""
    module, params, tok, _ = lm
    templates = [TEMPLATE, "{text} It is {label} ."]
    verbalizers = [{"pos": "good", "neg": "bad"}, {"pos": "great", "neg": "awful"}]  # one shape: one compilation
    embed = lambda texts: np.stack([LOO_EMBEDDINGS[t] for t in texts]).astype(np.float32)
    clf = PromptClassifier(
        module,
        params,
        tok,
        TEMPLATE,
        {"pos": "good", "neg": "bad"},
        demonstrations=k,
        selection="nearest",
        embed_fn=embed,
    )
    result = clf.search_prompts(templates, verbalizers, LOO_TEXTS, LOO_Y)
    expected = []
    for pattern in templates:
        for verbalizer in verbalizers:
            accuracy, margin = _loo_accuracy_by_hand(module, params, tok, pattern, verbalizer, k)
            assert margin > 1e-3  # no near-tie that float noise could flip
            expected.append(accuracy)
    assert [a for _, _, a in result.table] == pytest.approx(expected, abs=1e-9)
    assert [(t.pattern, v.words) for t, v, _ in result.table] == [
        (t, Verbalizer(v).words) for t in templates for v in verbalizers
    ]
    best = int(np.argmax(expected))
    assert result.accuracy == pytest.approx(expected[best], abs=1e-9)
    assert (result.template.pattern, result.verbalizer.words) == (
        templates[best // 2],
        Verbalizer(verbalizers[best % 2]).words,
    )
    assert clf.template == result.template and clf.verbalizer == result.verbalizer
    assert clf.pool_texts_ == LOO_TEXTS


def test_prompt_search_picks_best_leave_one_out(lm):
    module, params, tok, _ = lm
    clf = PromptClassifier(module, params, tok, TEMPLATE, {"pos": "good", "neg": "bad"}, demonstrations=2)
    result = clf.search_prompts(
        [TEMPLATE, "{text} It is {label} ."],
        [{"pos": "good", "neg": "bad"}, {"pos": "great", "neg": "awful"}],
        SUPPORT,
        SUPPORT_Y,
    )
    assert len(result.table) == 4
    assert result.accuracy == max(a for _, _, a in result.table)
    assert clf.template == result.template and clf.verbalizer == result.verbalizer
    assert clf.pool_texts_ == SUPPORT
    assert set(clf.predict(["good film"])) <= {"pos", "neg"}


def _calibrated_scores_by_hand(module, params, tok, clf, verbalizer, texts):
    """[n, labels] scores from plain forward passes over clf.prompts: per order, label scores (logsumexp over
    words) minus the content-free input's, log-softmax-ed; then the mean over orders."""
    words = {label: [w] if isinstance(w, str) else list(w) for label, w in verbalizer.items()}

    def label_scores(prompt):
        return np.array(
            [
                np.logaddexp.reduce([plain_score(module, params, tok, prompt, " " + w) for w in words[y]])
                for y in verbalizer
            ]
        )

    cf = [label_scores(p) for p in clf.prompts([clf.content_free])[0]]
    out = []
    for prompts in clf.prompts(texts):
        per_order = [label_scores(p) - c for p, c in zip(prompts, cf)]
        per_order = [s - np.logaddexp.reduce(s) for s in per_order]
        out.append(np.mean(per_order, axis=0))
    return np.array(out)


def test_local_folder_zero_and_few_shot_end_to_end(lm):
    loaded, loaded_params, loaded_tok, _ = lm  # what fj.models.from_pretrained(folder) returned
    verbalizer = {"pos": ["good", "great"], "neg": "bad"}
    for k in (0, 4):
        clf = PromptClassifier(
            loaded,
            loaded_params,
            loaded_tok,
            TEMPLATE,
            verbalizer,
            demonstrations=k,
            selection="balanced",
            calibrate=True,
            orders=2,
        )
        clf.fit(SUPPORT, SUPPORT_Y)
        queries = ["good film", "awful plot", "the acting"]
        predictions = clf.predict(queries)
        assert len(predictions) == 3 and set(predictions) <= {"pos", "neg"}
        # The whole pipeline (loaded folder, demonstrations, 2 orders, calibration) against plain forward passes.
        expected = _calibrated_scores_by_hand(loaded, loaded_params, loaded_tok, clf, verbalizer, queries + SUPPORT)
        np.testing.assert_allclose(clf.score_labels(queries + SUPPORT), expected, rtol=1e-4, atol=1e-4)
        assert predictions == [["pos", "neg"][j] for j in expected[:3].argmax(1)]
        labels = np.array([["pos", "neg"][j] for j in expected[3:].argmax(1)])
        assert clf.score(SUPPORT, SUPPORT_Y) == pytest.approx(float(np.mean(labels == np.array(SUPPORT_Y))))
    text = generate_text(loaded, loaded_params, loaded_tok, ["Review: good film", "Sentiment:"], 4)
    ids = loaded_tok(["Review: good film"], add_special_tokens=False, return_tensors="np")["input_ids"]
    greedy = fj.models.generate(loaded, loaded_params, ids, max_new_tokens=4, eos_token_id=loaded_tok.eos_token_id)
    new = [t for t in np.asarray(greedy)[0, ids.shape[1] :]]
    cut = new.index(loaded_tok.eos_token_id) if loaded_tok.eos_token_id in new else len(new)
    assert text[0] == loaded_tok.decode(new[:cut])
    first = text[0].split()[0] if text[0].split() else None
    if first:
        stopped = generate_text(loaded, loaded_params, loaded_tok, ["Review: good film"], 4, stop=[first])
        assert first not in stopped[0]


def test_prompt_cli_on_a_csv(lm, tmp_path, capsys):
    _, _, _, folder = lm
    rows = ["text,label"] + [f"{t},{y}" for t, y in zip(SUPPORT * 2, SUPPORT_Y * 2)]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    parser = argparse.ArgumentParser()
    add_prompt_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "prompt",
            "--model",
            str(folder),
            "--data",
            str(tmp_path / "reviews.csv"),
            "--template",
            "Review: {text}\\nSentiment: {label}",
            "--label-words",
            "pos=good,great;neg=bad",
            "--shots",
            "1",
            "--draws",
            "2",
            "--test-per-class",
            "2",
            "--calibrate",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert run_prompt(args) == 0
    out = capsys.readouterr().out
    assert "accuracy over 2 draws" in out and "precision" in out
    assert (tmp_path / "results.json").is_file()
    bad = parser.parse_args(
        [
            "prompt",
            "--model",
            str(folder),
            "--data",
            str(tmp_path / "reviews.csv"),
            "--label-words",
            "pos=good",
            "--no-progress",
        ]
    )
    with pytest.raises(ValueError, match="'neg'"):
        run_prompt(bad)


# ------------------------------------------------------------------------------------------------ fine-tuning


def synthetic(n, seed):
    """Class "pos" texts hold two p* words, "neg" two n* words, among three filler words."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = list(rng.choice([f"{'pn'[y]}{j}" for j in range(6)], 2))
        words += list(rng.choice([f"f{j}" for j in range(8)], 3))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(["pos", "neg"][y])
    return texts, labels


@pytest.mark.parametrize("objective", ["label_words", "head"])
def test_lm_finetune_learns_synthetic_task(lm, objective):
    module, params, tok, _ = lm
    train_x, train_y = synthetic(32, 0)
    test_x, test_y = synthetic(64, 1)
    kwargs = dict(objective=objective, learning_rate=3e-3, head_learning_rate=1e-2, batch_size=8)
    template, verbalizer = "{text} Sentiment: {label}", {"pos": "yes", "neg": "no"}
    clf = LMFinetuneClassifier(module, params, tok, template, verbalizer, steps=40, **kwargs).fit(train_x, train_y)
    loss, accuracy = clf.history_["loss"], clf.history_["accuracy"]
    assert np.mean(loss[-5:]) < 0.5 * np.mean(loss[:5])
    assert np.mean(accuracy[-5:]) > np.mean(accuracy[:5]) + 0.2  # training-batch accuracy goes up
    assert clf.score(test_x, test_y) >= 0.75  # and generalises (chance: 0.5)
    again = LMFinetuneClassifier(module, params, tok, template, verbalizer, steps=2, seed=1, **kwargs)
    again.fit(train_x[:8], train_y[:8])  # a new draw reuses the compiled step
    assert len(again.history_["loss"]) == 2
    if objective == "label_words":  # the tuned LM is still a prompt classifier
        assert clf.prompt_classifier().score(test_x, test_y) == clf.score(test_x, test_y)


def test_lm_finetune_last_n_blocks_freezes_the_rest(lm):
    module, params, tok, _ = lm
    train_x, train_y = synthetic(8, 0)
    clf = LMFinetuneClassifier(
        module,
        params,
        tok,
        "{text} Sentiment: {label}",
        {"pos": "yes", "neg": "no"},
        steps=3,
        learning_rate=1e-2,
        train_last_n_blocks=1,
    ).fit(train_x, train_y)
    tuned, original = clf.lm_params_["params"], params["params"]
    for frozen in (("h_0", "attn", "c_attn", "kernel"), ("wte", "embedding"), ("wpe", "embedding")):
        np.testing.assert_array_equal(
            functools.reduce(dict.get, frozen, tuned), functools.reduce(dict.get, frozen, original)
        )
    for trained in (("h_1", "attn", "c_attn", "kernel"), ("ln_f", "scale")):
        assert not np.allclose(
            functools.reduce(dict.get, trained, tuned), functools.reduce(dict.get, trained, original)
        )


def test_trainable_labels_and_finetune_errors(lm):
    module, params, tok, _ = lm
    labels = trainable_labels(params["params"], 2, 1)
    assert labels["h_1"]["mlp"]["c_fc"]["kernel"] == "train" and labels["h_0"]["ln_1"]["scale"] == "frozen"
    assert labels["ln_f"]["bias"] == "train" and labels["wpe"]["embedding"] == "frozen"
    with pytest.raises(ValueError, match="train_last_n_blocks=3"):
        LMFinetuneClassifier(module, params, tok, TEMPLATE, {"pos": "good"}, train_last_n_blocks=3)
    with pytest.raises(ValueError, match="verbalizer"):
        LMFinetuneClassifier(module, params, tok, TEMPLATE, None, objective="label_words")
