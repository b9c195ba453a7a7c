"""Runs stopped at a random moment (SIGKILL, SIGINT, SIGTERM) and resumed end bit-identical to an uninterrupted run.

Real subprocesses, real signals. SIGINT and SIGTERM must save the step in flight and exit non-zero; SIGKILL loses at
most the steps since the last checkpoint. In every case the resumed run's final parameters and optimiser state equal
the uninterrupted run's bit for bit, and its ``metrics.jsonl`` holds every logged step exactly once, with the
uninterrupted run's values.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fsl_jax as fj

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
STEPS = 200


def _run(ckpt, out, log_dir, *extra):
    return subprocess.Popen(
        [sys.executable, WORKER, str(ckpt), str(out), str(STEPS), str(log_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _load(path):
    with np.load(path) as f:
        return int(f["step"]), [f[k] for k in sorted(f.files, key=lambda k: (len(k), k)) if k != "step"]


def _rows(log_dir):
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    return [r for r in lines if "event" not in r], [r for r in lines if "event" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, shared by the three stop tests."""
    folder = tmp_path_factory.mktemp("reference")
    run = _run("-", folder / "reference.npz", folder)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    return _load(folder / "reference.npz"), _rows(folder)[0]


def _wait_for_checkpoint(victim, ckpt, at_least=20):
    deadline = time.time() + 240
    while fj.latest_step(ckpt) is None or fj.latest_step(ckpt) < at_least:
        assert victim.poll() is None, victim.communicate()
        assert time.time() < deadline, "the worker made no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
def test_stop_at_a_random_moment_then_resume_is_bit_identical(sig, reference, tmp_path):
    (ref_step, ref_leaves), ref_rows = reference
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    victim = _run(ckpt, tmp_path / "never.npz", logs)
    try:
        _wait_for_checkpoint(victim, ckpt)
        delay = random.uniform(0.0, 0.5)
        time.sleep(delay)  # a random moment: in a step, between steps or in the middle of a save
        victim.send_signal(sig)
        out, err = victim.communicate(timeout=120)
    finally:
        if victim.poll() is None:
            victim.kill()
    stopped_at = fj.latest_step(ckpt)
    assert stopped_at is not None and stopped_at < STEPS, f"the run finished before the signal (delay {delay:.2f} s)"
    if sig == signal.SIGKILL:
        assert victim.returncode == -signal.SIGKILL
    else:
        name = signal.Signals(sig).name
        assert victim.returncode == 3, (victim.returncode, err)  # the worker's exit status for TrainingInterrupted
        assert f"STOPPED {name} {stopped_at}" in out, (out, err)  # the step in flight was completed and saved
        assert f"meta_train stopped by {name} after step {stopped_at}" in err and "run the same command again" in err
        assert "finishing the step in flight" in err

    resumed = _run(ckpt, tmp_path / "resumed.npz", logs)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from step {stopped_at}" in err
    step, leaves = _load(tmp_path / "resumed.npz")
    assert step == ref_step == STEPS and len(leaves) == len(ref_leaves)
    for x, y in zip(leaves, ref_leaves):
        np.testing.assert_array_equal(x, y)
    rows, events = _rows(logs)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(5, STEPS + 1, 5))
    assert rows == ref_rows  # every logged step once, with exactly the uninterrupted run's values
    starts = [e["step"] for e in events if e["event"] == "start"]
    assert starts == [0, stopped_at], events


def test_a_second_signal_exits_at_once_without_saving(tmp_path):
    """The first SIGINT waits for the step in flight (a 2 s batch here); a second one ends the process at once."""
    ckpt = tmp_path / "ckpt"
    victim = _run(ckpt, tmp_path / "never.npz", tmp_path, "slow")
    try:
        _wait_for_checkpoint(victim, ckpt, at_least=5)
        victim.send_signal(signal.SIGINT)
        line = ""
        deadline = time.time() + 60
        while "finishing the step in flight" not in line:  # the first signal was handled
            assert time.time() < deadline and victim.poll() is None
            line = victim.stderr.readline()
        t0 = time.time()
        victim.send_signal(signal.SIGINT)
        victim.wait(timeout=30)
        elapsed = time.time() - t0
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGINT, victim.returncode  # the default action: no save, no exit(3)
    assert elapsed < 1.5, f"the second SIGINT took {elapsed:.2f} s (the step in flight needs 2 s)"


def test_sigkill_with_an_episode_loader_resumes_bit_identically(tmp_path):
    """Variable-way episodes from an EpisodeLoader with a grain worker process: the checkpoint stores the loader's
    position (the next batch to train on), and a run killed at a random moment and resumed ends bit-identical."""
    run = _run("-", tmp_path / "reference.npz", tmp_path / "ref_logs", "loader")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    ref_step, ref_leaves = _load(tmp_path / "reference.npz")
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    victim = _run(ckpt, tmp_path / "never.npz", logs, "loader")
    try:
        _wait_for_checkpoint(victim, ckpt)
        time.sleep(random.uniform(0.0, 0.5))
        victim.kill()
        victim.communicate(timeout=60)  # returns once the grain workers, which hold its pipes, have exited too
    finally:
        if victim.poll() is None:
            victim.kill()
    stopped_at = fj.latest_step(ckpt)
    assert stopped_at is not None and stopped_at < STEPS
    assert fj.read_loader_state(ckpt) == {"next_index": stopped_at, "seed": 5}
    resumed = _run(ckpt, tmp_path / "resumed.npz", logs, "loader")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from step {stopped_at}" in err
    step, leaves = _load(tmp_path / "resumed.npz")
    assert step == ref_step == STEPS
    for x, y in zip(leaves, ref_leaves):
        np.testing.assert_array_equal(x, y)
    assert _rows(logs)[0] == _rows(tmp_path / "ref_logs")[0]
