"""Reporting helpers: confidence intervals over episodes and a per-class classification report.

Few-shot results are conventionally reported as the mean accuracy over many test episodes with a 95% confidence
interval (``mean +- 1.96 * std / sqrt(n)``); :func:`mean_ci` computes that. :func:`classification_report` gives
per-class precision / recall / F1 / support, accuracy, macro and weighted averages and the confusion matrix, with
numbers identical to scikit-learn's ``classification_report(..., output_dict=True, zero_division=0)`` and
``confusion_matrix`` -- but computed with numpy only, so scikit-learn is not needed at run time.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import statistics
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = ["AverageScores", "ClassificationReport", "ConfidenceInterval", "classification_report", "mean_ci"]

ArrayLike = Any


# ----------------------------------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------------------------------


class ConfidenceInterval(NamedTuple):
    """Mean of a sample with the half-width of its normal-approximation confidence interval.

    Attributes:
      mean: sample mean.
      ci95: half-width of the interval, ``z * std / sqrt(n)`` (for the ``confidence`` passed to :func:`mean_ci`;
        the name reflects the usual 95% default). ``nan`` when ``n == 1``.
      std: sample standard deviation (``ddof=1``); ``nan`` when ``n == 1``.
      n: number of values.

    Example:
      >>> import fsl_jax as fj
      >>> ci = fj.mean_ci([0.8, 0.9, 1.0])
      >>> round(ci.mean, 3), ci.n
      (0.9, 3)
      >>> print(ci.format())
      90.00 +- 11.32
    """

    mean: float
    ci95: float
    std: float
    n: int

    def format(self, scale: float = 100.0, digits: int = 2) -> str:
        """Renders ``"mean +- ci"`` with both numbers multiplied by ``scale``.

        Args:
          scale: factor applied to ``mean`` and ``ci95`` (100 turns fractions into percentages).
          digits: decimals shown.

        Returns:
          e.g. ``"97.12 +- 0.45"``.

        Example:
          >>> ConfidenceInterval(0.9712, 0.0045, 0.02, 80).format()
          '97.12 +- 0.45'
          >>> ConfidenceInterval(0.25, 0.01, 0.1, 400).format(scale=1, digits=3)
          '0.250 +- 0.010'
        """
        return f"{self.mean * scale:.{digits}f} +- {self.ci95 * scale:.{digits}f}"

    def __str__(self) -> str:
        return self.format()


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> ConfidenceInterval:
    """Mean and normal-approximation confidence interval of a 1-D sample (e.g. per-episode accuracies).

    The half-width is ``z * std / sqrt(n)`` with the sample standard deviation (``ddof=1``) and ``z`` the
    ``(1 + confidence) / 2`` quantile of the standard normal distribution (1.959964 for 0.95). With a single value
    the spread is undefined and ``std`` and ``ci95`` are ``nan``.

    Args:
      values: 1-D sequence or array of finite numbers (a list, numpy or JAX array).
      confidence: confidence level, strictly between 0 and 1.

    Returns:
      A :class:`ConfidenceInterval` ``(mean, ci95, std, n)``; ``str()`` of it gives ``"97.12 +- 0.45"``-style text
      (values scaled by 100).

    Raises:
      ValueError: if ``values`` is empty, not 1-D or contains NaN / infinite entries, or if ``confidence`` is not
        in (0, 1).

    Example:
      >>> ci = mean_ci([0.9, 1.0, 0.95, 0.85])
      >>> round(ci.mean, 4), round(ci.ci95, 4), ci.n
      (0.925, 0.0633, 4)
      >>> str(ci)
      '92.50 +- 6.33'
    """
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"values must be a 1-D sequence of numbers, got {type(values).__name__}: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {arr.shape}")
    n = int(arr.shape[0])
    if n == 0:
        raise ValueError("values is empty: need at least one value to compute a mean")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"values contains {idx.size} NaN or infinite entr{'y' if idx.size == 1 else 'ies'} "
            f"(first at index {int(idx[0])}: {arr[idx[0]]})"
        )
    mean = float(arr.mean())
    if n == 1:
        return ConfidenceInterval(mean, math.nan, math.nan, 1)
    std = float(arr.std(ddof=1))
    z = statistics.NormalDist().inv_cdf(0.5 + 0.5 * float(confidence))
    return ConfidenceInterval(mean, float(z * std / math.sqrt(n)), std, n)


# ----------------------------------------------------------------------------------------------------------------
# Classification report
# ----------------------------------------------------------------------------------------------------------------


class AverageScores(NamedTuple):
    """Averaged precision / recall / F1 over the reported classes, with the total support."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationReport:
    """Per-class scores, averages and the confusion matrix of one set of predictions.

    Built by :func:`classification_report`; ``str(report)`` renders a text table laid out like scikit-learn's.

    Attributes:
      labels: the reported labels, ``[k]`` (sorted unique labels of ``y_true`` and ``y_pred`` unless given).
      label_names: display names, one per label (``str(label)`` unless given).
      precision: ``[k]`` per-class precision (0 where nothing was predicted as the class).
      recall: ``[k]`` per-class recall (0 where the class has no true example).
      f1: ``[k]`` per-class F1 score (0 where both are undefined).
      support: ``[k]`` integer number of true examples per class.
      accuracy: fraction of all samples predicted correctly.
      macro_avg: unweighted mean over classes.
      weighted_avg: mean over classes weighted by support.
      micro_avg: scores from the pooled counts of the reported classes (equal to ``accuracy`` for all three
        scores when ``labels`` covers every label that occurs).
      confusion_matrix: ``[k, k]`` integer counts, rows = true label, columns = predicted label.
      labels_cover_all: whether ``labels`` includes every label present in ``y_true`` / ``y_pred``; then
        :meth:`as_dict` and ``str()`` show an ``accuracy`` row, otherwise a ``micro avg`` row (as scikit-learn).

    Example:
      >>> import fsl_jax as fj
      >>> report = fj.classification_report(["cat", "cat", "dog", "dog"], ["cat", "dog", "dog", "dog"])
      >>> report.accuracy, report.label_names
      (0.75, ('cat', 'dog'))
      >>> report.confusion_matrix.tolist()
      [[1, 1], [0, 2]]
      >>> [round(float(p), 3) for p in report.precision]
      [1.0, 0.667]
    """

    labels: np.ndarray
    label_names: tuple[str, ...]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    accuracy: float
    macro_avg: AverageScores
    weighted_avg: AverageScores
    micro_avg: AverageScores
    confusion_matrix: np.ndarray
    labels_cover_all: bool = True

    @property
    def num_classes(self) -> int:
        """Number of reported classes."""
        return len(self.label_names)

    def as_dict(self) -> dict[str, Any]:
        """The report as a nested dict with scikit-learn's ``output_dict=True`` layout.

        Returns:
          ``{name: {"precision", "recall", "f1-score", "support"}, ..., "accuracy": float, "macro avg": {...},
          "weighted avg": {...}}`` with plain Python floats (``"micro avg"`` replaces ``"accuracy"`` when
          ``labels`` did not cover every label present). The confusion matrix is not included.

        Example:
          >>> r = classification_report([0, 1, 1], [0, 1, 0])
          >>> r.as_dict()["accuracy"], r.as_dict()["1"]["recall"]
          (0.6666666666666666, 0.5)
        """
        out: dict[str, Any] = {}
        for name, p, r, f, s in zip(self.label_names, self.precision, self.recall, self.f1, self.support):
            out[name] = {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": float(s)}

        def avg(a: AverageScores) -> dict[str, float]:
            return {"precision": a.precision, "recall": a.recall, "f1-score": a.f1, "support": float(a.support)}

        if self.labels_cover_all:
            out["accuracy"] = self.micro_avg.precision
        else:
            out["micro avg"] = avg(self.micro_avg)
        out["macro avg"] = avg(self.macro_avg)
        out["weighted avg"] = avg(self.weighted_avg)
        return out

    def to_string(self, digits: int = 2) -> str:
        """Renders the aligned text table (the same layout as scikit-learn's ``classification_report``).

        Args:
          digits: decimals shown for the scores.

        Returns:
          The multi-line table.

        Example:
          >>> print(classification_report(["a", "b", "b"], ["a", "b", "a"]).to_string(digits=3).splitlines()[2])
                     a      0.500     1.000     0.667         1
        """
        headers = ["precision", "recall", "f1-score", "support"]
        width = max(max((len(n) for n in self.label_names), default=0), len("weighted avg"), digits)
        text = ("{:>{width}s} " + " {:>9}" * len(headers)).format("", *headers, width=width) + "\n\n"
        row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
        for name, p, r, f, s in zip(self.label_names, self.precision, self.recall, self.f1, self.support):
            text += row_fmt.format(name, p, r, f, int(s), width=width, digits=digits)
        text += "\n"
        if self.labels_cover_all:
            acc_fmt = "{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n"
            text += acc_fmt.format(
                "accuracy", "", "", self.micro_avg.f1, self.micro_avg.support, width=width, digits=digits
            )
        else:
            text += row_fmt.format("micro avg", *self.micro_avg, width=width, digits=digits)
        text += row_fmt.format("macro avg", *self.macro_avg, width=width, digits=digits)
        text += row_fmt.format("weighted avg", *self.weighted_avg, width=width, digits=digits)
        return text

    def __str__(self) -> str:
        return self.to_string()


def _as_label_array(y: ArrayLike, name: str) -> np.ndarray:
    """Converts labels to a 1-D numpy array of one kind (numbers or strings), with readable errors."""
    try:
        # Python sequences go through dtype=object so that mixed lists such as [0, "a"] are caught below instead
        # of being silently turned into strings by numpy.
        arr = np.asarray(y) if hasattr(y, "dtype") or hasattr(y, "__array__") else np.asarray(y, dtype=object)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 1-D sequence of labels: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "O":
        if all(isinstance(v, str) for v in arr):
            arr = arr.astype(str)
        elif all(isinstance(v, numbers.Number) for v in arr):
            arr = np.asarray(arr.tolist())
        else:
            kinds = sorted({type(v).__name__ for v in arr})
            raise ValueError(f"{name} mixes label types {kinds}; use all ints or all strings")
    if arr.dtype.kind == "S":
        arr = arr.astype(str)
    if arr.dtype.kind not in "biufU":
        raise ValueError(f"{name} must hold integer or string labels, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} holds non-integer float values; labels must be integers or strings")
    return arr


def _index_of(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Position of each value in ``labels`` (unsorted, unique), or -1 where it is not one of them."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    pos = np.searchsorted(sorted_labels, values)
    pos = np.clip(pos, 0, len(labels) - 1)
    found = sorted_labels[pos] == values
    return np.where(found, order[pos], -1)


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """``num / den`` elementwise, with 0 where ``den == 0`` (scikit-learn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = num / np.where(den == 0, 1.0, den)
    return np.where(den == 0, 0.0, out)


def classification_report(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    label_names: Sequence[str] | None = None,
    labels: ArrayLike | None = None,
) -> ClassificationReport:
    """Per-class precision, recall, F1 and support, accuracy, averages and the confusion matrix.

    Numbers match scikit-learn's ``classification_report(y_true, y_pred, labels=labels, target_names=label_names,
    output_dict=True, zero_division=0)`` and ``confusion_matrix(y_true, y_pred, labels=labels)``: an undefined
    precision / recall / F1 (a class never predicted, or with no true example) counts as 0.

    Args:
      y_true: ``[n]`` true labels (ints or strings; numpy, JAX arrays and lists are accepted).
      y_pred: ``[n]`` predicted labels, of the same kind.
      label_names: optional display names, one per reported label (in the order of ``labels``).
      labels: optional labels to report, in this order; defaults to the sorted union of ``y_true`` and ``y_pred``.
        Samples whose true / predicted label is not listed are left out of the confusion matrix and the
        per-class counts (as in scikit-learn).

    Returns:
      A :class:`ClassificationReport`.

    Raises:
      ValueError: if ``y_true`` / ``y_pred`` are empty, not 1-D, differ in length or mix label kinds, if
        ``labels`` is empty, has duplicates or is of another kind than the data, or if ``label_names`` does not
        have one name per label.

    Example:
      >>> r = classification_report([0, 1, 2, 2], [0, 2, 2, 2], label_names=["cat", "dog", "fox"])
      >>> r.recall.tolist(), r.accuracy
      ([1.0, 0.0, 1.0], 0.75)
      >>> r.confusion_matrix.tolist()
      [[1, 0, 0], [0, 0, 1], [0, 0, 2]]
    """
    yt = _as_label_array(y_true, "y_true")
    yp = _as_label_array(y_pred, "y_pred")
    if yt.shape[0] != yp.shape[0]:
        raise ValueError(f"y_true and y_pred must have the same length, got {yt.shape[0]} and {yp.shape[0]}")
    if yt.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty: need at least one sample")
    if (yt.dtype.kind == "U") != (yp.dtype.kind == "U"):
        raise ValueError(f"y_true and y_pred mix string and numeric labels (dtypes {yt.dtype} and {yp.dtype})")
    present = np.unique(np.concatenate([yt, yp]))
    if labels is None:
        labs = present
        cover_all = True
    else:
        labs = _as_label_array(labels, "labels")
        if labs.shape[0] == 0:
            raise ValueError("labels is empty: give at least one label, or None for all labels present")
        if (labs.dtype.kind == "U") != (yt.dtype.kind == "U"):
            raise ValueError(f"labels (dtype {labs.dtype}) must be of the same kind as y_true (dtype {yt.dtype})")
        if np.unique(labs).shape[0] != labs.shape[0]:
            raise ValueError(f"labels contains duplicates: {labs.tolist()}")
        cover_all = bool(np.all(_index_of(present, labs) >= 0))
    k = int(labs.shape[0])
    if label_names is not None:
        if isinstance(label_names, str):
            raise ValueError("label_names must be a sequence of names, got a single string")
        names = tuple(str(n) for n in label_names)
        if len(names) != k:
            raise ValueError(f"label_names has {len(names)} names but there are {k} labels: {labs.tolist()}")
    else:
        names = tuple("%s" % lab for lab in labs.tolist())

    ti = _index_of(yt, labs)
    pi = _index_of(yp, labs)
    true_sum = np.bincount(ti[ti >= 0], minlength=k).astype(np.int64)
    pred_sum = np.bincount(pi[pi >= 0], minlength=k).astype(np.int64)
    both = (ti >= 0) & (pi >= 0)
    cm = np.bincount(ti[both] * k + pi[both], minlength=k * k).reshape(k, k).astype(np.int64)
    tp = np.diag(cm).copy()

    precision = _safe_div(tp, pred_sum)
    recall = _safe_div(tp, true_sum)
    f1 = _safe_div(2.0 * tp.astype(np.float64), true_sum.astype(np.float64) + pred_sum.astype(np.float64))
    total = int(true_sum.sum())

    def micro() -> AverageScores:
        t, ps, ts = int(tp.sum()), int(pred_sum.sum()), int(true_sum.sum())
        p = float(_safe_div(t, ps))
        r = float(_safe_div(t, ts))
        f = float(_safe_div(2.0 * t, float(ts) + float(ps)))
        return AverageScores(p, r, f, total)

    def weighted(a: np.ndarray) -> float:
        return float(np.average(a, weights=true_sum)) if total > 0 else float(np.mean(a))

    return ClassificationReport(
        labels=labs,
        label_names=names,
        precision=precision,
        recall=recall,
        f1=f1,
        support=true_sum,
        accuracy=float(np.count_nonzero(yt == yp)) / float(yt.shape[0]),
        macro_avg=AverageScores(float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1)), total),
        weighted_avg=AverageScores(weighted(precision), weighted(recall), weighted(f1), total),
        micro_avg=micro(),
        confusion_matrix=cm,
        labels_cover_all=cover_all,
    )
