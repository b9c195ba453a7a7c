"""Real multi-process runs on JAX's distributed runtime (gloo collectives on CPU): 2 processes x 4 devices against
1 process x 8 devices, stop and resume across process counts, a stop requested in one process, a killed process.

Every run is tests/multihost_worker.py started as separate OS processes that find each other through
``fj.parallel.initialize`` on a free local port; all of them are reaped whatever happens.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import fsl_jax as fj

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(scenario, out, processes, *args):
    """Starts ``processes`` workers (8 devices in all) and returns their Popen objects."""
    os.makedirs(out, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
    return [
        subprocess.Popen(
            [sys.executable, WORKER, scenario, str(out), str(processes), str(i), str(port), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]


def _finish(procs, timeout=400):
    """Waits for all workers; kills every one of them on a timeout or failure. Returns (returncodes, outputs)."""
    deadline = time.time() + timeout
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
            outputs.append((out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outputs


def _run(scenario, out, processes, *args, timeout=400):
    codes, outputs = _finish(_start(scenario, out, processes, *args), timeout)
    assert codes == [0] * processes, [(c, err[-2000:]) for c, (_, err) in zip(codes, outputs)]
    return outputs


def _leaves(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def _assert_close(a, b, **tol):
    xs, ys = _leaves(a), _leaves(b)
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        np.testing.assert_allclose(x, y, **tol)


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    """The same script as 1 process x 8 devices and as 2 processes x 4 devices, started together."""
    root = tmp_path_factory.mktemp("equivalence")
    single = _start("equivalence", root / "1x8", 1)
    double = _start("equivalence", root / "2x4", 2)
    for procs in (single, double):
        codes, outputs = _finish(procs)
        assert codes == [0] * len(procs), [(c, err[-2000:]) for c, (_, err) in zip(codes, outputs)]
    return root


@pytest.mark.parametrize("run", ["device", "host", "loader", "metric"])
def test_two_processes_end_where_one_does(equivalence, run):
    """Device-side source (SPMD from one key), HostSampler and EpisodeLoader (each process builds its own rows) and
    ProtoNet."""
    _assert_close(equivalence / "1x8" / f"{run}.npz", equivalence / "2x4" / f"{run}.npz", rtol=1e-5, atol=1e-6)


def test_evaluate_and_metrics_are_global(equivalence):
    one = json.loads((equivalence / "1x8" / "evaluate.json").read_text())
    two = json.loads((equivalence / "2x4" / "evaluate.json").read_text())
    for source in ("device", "host"):
        np.testing.assert_allclose(two[source][2], one[source][2], atol=1e-6)  # every episode's score
        np.testing.assert_allclose(two[source][:2], one[source][:2], rtol=1e-6)  # mean and CI
    assert len(one["device"][2]) == 64 and len(one["host"][2]) == 32
    assert two["logged"] == one["logged"] == [5, 10, 15, 20]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)  # global means, not process 0's share


def test_stop_and_resume_across_process_counts(equivalence, tmp_path):
    """2 processes to step 10, then 2 processes to 20 from the checkpoint: where the uninterrupted run ends. The
    same step-10 checkpoint restored by 1 process (8 devices) ends where the 1-process run does."""
    _run("train", tmp_path / "a", 2, 10, tmp_path / "ckpt")
    assert fj.latest_step(tmp_path / "ckpt") == 10
    shutil.copytree(tmp_path / "ckpt", tmp_path / "ckpt_for_one")
    outputs = _run("train", tmp_path / "b", 2, 20, tmp_path / "ckpt")
    assert "resuming from step 10" in outputs[0][1] and "resuming from step 10" not in outputs[1][1]  # process 0 speaks
    _assert_close(tmp_path / "b" / "train.npz", equivalence / "2x4" / "device.npz", rtol=1e-6, atol=1e-7)
    _run("train", tmp_path / "c", 1, 20, tmp_path / "ckpt_for_one")
    _assert_close(tmp_path / "c" / "train.npz", equivalence / "1x8" / "device.npz", rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in open(tmp_path / "ckpt" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "event" not in r] == [5, 10, 15, 20]  # written once, by process 0


def _wait_for_checkpoint(procs, ckpt, at_least):
    deadline = time.time() + 300
    while (fj.latest_step(ckpt) or 0) < at_least:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_at_the_same_step_then_resume(tmp_path):
    ckpt = tmp_path / "ckpt"
    procs = _start("train", tmp_path / "run", 2, 300, ckpt)
    try:
        _wait_for_checkpoint(procs, ckpt, 10)
        procs[1].send_signal(signal.SIGTERM)  # only process 1 is told to stop
        codes, outputs = _finish(procs, timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [3, 3], [(c, err[-1500:]) for c, (_, err) in zip(codes, outputs)]
    stops = {out.split("STOPPED ")[1].split()[1] for out, _ in outputs}
    assert len(stops) == 1, outputs  # both stopped after the same step...
    stopped = int(stops.pop())
    assert stopped % 5 == 0 and fj.latest_step(ckpt) == stopped  # ...a logging point, and saved it
    outputs = _run("train", tmp_path / "run", 2, 300, ckpt)
    assert f"resuming from step {stopped}" in outputs[0][1]
    assert fj.latest_step(ckpt) == 300


def test_a_killed_process_stops_the_others_and_a_restart_resumes(tmp_path):
    ckpt = tmp_path / "ckpt"
    procs = _start("train", tmp_path / "run", 2, 60, ckpt)
    try:
        _wait_for_checkpoint(procs, ckpt, 10)
        procs[1].kill()  # SIGKILL: no goodbye
        t0 = time.time()
        procs[0].wait(timeout=120)
        elapsed = time.time() - t0
        out, err = procs[0].communicate()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode != 0, "the surviving process finished instead of stopping"
    assert elapsed < 90, f"the surviving process took {elapsed:.0f} s to stop (heartbeat timeout 10 s)"
    # Either the coordination service notices the missing heartbeat, or the survivor is inside a collective
    # when its peer's socket closes and gloo aborts the process: both stop it, neither trains on alone.
    died = ("another task died", "heartbeat", "UNAVAILABLE", "gloo")
    assert any(d.lower() in err.lower() for d in died), err[-2000:]
    assert "done" not in out and "STOPPED" not in out, out
    last = fj.latest_step(ckpt)
    assert last is not None and last < 60, "the run finished before the kill"
    outputs = _run("train", tmp_path / "run", 2, 60, ckpt)
    assert f"resuming from step {last}" in outputs[0][1]
    assert fj.latest_step(ckpt) == 60


def test_cli_processes_runs_local_processes(tmp_path):
    """`fsl-jax train --processes 2` trains as two processes (one CPU device each) and logs what one process
    with the same two-device batch split does."""
    args = ["train", "--data", "sinusoid", "--steps", "20", "--meta-batch", "4", "--no-eval"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    two = subprocess.run(
        [sys.executable, "-m", "fsl_jax.cli", *args, "--processes", "2", "--out", str(tmp_path / "2")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run folder:") == 1  # process 0 reports, process 1 is quiet
    assert fj.latest_step(tmp_path / "2" / "checkpoints") == 20
    one = subprocess.run(
        [sys.executable, "-m", "fsl_jax.cli", *args, "--out", str(tmp_path / "1")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    rows = [[json.loads(line) for line in open(tmp_path / k / "metrics.jsonl")] for k in ("1", "2")]
    losses = [[r["loss"] for r in run if "event" not in r] for run in rows]
    assert len(losses[0]) == len(losses[1]) == 20
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


INITIALIZE = """
import sys, time, fsl_jax as fj
def raises(exc, fn, *parts):
    try:
        fn()
    except exc as err:
        assert all(p in str(err) for p in parts), (str(err), parts)
    else:
        raise AssertionError(f"no {exc.__name__}: {parts}")
assert fj.parallel.initialize() is False and fj.parallel.initialize() is False  # a single machine: nothing, twice
raises(ValueError, lambda: fj.parallel.initialize("127.0.0.1:1", num_processes=2, process_id=2),
       "process_id=2 must be below num_processes=2")
raises(ValueError, lambda: fj.parallel.initialize(num_processes=2, process_id=0),
       "num_processes=2 needs coordinator_address")
raises(ValueError, lambda: fj.parallel.initialize(num_processes=0), "num_processes must be an int >= 1")
raises(ValueError, lambda: fj.parallel.initialize("nohost", num_processes=2, process_id=1, timeout_seconds=1),
       "coordinator_address must be 'host:port', got 'nohost'")
t0 = time.monotonic()
raises(ConnectionError, lambda: fj.parallel.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=1,
                                                       timeout_seconds=2), f"127.0.0.1:{sys.argv[1]}", "within 2 s")
assert time.monotonic() - t0 < 10, time.monotonic() - t0
import jax
assert jax.process_count() == 1
print("OK")
"""


def test_initialize_checks_its_arguments_and_fails_fast_on_an_unreachable_coordinator():
    result = subprocess.run(
        [sys.executable, "-c", INITIALIZE, str(_free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr[-3000:]
