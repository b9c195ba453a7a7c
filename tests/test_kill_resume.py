"""A run killed with SIGKILL at a random moment and resumed ends bit-identical to an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

import fsl_jax as fj

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
STEPS = 400


def _run(ckpt, out):
    return subprocess.Popen([sys.executable, WORKER, str(ckpt), str(out), str(STEPS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _load(path):
    with np.load(path) as f:
        return int(f["step"]), [f[k] for k in sorted(f.files, key=lambda k: (len(k), k)) if k != "step"]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    reference = _run("-", tmp_path / "reference.npz")
    ckpt = tmp_path / "ckpt"
    victim = _run(ckpt, tmp_path / "never.npz")
    deadline = time.time() + 240
    while fj.latest_step(ckpt) is None or fj.latest_step(ckpt) < 20:
        assert victim.poll() is None, victim.communicate()
        assert time.time() < deadline, "the worker made no checkpoint in time"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.5))  # a random moment: between steps or in the middle of a save
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = fj.latest_step(ckpt)
    assert killed_at is not None and killed_at < STEPS, "the run finished before it was killed"

    resumed = _run(ckpt, tmp_path / "resumed.npz")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert reference.wait(timeout=300) == 0, reference.communicate()
    step_a, a = _load(tmp_path / "reference.npz")
    step_b, b = _load(tmp_path / "resumed.npz")
    assert step_a == step_b == STEPS
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
