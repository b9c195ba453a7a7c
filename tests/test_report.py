"""Tests for fsl_jax.report (against scikit-learn / scipy) and fsl_jax.plots (PNG files of the expected size)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from fsl_jax.plots import plot_accuracy_vs_shots, plot_confusion_matrix, plot_learning_curve, plot_regression_fits
from fsl_jax.report import ClassificationReport, ConfidenceInterval, classification_report, mean_ci

sk_metrics = pytest.importorskip("sklearn.metrics")


# ----------------------------------------------------------------------------------------------------------------
# mean_ci
# ----------------------------------------------------------------------------------------------------------------


def test_mean_ci_matches_hand_computation_and_scipy():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.6, 1.0, size=600)
    ci = mean_ci(x)
    assert isinstance(ci, ConfidenceInterval)
    assert ci.n == 600
    assert ci.mean == pytest.approx(x.mean(), rel=1e-12)
    assert ci.std == pytest.approx(x.std(ddof=1), rel=1e-12)
    assert ci.ci95 == pytest.approx(1.959963984540054 * x.std(ddof=1) / math.sqrt(600), rel=1e-9)
    stats = pytest.importorskip("scipy.stats")
    lo, hi = stats.norm.interval(0.95, loc=x.mean(), scale=stats.sem(x))
    assert ci.ci95 == pytest.approx((hi - lo) / 2, rel=1e-9)
    lo, hi = stats.norm.interval(0.99, loc=x.mean(), scale=stats.sem(x))
    assert mean_ci(x, confidence=0.99).ci95 == pytest.approx((hi - lo) / 2, rel=1e-9)


def test_mean_ci_z_values_and_accepts_lists_and_jax():
    x = [1.0, 2.0, 3.0, 4.0]
    sd = statistics.stdev(x)
    assert mean_ci(x, 0.9).ci95 == pytest.approx(1.6448536269514722 * sd / 2, rel=1e-9)
    assert mean_ci(x, 0.95).ci95 == pytest.approx(1.959963984540054 * sd / 2, rel=1e-9)
    jnp = pytest.importorskip("jax.numpy")
    assert mean_ci(jnp.asarray(x)).mean == pytest.approx(2.5)
    m, c, s, n = mean_ci(np.arange(5))  # plain tuple unpacking works
    assert (m, n) == (2.0, 5) and c > 0 and s > 0


def test_mean_ci_formatting():
    ci = ConfidenceInterval(0.9712, 0.0045, 0.02, 80)
    assert str(ci) == "97.12 +- 0.45"
    assert ci.format() == "97.12 +- 0.45"
    assert ci.format(scale=1, digits=3) == "0.971 +- 0.004"
    assert ci.format(scale=1000, digits=0) == "971 +- 4"
    assert str(mean_ci([0.5, 0.5, 0.5])) == "50.00 +- 0.00"


def test_mean_ci_single_value_has_nan_spread():
    ci = mean_ci([0.7])
    assert ci.mean == 0.7 and ci.n == 1 and math.isnan(ci.std) and math.isnan(ci.ci95)


@pytest.mark.parametrize(
    "values, confidence, match",
    [
        ([], 0.95, "values is empty"),
        ([1.0, float("nan")], 0.95, "values contains 1 NaN"),
        ([1.0, float("inf")], 0.95, "values contains"),
        ([[1.0, 2.0]], 0.95, "values must be 1-D"),
        (["a", "b"], 0.95, "values must be"),
        ([1.0, 2.0], 0.0, "confidence must be .* got 0.0"),
        ([1.0, 2.0], 1.0, "confidence must be .* got 1.0"),
        ([1.0, 2.0], 95, "confidence must be .* got 95"),
        ([1.0, 2.0], -0.5, "confidence"),
    ],
)
def test_mean_ci_errors(values, confidence, match):
    with pytest.raises(ValueError, match=match):
        mean_ci(values, confidence=confidence)


# ----------------------------------------------------------------------------------------------------------------
# classification_report vs scikit-learn
# ----------------------------------------------------------------------------------------------------------------


def _assert_matches_sklearn(y_true, y_pred, *, label_names=None, labels=None, compare_text=True):
    rep = classification_report(y_true, y_pred, label_names=label_names, labels=labels)
    assert isinstance(rep, ClassificationReport)
    expected = sk_metrics.classification_report(
        y_true, y_pred, labels=labels, target_names=label_names, output_dict=True, zero_division=0
    )
    got = rep.as_dict()
    assert list(got) == list(expected)
    for key, exp in expected.items():
        if isinstance(exp, dict):
            assert got[key] == exp, key  # exact equality, float for float
        else:
            assert got[key] == exp, key
    cm = sk_metrics.confusion_matrix(y_true, y_pred, labels=labels)
    np.testing.assert_array_equal(rep.confusion_matrix, cm)
    if not compare_text:
        return rep
    text = sk_metrics.classification_report(y_true, y_pred, labels=labels, target_names=label_names, zero_division=0)
    assert str(rep) == text
    assert rep.to_string(digits=4) == sk_metrics.classification_report(
        y_true, y_pred, labels=labels, target_names=label_names, zero_division=0, digits=4
    )
    return rep


@pytest.mark.parametrize("seed", range(6))
def test_classification_report_matches_sklearn_random_ints(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    n = int(rng.integers(20, 300))
    y_true = rng.integers(0, k, size=n)
    # noisy predictions, mostly right
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, size=n))
    rep = _assert_matches_sklearn(y_true, y_pred)
    assert rep.accuracy == sk_metrics.accuracy_score(y_true, y_pred)
    np.testing.assert_array_equal(rep.support, np.bincount(y_true, minlength=len(rep.labels))[rep.labels])


def test_classification_report_class_never_predicted_and_never_true():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    y_pred = np.array([0, 1, 1, 1, 0, 0, 4, 3])  # class 2 never predicted, class 4 never true
    rep = _assert_matches_sklearn(y_true, y_pred)
    i2 = list(rep.labels).index(2)
    i4 = list(rep.labels).index(4)
    assert rep.precision[i2] == 0 and rep.f1[i2] == 0
    assert rep.recall[i4] == 0 and rep.support[i4] == 0 and rep.f1[i4] == 0


@pytest.mark.parametrize("seed", range(3))
def test_classification_report_matches_sklearn_strings(seed):
    rng = np.random.default_rng(100 + seed)
    classes = np.array(["cat", "dog", "fox", "hippopotamus", "owl"])
    n = 150
    y_true = classes[rng.integers(0, 5, size=n)]
    y_pred = np.where(rng.random(n) < 0.5, y_true, classes[rng.integers(0, 5, size=n)])
    y_pred[y_pred == "owl"] = "cat"  # "owl" is never predicted
    rep = _assert_matches_sklearn(list(y_true), list(y_pred))
    assert rep.label_names == tuple(sorted(classes))
    assert rep.precision[rep.label_names.index("owl")] == 0


def test_classification_report_label_names_and_labels_order():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 4, size=120)
    y_pred = np.where(rng.random(120) < 0.7, y_true, rng.integers(0, 4, size=120))
    names = ["zero", "one", "two", "three"]
    _assert_matches_sklearn(y_true, y_pred, label_names=names)
    # custom order, and a label that never occurs
    rep = _assert_matches_sklearn(y_true, y_pred, labels=[3, 1, 0, 2, 9])
    assert rep.labels.tolist() == [3, 1, 0, 2, 9]
    assert rep.support[-1] == 0
    # a subset of the labels: scikit-learn reports "micro avg" instead of "accuracy"
    rep = _assert_matches_sklearn(y_true, y_pred, labels=[2, 0], label_names=["two", "zero"])
    assert not rep.labels_cover_all and "micro avg" in rep.as_dict()


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
def test_classification_report_binary_perfect_and_single_class():
    _assert_matches_sklearn([0, 1, 1, 0], [0, 1, 1, 0])
    _assert_matches_sklearn(["a", "a", "a"], ["a", "a", "a"])
    # no correct prediction at all: scikit-learn's text then shows supports as floats ("3.0"), an artefact of its
    # internal zero-filled float arrays; the numbers (as_dict, confusion matrix) still match exactly.
    rep = _assert_matches_sklearn([1, 1, 1], [0, 0, 0], compare_text=False)
    assert str(rep).splitlines()[3].split() == ["1", "0.00", "0.00", "0.00", "3"]


def test_classification_report_accepts_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    rep = classification_report(jnp.array([0, 1, 2, 2]), jnp.array([0, 2, 2, 2]), label_names=["a", "b", "c"])
    assert rep.recall.tolist() == [1.0, 0.0, 1.0]
    assert rep.accuracy == 0.75
    assert rep.confusion_matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 2]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y_true=[0, 1, 2], y_pred=[0, 1]), "same length"),
        (dict(y_true=[], y_pred=[]), "empty"),
        (dict(y_true=[0, 1], y_pred=[0, 1], label_names=["a"]), "label_names has 1 names but there are 2"),
        (dict(y_true=[0, 1], y_pred=[0, 1], label_names=["a", "b", "c"]), "label_names"),
        (dict(y_true=[0, 1], y_pred=[0, 1], label_names="ab"), "label_names"),
        (dict(y_true=[0, 1], y_pred=["a", "b"]), "mix string and numeric"),
        (dict(y_true=[0, "a"], y_pred=[0, 1]), "y_true mixes label types"),
        (dict(y_true=[[0, 1]], y_pred=[[0, 1]]), "y_true must be 1-D"),
        (dict(y_true=[0.5, 1.0], y_pred=[0.0, 1.0]), "y_true holds non-integer"),
        (dict(y_true=[0, 1], y_pred=[0, 1], labels=[]), "labels is empty"),
        (dict(y_true=[0, 1], y_pred=[0, 1], labels=[0, 0]), "labels contains duplicates"),
        (dict(y_true=[0, 1], y_pred=[0, 1], labels=["a", "b"]), "labels"),
    ],
)
def test_classification_report_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        classification_report(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------------------------


def _check_png(path, width_px, height_px):
    import matplotlib.image

    assert path.exists() and path.stat().st_size > 0
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (height_px, width_px)
    assert img.std() > 0  # something was drawn


def test_plot_learning_curve_single_and_multi(tmp_path):
    steps = np.arange(0, 500, 5)
    loss = np.exp(-steps / 200) + 0.05 * np.random.default_rng(0).standard_normal(steps.size)
    out = plot_learning_curve(steps, loss, tmp_path / "a" / "b" / "loss.png", title="meta-loss", smooth=10)
    assert out == tmp_path / "a" / "b" / "loss.png"
    _check_png(out, 640, 400)
    out = plot_learning_curve(
        {"train": (steps, loss), "val": (steps[::4], loss[::4] + 0.1)},
        None,
        str(tmp_path / "multi.png"),
        figsize=(5, 3),
        dpi=80,
        smooth=1000,
        logy=True,
    )
    _check_png(out, 400, 240)
    out = plot_learning_curve(None, {"train": loss, "val": loss + 0.1}, tmp_path / "shared.png")
    _check_png(out, 640, 400)


def test_plot_accuracy_vs_shots(tmp_path):
    res = {
        "MAML": {1: (0.48, 0.02), 5: (0.63, 0.01), 10: mean_ci([0.7, 0.72, 0.69])},
        "ProtoNet": {5: (0.68, 0.01), 1: (0.49, 0.02), 20: 0.75},
    }
    out = plot_accuracy_vs_shots(res, tmp_path / "figs" / "shots.png", title="5-way")
    _check_png(out, 640, 400)


def test_plot_confusion_matrix(tmp_path):
    rep = classification_report([0, 1, 2, 2, 1, 0], [0, 2, 2, 2, 1, 1], label_names=["cat", "dog", "fox"])
    out = plot_confusion_matrix(rep.confusion_matrix, tmp_path / "cm" / "cm.png", label_names=rep.label_names)
    _check_png(out, 600, 500)
    out = plot_confusion_matrix(
        np.zeros((3, 3)) + np.eye(3),
        tmp_path / "cm_counts.png",
        normalize=False,
        title="counts",
        figsize=(4, 4),
        dpi=50,
    )
    _check_png(out, 200, 200)
    big = np.random.default_rng(0).integers(0, 10, size=(25, 25))  # no per-cell annotations
    big[3] = 0  # a class with no sample: its normalised row stays 0
    _check_png(plot_confusion_matrix(big, tmp_path / "big.png"), 600, 500)


def test_plot_regression_fits(tmp_path):
    x = np.linspace(-5, 5, 100)
    curves = {"ground truth": np.sin(x), "pre-update": np.zeros_like(x), "10 steps": 0.9 * np.sin(x)[:, None]}
    out = plot_regression_fits(
        x[:, None], curves, tmp_path / "fit.png", title="sinusoid", points=(x[::10], np.sin(x[::10]))
    )
    _check_png(out, 640, 400)
    _check_png(plot_regression_fits(x, {"fit": np.cos(x)}, tmp_path / "nofit.png"), 640, 400)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: plot_learning_curve([], [], p), "values of .* is empty"),
        (lambda p: plot_learning_curve([0, 1, 2], [1.0, 2.0], p), "differ in length"),
        (lambda p: plot_learning_curve([0, 1], np.ones((2, 2)), p), "must be 1-D"),
        (lambda p: plot_learning_curve({}, None, p), "steps is an empty dict"),
        (lambda p: plot_learning_curve({"a": [1, 2, 3]}, None, p), r"steps\['a'\] must be a \(steps, values\)"),
        (lambda p: plot_learning_curve([0, 1], [1, 2], p, smooth=-1), "smooth"),
        (lambda p: plot_learning_curve([0, 1], None, p), "values is None"),
        (lambda p: plot_learning_curve([0, 1], [1, 2], p, figsize=(0, 3)), "figsize"),
        (lambda p: plot_accuracy_vs_shots({}, p), "results is empty"),
        (lambda p: plot_accuracy_vs_shots({"m": {}}, p), r"results\['m'\]"),
        (lambda p: plot_accuracy_vs_shots({"m": {0: (0.5, 0.1)}}, p), "positive integer"),
        (lambda p: plot_accuracy_vs_shots({"m": {1: "x"}}, p), r"results\['m'\]\[1\]"),
        (lambda p: plot_accuracy_vs_shots({"m": {1: (0.5, -0.1)}}, p), "negative ci95"),
        (lambda p: plot_confusion_matrix(np.ones((2, 3)), p), "matrix must be square"),
        (lambda p: plot_confusion_matrix(np.ones((0, 0)), p), "matrix is empty"),
        (lambda p: plot_confusion_matrix([[1, -1], [0, 1]], p), "non-negative"),
        (lambda p: plot_confusion_matrix(np.eye(2), p, label_names=["a"]), "label_names has 1 names"),
        (lambda p: plot_regression_fits([], {"a": []}, p), "x_grid is empty"),
        (lambda p: plot_regression_fits([0, 1], {}, p), "curves is empty"),
        (lambda p: plot_regression_fits([0, 1], {"a": [1, 2, 3]}, p), r"curves\['a'\] has 3 values"),
        (lambda p: plot_regression_fits([0, 1], {"a": [1, 2]}, p, points=([0], [1, 2])), "points x and y"),
        (lambda p: plot_regression_fits([0, 1], {"a": [1, 2]}, p, points=[0, 1, 2]), "points must be"),
    ],
)
def test_plot_errors(tmp_path, call, match):
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match=match):
        call(path)
    assert not path.exists()
