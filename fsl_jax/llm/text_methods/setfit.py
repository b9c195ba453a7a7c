"""``method="setfit"``: SetFit, contrastive fine-tuning of the encoder on text pairs, then a classification head.

SetFit (Tunstall et al., 2022, "Efficient Few-Shot Learning Without Prompts") first tunes the sentence encoder so that
texts of one class embed close together and texts of different classes apart, then fits a head on the tuned
embeddings. Two ways of making the pairs (``setfit_sampling``):

* ``"random"`` (the default): each step draws ``batch_size`` pairs *on the device* with :func:`sample_pairs` (half
  same-class, half different-class), for ``steps`` steps (default 40), in O(n + pairs) memory.
* ``"paper"`` (SetFit's ``num_iterations`` pair generation): :func:`setfit_pairs` makes, in each of
  ``num_iterations`` rounds, one positive pair (a partner of the same class, never the example itself) and one
  negative pair (a partner of another class) for *every* support example: ``2 * num_iterations * n`` pairs, shuffled,
  then passed over once (``epochs``, default 1) in batches of ``batch_size`` pairs; ``steps``, when given, caps the
  number of steps (SetFit's ``max_steps``).

The default was chosen across four corpora by the protocol of ``benchmarks/text_corpora.py``: SetFit's own pairs
(20 rounds) gained most on average but lost 5 points to ``head`` on 20 Newsgroups, and the rule admits no default
that loses more than 1 point on any corpus.

The loss on the cosine similarity of the normalised mean-pooled embeddings is sentence-transformers'
CosineSimilarityLoss (``setfit_loss="cosine"``: the squared error between the cosine and 1 / 0) or a margin
ContrastiveLoss (``"contrastive"``, on the cosine distance). Every step is one jitted AdamW step with the state donated,
dropout on, linear warm-up (10 %) / decay.

The head (``setfit_head``): ``"logistic"`` (the default, as SetFit's default head: the ``"head"`` method's logistic
regression on the tuned, frozen embeddings) or ``"end_to_end"`` (SetFit's differentiable head trained end to end: the
logistic head is then trained together with the encoder on the cross-entropy for ``setfit_head_epochs`` epochs, the
encoder at ``learning_rate`` and the head at 1e-3).

``train_layers=k`` trains only the top ``k`` layers in the contrastive stage
(:class:`~fsl_jax.llm.text_models.BertTop`): the frozen bottom runs once over the support set
(:func:`~fsl_jax.llm.text_models.bottom_hidden`) and each step runs only the top layers, about ``k / num_layers`` of
the cost.

Hyperparameters (arguments of :class:`~fsl_jax.llm.finetune.FewShotTextClassifier`): ``num_iterations`` (default 20,
SetFit's), ``train_layers``, ``setfit_sampling``, ``steps`` or ``epochs``, ``learning_rate`` (peak, default 2e-5),
``batch_size`` (pairs per step, default 16), ``setfit_loss``, ``margin``, ``weight_decay``, ``dropout``,
``setfit_head``; the logistic head: ``head_steps``, ``head_learning_rate``, ``head_l2``.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax._progress import progress
from fsl_jax.llm.text_methods.common import adamw, copy_tree, features, steps_for
from fsl_jax.llm.text_methods.head import linear_head
from fsl_jax.llm.text_models import BertEncoder, BertTop, bottom_hidden, encoder_variables

if TYPE_CHECKING:
    from fsl_jax.llm.finetune import FewShotTextClassifier

# The classifier's arguments left at None that this method fills in.
DEFAULTS: dict[str, Any] = {"learning_rate": 2e-5}
LOSSES = ("cosine", "contrastive")
SAMPLINGS = ("paper", "random")
HEADS = ("logistic", "end_to_end")
RANDOM_STEPS = 40  # steps of setfit_sampling="random" when neither steps nor epochs is given
NUM_ITERATIONS = 20  # SetFit's default


def setfit_pairs(
    y: np.ndarray, num_iterations: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SetFit's pair generation: in each of ``num_iterations`` rounds, every example is the anchor of one positive
    pair (its partner drawn uniformly from the *other* examples of its class) and one negative pair (its partner drawn
    uniformly from the examples of the other classes); the pairs are then shuffled.

    An example whose class has no other example gets no positive pair (it is never paired with itself); with at least
    two examples per class there are exactly ``2 * num_iterations * n`` pairs, half of them positive, and each example
    anchors ``2 * num_iterations`` of them.

    Args:
      y: ``[n]`` int class of each example (at least two classes).
      num_iterations: rounds (>= 1).
      rng: the generator of every draw.

    Returns:
      ``(anchor, partner, target)``: ``[pairs]`` int32, int32 and float32 (1 = same class, 0 = different).

    Raises:
      ValueError: ``num_iterations`` < 1 or a single class in ``y``.

    Example:
        >>> a, b, t = setfit_pairs(np.array([0, 0, 1, 1, 1]), 2, np.random.default_rng(0))
        >>> len(a), int(t.sum()), bool(np.all(a != b))
        (20, 10, True)
    """
    y = np.asarray(y)
    if int(num_iterations) < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations!r}")
    num_classes = int(y.max()) + 1 if len(y) else 0
    order, rank, starts, counts = class_index(y, num_classes)
    n = len(y)
    if np.count_nonzero(counts) < 2:
        raise ValueError(f"setfit_pairs needs at least two classes, got classes {sorted(set(y.tolist()))}")
    anchors, partners, targets = [], [], []
    has_pos = counts[y] >= 2
    pos_anchor = np.flatnonzero(has_pos)
    every = np.arange(n)
    for _ in range(int(num_iterations)):
        # positive partner: uniform over the anchor's class block without the anchor's own slot
        c = y[pos_anchor]
        r = rng.integers(0, counts[c] - 1)
        r = r + (r >= rank[pos_anchor])
        anchors.append(pos_anchor)
        partners.append(order[starts[c] + r])
        targets.append(np.ones(len(pos_anchor), np.float32))
        # negative partner: uniform over the n - count examples outside the anchor's class block
        c = y
        j = rng.integers(0, n - counts[c])
        anchors.append(every)
        partners.append(order[np.where(j < starts[c], j, j + counts[c])])
        targets.append(np.zeros(n, np.float32))
    anchor, partner, target = (np.concatenate(v) for v in (anchors, partners, targets))
    perm = rng.permutation(len(anchor))
    return anchor[perm].astype(np.int32), partner[perm].astype(np.int32), target[perm]


def sample_pairs(
    key: jax.Array,
    codes: jax.Array,
    order: jax.Array,
    rank: jax.Array,
    starts: jax.Array,
    counts: jax.Array,
    num_pairs: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples ``num_pairs`` (anchor, partner) index pairs, half same-class and half different-class, in O(n + pairs)
    memory (jittable; no n x n structure is ever built).

    Examples are addressed through the class-sorted permutation ``order``: class ``c`` occupies
    ``order[starts[c] : starts[c] + counts[c]]``. A positive partner is drawn uniformly from the anchor's class
    without the anchor itself (skipping its ``rank`` inside the block; a class with one example pairs the anchor
    with itself); a negative partner is drawn uniformly from the ``n - counts[c]`` examples outside the block.

    Args:
      key: PRNG key.
      codes: ``[n]`` int class of each example.
      order: ``[n]`` ``argsort(codes)`` (stable).
      rank: ``[n]`` position of each example inside its class block.
      starts: ``[classes]`` first position of each class block in ``order``.
      counts: ``[classes]`` examples per class.
      num_pairs: pairs to draw (static); the first ``num_pairs // 2`` are positives.

    Returns:
      ``(anchor, partner, target)``: ``[num_pairs]`` int32, int32 and float32 (1 = same class, 0 = different).

    Example:
        >>> codes = jnp.array([0, 1, 0, 1, 1])
        >>> order, rank, starts, counts = class_index(np.asarray(codes), 2)
        >>> a, b, t = sample_pairs(jax.random.key(0), codes, order, rank, starts, counts, 8)
        >>> bool(jnp.all((codes[a] == codes[b]) == (t == 1)))
        True
    """
    n = codes.shape[0]
    k_anchor, k_pos, k_neg = jax.random.split(key, 3)
    anchor = jax.random.randint(k_anchor, (num_pairs,), 0, n)
    c = codes[anchor]
    count = counts[c]
    start = starts[c]
    r = jax.random.randint(k_pos, (num_pairs,), 0, jnp.maximum(count - 1, 1))
    r = jnp.where(count >= 2, r + (r >= rank[anchor]), rank[anchor])
    positive = order[start + r]
    j = jax.random.randint(k_neg, (num_pairs,), 0, jnp.maximum(n - count, 1))
    negative = order[jnp.where(j < start, j, j + count)]
    is_pos = jnp.arange(num_pairs) < num_pairs // 2
    partner = jnp.where(is_pos, positive, negative)
    return anchor.astype(jnp.int32), partner.astype(jnp.int32), is_pos.astype(jnp.float32)


def class_index(codes: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(order, rank, starts, counts)`` for :func:`sample_pairs`."""
    codes = np.asarray(codes)
    order = np.argsort(codes, kind="stable").astype(np.int32)
    counts = np.bincount(codes, minlength=num_classes).astype(np.int32)
    starts = (np.cumsum(counts) - counts).astype(np.int32)
    rank = np.empty(len(codes), np.int32)
    rank[order] = np.arange(len(codes), dtype=np.int32) - starts[codes[order]]
    return order, rank, starts, counts


def pair_loss_fn(encoder: BertEncoder | BertTop, loss: str, margin: float, dropout: bool) -> Any:
    """``(params, data, a, b, target, key) -> loss`` of the pairs ``(a, b)`` of rows of ``data``: the cosine
    similarity of their normalised embeddings against ``target`` (``"cosine"``) or the margin contrastive loss on the
    cosine distance (``"contrastive"``). ``data`` is ``[n, seq]`` token ids for a :class:`BertEncoder` (BERT's
    parameters), or ``(hidden, mask)`` entering the first trained layer for a :class:`BertTop` (its layers'
    parameters)."""

    def embed(params, data, rows, key):
        rngs = {"dropout": key}
        if isinstance(encoder, BertTop):
            hidden, mask = data
            return encoder.apply({"params": params}, hidden[rows], mask[rows], not dropout, rngs=rngs)
        return encoder.apply(encoder_variables(params), data[rows], deterministic=not dropout, rngs=rngs)

    def pair_loss(params, data, a, b, target, key):
        num_pairs = a.shape[0]
        z = embed(params, data, jnp.concatenate([a, b]), key)
        cos = jnp.sum(z[:num_pairs] * z[num_pairs:], axis=-1)
        if loss == "cosine":
            return jnp.mean((cos - target) ** 2)
        distance = 1.0 - cos
        return jnp.mean(0.5 * (target * distance**2 + (1 - target) * jax.nn.relu(margin - distance) ** 2))

    return pair_loss


def pair_update(
    encoder: BertEncoder | BertTop,
    learning_rate: float,
    weight_decay: float,
    steps: int,
    loss: str,
    margin: float,
    dropout: bool,
) -> tuple[optax.GradientTransformation, Any]:
    """``(optimizer, update)``: AdamW over ``steps`` and the (unjitted) ``update((params, opt_state), data, a, b,
    target, key) -> (state, loss)`` that takes one step on the pair loss of :func:`pair_loss_fn`; both samplings'
    steps are built on it."""
    tx = adamw(learning_rate, steps, weight_decay)
    pair_loss = pair_loss_fn(encoder, loss, margin, dropout)

    def update(state, data, a, b, target, key):
        params, opt_state = state
        value, grads = jax.value_and_grad(pair_loss)(params, data, a, b, target, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return tx, update


@functools.lru_cache(maxsize=8)
def setfit_fns(
    encoder: BertEncoder | BertTop,
    learning_rate: float,
    weight_decay: float,
    steps: int,
    num_pairs: int,
    loss: str,
    margin: float,
    dropout: bool,
):
    """``(optimizer, step)``: the jitted SetFit step of ``setfit_sampling="random"``, ``step((params, opt_state), ids,
    codes, order, rank, starts, counts, key) -> (state, loss)`` (state donated), that draws ``num_pairs`` pairs and
    takes one AdamW step on the pair ``loss`` (``"cosine"`` or ``"contrastive"`` with ``margin``); cached per
    configuration."""
    tx, pair_step = pair_update(encoder, learning_rate, weight_decay, steps, loss, margin, dropout)

    def step(state, ids_all, codes, order, rank, starts, counts, key):
        k_pairs, k_drop = jax.random.split(key)
        a, b, target = sample_pairs(k_pairs, codes, order, rank, starts, counts, num_pairs)
        return pair_step(state, ids_all, a, b, target, k_drop)

    return tx, jax.jit(step, donate_argnums=(0,))


@functools.lru_cache(maxsize=8)
def setfit_pair_fns(
    encoder: BertEncoder | BertTop,
    learning_rate: float,
    weight_decay: float,
    steps: int,
    loss: str,
    margin: float,
    dropout: bool,
):
    """``(optimizer, step)``: the jitted SetFit step of ``setfit_sampling="paper"``, ``step((params, opt_state), ids,
    anchor, partner, target, key) -> (state, loss)`` (state donated) on one batch of given pairs; cached per
    configuration."""
    tx, step = pair_update(encoder, learning_rate, weight_decay, steps, loss, margin, dropout)

    return tx, jax.jit(step, donate_argnums=(0,))


def fit_setfit(clf: FewShotTextClassifier, texts: list[str], y: np.ndarray) -> None:
    """Fits ``"setfit"``: contrastive tuning of the encoder on pairs of ``texts``, then a head on the tuned
    embeddings (``setfit_head``)."""
    bb = clf._backbone()
    lr = float(clf._setting("learning_rate"))
    layers = bb.config.num_hidden_layers
    trained = layers if clf.train_layers is None else clf.train_layers
    if trained > layers:
        raise ValueError(f"train_layers must be at most the backbone's {layers} layers, got {clf.train_layers}")
    ids = jnp.asarray(clf._ids(texts))
    encoder: BertEncoder | BertTop
    data: Any
    if trained == layers:
        encoder = bb.encoder(normalize=True)[0]
        params = copy_tree(bb.params)
        data = ids
    else:  # the frozen bottom runs once; every step trains the top `trained` layers on its hidden states
        first = layers - trained
        encoder = BertTop(bb.config, first, True)
        params = copy_tree({f"layer_{i}": bb.params[f"layer_{i}"] for i in range(first, layers)})
        data = bottom_hidden(bb.config, bb.pad_token_id, bb.params, ids, first, clf.eval_batch_size)
    key = jax.random.key(clf.seed)
    losses = []
    if clf.setfit_sampling == "paper":
        rng = np.random.default_rng([clf.seed, 2])
        pairs = setfit_pairs(y, clf.num_iterations, rng)
        batch = clf.batch_size
        epochs = clf.epochs if clf.epochs is not None else 1.0
        steps = max(1, math.ceil(epochs * len(pairs[0]) / batch))
        if clf.steps is not None:
            steps = min(steps, clf.steps)
        # passes over the shuffled pair list; the last batch is completed with the first pairs of the next pass
        reps = -(-steps * batch // len(pairs[0]))
        a_all, b_all, t_all = (np.concatenate([v] * reps) for v in pairs)
        tx, step_fn = setfit_pair_fns(encoder, lr, clf.weight_decay, steps, clf.setfit_loss, clf.margin, clf.dropout)
        state = (params, tx.init(params))
        bar = progress(range(steps), desc="setfit", disable=not clf.progress, leave=False)
        for i in bar:
            sl = slice(i * batch, (i + 1) * batch)
            batch_pairs = (jnp.asarray(a_all[sl]), jnp.asarray(b_all[sl]), jnp.asarray(t_all[sl]))
            state, loss = step_fn(state, data, *batch_pairs, jax.random.fold_in(key, i))
            losses.append(loss)
        bar.close()
        clf.fit_info_.update(pairs=len(pairs[0]), positive_pairs=int(pairs[2].sum()))
    else:
        steps = steps_for(clf, len(texts), clf.batch_size, default_steps=RANDOM_STEPS)
        tx, step_fn = setfit_fns(
            encoder, lr, clf.weight_decay, steps, clf.batch_size, clf.setfit_loss, clf.margin, clf.dropout
        )
        state = (params, tx.init(params))
        index = [jnp.asarray(a) for a in class_index(y, len(clf.classes_))]
        codes = jnp.asarray(y)
        bar = progress(range(steps), desc="setfit", disable=not clf.progress, leave=False)
        for i in bar:
            state, loss = step_fn(state, data, codes, *index, jax.random.fold_in(key, i))
            losses.append(loss)
        bar.close()
    clf._bert = {**bb.params, **state[0]}
    clf.fit_info_.update(
        trained_layers=trained,
        steps=steps,
        pairs_per_step=clf.batch_size,
        first_loss=float(losses[0]),
        last_loss=float(np.mean(np.asarray(losses[-5:]))),
    )
    feats = features(clf, clf._bert, texts, np.asarray(ids), desc="embed support")
    clf._head = linear_head(clf, feats, y)
    if clf.setfit_head == "end_to_end":
        from fsl_jax.llm.text_methods.finetune import train_end_to_end

        epochs = clf.setfit_head_epochs
        bert, head = train_end_to_end(clf, np.asarray(ids), y, clf._bert, clf._head, lr, epochs)
        clf._bert, clf._head = bert, {"kind": "linear", **head}
        clf.fit_info_["end_to_end_epochs"] = epochs
