"""Figures for few-shot experiments: learning curves, accuracy vs. shots, confusion matrices, sinusoid fits.

Every function draws on its own :class:`matplotlib.figure.Figure` attached to the non-interactive Agg canvas
(``pyplot`` is never imported, so no global backend is switched, no window opens and nothing leaks between
calls), writes the file -- creating parent folders -- and returns its path. The format follows the file suffix
(``.png``, ``.pdf``, ``.svg``, ...). Images are saved at exactly ``figsize * dpi`` pixels (no tight bounding box),
so the output size is predictable.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_accuracy_vs_shots", "plot_confusion_matrix", "plot_learning_curve", "plot_regression_fits"]

ArrayLike = Any
PathLike = str | os.PathLike

_ANNOTATE_MAX_CLASSES = 20


def _new_figure(figsize: tuple[float, float], dpi: float) -> Figure:
    if len(figsize) != 2 or not all(isinstance(v, numbers.Real) and v > 0 for v in figsize):
        raise ValueError(f"figsize must be two positive numbers (width, height) in inches, got {figsize!r}")
    if not isinstance(dpi, numbers.Real) or dpi <= 0:
        raise ValueError(f"dpi must be a positive number, got {dpi!r}")
    fig = Figure(figsize=tuple(float(v) for v in figsize), dpi=float(dpi), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"savefig.bbox": "standard"}):  # a user rc of "tight" would change the size
        fig.savefig(out, dpi=fig.dpi)
    return out


def _vector(x: ArrayLike, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """A 1-D float array (a ``[n, 1]`` column is flattened), with errors naming the argument."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 1-D sequence of numbers: {e}") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    return arr


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (the first ``window - 1`` points average what is available)."""
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.shape[0] + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_learning_curve(
    steps: ArrayLike | Mapping[str, tuple[ArrayLike, ArrayLike]] | None,
    values: ArrayLike | Mapping[str, ArrayLike] | None,
    path: PathLike,
    *,
    label: str = "meta-loss",
    title: str | None = None,
    smooth: int = 0,
    xlabel: str = "step",
    ylabel: str | None = None,
    logy: bool = False,
    right: Mapping[str, tuple[ArrayLike, ArrayLike]] | None = None,
    right_ylabel: str | None = None,
    figsize: tuple[float, float] = (6.4, 4.0),
    dpi: float = 100,
) -> Path:
    """Plots one or several training curves (e.g. meta-loss or query accuracy against the step).

    Three ways to pass the data:

    * ``steps`` and ``values`` arrays of equal length: one curve, named ``label`` (``steps=None`` uses 0, 1, ...);
    * ``steps`` a dict ``{name: (steps, values)}`` and ``values=None``: one curve per entry;
    * ``values`` a dict ``{name: values}`` sharing the ``steps`` array (or ``steps=None``).

    Args:
      steps: x values, a dict of series, or ``None`` (see above).
      values: y values, a dict of series, or ``None`` (see above).
      path: output file; parent folders are created.
      label: name of the single curve (and default y-axis label).
      title: optional figure title.
      smooth: trailing moving-average window in points; 0 or 1 draws the raw curve only, larger values draw the
        raw curve faintly with the smoothed one on top (clamped to the series length).
      xlabel: x-axis label.
      ylabel: y-axis label; defaults to ``label`` for a single curve and ``"value"`` for several.
      logy: use a logarithmic y axis.
      right: optional ``{name: (steps, values)}`` drawn against a second y axis on the right (e.g. accuracy beside
        a loss), in dotted lines.
      right_ylabel: that axis's label (default: the single series' name, else ``"value"``).
      figsize: figure size in inches.
      dpi: resolution; the image is ``figsize * dpi`` pixels.

    Returns:
      The output path.

    Raises:
      ValueError: if a series is empty, not 1-D, or its steps and values differ in length, if a dict of series is
        empty, or if ``smooth`` is negative.

    Example:
      >>> import numpy as np, tempfile, os
      >>> out = plot_learning_curve(np.arange(100), np.exp(-np.arange(100) / 30), os.path.join(tempfile.mkdtemp(),
      ...     "curves", "loss.png"), smooth=5)
      >>> out.name, out.stat().st_size > 0
      ('loss.png', True)
    """
    if isinstance(smooth, bool) or not isinstance(smooth, numbers.Integral) or smooth < 0:
        raise ValueError(f"smooth must be a non-negative integer window size, got {smooth!r}")
    series: list[tuple[str, np.ndarray, np.ndarray]] = []

    def add(name: str, s: ArrayLike | None, v: ArrayLike, where: str) -> None:
        vv = _vector(v, f"values of {where}")
        ss = np.arange(vv.shape[0], dtype=np.float64) if s is None else _vector(s, f"steps of {where}")
        if ss.shape[0] != vv.shape[0]:
            raise ValueError(f"steps and values of {where} differ in length: {ss.shape[0]} vs {vv.shape[0]}")
        series.append((str(name), ss, vv))

    if isinstance(steps, Mapping):
        if values is not None:
            raise ValueError("values must be None when steps is a dict {name: (steps, values)}")
        if not steps:
            raise ValueError("steps is an empty dict: give at least one series")
        for name, pair in steps.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"steps[{name!r}] must be a (steps, values) pair, got {type(pair).__name__}")
            add(name, pair[0], pair[1], f"steps[{name!r}]")
    elif isinstance(values, Mapping):
        if not values:
            raise ValueError("values is an empty dict: give at least one series")
        for name, v in values.items():
            add(name, steps, v, f"values[{name!r}]")
    else:
        if values is None:
            raise ValueError("values is None: give a values array, or a dict of series as steps")
        add(label, steps, values, f"{label!r}")

    left_count = len(series)
    if right is not None:
        if not isinstance(right, Mapping) or not right:
            raise ValueError(f"right must be a non-empty dict {{name: (steps, values)}} or None, got {right!r}")
        for name, pair in right.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"right[{name!r}] must be a (steps, values) pair, got {type(pair).__name__}")
            add(name, pair[0], pair[1], f"right[{name!r}]")

    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    smoothed = False
    for i, (name, s, v) in enumerate(series[:left_count]):
        color = f"C{i % 10}"
        window = min(int(smooth), v.shape[0])
        if window > 1:
            smoothed = True
            ax.plot(s, v, color=color, alpha=0.3, linewidth=1.0)
            ax.plot(s, _moving_average(v, window), color=color, linewidth=1.8, label=f"{name} (avg {window})")
        else:
            ax.plot(s, v, color=color, linewidth=1.5, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if ylabel is not None else (series[0][0] if left_count == 1 else "value"))
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        twin = ax.twinx()
        for i, (name, s, v) in enumerate(series[left_count:], start=left_count):
            twin.plot(s, v, color=f"C{i % 10}", linewidth=1.5, linestyle=":", label=name)
        twin.set_ylabel(right_ylabel if right_ylabel is not None else (series[-1][0] if len(right) == 1 else "value"))
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if right is not None:  # two axes: the legend goes below them, where it covers no curve
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small")
    elif len(series) > 1 or smoothed:
        ax.legend(handles, labels, fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _mean_and_ci(v: Any, where: str) -> tuple[float, float]:
    """Accepts a number, a ``(mean, ci95, ...)`` sequence or a :class:`~fsl_jax.report.ConfidenceInterval`."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v), 0.0
    if hasattr(v, "mean") and hasattr(v, "ci95"):
        return float(v.mean), float(v.ci95)
    if isinstance(v, (tuple, list, np.ndarray)) and len(v) >= 2:
        try:
            return float(v[0]), float(v[1])
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{where} must be a (mean, ci95) pair or a number, got {v!r}")


def plot_accuracy_vs_shots(
    results: Mapping[str, Mapping[int, Any]],
    path: PathLike,
    *,
    title: str | None = None,
    ylabel: str = "accuracy",
    figsize: tuple[float, float] = (6.4, 4.0),
    dpi: float = 100,
) -> Path:
    """Plots accuracy against the number of shots, one line with confidence-interval error bars per method.

    Args:
      results: ``{method_name: {shots: (mean, ci95)}}``; a value may also be a
        :class:`~fsl_jax.report.ConfidenceInterval` or a bare number (no error bar). Shots are sorted.
      path: output file; parent folders are created.
      title: optional figure title.
      ylabel: y-axis label (values are plotted as given, fractions or percentages).
      figsize: figure size in inches.
      dpi: resolution; the image is ``figsize * dpi`` pixels.

    Returns:
      The output path.

    Raises:
      ValueError: if ``results`` or a method's dict is empty, a shot count is not a positive integer, or a value
        is not a number / ``(mean, ci95)`` pair, or a ``ci95`` is negative.

    Example:
      >>> import tempfile, os
      >>> res = {"MAML": {1: (0.48, 0.02), 5: (0.63, 0.01)}, "ProtoNet": {1: (0.49, 0.02), 5: (0.68, 0.01)}}
      >>> plot_accuracy_vs_shots(res, os.path.join(tempfile.mkdtemp(), "shots.png")).suffix
      '.png'
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a dict {{method: {{shots: (mean, ci95)}}}}, got {type(results).__name__}")
    if not results:
        raise ValueError("results is empty: give at least one method")
    parsed: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for method, by_shot in results.items():
        if not isinstance(by_shot, Mapping) or not by_shot:
            raise ValueError(f"results[{method!r}] must be a non-empty dict {{shots: (mean, ci95)}}, got {by_shot!r}")
        rows: list[tuple[int, float, float]] = []
        for shot, v in by_shot.items():
            if isinstance(shot, bool) or not isinstance(shot, numbers.Integral) or shot <= 0:
                raise ValueError(f"results[{method!r}] has a shot count that is not a positive integer: {shot!r}")
            m, c = _mean_and_ci(v, f"results[{method!r}][{shot!r}]")
            if not math.isfinite(m):
                raise ValueError(f"results[{method!r}][{shot!r}] has a non-finite mean: {m}")
            if c < 0:
                raise ValueError(f"results[{method!r}][{shot!r}] has a negative ci95: {c}")
            rows.append((int(shot), m, c))
        rows.sort()
        arr = np.asarray(rows, dtype=np.float64)
        parsed.append((str(method), arr[:, 0], arr[:, 1], arr[:, 2]))

    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    all_shots = sorted({int(s) for _, shots, _, _ in parsed for s in shots})
    for i, (method, shots, means, cis) in enumerate(parsed):
        ax.errorbar(
            shots,
            means,
            yerr=np.nan_to_num(cis),
            label=method,
            color=f"C{i % 10}",
            marker="o",
            markersize=4,
            capsize=3,
            linewidth=1.5,
        )
    if all_shots[-1] / all_shots[0] >= 20:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(all_shots)
    ax.set_xticklabels([str(s) for s in all_shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_confusion_matrix(
    matrix: ArrayLike,
    path: PathLike,
    *,
    label_names: Sequence[str] | None = None,
    normalize: bool = True,
    title: str | None = None,
    cmap: str = "Blues",
    figsize: tuple[float, float] = (6.0, 5.0),
    dpi: float = 100,
) -> Path:
    """Draws a confusion matrix as a heat map (rows = true label, columns = predicted label).

    Args:
      matrix: ``[k, k]`` non-negative counts, e.g. ``ClassificationReport.confusion_matrix``.
      path: output file; parent folders are created.
      label_names: optional ``k`` class names for the ticks (default ``0 .. k-1``).
      normalize: divide each row by its total (recall per true class; rows with no sample stay 0); cells are then
        annotated as fractions, otherwise as counts. Annotations are drawn for ``k <= 20``.
      title: optional figure title.
      cmap: matplotlib colormap name.
      figsize: figure size in inches.
      dpi: resolution; the image is ``figsize * dpi`` pixels.

    Returns:
      The output path.

    Raises:
      ValueError: if ``matrix`` is empty, not square, has negative or non-finite entries, or ``label_names`` does
        not have ``k`` names.

    Example:
      >>> import tempfile, os
      >>> out = plot_confusion_matrix([[5, 1], [2, 7]], os.path.join(tempfile.mkdtemp(), "cm.png"),
      ...                             label_names=["cat", "dog"])
      >>> out.exists()
      True
    """
    try:
        cm = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"matrix must be a square array of counts: {e}") from None
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"matrix must be square [k, k], got shape {cm.shape}")
    if cm.shape[0] == 0:
        raise ValueError("matrix is empty")
    if not np.all(np.isfinite(cm)) or np.any(cm < 0):
        raise ValueError("matrix must hold finite, non-negative counts")
    k = cm.shape[0]
    if label_names is None:
        names = [str(i) for i in range(k)]
    else:
        if isinstance(label_names, str):
            raise ValueError("label_names must be a sequence of names, got a single string")
        names = [str(n) for n in label_names]
        if len(names) != k:
            raise ValueError(f"label_names has {len(names)} names but matrix has {k} classes")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        shown = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    else:
        shown = cm

    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    im = ax.imshow(shown, interpolation="nearest", cmap=cmap, vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(np.arange(k))
    ax.set_yticks(np.arange(k))
    ax.set_xticklabels(names, rotation=45 if max(len(n) for n in names) > 3 else 0, ha="right" if k > 1 else "center")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    if k <= _ANNOTATE_MAX_CLASSES:
        fontsize = 9 if k <= 10 else 6
        for i in range(k):
            for j in range(k):
                val = shown[i, j]
                text = f"{val:.2f}" if normalize else (f"{int(val)}" if float(val).is_integer() else f"{val:.3g}")
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if val > 0.5 * vmax else "black",
                )
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_regression_fits(
    x_grid: ArrayLike,
    curves: Mapping[str, ArrayLike],
    path: PathLike,
    *,
    title: str | None = None,
    points: tuple[ArrayLike, ArrayLike] | None = None,
    points_label: str = "support points",
    xlabel: str = "x",
    ylabel: str = "y",
    figsize: tuple[float, float] = (6.4, 4.0),
    dpi: float = 100,
) -> Path:
    """Plots regression curves over a common x grid, e.g. a sinusoid task's ground truth and adapted predictions.

    Args:
      x_grid: ``[g]`` x values (a ``[g, 1]`` column is accepted).
      curves: ``{label: y_values}`` with ``g`` values each (``[g, 1]`` accepted); e.g. ``{"ground truth": ...,
        "pre-update": ..., "1 grad step": ..., "10 grad steps": ...}``. A label containing "truth" is drawn as a
        thick black line.
      path: output file; parent folders are created.
      title: optional figure title.
      points: optional ``(x, y)`` support points, drawn as markers.
      points_label: legend entry for ``points``.
      xlabel: x-axis label.
      ylabel: y-axis label.
      figsize: figure size in inches.
      dpi: resolution; the image is ``figsize * dpi`` pixels.

    Returns:
      The output path.

    Raises:
      ValueError: if ``x_grid`` or ``curves`` is empty, a curve's length differs from ``x_grid``, or ``points``
        is not an ``(x, y)`` pair of equal lengths.

    Example:
      >>> import numpy as np, tempfile, os
      >>> x = np.linspace(-5, 5, 100)
      >>> out = plot_regression_fits(x, {"ground truth": np.sin(x), "adapted": 0.9 * np.sin(x)},
      ...     os.path.join(tempfile.mkdtemp(), "fit.png"), points=(x[::20], np.sin(x[::20])))
      >>> out.exists()
      True
    """
    xg = _vector(x_grid, "x_grid")
    if not isinstance(curves, Mapping):
        raise ValueError(f"curves must be a dict {{label: y_values}}, got {type(curves).__name__}")
    if not curves:
        raise ValueError("curves is empty: give at least one curve")
    parsed = []
    for name, y in curves.items():
        yy = _vector(y, f"curves[{name!r}]")
        if yy.shape[0] != xg.shape[0]:
            raise ValueError(f"curves[{name!r}] has {yy.shape[0]} values but x_grid has {xg.shape[0]}")
        parsed.append((str(name), yy))
    px = py = None
    if points is not None:
        if not isinstance(points, (tuple, list)) or len(points) != 2:
            raise ValueError(f"points must be an (x, y) pair of arrays, got {type(points).__name__}")
        px = _vector(points[0], "points[0] (x)")
        py = _vector(points[1], "points[1] (y)")
        if px.shape[0] != py.shape[0]:
            raise ValueError(f"points x and y differ in length: {px.shape[0]} vs {py.shape[0]}")

    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    color_i = 0
    for name, yy in parsed:
        if "truth" in name.lower():
            ax.plot(xg, yy, color="black", linewidth=2.5, label=name, zorder=2)
        else:
            ax.plot(xg, yy, color=f"C{color_i % 10}", linewidth=1.5, linestyle="--", label=name, zorder=3)
            color_i += 1
    if px is not None and py is not None:
        ax.scatter(px, py, marker="^", s=60, color="red", edgecolors="black", label=points_label, zorder=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    entries = len(parsed) + (px is not None)
    fig.legend(loc="outside lower center", ncols=min(3, entries), fontsize="small")  # below the axes: never on a curve
    if title:
        ax.set_title(title)
    return _save(fig, path)
