"""The fsl-jax command, the demo job and evaluation."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import fsl_jax as fj
from fsl_jax.cli import main
from fsl_jax.demo import PUBLISHED, format_table, run_sinusoid


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fsl_jax.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _help(capsys, *args):
    """``main([*args, "--help"])`` in this process (one process start per command cost 5 s here): exit code, stdout."""
    try:
        code = main([*args, "--help"])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().out


def test_help_texts(capsys):
    top = _cli("--help")  # once as a process: the module entry point
    assert top.returncode == 0
    for command in ("demo", "train", "eval", "report"):
        assert command in top.stdout
        code, out = _help(capsys, command)
        assert code == 0 and "usage: fsl-jax " + command in out
    assert "--meta-batch" in _help(capsys, "train")[1]


def test_wrong_flag_is_one_line_without_traceback():
    result = _cli("train", "--wayz", "5")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "--wayz" in result.stderr
    bad_choice = _cli("train", "--learner", "mamll")
    assert bad_choice.returncode == 2 and "mamll" in bad_choice.stderr and "Traceback" not in bad_choice.stderr


def test_bad_value_is_a_clean_error(capsys, tmp_path):
    assert main(["train", "--steps", "0", "--out", str(tmp_path / "unused")]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    # a value rejected by validation writes nothing, so the corrected command works on the same folder
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--ways", "500", "--out", str(out)]) == 2
    assert "--ways 500 exceeds the 5 training classes of digits" in capsys.readouterr().err
    assert not out.exists()
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--learner",
                "protonet",
                "--ways",
                "5",
                "--shots",
                "1",
                "--queries",
                "2",
                "--meta-batch",
                "2",
                "--steps",
                "2",
                "--no-eval",
                "--out",
                str(out),
            ]
        )
        == 0
    )


def _rows(folder):
    with open(folder / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_train_then_eval_sinusoid(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--data", "sinusoid", "--steps", "40", "--meta-batch", "4", "--episodes", "20", "--out", str(out)]
        )
        == 0
    )
    assert (out / "config.json").exists()
    assert fj.latest_step(out / "checkpoints") == 40
    assert os.path.getsize(out / "learning_curve.png") > 5_000  # train draws the curve itself
    assert main(["eval", str(out), "--episodes", "20"]) == 0
    printed = capsys.readouterr().out
    assert "after 40 steps: mse" in printed
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "last at step 40" in printed and "test at step 40: mse" in printed
    # a second train call on the same folder resumes instead of restarting: it starts at step 40
    assert (
        main(["train", "--data", "sinusoid", "--steps", "50", "--meta-batch", "4", "--no-eval", "--out", str(out)]) == 0
    )
    assert "resuming from step 40" in capsys.readouterr().err
    assert fj.latest_step(out / "checkpoints") == 50
    rows = [r for r in _rows(out) if "event" not in r]
    assert [r["step"] for r in rows] == [2 * i for i in range(1, 21)] + [42, 44, 46, 48, 50]  # each step once
    starts = [r["step"] for r in _rows(out) if r.get("event") == "start"]
    assert starts == [0, 40]
    assert main(["train", "--data", "sinusoid", "--steps", "60", "--meta-batch", "8", "--out", str(out)]) == 2
    assert "meta_batch" in capsys.readouterr().err


def test_train_digits_classification(tmp_path, capsys):
    out = tmp_path / "digits"
    assert (
        main(
            [
                "train",
                "--learner",
                "protonet",
                "--data",
                "digits",
                "--ways",
                "5",
                "--shots",
                "1",
                "--queries",
                "5",
                "--meta-batch",
                "4",
                "--steps",
                "60",
                "--episodes",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    saved = json.loads((out / "eval.json").read_text())
    assert saved["metric"] == "accuracy" and saved["episodes"] == 100 and saved["step"] == 60
    assert f"test: accuracy {100 * saved['mean']:.2f} +- {100 * saved['ci95']:.2f} %" in printed
    # unseen digits 5-9, 5-way 1-shot: chance is 20 %; a ProtoNet Conv-4 is well above it after 60 steps
    assert saved["mean"] - saved["ci95"] > 0.35, saved
    assert main(["train", "--data", "digits", "--ways", "6", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_ctrl_c_saves_and_the_same_command_resumes_bit_identically(tmp_path):
    """SIGINT to `fsl-jax train` at a random moment: exit 130, checkpoint of the last step, resume hint; running the
    printed command again finishes with exactly the metrics of an uninterrupted run."""
    args = ["train", "--data", "sinusoid", "--steps", "3000", "--no-eval"]  # ~1-2 ms per step: stopped early
    reference = subprocess.Popen(
        [sys.executable, "-m", "fsl_jax.cli", *args, "--out", str(tmp_path / "ref")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "run"
    command = [sys.executable, "-m", "fsl_jax.cli", *args, "--out", str(run)]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "metrics.jsonl").exists() or not any("loss" in r for r in _rows(run)):
            assert victim.poll() is None, victim.communicate()
            assert time.time() < deadline, "no logged step in time"
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 0.5))
        victim.send_signal(signal.SIGINT)
        _, err = victim.communicate(timeout=120)
    finally:
        for process in (victim,):
            if process.poll() is None:
                process.kill()
    stopped = fj.latest_step(run / "checkpoints")
    assert victim.returncode == 130, err
    assert stopped is not None and stopped < 3000, "the run finished before the signal"
    assert f"fsl-jax train: stopped by SIGINT after step {stopped}" in err
    assert "Resume with: fsl-jax train --data sinusoid --steps 3000 --no-eval --out" in err
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {stopped}" in resumed.stderr
    _, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err
    ref_rows = [r for r in _rows(tmp_path / "ref") if "event" not in r]
    rows = [r for r in _rows(run) if "event" not in r]
    assert rows == ref_rows and [r["step"] for r in rows] == list(range(100, 3001, 100))


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
