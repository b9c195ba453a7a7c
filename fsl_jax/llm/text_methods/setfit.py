"""``method="setfit"``: SetFit, contrastive fine-tuning of the encoder on text pairs, then a logistic regression.

SetFit (Tunstall et al., 2022, "Efficient Few-Shot Learning Without Prompts") first tunes the sentence encoder so that
texts of one class embed close together and texts of different classes apart, then fits the ``"head"`` method's
logistic regression on the tuned embeddings. Each step draws ``batch_size`` (anchor, partner) pairs *on the device*
with ``jax.random`` (:func:`sample_pairs`; half same-class, half different-class) from class-sorted index arrays, in
O(n + pairs) memory: the O(n^2) list of pairs is never built. The loss on the cosine similarity of the normalised
mean-pooled embeddings is sentence-transformers' CosineSimilarityLoss (``setfit_loss="cosine"``: the squared error
between the cosine and 1 / 0) or a margin ContrastiveLoss (``"contrastive"``, on the cosine distance). Every step is
one jitted AdamW step with the state donated, dropout on, linear warm-up / decay.

Hyperparameters (arguments of :class:`~fsl_jax.llm.finetune.FewShotTextClassifier`): ``steps`` (default 40) or
``epochs``, ``learning_rate`` (peak, default 2e-5), ``batch_size`` (pairs per step), ``setfit_loss``, ``margin``,
``weight_decay``, ``dropout``; the head: ``head_steps``, ``head_learning_rate``, ``head_l2``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax._progress import progress
from fsl_jax.llm.text_methods.common import adamw, copy_tree, features, steps_for
from fsl_jax.llm.text_methods.head import linear_head
from fsl_jax.llm.text_models import BertEncoder, encoder_variables

if TYPE_CHECKING:
    from fsl_jax.llm.finetune import FewShotTextClassifier

# The classifier's arguments left at None that this method fills in.
DEFAULTS: dict[str, Any] = {"learning_rate": 2e-5, "steps": 40}
LOSSES = ("cosine", "contrastive")


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


@functools.lru_cache(maxsize=8)
def setfit_fns(
    encoder: BertEncoder,
    learning_rate: float,
    weight_decay: float,
    steps: int,
    num_pairs: int,
    loss: str,
    margin: float,
    dropout: bool,
):
    """``(optimizer, step)``: the jitted SetFit step ``step((params, opt_state), ids, codes, order, rank, starts,
    counts, key) -> (state, loss)`` (state donated) that draws ``num_pairs`` pairs and takes one AdamW step on the
    pair ``loss`` (``"cosine"`` or ``"contrastive"`` with ``margin``); cached per configuration."""
    tx = adamw(learning_rate, steps, weight_decay)

    def pair_loss(params, ids_all, a, b, target, key):
        ids = jnp.concatenate([ids_all[a], ids_all[b]])
        z = encoder.apply(encoder_variables(params), ids, deterministic=not dropout, rngs={"dropout": key})
        cos = jnp.sum(z[:num_pairs] * z[num_pairs:], axis=-1)
        if loss == "cosine":
            return jnp.mean((cos - target) ** 2)
        distance = 1.0 - cos
        return jnp.mean(0.5 * (target * distance**2 + (1 - target) * jax.nn.relu(margin - distance) ** 2))

    def step(state, ids_all, codes, order, rank, starts, counts, key):
        params, opt_state = state
        k_pairs, k_drop = jax.random.split(key)
        a, b, target = sample_pairs(k_pairs, codes, order, rank, starts, counts, num_pairs)
        value, grads = jax.value_and_grad(pair_loss)(params, ids_all, a, b, target, k_drop)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return tx, jax.jit(step, donate_argnums=(0,))


def fit_setfit(clf: FewShotTextClassifier, texts: list[str], y: np.ndarray) -> None:
    """Fits ``"setfit"``: contrastive tuning of the encoder on pairs of ``texts``, then a linear head on the tuned
    embeddings."""
    bb = clf._backbone()
    steps = steps_for(clf, len(texts), clf.batch_size)
    lr = float(clf._setting("learning_rate"))
    encoder, variables, _ = bb.encoder(normalize=True)
    tx, step_fn = setfit_fns(
        encoder, lr, clf.weight_decay, steps, clf.batch_size, clf.setfit_loss, clf.margin, clf.dropout
    )
    params = copy_tree(variables["params"]["bert"])
    state = (params, tx.init(params))
    ids = jnp.asarray(clf._ids(texts))
    index = [jnp.asarray(a) for a in class_index(y, len(clf.classes_))]
    codes = jnp.asarray(y)
    key = jax.random.key(clf.seed)
    losses = []
    bar = progress(range(steps), desc="setfit", disable=not clf.progress, leave=False)
    for i in bar:
        state, loss = step_fn(state, ids, codes, *index, jax.random.fold_in(key, i))
        losses.append(loss)
    bar.close()
    clf._bert = state[0]
    clf.fit_info_.update(
        steps=steps,
        pairs_per_step=clf.batch_size,
        first_loss=float(losses[0]),
        last_loss=float(np.mean(np.asarray(losses[-5:]))),
    )
    feats = features(clf, clf._bert, texts, np.asarray(ids), desc="embed support")
    clf._head = linear_head(clf, feats, y)
