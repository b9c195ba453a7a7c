"""``method="finetune"``: full fine-tuning of BERT and a linear head, started from a linear probe (LP-FT).

The model is :class:`~fsl_jax.llm.text_models.BertClassifier`: BERT, mean pooling over non-padding tokens, then a
linear head. With ``finetune_init="probe"`` (the default; LP-FT, Kumar et al., 2022, "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution") the pooled features are L2-normalised and the head starts
from the ``"head"`` method's logistic regression on the frozen embeddings of the training part; with ``"random"`` the
head is freshly initialised on unnormalised features. Every step is one jitted AdamW step on a batch of texts (the
state donated, dropout on, linear warm-up / decay, separate peak rates for BERT and the head, and layer-wise
learning-rate decay over BERT's layers: ``layer_decay``).

Weight-space averaging (``wise < 1``; WiSE-FT, Wortsman et al., 2022, "Robust fine-tuning of zero-shot models"):
the returned weights are ``wise * fine-tuned + (1 - wise) * start`` for BERT and the head alike (the start is the
pretrained encoder with the probe's head), which keeps part of the pretrained features' robustness.

Early stopping (off by default: with 8 texts per class a held-out part is too small to select on, and every text is
better spent on training; measured in the README): when ``early_stopping`` and every class has enough texts,
``validation_fraction`` of each class (at least 2 texts, and only when at least 2 per class remain for training) is
held out; every ``eval_every`` steps (default: one epoch) the validation loss is measured, the checkpoint with the
lowest one is kept (the probe itself is the first candidate), and training stops after ``patience`` evaluations
without improvement, never before half of the steps. Otherwise a fixed number of steps runs.

Hyperparameters (arguments of :class:`~fsl_jax.llm.finetune.FewShotTextClassifier`): ``learning_rate`` (BERT's peak,
default 5e-5), ``layer_decay`` (default 0.8: layer ``i`` of ``L`` trains at ``learning_rate * 0.8 ** (L - i)``),
``head_learning_rate`` (the head's peak, default 1e-3), ``steps`` or ``epochs`` (default 15 epochs), ``batch_size``,
``weight_decay``, ``dropout``, ``finetune_init``, ``layer_decay``, ``warmup_fraction``, ``wise``, ``early_stopping``,
``validation_fraction``, ``patience``, ``eval_every``; the probe uses ``head_steps`` and ``head_l2``.
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
from fsl_jax.llm.text_methods.common import adamw, copy_tree, features, layer_depths, steps_for, xent
from fsl_jax.llm.text_methods.head import linear_head
from fsl_jax.llm.text_models import BertClassifier

if TYPE_CHECKING:
    from fsl_jax.llm.finetune import FewShotTextClassifier

# The classifier's arguments left at None that this method fills in.
# Chosen across four corpora by the protocol of benchmarks/text_corpora.py (the README's "Few-shot text over four
# corpora"); before it: 1e-4, 20 epochs, no layer decay, early stopping on a validation split.
DEFAULTS: dict[str, Any] = {"learning_rate": 5e-5, "epochs": 15, "layer_decay": 0.8, "warmup_fraction": 0.1}
HEAD_LEARNING_RATE = 1e-3


@functools.lru_cache(maxsize=8)
def finetune_fns(
    module: BertClassifier,
    learning_rate: float,
    head_learning_rate: float,
    weight_decay: float,
    steps: int,
    dropout: bool,
    layer_decay: float = 1.0,
    warmup_fraction: float = 0.1,
    num_layers: int = 0,
):
    """``(optimizer, step, evaluate)`` for fine-tuning ``module`` (cached per configuration): AdamW on ``"bert"`` at
    ``learning_rate`` and on ``"head"`` at ``head_learning_rate`` (both warm up over ``warmup_fraction`` of the
    ``steps`` and decay linearly to 0); with ``layer_decay < 1`` (layer-wise learning-rate decay over ``num_layers``
    layers) BERT's layer ``i`` (1 = the lowest) trains at ``learning_rate * layer_decay ** (num_layers - i)`` and the
    embeddings at ``learning_rate * layer_decay ** num_layers``; the jitted
    ``step((params, opt_state), ids, y, idx, key) -> (state, loss)`` trains on the rows ``idx`` (state donated,
    dropout when ``dropout``); the jitted ``evaluate(params, ids, y) -> (loss, accuracy)`` runs without dropout."""
    scales = {f"bert{d}": layer_decay ** max(num_layers - d, 0) for d in range(num_layers + 2)}
    transforms = {k: adamw(learning_rate * v, steps, weight_decay, warmup_fraction) for k, v in scales.items()}
    transforms["head"] = adamw(head_learning_rate, steps, weight_decay, warmup_fraction)

    def labels(p):
        out = {k: jax.tree_util.tree_map(lambda _: k, v) for k, v in p.items() if k != "bert"}
        depths = layer_depths(p["bert"])
        out["bert"] = {
            k: jax.tree_util.tree_map(lambda _, d=depths[k]: f"bert{min(d, num_layers + 1)}", v)
            for k, v in p["bert"].items()
        }
        return out

    tx = optax.multi_transform(transforms, labels)

    def loss_fn(params, ids, y, key):
        logits = module.apply({"params": params}, ids, deterministic=not dropout, rngs={"dropout": key})
        return xent(logits, y)

    def step(state, ids_all, y_all, idx, key):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, ids_all[idx], y_all[idx], key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def evaluate(params, ids, y):
        logits = module.apply({"params": params}, ids)
        return xent(logits, y), jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))

    return tx, jax.jit(step, donate_argnums=(0,)), jax.jit(evaluate)


def batch_stream(rng: np.random.Generator, rows: np.ndarray, steps: int, batch: int) -> np.ndarray:
    """Enough shuffled passes over ``rows`` for ``steps`` batches of ``batch``, concatenated; batch ``i`` is
    ``stream[i * batch : (i + 1) * batch]``."""
    return np.concatenate([rng.permutation(rows) for _ in range(-(-steps * batch // len(rows)) + 1)])


def validation_split(
    clf: FewShotTextClassifier, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(train indices, validation indices or None)``: ``validation_fraction`` of each class (at least 2) held out,
    when ``early_stopping`` and every class keeps at least 2 texts for training; otherwise everything trains."""
    if not clf.early_stopping:
        return np.arange(len(y)), None
    train, val = [], []
    for c in range(len(clf.classes_)):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = max(2, int(round(clf.validation_fraction * len(idx))))
        if len(idx) - n_val < 2:
            return np.arange(len(y)), None
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def fit_finetune(clf: FewShotTextClassifier, texts: list[str], y: np.ndarray) -> None:
    """Fits ``"finetune"``: BERT and the head trained together from the probe (or a random head), keeping the
    checkpoint with the lowest validation loss when a validation split exists."""
    bb = clf._backbone()
    rng = np.random.default_rng([clf.seed, 1])
    train_idx, val_idx = validation_split(clf, y, rng)
    batch = min(clf.batch_size, len(train_idx))
    steps = steps_for(clf, len(train_idx), batch)
    lr = float(clf._setting("learning_rate"))
    head_lr = clf.head_learning_rate if clf.head_learning_rate is not None else HEAD_LEARNING_RATE
    probe = clf.finetune_init == "probe"
    module, variables, _ = bb.classifier(
        len(clf.classes_), jax.random.key(clf.seed), normalize=probe, head_init="normal"
    )
    tx, step_fn, eval_fn = finetune_fns(
        module,
        lr,
        float(head_lr),
        clf.weight_decay,
        steps,
        clf.dropout,
        float(clf._setting("layer_decay")),
        float(clf._setting("warmup_fraction")),
        bb.config.num_hidden_layers,
    )
    params = dict(copy_tree(variables["params"]))
    if probe:  # LP-FT: start from the logistic-regression head on the frozen embeddings of the training part
        feats = features(clf, None, [texts[i] for i in train_idx], desc="embed support")
        head = linear_head(clf, feats, y[train_idx])
        params["head"] = {"kernel": jnp.array(head["kernel"]), "bias": jnp.array(head["bias"])}
    start = copy_tree(params) if clf.wise < 1 else None  # the starting point, for the weight-space average
    state = (params, tx.init(params))
    ids = clf._ids(texts)
    ids_dev, y_dev = jnp.asarray(ids), jnp.asarray(y)
    val = (jnp.asarray(ids[val_idx]), jnp.asarray(y[val_idx])) if val_idx is not None else None
    eval_every = clf.eval_every or max(1, math.ceil(len(train_idx) / batch))
    key = jax.random.key(clf.seed)
    stream = batch_stream(rng, train_idx, steps, batch)
    # The checkpoint with the lowest validation loss is kept (a few held-out texts make accuracy too coarse to
    # select on: it once stopped a run at step 16 of 38 while the loss was still falling fast); no stopping
    # before half of the schedule.
    best_loss, best_acc, best_step = np.inf, 0.0, 0
    best_params, bad, done = None, 0, 0
    if val is not None and probe:  # the probe itself is a candidate: fine-tuning must beat it on validation
        best_loss, best_acc = (float(v) for v in eval_fn(state[0], *val))
        best_params = copy_tree(state[0])
    bar = progress(range(steps), desc="finetune", disable=not clf.progress, leave=False)
    for i in bar:
        idx = jnp.asarray(stream[i * batch : (i + 1) * batch])
        state, loss = step_fn(state, ids_dev, y_dev, idx, jax.random.fold_in(key, i))
        done = i + 1
        if val is not None and (done % eval_every == 0 or done == steps):
            val_loss, val_acc = (float(v) for v in eval_fn(state[0], *val))
            bar.set_postfix(loss=f"{float(loss):.3f}", val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.2f}")
            if val_loss < best_loss:
                best_loss, best_acc, best_step, bad = val_loss, val_acc, done, 0
                best_params = copy_tree(state[0])
            else:
                bad += 1
                if bad >= clf.patience and done >= steps // 2:
                    break
    bar.close()
    params = state[0] if best_params is None else best_params
    if start is not None:  # WiSE-FT: the fine-tuned weights averaged with the starting point's
        params = jax.tree_util.tree_map(lambda a, b: clf.wise * a + (1 - clf.wise) * b, params, start)
        clf.fit_info_["wise"] = clf.wise
    clf.fit_info_.update(
        steps=done,
        max_steps=steps,
        batch_size=batch,
        train_size=len(train_idx),
        validation_size=0 if val_idx is None else len(val_idx),
    )
    if val is not None:
        clf.fit_info_.update(best_step=best_step, validation_accuracy=best_acc, validation_loss=best_loss)
    clf._bert = params["bert"]
    clf._head = {
        "kind": "linear" if probe else "linear_unnormalized",
        "kernel": params["head"]["kernel"],
        "bias": params["head"]["bias"],
    }


def train_end_to_end(
    clf: FewShotTextClassifier,
    ids: np.ndarray,
    y: np.ndarray,
    bert: Any,
    head: dict,
    learning_rate: float,
    epochs: float,
) -> tuple[Any, dict]:
    """Trains BERT (from ``bert``) and a linear head on normalised features (from ``head``'s ``kernel`` / ``bias``)
    together on the cross-entropy of all ``ids`` / ``y`` for ``epochs`` epochs, BERT at ``learning_rate`` and the
    head at ``clf.head_learning_rate`` (default 1e-3), no validation split; returns ``(bert, {"kernel", "bias"})``."""
    bb = clf._backbone()
    rng = np.random.default_rng([clf.seed, 3])
    batch = min(clf.batch_size, len(y))
    steps = max(1, math.ceil(epochs * len(y) / batch))
    head_lr = clf.head_learning_rate if clf.head_learning_rate is not None else HEAD_LEARNING_RATE
    module, _, _ = bb.classifier(len(clf.classes_), jax.random.key(clf.seed), normalize=True, head_init="normal")
    tx, step_fn, _ = finetune_fns(module, learning_rate, float(head_lr), clf.weight_decay, steps, clf.dropout)
    params = {"bert": copy_tree(bert), "head": {"kernel": jnp.array(head["kernel"]), "bias": jnp.array(head["bias"])}}
    state = (params, tx.init(params))
    ids_dev, y_dev = jnp.asarray(ids), jnp.asarray(y)
    stream = batch_stream(rng, np.arange(len(y)), steps, batch)
    key = jax.random.fold_in(jax.random.key(clf.seed), 7)
    for i in progress(range(steps), desc="end-to-end", disable=not clf.progress, leave=False):
        idx = jnp.asarray(stream[i * batch : (i + 1) * batch])
        state, _ = step_fn(state, ids_dev, y_dev, idx, jax.random.fold_in(key, i))
    return state[0]["bert"], dict(state[0]["head"])
