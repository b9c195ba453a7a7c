"""``method="protonet"`` and ``method="anil"``: episodic meta-training of the encoder on text episodes.

Both can first meta-train BERT on N-way K-shot episodes (``meta_train_steps`` meta-steps of ``meta_batch`` episodes,
Adam at ``learning_rate``, default 2e-5) drawn with a :class:`~fsl_jax.data.HostSampler` from the support set itself
(each class split into episode support and query, so it needs >= 2 texts per class) or from other labelled texts,
``fit(..., meta_texts=, meta_labels=)`` (typically of other classes). :func:`episode_data` sizes the episodes and
:func:`meta_train` runs the meta-steps (:func:`fsl_jax.make_meta_step` over the learner); then each method fits the
support set:

* ``protonet``: Prototypical Networks (Snell et al., 2017, "Prototypical Networks for Few-shot Learning") with cosine
  similarity: each class's prototype is the mean normalised embedding of its support texts, and the logits are
  ``cos(embedding, prototype) / temperature``. Meta-training uses :func:`fsl_jax.protonet` (``distance="cosine"``)
  and is off by default (``meta_train_steps=0``: prototypes of the pretrained encoder).
* ``anil``: ANIL (Raghu et al., 2020, "Rapid Learning or Feature Reuse?"): :func:`fsl_jax.anil` with ``remat=True``
  over :class:`~fsl_jax.llm.text_models.BertClassifier` (normalised features x ``feature_scale``, zero-initialised
  head); after ``meta_train_steps`` meta-steps (default 10) the meta-learned head is adapted on the whole support set
  with the same inner loop (``inner_steps`` SGD steps at ``inner_lr``; :func:`adapt_head`, on precomputed features).

Hyperparameters (arguments of :class:`~fsl_jax.llm.finetune.FewShotTextClassifier`): ``meta_train_steps``,
``meta_batch`` (default 2, kept cheap), ``learning_rate``; ``protonet``: ``temperature``; ``anil``: ``inner_lr``
(default 0.5), ``inner_steps`` (default 5), ``feature_scale`` (default 10).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax._progress import progress
from fsl_jax.data.text import sort_labels
from fsl_jax.llm.text_methods.common import copy_tree, features, xent

if TYPE_CHECKING:
    from fsl_jax.llm.finetune import FewShotTextClassifier

# The classifier's arguments left at None that each method fills in.
PROTONET_DEFAULTS: dict[str, Any] = {"learning_rate": 2e-5, "meta_train_steps": 0}
ANIL_DEFAULTS: dict[str, Any] = {"learning_rate": 2e-5, "meta_train_steps": 10}


@functools.lru_cache(maxsize=8)
def meta_fns(
    kind: str, module: Any, ways: int, learning_rate: float, inner_lr: float, inner_steps: int, temperature: float
):
    """``(learner, optimizer, compiled meta-step)`` of ``kind`` (``"protonet"`` or ``"anil"``) over ``module``, cached
    per configuration so that refits do not recompile."""
    from fsl_jax.learners.maml import anil
    from fsl_jax.learners.protonet import protonet
    from fsl_jax.step import make_meta_step

    if kind == "protonet":
        learner = protonet(module, ways, distance="cosine", temperature=temperature)
    else:
        learner = anil(module, "xent", inner_lr, inner_steps, head="head", remat=True)
    tx = optax.adam(learning_rate)
    return learner, tx, make_meta_step(learner, tx)


@functools.partial(jax.jit, static_argnames=("inner_lr", "steps"))
def adapt_head(feats, y, head, inner_lr: float, steps: int, feature_scale):
    """ANIL's inner loop on precomputed (scaled) features: ``steps`` SGD steps on the head from its meta-learned
    initialisation (identical to ``learner.adapt``, without recomputing BERT in every step)."""
    from fsl_jax.learners.maml import inner_loop

    x = feats * feature_scale

    def loss(h):
        return xent(x @ h["kernel"] + h["bias"], y)

    return inner_loop(loss, head, inner_lr, steps)


def episode_data(
    clf: FewShotTextClassifier, texts: list[str], y: np.ndarray, meta: tuple | None, need_ways: int | None
):
    """``(groups, ways, shots, queries)``: per-class token-id arrays and the episode sizes for meta-training.

    From the support set (``meta=None``): every class, ``shots = max(1, smallest // 2)`` and the rest of the smallest
    class as queries. From ``meta = (meta_texts, meta_labels)``: the meta classes, with ``shots`` at most the smallest
    support class. ``need_ways`` (ANIL: the head's outputs) fixes the ways; otherwise ``min(meta classes, classes)``.

    Raises:
      ValueError: a class with fewer than 2 texts, or fewer meta classes than ``need_ways``.
    """
    support_min = int(np.bincount(y).min())
    if meta is None:
        groups = [clf._ids([t for t, c in zip(texts, y) if c == k]) for k in range(len(clf.classes_))]
        if support_min < 2:
            raise ValueError(
                f"meta-training on the support set needs >= 2 texts per class (episode support + query); the "
                f"smallest class has {support_min}: pass meta_texts/meta_labels or set meta_train_steps=0"
            )
        shots = max(1, support_min // 2)
        queries = support_min - shots
    else:
        meta_texts, meta_labels = meta
        meta_classes = sort_labels(meta_labels)
        groups = [clf._ids([t for t, label in zip(meta_texts, meta_labels) if label == c]) for c in meta_classes]
        meta_min = min(len(g) for g in groups)
        shots = min(support_min, max(1, meta_min - 1))
        queries = max(1, min(max(shots, 4), meta_min - shots))
        if meta_min < 2:
            raise ValueError(f"meta_labels: every class needs >= 2 texts for an episode; the smallest has {meta_min}")
    ways = min(len(groups), len(clf.classes_)) if need_ways is None else need_ways
    if need_ways is not None and len(groups) < need_ways:
        raise ValueError(
            f"meta_labels has {len(groups)} classes but ANIL's head has {need_ways} outputs (one per class of "
            f"labels): meta-training episodes need at least {need_ways} classes"
        )
    return groups, ways, shots, queries


def meta_train(
    clf: FewShotTextClassifier,
    kind: str,
    module: Any,
    variables: Any,
    groups: list,
    ways: int,
    shots: int,
    queries: int,
    temperature: float = 1.0,
) -> tuple[Any, list[float]]:
    """Meta-trains ``variables`` of ``module`` for ``meta_train_steps`` meta-steps on episodes drawn from ``groups``;
    returns the meta-trained variables and the per-step episode accuracies (also summarised in ``fit_info_``)."""
    from fsl_jax.data.sampler import HostSampler
    from fsl_jax.step import TrainState

    steps = int(clf._setting("meta_train_steps"))
    lr = float(clf._setting("learning_rate"))
    learner, tx, step_fn = meta_fns(kind, module, ways, lr, clf.inner_lr, clf.inner_steps, temperature)
    sampler = HostSampler(groups, ways, shots, queries, seed=clf.seed, dtype=np.int32)
    state = TrainState.create(learner, copy_tree(variables), tx)
    key = jax.random.key(clf.seed)
    accs = []
    bar = progress(range(steps), desc=f"meta-train {kind}", disable=not clf.progress, leave=False)
    for i in bar:
        tasks = jax.tree_util.tree_map(jnp.asarray, sampler.sample(clf.meta_batch, index=i))
        state, metrics = step_fn(state, tasks, jax.random.fold_in(key, i))
        accs.append(metrics["accuracy"])
    bar.close()
    accs = [float(a) for a in accs]
    clf.fit_info_.update(
        meta_train_steps=steps,
        meta_episode=dict(ways=ways, shots=shots, queries=queries),
        meta_accuracy_first=accs[0] if accs else None,
        meta_accuracy_last=float(np.mean(accs[-3:])) if accs else None,
    )
    return state.params, accs


def fit_protonet(clf: FewShotTextClassifier, texts: list[str], y: np.ndarray, meta: tuple | None = None) -> None:
    """Fits ``"protonet"``: optional meta-training of the encoder, then the ``"cosine"`` head of class prototypes."""
    bb = clf._backbone()
    steps = int(clf._setting("meta_train_steps"))
    if steps > 0:
        groups, ways, shots, queries = episode_data(clf, texts, y, meta, None)
        encoder, variables, _ = bb.encoder(normalize=True)
        params, _ = meta_train(clf, "protonet", encoder, variables, groups, ways, shots, queries, clf.temperature)
        clf._bert = params["params"]["bert"]
    else:
        clf.fit_info_["meta_train_steps"] = 0
    feats = features(clf, clf._bert, texts, desc="embed support")
    protos = np.stack([feats[y == c].mean(0) for c in range(len(clf.classes_))])
    clf._head = {"kind": "cosine", "prototypes": jnp.asarray(protos), "temperature": clf.temperature}


def fit_anil(clf: FewShotTextClassifier, texts: list[str], y: np.ndarray, meta: tuple | None = None) -> None:
    """Fits ``"anil"``: meta-training of encoder and head (unless ``meta_train_steps=0``), then the head adapted on
    the support set by ANIL's inner loop."""
    bb = clf._backbone()
    num_classes = len(clf.classes_)
    module, variables, _ = bb.classifier(
        num_classes, jax.random.key(clf.seed), normalize=True, feature_scale=clf.feature_scale, head_init="zeros"
    )
    steps = int(clf._setting("meta_train_steps"))
    head = variables["params"]["head"]
    if steps > 0:
        groups, ways, shots, queries = episode_data(clf, texts, y, meta, num_classes)
        params, _ = meta_train(clf, "anil", module, variables, groups, ways, shots, queries)
        clf._bert, head = params["params"]["bert"], params["params"]["head"]
    else:
        clf.fit_info_["meta_train_steps"] = 0
    feats = features(clf, clf._bert, texts, desc="embed support")
    adapted = adapt_head(jnp.asarray(feats), jnp.asarray(y), head, clf.inner_lr, clf.inner_steps, clf.feature_scale)
    clf._head = {"kind": "linear", "kernel": adapted["kernel"] * clf.feature_scale, "bias": adapted["bias"]}
