"""What protects a run: its configuration stored with each checkpoint, time-based checkpoints, metrics written as they
are logged, faults on disk, and checks at the API boundary that name what is wrong.

(Stopping with signals and resuming is tested with real subprocesses in test_kill_resume.py.)
"""

import functools
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import optax
import pytest

import fsl_jax as fj
from fsl_jax._progress import LogProgress, progress

SOURCE = functools.partial(fj.data.sinusoid_tasks, shots=5, queries=5)
KW = dict(meta_batch=4, key=jax.random.key(0), log_every=5, progress=False)


def _learner(inner_lr=0.01):
    return fj.maml(fj.models.MLP(hidden=(16, 16)), "mse", inner_lr=inner_lr, inner_steps=1)


def _events(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resuming_with_other_settings_names_every_changed_field(tmp_path):
    fj.meta_train(_learner(0.4), optax.adam(1e-3), SOURCE, steps=10, checkpoint_dir=tmp_path, **KW)
    changed = dict(KW, meta_batch=8)
    with pytest.raises(ValueError) as err:
        fj.meta_train(_learner(0.1), optax.adam(3e-3), SOURCE, steps=20, checkpoint_dir=tmp_path, **changed)
    message = str(err.value)
    assert "learner.inner_lr: 0.4 in the checkpoint, 0.1 now" in message
    assert "optimizer.update_fns[1].step_size: -0.001 in the checkpoint, -0.003 now" in message
    assert "meta_batch: 4 in the checkpoint, 8 now" in message
    assert "allow_config_change=True" in message
    assert fj.latest_step(tmp_path) == 10  # nothing was trained or written
    other_source = functools.partial(fj.data.sinusoid_tasks, shots=10, queries=5)
    with pytest.raises(ValueError, match=r"source.keywords.shots: 5 in the checkpoint, 10 now"):
        fj.meta_train(_learner(0.4), optax.adam(1e-3), other_source, steps=20, checkpoint_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match=r"key.array\[1\]: 0 in the checkpoint, 7 now"):
        fj.meta_train(
            _learner(0.4),
            optax.adam(1e-3),
            SOURCE,
            steps=20,
            checkpoint_dir=tmp_path,
            **dict(KW, key=jax.random.key(7)),
        )
    # the one keyword that continues anyway, with a warning listing what changed
    with pytest.warns(UserWarning, match="learner.inner_lr: 0.4 in the checkpoint, 0.1 now"):
        state, history = fj.meta_train(
            _learner(0.1), optax.adam(1e-3), SOURCE, steps=20, checkpoint_dir=tmp_path, allow_config_change=True, **KW
        )
    assert int(state.step) == 20 and history.steps == [15, 20]
    assert fj.read_checkpoint_config(tmp_path)["learner"]["inner_lr"] == 0.1  # the new settings are stored from now on


def test_steps_at_or_below_the_checkpoint_say_so(tmp_path):
    fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=10, checkpoint_dir=tmp_path, **KW)
    with pytest.warns(UserWarning, match="already at step 10 = steps: nothing to train"):
        state, history = fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=10, checkpoint_dir=tmp_path, **KW)
    assert int(state.step) == 10 and history.steps == []
    with pytest.raises(ValueError, match=r"already at step 10, past steps=5"):
        fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=5, checkpoint_dir=tmp_path, **KW)


def test_resume_prints_the_step(tmp_path, capsys):
    fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=5, checkpoint_dir=tmp_path, **KW)
    fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=10, checkpoint_dir=tmp_path, **dict(KW, progress=True))
    assert f"resuming from step 5 (checkpoint in {tmp_path})" in capsys.readouterr().err


def test_every_learner_carries_its_constructor_arguments():
    model = fj.models.Conv4(num_classes=5, hidden=8, blocks=2)
    encoder = fj.models.Conv4(hidden=8, blocks=2)
    learners = {
        "maml": fj.maml(model, "xent", 0.4, 3),
        "anil": fj.anil(model, "xent", 0.4, 3),
        "meta_sgd": fj.meta_sgd(model, "xent", 0.4, 3),
        "reptile": fj.reptile(model, "xent", 0.4, 3),
        "protonet": fj.protonet(encoder, 5, temperature=2.0),
        "matching_net": fj.matching_net(encoder, 5),
        "relation_net": fj.relation_net(fj.learners.RelationEncoder(hidden=8), None, 5),
        "siamese": fj.siamese(encoder, 5, margin=2.0),
        "cvae_classifier": fj.cvae_classifier(None, None, 16, 5),
    }
    for name, learner in learners.items():
        config = learner.config
        assert config["learner"] == name, config
        json.dumps(config)  # JSON-able
    assert learners["maml"].config["inner_steps"] == 3 and learners["maml"].config["model"]["hidden"] == 8
    assert learners["protonet"].config["temperature"] == 2.0 and learners["siamese"].config["margin"] == 2.0
    assert fj.maml(model, "xent", 0.4, 3).config == learners["maml"].config  # same settings, same description
    assert fj.maml(model, "xent", 0.5, 3).config != learners["maml"].config


def test_time_based_checkpoints(tmp_path):
    # checkpoint_every=100 never triggers in 7 steps; a tiny time interval saves after every step
    fj.meta_train(
        _learner(),
        optax.adam(1e-3),
        SOURCE,
        steps=7,
        checkpoint_dir=tmp_path,
        checkpoint_every=100,
        checkpoint_every_seconds=1e-9,
        keep=10,
        **KW,
    )
    assert sorted(int(n) for n in os.listdir(tmp_path) if n.isdigit()) == [1, 2, 3, 4, 5, 6, 7]
    other = tmp_path / "off"
    fj.meta_train(
        _learner(),
        optax.adam(1e-3),
        SOURCE,
        steps=7,
        checkpoint_dir=other,
        checkpoint_every=100,
        checkpoint_every_seconds=None,
        keep=10,
        **KW,
    )
    assert sorted(int(n) for n in os.listdir(other) if n.isdigit()) == [7]  # only the final save


def test_metrics_are_appended_at_every_logging_point(tmp_path):
    """Each logging point is on disk before the next step runs: a source that reads the file sees it grow."""
    seen = []

    class Watching(fj.data.HostSampler):
        def sample(self, num_tasks, index=None):
            path = tmp_path / "metrics.jsonl"
            seen.append(sum(1 for line in open(path) if '"loss"' in line) if path.exists() else 0)
            return super().sample(num_tasks, index)

    data = np.random.default_rng(0).normal(size=(6, 8, 3)).astype(np.float32)
    sampler = Watching(data, ways=2, shots=2, queries=2, seed=0)
    learner = fj.maml(fj.models.MLP(hidden=(8,), out=2), "xent", 0.1, 1)
    fj.meta_train(
        learner,
        optax.sgd(0.1),
        sampler,
        steps=9,
        meta_batch=2,
        key=jax.random.key(0),
        log_every=3,
        log_dir=tmp_path,
        progress=False,
    )
    # sample(index=0) for the example task, then batch i + 1 while step i runs (before step i's logging point):
    # rows logged after steps 3 and 6 are visible to the next batch built
    assert seen == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    events = _events(tmp_path)
    assert [e["step"] for e in events if "event" not in e] == [3, 6, 9]
    assert events[0]["event"] == "start" and events[-1] == {**events[-1], "event": "stop", "reason": "finished"}


def test_unwritable_checkpoint_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    calls = []

    def source(key, n):
        calls.append(n)
        return SOURCE(key, n)

    with pytest.raises(OSError, match=r"checkpoint_dir .*a_file/ckpt' is not a writable folder"):
        fj.meta_train(_learner(), optax.adam(1e-3), source, steps=5, checkpoint_dir=blocker / "ckpt", **KW)
    assert calls == [1]  # only the example task was drawn: no step ran
    if os.geteuid() != 0:  # permission bits do not stop root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OSError, match="not a writable folder"):
            fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=5, checkpoint_dir=locked, **KW)


def test_bad_arguments_write_nothing(tmp_path):
    ckpt = tmp_path / "ckpt"
    for kwargs, match in [
        (dict(steps=0), "steps must be a positive int, got 0"),
        (dict(steps=5, log_every=-1), "log_every must be a positive int, got -1"),
        (
            dict(steps=5, checkpoint_every_seconds=0),
            "checkpoint_every_seconds must be a positive number or None, got 0",
        ),
        (dict(steps=5, keep=0), "keep must be a positive int, got 0"),
        (dict(steps=5, task_chunk=3), "task_chunk=3 must divide meta_batch=4"),
        (dict(steps=5, max_seconds=float("nan")), "max_seconds must be a positive number or None"),
    ]:
        with pytest.raises(ValueError, match=match):
            fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, checkpoint_dir=ckpt, **{**KW, **kwargs})
    with pytest.raises(TypeError, match="checkpoint_dir must be a folder path or None, got 3"):
        fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=5, checkpoint_dir=3, **KW)
    assert not ckpt.exists()


def test_truncated_latest_checkpoint_is_skipped_with_a_warning(tmp_path):
    fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=10, checkpoint_dir=tmp_path, checkpoint_every=5, **KW)
    reference, _ = fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=10, **KW)
    for root, _, files in os.walk(tmp_path / "10" / "state"):  # cut every data file of the latest checkpoint in half
        for name in files:
            path = os.path.join(root, name)
            if os.sep + "d" + os.sep in path:
                os.truncate(path, os.path.getsize(path) // 2)
    with pytest.warns(
        UserWarning,
        match=r"checkpoint 10 in .* is unreadable .*renamed '10.unreadable' and "
        r"checkpoint 5 was restored instead",
    ):
        state, history = fj.meta_train(_learner(), optax.adam(1e-3), SOURCE, steps=10, checkpoint_dir=tmp_path, **KW)
    assert history.steps == [10]  # trained again from step 5
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(reference.params)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["10", "10.unreadable", "5", "metrics.jsonl"]


DISK_FULL = textwrap.dedent(
    """
    import functools, resource, signal, sys, jax, optax, fsl_jax as fj
    learner = fj.maml(fj.models.MLP(hidden=(16, 16)), "mse", inner_lr=0.01, inner_steps=1)
    source = functools.partial(fj.data.sinusoid_tasks, shots=5, queries=5)
    kw = dict(meta_batch=4, key=jax.random.key(0), log_every=5, progress=False, checkpoint_dir=sys.argv[1],
              log_dir=sys.argv[2])
    fj.meta_train(learner, optax.adam(1e-3), source, steps=5, **kw)
    # From now on no file may grow past 1 KB: the next checkpoint's files do not fit (a full disk, as the kernel
    # reports it: EFBIG instead of ENOSPC).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        fj.meta_train(learner, optax.adam(1e-3), source, steps=10, **kw)
    except OSError as err:
        print("ERROR", err)
    """
)


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(ckpt), str(logs)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR [Errno 27] could not write checkpoint 10 to" in result.stdout, result.stdout + result.stderr[-3000:]
    assert "File too large" in result.stdout and "the previous checkpoint (step 5) is intact" in result.stdout
    assert fj.latest_step(ckpt) == 5
    learner = _learner()
    params = learner.init(jax.random.key(0), fj.task_at(SOURCE(jax.random.key(1), 1), 0))
    restored = fj.restore_checkpoint(ckpt, fj.TrainState.create(learner, params, optax.adam(1e-3)))
    assert int(restored.step) == 5


def test_labels_beyond_the_model_outputs_are_an_error_naming_both():
    images = np.random.default_rng(0).random((20, 6, 8, 8, 1)).astype(np.float32)
    message = r"the episodes have 10 classes \(labels 0..9\) but maml outputs 5 logits per example"
    conv = fj.maml(fj.models.Conv4(num_classes=5, hidden=4, blocks=2), "xent", 0.1, 1)  # the case users meet first
    with pytest.raises(ValueError, match=message):
        fj.meta_train(
            conv,
            optax.adam(1e-3),
            fj.data.DeviceSampler(images, 10, 1, 2).sample,
            steps=2,
            meta_batch=2,
            key=jax.random.key(0),
            progress=False,
        )
    # every other entry point, with small MLPs on flattened images (quick to trace and, below, to compile)
    data = images.reshape(20, 6, 64)
    ten, five = fj.data.DeviceSampler(data, 10, 1, 2), fj.data.DeviceSampler(data, 5, 1, 2)
    learner = fj.maml(fj.models.MLP(hidden=(8,), out=5), "xent", 0.1, 1)
    with pytest.raises(ValueError, match=message):
        fj.meta_train(
            learner,
            optax.adam(1e-3),
            fj.data.HostSampler(data, 10, 1, 2),
            steps=2,
            meta_batch=2,
            key=jax.random.key(0),
            progress=False,
        )
    params = learner.init(jax.random.key(0), five.sample_one(jax.random.key(1)))
    state = fj.TrainState.create(learner, params, optax.adam(1e-3))
    with pytest.raises(ValueError, match=message):  # at trace time, before anything runs
        fj.make_meta_step(learner, optax.adam(1e-3), sampler=ten.sample, meta_batch=2)(state, jax.random.key(0))
    with pytest.raises(ValueError, match=message):
        fj.evaluate(learner, params, ten, episodes=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match=message):
        fj.evaluate(learner, params, ten.sample(jax.random.key(0), 3))
    protonet = fj.protonet(fj.models.MLP(hidden=(8,), out=4), ways=5)
    with pytest.raises(ValueError, match=r"protonet outputs 5 logits"):
        fj.evaluate(
            protonet,
            protonet.init(jax.random.key(0), five.sample_one(jax.random.key(1))),
            ten,
            episodes=4,
            key=jax.random.key(0),
        )
    wide = fj.maml(fj.models.MLP(hidden=(8,), out=20), "xent", 0.1, 1)
    with pytest.warns(UserWarning, match=r"maml outputs 20 logits per example for 5-way episodes"):
        fj.meta_train(wide, optax.adam(1e-3), five.sample, steps=1, meta_batch=2, key=jax.random.key(0), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a matching model: no warning
        fj.meta_train(
            learner, optax.adam(1e-3), five.sample, steps=1, meta_batch=2, key=jax.random.key(0), progress=False
        )


def test_task_errors_name_the_field_where_the_task_enters():
    learner = fj.maml(fj.models.MLP(hidden=(8,), out=3), "xent", 0.1, 1)
    good = fj.Task(np.zeros((6, 4), np.float32), np.arange(6) % 3, np.zeros((3, 4), np.float32), np.arange(3))
    params = learner.init(jax.random.key(0), good)
    short_labels = good._replace(support_y=good.support_y[:5])
    other_features = good._replace(query_x=np.zeros((3, 5), np.float32))
    for task, match in [
        (short_labels, r"Task.support_y shape \((2, )?5,?\) does not match Task.support_x shape \((2, )?6, 4\)"),
        (other_features, r"Task.support_x features \(4,\) differ from Task.query_x features \(5,\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            fj.meta_loss(learner, params, task, jax.random.key(0))
        with pytest.raises(ValueError, match=match):
            jax.jit(lambda p, t: fj.meta_loss(learner, p, t, jax.random.key(0)))(params, task)  # at trace time
        batch = jax.tree_util.tree_map(lambda x: np.stack([x, x]), task)
        state = fj.TrainState.create(learner, params, optax.sgd(0.1))
        with pytest.raises(ValueError, match=match):
            fj.make_meta_step(learner, optax.sgd(0.1))(state, batch, jax.random.key(0))
        with pytest.raises(ValueError, match=match):
            fj.evaluate(learner, params, batch)
    with pytest.raises(ValueError, match="episodes must be an int >= 2 .* got 0"):
        fj.evaluate(learner, params, jax.tree_util.tree_map(lambda x: np.stack([x, x]), good), episodes=0)


def test_progress_off_a_terminal_is_plain_lines():
    out = io.StringIO()
    bar = progress(range(3), desc="train", file=out)  # a StringIO is not a terminal
    assert isinstance(bar, LogProgress)
    for _ in bar:
        pass
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text and "\x1b" not in text and text.startswith("train: 3/3 (100 %)")
    quiet = io.StringIO()
    for _ in progress(range(3), desc="x", file=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""


def test_meta_train_logs_plain_lines_and_the_expected_time_off_a_terminal(tmp_path):
    script = textwrap.dedent(
        """
        import functools, jax, optax, fsl_jax as fj
        learner = fj.maml(fj.models.MLP(hidden=(8,)), "mse", inner_lr=0.01, inner_steps=1)
        source = functools.partial(fj.data.sinusoid_tasks, shots=5, queries=5)
        fj.meta_train(learner, optax.adam(1e-3), source, steps=400, meta_batch=2, key=jax.random.key(0),
                      log_every=100, desc="sine")
        """
    )
    env = dict(os.environ, FSL_JAX_PROGRESS_SECONDS="0")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sine")]
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr  # no redraws, no cursor escapes
    assert any("s per step after compilation; 300 steps to go: ~" in line and "at this speed" in line for line in lines)
    assert lines[-1].startswith("sine: 400/400 (100 %)")
