"""``method="head"``: a linear classifier on frozen sentence embeddings.

The pretrained encoder is not trained. Each support text is embedded once (mean pooling over non-padding tokens,
L2-normalised; cached per text, so refits on new draws cost only the new texts), and a multinomial logistic
regression with an L2 penalty is fitted on those embeddings, full-batch with Adam, all steps inside one ``jax.jit``
(a ``lax.scan``).

Hyperparameters (arguments of :class:`~fsl_jax.llm.finetune.FewShotTextClassifier`):

* ``head_steps``: Adam steps (default 300);
* ``head_learning_rate``: Adam's learning rate (default 0.05);
* ``head_l2``: the penalty ``head_l2 * ||W||^2`` added to the mean cross-entropy (default 1e-3).

The same regression is the last step of ``"setfit"`` (on the tuned embeddings) and the linear probe that starts
``"finetune"`` (LP-FT): both call :func:`linear_head`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax.llm.text_methods.common import features, xent

if TYPE_CHECKING:
    from fsl_jax.llm.finetune import FewShotTextClassifier

# The classifier's arguments left at None that this method fills in (none: head_learning_rate's 0.05 is below).
DEFAULTS: dict[str, Any] = {}
HEAD_LEARNING_RATE = 0.05


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logreg(x, y, num_classes: int, steps: int, learning_rate, l2):
    """Multinomial logistic regression: mean cross-entropy + ``l2 * ||W||^2``, full-batch Adam for ``steps``.

    Returns ``({"kernel": [features, num_classes], "bias": [num_classes]}, final loss)``; the parameters start at 0.
    """
    params = {
        "kernel": jnp.zeros((x.shape[1], num_classes), jnp.float32),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }
    tx = optax.adam(learning_rate)

    def loss(p):
        return xent(x @ p["kernel"] + p["bias"], y) + l2 * jnp.sum(p["kernel"] ** 2)

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), value

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params, losses[-1]


def linear_head(clf: FewShotTextClassifier, feats: np.ndarray, y: np.ndarray) -> dict:
    """The ``"linear"`` head (logistic regression) fitted on ``[n, hidden]`` features ``feats`` with labels ``y``;
    records the final training loss as ``fit_info_["head_loss"]``."""
    lr = clf.head_learning_rate if clf.head_learning_rate is not None else HEAD_LEARNING_RATE
    params, loss = fit_logreg(jnp.asarray(feats), jnp.asarray(y), len(clf.classes_), clf.head_steps, lr, clf.head_l2)
    clf.fit_info_["head_loss"] = float(loss)
    return {"kind": "linear", "kernel": params["kernel"], "bias": params["bias"]}


def fit_head(clf: FewShotTextClassifier, texts: list[str], y: np.ndarray) -> None:
    """Fits the ``"head"`` method: a :func:`linear_head` on the pretrained encoder's embeddings of ``texts``."""
    clf._head = linear_head(clf, features(clf, None, texts, desc="embed support"), y)
