"""The fsl-jax command, the demo job and evaluation."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import fsl_jax as fj
from fsl_jax.cli import main
from fsl_jax.demo import PUBLISHED, format_table, run_sinusoid


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fsl_jax.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_texts():
    top = _cli("--help")
    assert top.returncode == 0
    for command in ("demo", "train", "eval", "report"):
        assert command in top.stdout
        sub = _cli(command, "--help")
        assert sub.returncode == 0 and "usage: fsl-jax " + command in sub.stdout
    assert "--meta-batch" in _cli("train", "--help").stdout


def test_wrong_flag_is_one_line_without_traceback():
    result = _cli("train", "--wayz", "5")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "--wayz" in result.stderr
    bad_choice = _cli("train", "--learner", "mamll")
    assert bad_choice.returncode == 2 and "mamll" in bad_choice.stderr and "Traceback" not in bad_choice.stderr


def test_bad_value_is_a_clean_error(capsys):
    assert main(["train", "--steps", "0", "--out", "unused"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_train_then_eval_sinusoid(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "sinusoid", "--steps", "40", "--meta-batch", "4", "--episodes", "20",
                 "--out", str(out)]) == 0
    assert (out / "config.json").exists() and (out / "metrics.jsonl").exists()
    assert fj.latest_step(out / "checkpoints") == 40
    assert main(["eval", str(out), "--episodes", "20"]) == 0
    printed = capsys.readouterr().out
    assert "after 40 steps: mse" in printed
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "last at step 40" in printed and "test at step 40: mse" in printed
    assert os.path.getsize(out / "learning_curve.png") > 5_000
    # a second train call on the same folder resumes instead of restarting
    assert main(["train", "--data", "sinusoid", "--steps", "50", "--meta-batch", "4", "--no-eval",
                 "--out", str(out)]) == 0
    assert fj.latest_step(out / "checkpoints") == 50
    assert main(["train", "--data", "sinusoid", "--steps", "60", "--meta-batch", "8", "--out", str(out)]) == 2


def test_train_digits_classification(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["train", "--learner", "anil", "--data", "digits", "--ways", "5", "--shots", "1", "--queries", "5",
                 "--meta-batch", "4", "--steps", "10", "--episodes", "20", "--out", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["train", "--data", "digits", "--ways", "6", "--out", str(tmp_path / "x")]) == 2


def test_demo_writes_results_and_plots(tmp_path):
    summary = run_sinusoid(tmp_path, steps=30, episodes=20, shots=(5, 10), progress=False)
    for name in ("maml", "meta_sgd"):
        for k in (5, 10):
            r = summary["results"][name][k]
            assert np.isfinite(r["mse"]) and r["ci95"] > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["maml"]["5"]["mse"] == summary["results"]["maml"][5]["mse"]
    for png in ("learning_curves.png", "adapted_curves.png"):
        assert os.path.getsize(tmp_path / png) > 10_000
    table = format_table(summary)
    assert "| maml |" in table and "1.13" in table


def test_evaluate_confidence_interval_matches_hand_computation():
    learner = fj.maml(fj.models.MLP(), "mse", inner_lr=0.01)
    tasks = fj.data.sinusoid_tasks(jax.random.key(0), 30, 5, 10)
    params = learner.init(jax.random.key(1), fj.task_at(tasks, 0))
    result = fj.evaluate(learner, params, tasks, batch_size=7)
    per_task = [float(fj.meta_loss(learner, params, fj.task_at(tasks, i), jax.random.key(0))[0]) for i in range(30)]
    np.testing.assert_allclose(result.values, per_task, rtol=1e-5)
    np.testing.assert_allclose(result.ci95, 1.959964 * np.std(per_task, ddof=1) / np.sqrt(30), rtol=1e-4)
    with pytest.raises(ValueError, match="key"):
        fj.evaluate(learner, params, fj.data.DeviceSampler(np.zeros((5, 5, 1)), 2, 1, 1), episodes=10)
    with pytest.raises(ValueError, match="episodes"):
        fj.evaluate(learner, params, lambda k, n: tasks, episodes=1, key=jax.random.key(0))


@pytest.mark.slow
def test_demo_reaches_the_published_sinusoid_mse(tmp_path):
    """The full demo configuration: each learner at or below the Meta-SGD paper's Table 1."""
    summary = run_sinusoid(tmp_path, progress=False)
    for name, by_k in PUBLISHED.items():
        for k, published in by_k.items():
            assert summary["results"][name][k]["mse"] <= published, (name, k, summary["results"][name][k])
