"""``method="auto"``: picks a method by cross-validation on the support set alone, within a time budget.

The candidates (``auto_methods``, default ``("head", "finetune", "setfit")``, cheapest first) are tried in that order.
Each is scored by stratified ``auto_folds``-fold cross-validation *on the support set*: every fold fits the candidate
(with the classifier's other settings) on the other folds and predicts the held-out one, so every support text is
predicted once by a model that never saw it. The candidate with the highest cross-validated accuracy wins (ties: the
lower cross-validated cross-entropy, then the earlier candidate), and is fitted again on the whole support set.
Nothing but the support texts and labels passed to ``fit`` is read.

Time budget (``time_budget`` seconds, ``None`` = no limit): the whole ``fit`` (cross-validation and the final fit)
is kept within it by projection. After a candidate's first fold its cost is known; the candidate is dropped (and the
later ones are not tried) when finishing its folds and then refitting the most expensive candidate still in the race
on the whole support set would pass the budget. The first candidate is always kept, so ``auto`` always returns a fit.

With fewer than 2 texts in some class no fold can hold a text of every class out and keep one for training; the
number of folds is then ``min(auto_folds, smallest class count)``, and with a single text in some class the first
candidate is fitted without cross-validation (recorded in ``fit_info_["auto"]``).

Example:
    >>> from fsl_jax.llm.text_methods.auto import stratified_folds
    >>> [sorted(f.tolist()) for f in stratified_folds(np.array([0, 0, 1, 1, 0, 1]), 2, np.random.default_rng(0))]
    [[0, 2, 5], [1, 3, 4]]
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fsl_jax.llm.finetune import FewShotTextClassifier

DEFAULT_METHODS = ("head", "finetune", "setfit")


def stratified_folds(y: np.ndarray, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``folds`` disjoint index arrays covering ``range(len(y))``: each class's texts are shuffled and dealt out to
    the folds in turn, the next class continuing where the last one stopped, so every class is spread as evenly as
    possible and the fold sizes differ by at most one."""
    out: list[list[int]] = [[] for _ in range(folds)]
    turn = int(rng.integers(folds))
    for c in np.unique(y):
        for i in rng.permutation(np.flatnonzero(y == c)):
            out[turn % folds].append(int(i))
            turn += 1
    return [np.sort(np.asarray(f, np.int64)) for f in out]


def _candidate(clf: FewShotTextClassifier, method: str) -> FewShotTextClassifier:
    from fsl_jax.llm.finetune import FewShotTextClassifier

    params = {**clf.get_params(), "method": method, "progress": False, "augment": None}
    sub = FewShotTextClassifier(**params)
    sub._bb = clf._bb
    return sub


def fit_auto(clf: FewShotTextClassifier, texts: list[str], y: np.ndarray) -> None:
    """Fits ``"auto"``: cross-validates the candidate methods on ``texts`` / ``y`` and refits the best one."""
    t0 = time.perf_counter()
    methods = tuple(clf.auto_methods)
    budget = clf.time_budget
    counts = np.bincount(y, minlength=len(clf.classes_))
    folds = int(min(clf.auto_folds, counts.min()))
    labels = np.asarray(clf.classes_, dtype=object)[y]
    report: dict = {"candidates": list(methods), "folds": folds, "cv_accuracy": {}, "cv_loss": {}, "fold_seconds": {}}
    skipped: list[str] = []
    if folds < 2:
        chosen = methods[0]
        report["note"] = f"a class has {int(counts.min())} text(s): no cross-validation, fitted {chosen!r}"
    else:
        parts = stratified_folds(y, folds, np.random.default_rng([clf.seed, 4]))
        scores: dict[str, tuple[float, float]] = {}
        for rank, method in enumerate(methods):
            correct, nll, fold_s = 0, 0.0, []
            dropped = False
            for f, held in enumerate(parts):
                train = np.setdiff1d(np.arange(len(y)), held)
                t_fold = time.perf_counter()
                sub = _candidate(clf, method).fit([texts[i] for i in train], list(labels[train]))
                proba = sub.predict_proba([texts[i] for i in held])
                cols = [sub.classes_.index(c) for c in clf.classes_]
                proba = proba[:, cols]
                correct += int(np.sum(np.argmax(proba, -1) == y[held]))
                nll -= float(np.sum(np.log(np.maximum(proba[np.arange(len(held)), y[held]], 1e-12))))
                fold_s.append(time.perf_counter() - t_fold)
                if f == 0 and budget is not None and rank > 0:
                    per_fold = fold_s[0]
                    full_fit = per_fold * len(y) / max(len(train), 1)
                    worst_final = max([full_fit] + [report["fold_seconds"][m] * len(y) / len(train) for m in scores])
                    projected = time.perf_counter() - t0 + per_fold * (folds - 1) + worst_final
                    if projected > budget:
                        dropped = True
                        break
            report["fold_seconds"][method] = float(np.mean(fold_s))
            if dropped:
                skipped = list(methods[rank:])
                break
            scores[method] = (correct / len(y), nll / len(y))
            report["cv_accuracy"][method] = scores[method][0]
            report["cv_loss"][method] = scores[method][1]
        chosen = max(scores, key=lambda m: (scores[m][0], -scores[m][1], -methods.index(m)))
    report["skipped_for_time"] = skipped
    report["chosen"] = chosen
    report["cv_seconds"] = time.perf_counter() - t0
    final = _candidate(clf, chosen).fit(texts, list(labels))
    clf._bert, clf._head = final._bert, final._head
    clf.fit_info_.update({k: v for k, v in final.fit_info_.items() if k not in ("method", "seconds")})
    clf.fit_info_["chosen_method"] = chosen
    clf.fit_info_["auto"] = report
