"""In-context-learning transformer (fsl_jax.llm.icl), distillation (distill) and text augmentation (augment)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fsl_jax as fj
from fsl_jax.llm.augment import (
    Augmenter,
    EmbeddingReplacement,
    RandomDeletion,
    RandomInsertion,
    RandomSwap,
    Rewrite,
    eda,
    token_embedding_matrix,
)
from fsl_jax.llm.distill import agreement, distill, distill_loss, kl_divergence
from fsl_jax.llm.icl import evaluate_icl, gaussian_episodes, meta_train_icl, nearest_class_mean_accuracy

# ------------------------------------------------------------------------------------------------ ICL


def test_gaussian_episodes_layout():
    sample = jax.jit(lambda k: gaussian_episodes(k, 3, ways=4, shots=2, max_shots=5, queries=2, dim=6))
    tasks = sample(jax.random.key(0))
    assert tasks.support_x.shape == (3, 20, 6) and tasks.query_x.shape == (3, 8, 6)
    assert np.asarray(tasks.support_mask).sum(axis=1).tolist() == [8, 8, 8]
    for t in range(3):  # labels are a permutation of 0..ways-1, shared by support and query of a class
        assert sorted(set(np.asarray(tasks.support_y[t]).tolist())) == [0, 1, 2, 3]
        np.testing.assert_array_equal(
            np.asarray(tasks.support_y[t]).reshape(4, 5)[:, 0], np.asarray(tasks.query_y[t]).reshape(4, 2)[:, 0]
        )
    # nearest class mean on the masked support, against numpy
    acc = np.asarray(jax.jit(nearest_class_mean_accuracy, static_argnums=1)(tasks, 4))
    for t in range(3):
        sx, sy, m = (np.asarray(a[t]) for a in (tasks.support_x, tasks.support_y, tasks.support_mask))
        protos = np.stack([sx[(sy == c) & (m > 0)].mean(0) for c in range(4)])
        d = ((np.asarray(tasks.query_x[t])[:, None] - protos[None]) ** 2).sum(-1)
        assert acc[t] == pytest.approx(np.mean(d.argmin(1) == np.asarray(tasks.query_y[t])))


def test_icl_transformer_learns_above_chance():
    result = meta_train_icl(
        jax.random.key(0), steps=120, n_embd=64, n_layer=2, n_head=4, meta_batch=16, learning_rate=3e-3, progress=False
    )
    assert result.steps == 120 and result.history.steps[-1] == 120
    accs = evaluate_icl(
        result.model,
        result.params,
        ways=5,
        shots=5,
        episodes=100,
        key=jax.random.key(1),
        batch_size=100,
        **result.episode_kwargs,
    )
    assert accs["icl"].shape == accs["protonet"].shape == (100,)
    assert accs["icl"].mean() > 0.4  # chance is 0.2
    assert result.icl_accuracy(result.params, 5, 5, 100, jax.random.key(1)) == pytest.approx(accs["icl"].mean())


# ------------------------------------------------------------------------------------------------ distillation


def test_distill_loss_formula():
    t = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    s = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    labels = jnp.array([0, -1])
    loss, parts = distill_loss(s, t, labels, temperature=2.0, alpha=0.3)
    p = jax.nn.softmax(t / 2.0)
    kl = float(np.mean(np.sum(p * (np.log(p) - jax.nn.log_softmax(s / 2.0)), axis=1)))
    xent = -float(jax.nn.log_softmax(s[0])[0])  # only the labelled example
    assert float(loss) == pytest.approx(0.3 * 4.0 * kl + 0.7 * xent, rel=1e-5)
    assert float(parts["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(distill_loss(s, t, None, temperature=2.0)[0]) == pytest.approx(4.0 * kl, rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        distill(lambda x: x, fj.models.MLP((4,), 3), {}, jnp.zeros((4, 3)), temperature=0.0)


def test_distilled_student_is_closer_to_teacher_than_hard_label_student():
    key = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(key[0], (512, 10))
    x_test = jax.random.normal(key[1], (512, 10))
    w = jax.random.normal(key[2], (10, 4))  # a teacher with balanced classes and a smooth decision function
    t_apply = jax.jit(lambda xb: 2.0 * jnp.tanh(xb @ w))
    hard = jnp.argmax(t_apply(x), axis=1)
    labelled = np.zeros(512, bool)
    labelled[:24] = True  # few hard labels
    labels = jnp.where(jnp.asarray(labelled), hard, -1)
    student = fj.models.MLP((32,), 4)
    s_init = student.init(key[3], x)
    common = dict(steps=200, learning_rate=3e-3, batch_size=64, key=key[4])
    distilled = distill(t_apply, student, s_init, x, labels, temperature=2.0, alpha=0.7, **common)
    baseline = distill(t_apply, student, s_init, x[:24], hard[:24], alpha=0.0, **common)  # hard labels alone
    t_test = t_apply(x_test)
    d_logits, b_logits = student.apply(distilled, x_test), student.apply(baseline, x_test)
    assert agreement(t_test, d_logits) > agreement(t_test, b_logits) + 0.05
    assert float(kl_divergence(t_test, d_logits).mean()) < float(kl_divergence(t_test, b_logits).mean())


def test_distill_bert_teacher_into_smaller_bert():
    from fsl_jax.llm.text_models import BertClassifier

    big = fj.models.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    small = fj.models.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    ids = jax.random.randint(jax.random.key(0), (64, 8), 1, 50)
    teacher, student = BertClassifier(big, 3), BertClassifier(small, 3)
    t_params = jax.jit(teacher.init)(jax.random.key(1), ids)  # jitted: eager BERT init is slow on a CPU
    s_params = jax.jit(student.init)(jax.random.key(2), ids)
    t_apply = jax.jit(lambda b: 20.0 * teacher.apply(t_params, b))
    s_apply = jax.jit(student.apply)
    before = float(kl_divergence(t_apply(ids), s_apply(s_params, ids)).mean())
    tuned, history = distill(
        t_apply,
        student,
        s_params,
        ids,
        steps=20,
        learning_rate=3e-3,
        batch_size=16,
        temperature=1.0,
        return_history=True,
        key=jax.random.key(3),
    )
    after = float(kl_divergence(t_apply(ids), s_apply(tuned, ids)).mean())
    assert after < 0.7 * before and len(history["loss"]) == 20


# ------------------------------------------------------------------------------------------------ augmentation

TEXTS = [
    "the striker scored a late goal in the final",
    "shares fell sharply as markets closed lower",
    "the minister announced a new budget today",
]
LABELS = ["sport", "business", "politics"]


def test_augmenter_is_deterministic_and_label_preserving():
    aug = Augmenter(eda(alpha=0.2), n_aug=3, seed=7)
    texts, labels = aug(TEXTS, LABELS)
    assert texts[:3] == TEXTS and len(texts) == 12
    assert labels == LABELS + ["sport"] * 3 + ["business"] * 3 + ["politics"] * 3
    assert aug(TEXTS, LABELS) == (texts, labels)  # same seed, same output
    assert Augmenter(eda(alpha=0.2), n_aug=3, seed=8)(TEXTS, LABELS)[0] != texts
    # the FewShotTextClassifier hook passes a numpy Generator: deterministic under its seed
    assert aug(TEXTS, LABELS, np.random.default_rng(1)) == aug(TEXTS, LABELS, np.random.default_rng(1))
    corpus = {w for t in TEXTS for w in t.split()}
    for original, new in zip(TEXTS * 1, texts[3::3]):
        assert set(new.split()) <= corpus  # swaps, deletions and insertions only use corpus words
    only_originals, _ = Augmenter([RandomSwap()], n_aug=0)(TEXTS, LABELS)
    assert only_originals == TEXTS


def test_eda_operations():
    rng = np.random.default_rng(0)
    words = TEXTS[0].split()
    swapped = RandomSwap(0.2)(TEXTS[0], rng).split()
    assert sorted(swapped) == sorted(words) and swapped != words
    deleted = RandomDeletion(0.5)(TEXTS[0], rng).split()
    assert 1 <= len(deleted) < len(words) and all(w in words for w in deleted)
    inserted = RandomInsertion(0.2, vocabulary=["penalty"])(TEXTS[0], rng).split()
    assert len(inserted) == len(words) + 2 and inserted.count("penalty") == 2
    assert Rewrite(lambda t: t.replace("goal", "point"))(TEXTS[0], rng) == TEXTS[0].replace("goal", "point")
    assert Rewrite(lambda t: "")(TEXTS[0], rng) == TEXTS[0]
    with pytest.raises(ValueError, match="alpha"):
        RandomSwap(1.5)
    with pytest.raises(ValueError, match="op"):
        Augmenter([])


class _Vocab:
    def __init__(self, tokens):
        self.tokens = tokens

    def get_vocab(self):
        return {t: i for i, t in enumerate(self.tokens)}


def test_embedding_neighbour_replacement_whole_words_only():
    # byte-level-BPE-like vocabulary: only "Ġword" tokens are whole words
    tokens = ["Ġgoal", "Ġpoint", "Ġscore", "goal", "Ġmarket", "Ġstock", "##al", "Ġthe"]
    emb = np.array(
        [[1, 0, 0], [0.9, 0.1, 0], [0.8, 0.2, 0], [1, 0, 0], [0, 1, 0], [0, 0.9, 0.1], [1, 0, 0], [0, 0, 1]], np.float32
    )
    op = EmbeddingReplacement(emb, _Vocab(tokens), p=1.0, top_k=1, min_length=4)
    assert op.neighbours("goal") == ["point"]  # not the sub-word "goal" / "##al" rows
    assert op.neighbours("market") == ["stock"]
    assert op.neighbours("unknownword") == []
    assert op("the goal market", np.random.default_rng(0)) == "the point stock"  # "the" is too short (min_length=4)
    a = Augmenter([EmbeddingReplacement(emb, _Vocab(tokens), p=0.5, top_k=2)], n_aug=2, seed=0)
    assert a(["goal market goal"], ["x"]) == a(["goal market goal"], ["x"])
    params = {"params": {"wte": {"embedding": emb}}}
    np.testing.assert_array_equal(token_embedding_matrix(params), emb)
    # WordPiece-like vocabulary: "##" pieces and special tokens are skipped
    op = EmbeddingReplacement(
        emb, _Vocab(["goal", "point", "score", "[CLS]", "market", "stock", "##al", "the"]), p=1.0, top_k=2
    )
    assert "al" not in op.words and "[CLS]" not in op.words
    assert op.neighbours("goal") == ["point", "score"]
