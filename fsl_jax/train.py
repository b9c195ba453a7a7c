"""Meta-training: the host loop that drives the compiled meta-step.

:func:`meta_train` runs :func:`~fsl_jax.make_meta_step`'s step with a progress report, reads metrics back only every
``log_every`` steps (appending them to ``metrics.jsonl`` at once), checkpoints with orbax every ``checkpoint_every``
steps and every ``checkpoint_every_seconds``, resumes exactly, refuses to resume a run made with other settings, and
on SIGINT / SIGTERM (Ctrl-C, or a TPU VM, SLURM or Kubernetes preemption) saves the last completed step before it
stops.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax import _validate, parallel
from fsl_jax._config import describe
from fsl_jax._progress import format_duration, progress as progress_bar
from fsl_jax.checkpoint import latest_step, read_loader_state, restore_checkpoint, save_checkpoint
from fsl_jax.learners.base import Learner
from fsl_jax.step import TaskSource, TrainState, batch_grads, make_meta_step  # noqa: F401 - re-exported
from fsl_jax.tasks import Task, validate_task

Array = Any


class NonFiniteError(FloatingPointError):
    """Raised by :func:`meta_train` when a meta-step produced a NaN/Inf loss or gradient.

    Its message names the first such step; ``meta_train(..., skip_nonfinite=True)`` skips those steps instead.

    Example:
      >>> import jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse", inner_lr=1e30)  # diverges at once
      >>> source = lambda key, n: fj.data.sinusoid_tasks(key, n, 5, 5)
      >>> try:
      ...     fj.meta_train(learner, optax.sgd(1e-3), source, steps=5, meta_batch=2, key=jax.random.key(0))
      ... except fj.NonFiniteError as err:
      ...     print(type(err).__name__)
      NonFiniteError
    """


class History(NamedTuple):
    """Logged metrics of a :func:`meta_train` run: ``steps[i]`` is the step at which ``metrics[i]`` was read.

    Example:
      >>> import jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse")
      >>> source = lambda key, n: fj.data.sinusoid_tasks(key, n, 5, 5)
      >>> state, history = fj.meta_train(learner, optax.adam(1e-3), source, steps=20, meta_batch=2,
      ...                                key=jax.random.key(0), log_every=10)
      >>> history.steps
      [10, 20]
      >>> history.series("loss").shape
      (2,)
    """

    steps: list
    metrics: list

    def series(self, name: str) -> np.ndarray:
        """The logged values of metric ``name`` (e.g. ``"loss"``), one per logged step."""
        return np.asarray([m[name] for m in self.metrics])


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`meta_train` after SIGINT (Ctrl-C) or SIGTERM (preemption) once the last completed step is saved.

    A ``KeyboardInterrupt``, so ``except Exception`` does not swallow it and an uncaught one ends the program with a
    non-zero status. Running the same call again resumes from the saved step.

    Attributes:
      signal: ``"SIGINT"`` or ``"SIGTERM"``.
      step: the last completed meta-step.
      checkpoint_dir: where that step was saved (``None``: no ``checkpoint_dir`` was given; nothing was saved).
      state: the train state after that step.

    Example:
      >>> import signal, threading, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse")
      >>> source = lambda key, n: fj.data.sinusoid_tasks(key, n, 5, 5)
      >>> timer = threading.Timer(3.0, signal.raise_signal, (signal.SIGTERM,))  # a preemption notice in 3 s
      >>> timer.start()
      >>> try:
      ...     fj.meta_train(learner, optax.adam(1e-3), source, steps=10**9, meta_batch=2, key=jax.random.key(0),
      ...                   progress=False)
      ... except fj.TrainingInterrupted as stop:
      ...     print(stop.signal, stop.step > 0, stop.checkpoint_dir)
      SIGTERM True None
    """

    def __init__(self, message: str, *, signal: str, step: int, checkpoint_dir: str | None, state: Any):
        super().__init__(message)
        self.signal, self.step, self.checkpoint_dir, self.state = signal, step, checkpoint_dir, state


class _StopSignals:
    """Turns the first SIGINT / SIGTERM into a request to stop after the step in flight; the second ends the process.

    After the first signal both are reset to the operating system's default action, so a second Ctrl-C ends the
    process at once even while the main thread waits inside XLA. Handlers are installed only in the main thread
    (Python allows no other) and the previous ones are put back on exit.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: str | None = None
        self.previous: dict = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.received = signal.Signals(signum).name
        for sig in self.previous:
            signal.signal(sig, signal.SIG_DFL)
        # os.write, not print: the handler may run while the main thread is inside a write to stderr.
        os.write(
            2,
            f"\n{self.received}: finishing the step in flight and saving a checkpoint; send it again to exit "
            f"at once without saving\n".encode(),
        )

    def __enter__(self) -> "_StopSignals":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _MetricsLog:
    """``metrics.jsonl``: one JSON line per logging point, appended and flushed at once; events as ``{"event": ...}``.

    Opening it for a run that continues from step ``start`` drops the lines of steps after ``start`` (logged by a run
    that was killed before its next checkpoint), so every logged step appears once.
    """

    def __init__(self, directory: str | None, start: int):
        self.file = None
        if directory is None or jax.process_index() != 0:
            return
        path = os.path.join(directory, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                lines = [line for line in f if line.strip()]
            kept = [line for line in lines if _line_step(line) <= start]
            if len(kept) != len(lines):
                with open(path + ".tmp", "w") as f:
                    f.writelines(kept)
                os.replace(path + ".tmp", path)
        self.file = open(path, "a")

    def write(self, row: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _line_step(line: str) -> int | float:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf  # a line cut short by a kill: dropped


def run_config(
    learner: Learner,
    optimizer: optax.GradientTransformation,
    source: Any,
    meta_batch: int,
    key: Array,
    skip_nonfinite: bool = False,
) -> dict:
    """The configuration :func:`meta_train` stores with every checkpoint and compares on resume.

    Each learner's constructor arguments (:attr:`Learner.config`), the optimiser's hyperparameters (read from the
    optax transformation), the task source (sampler settings and a fingerprint of its data), ``meta_batch``, the
    run's key and ``skip_nonfinite``. ``steps`` is not part of it: a run may be extended.

    Example:
      >>> import jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse", inner_lr=0.4)
      >>> config = fj.run_config(learner, optax.adam(1e-3), fj.data.sinusoid_tasks, 8, jax.random.key(0))
      >>> config["learner"]["inner_lr"], config["meta_batch"], config["optimizer"]["update_fns"][1]["step_size"]
      (0.4, 8, -0.001)
    """
    return {
        "learner": describe(learner),
        "optimizer": describe(optimizer),
        "source": describe(source),
        "meta_batch": meta_batch,
        "key": describe(key),
        "skip_nonfinite": bool(skip_nonfinite),
    }


_SIGNALS = ("SIGINT", "SIGTERM")


def is_host_source(source: Any) -> bool:
    """Whether ``source`` is sampled on the host (``source.sample(num_tasks, index)``) rather than a jittable
    ``(key, num_tasks) -> Task`` function."""
    from fsl_jax.data.sampler import DeviceSampler, HostSampler

    if isinstance(source, HostSampler):
        return True
    return not callable(source) and not isinstance(source, DeviceSampler) and callable(getattr(source, "sample", None))


def host_rows(source: Any, num_tasks: int, index: int, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of host batch ``index``: built alone when ``source.sample`` takes ``start``/``stop``,
    else cut from the whole batch."""
    try:
        takes_rows = "stop" in inspect.signature(source.sample).parameters
    except (TypeError, ValueError):
        takes_rows = False
    if takes_rows:
        return source.sample(num_tasks, index=index, start=start, stop=stop)
    whole = source.sample(num_tasks, index=index)
    return whole if (start, stop) == (0, num_tasks) else jax.tree_util.tree_map(lambda x: x[start:stop], whole)


def _is_loader(source: Any) -> bool:
    """Whether ``source`` streams batches through its own prefetching iterator (an EpisodeLoader)."""
    return callable(getattr(source, "iterate", None)) and hasattr(source, "seed")


def _host_batches(source: Any, num_tasks: int, first: int, start: int, stop: int) -> Iterator[Task]:
    """This process's rows of host batches ``first, first + 1, ...``: from the source's own prefetching iterator
    (an :class:`~fsl_jax.data.EpisodeLoader`'s grain workers) when it has one, else built here on demand."""
    if _is_loader(source):
        return source.iterate(num_tasks, start_index=first, start=start, stop=stop)

    def build() -> Iterator[Task]:
        index = first
        while True:
            yield host_rows(source, num_tasks, index, start, stop)
            index += 1

    return build()


def _say(message: str, enabled: bool) -> None:
    if enabled and jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def meta_train(
    learner: Learner,
    optimizer: optax.GradientTransformation,
    source: Any,
    *,
    steps: int,
    meta_batch: int,
    key: Array,
    params: Any = None,
    state: TrainState | None = None,
    task_chunk: int | None = None,
    log_every: int = 100,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    checkpoint_every_seconds: float | None = 300.0,
    keep: int = 3,
    log_dir: str | os.PathLike | None = None,
    skip_nonfinite: bool = False,
    progress: bool = True,
    desc: str | None = None,
    mesh: Any = None,
    max_seconds: float | None = None,
    allow_config_change: bool = False,
    handle_signals: bool = True,
    param_rule: Any = None,
) -> tuple[TrainState, History]:
    """Meta-trains ``learner`` for ``steps`` meta-steps; stop-safe and resumable.

    Args:
      learner: a :class:`~fsl_jax.Learner`.
      optimizer: the outer optax optimiser.
      source: where tasks come from: a jittable ``(key, num_tasks) -> Task`` (sampled inside the compiled step,
        e.g. ``DeviceSampler.sample``) or a host source: a :class:`~fsl_jax.data.HostSampler` or any object with
        ``sample(num_tasks, index) -> Task`` (sampled on the host, batch ``i`` for step ``i``; if its ``sample``
        also takes ``start`` and ``stop``, each process builds only its rows).
      steps: total meta-steps (a resumed run continues up to this number).
      meta_batch: tasks per meta-step.
      key: the run's PRNG key; step ``i`` uses ``fold_in(key, i)``, so a resumed run draws exactly what an
        uninterrupted one would.
      params: initial meta-parameters (default: ``learner.init`` on a sampled task).
      state: a :class:`TrainState` to continue from (overrides ``params``).
      task_chunk: see :func:`make_meta_step`.
      log_every: read metrics back to the host every this many steps (the only host syncs of the loop) and append
        them to ``metrics.jsonl``.
      checkpoint_dir: save a checkpoint there every ``checkpoint_every`` steps, every ``checkpoint_every_seconds``,
        on SIGINT / SIGTERM and at the end. If it already holds checkpoints, training resumes from the latest one
        ("resuming from step N" is printed), after checking that it was written with the same configuration
        (:func:`run_config`).
      checkpoint_every: steps between checkpoints (default: ``log_every * 10``).
      checkpoint_every_seconds: also save when this much wall time has passed since the last save (default 300 s,
        so a ``SIGKILL`` loses at most about five minutes); ``None`` turns it off.
      keep: checkpoints kept.
      log_dir: append the logged metrics to ``log_dir/metrics.jsonl`` (default: ``checkpoint_dir``, if any). Its
        last line (``"event": "stop"``) gives the run's seconds and, for a host source, ``input_seconds``: the time
        the loop spent taking batches from it (building them, or waiting for an EpisodeLoader's workers).
      skip_nonfinite: skip non-finite updates instead of stopping.
      progress: report progress (a tqdm bar on a terminal, a plain line every 30 s otherwise) and print the
        expected time after the first logging point; ``False`` prints nothing.
      desc: the progress report's label.
      mesh: shard task batches over this mesh's ``"tasks"`` axis and the state over its ``"model"`` axis (see
        :mod:`fsl_jax.parallel`). In a multi-process run (after :func:`fsl_jax.parallel.initialize`) every process
        calls ``meta_train`` with the same arguments; the mesh defaults to :func:`fsl_jax.parallel.task_mesh`, a host
        source builds only this process's rows of each batch, metrics are global means, and logs, progress and
        ``metrics.jsonl`` come from process 0. Stops on a signal, time-based checkpoints and ``max_seconds`` are then
        agreed between processes at logging points.
      max_seconds: stop at the first logging point after this much wall time (a time-budgeted run); the state
        then holds fewer than ``steps`` steps.
      allow_config_change: resume from ``checkpoint_dir`` even when the checkpoint was written with another
        configuration (a warning lists the differences); by default that is a ``ValueError`` naming each field.
      handle_signals: on SIGINT / SIGTERM, finish the step in flight, save it, and raise
        :class:`TrainingInterrupted` (a second signal ends the process at once). ``False`` leaves signals alone.
      param_rule: ``(path, shape) -> PartitionSpec`` for the state's sharding along the mesh's ``"model"`` axis
        (default: :func:`fsl_jax.parallel.fsdp_spec`).

    Returns:
      ``(state, history)``.

    Raises:
      NonFiniteError: a step produced a NaN/Inf loss or gradient (and ``skip_nonfinite`` is off). The last
        checkpoint written before it is kept.
      TrainingInterrupted: SIGINT or SIGTERM arrived; the last completed step is saved in ``checkpoint_dir``.
      ValueError: a bad argument (naming it), a checkpoint made with other settings, or ``checkpoint_dir`` already
        past ``steps``.
      OSError: ``checkpoint_dir`` or ``log_dir`` is not writable, or a checkpoint could not be written (the previous
        one is kept).

    Example:
      >>> import functools, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP(), "mse", inner_lr=0.01)
      >>> source = functools.partial(fj.data.sinusoid_tasks, shots=10, queries=10)
      >>> state, history = fj.meta_train(learner, optax.adam(1e-3), source, steps=200, meta_batch=25,
      ...                                key=jax.random.key(0), log_every=100, progress=False)
      >>> int(state.step), history.steps
      (200, [100, 200])
    """

    # ---- every argument is checked before anything is written to disk
    if not isinstance(learner, Learner):
        raise TypeError(f"learner must be a fsl_jax.Learner, got {type(learner).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    steps = _validate.positive_int("steps", steps)
    meta_batch = _validate.positive_int("meta_batch", meta_batch)
    log_every = _validate.positive_int("log_every", log_every)
    checkpoint_every = _validate.positive_int(
        "checkpoint_every", log_every * 10 if checkpoint_every is None else checkpoint_every
    )
    checkpoint_every_seconds = _validate.positive_number(
        "checkpoint_every_seconds", checkpoint_every_seconds, allow_none=True
    )
    max_seconds = _validate.positive_number("max_seconds", max_seconds, allow_none=True)
    keep = _validate.positive_int("keep", keep)
    if task_chunk is not None:
        task_chunk = _validate.positive_int("task_chunk", task_chunk)
        if meta_batch % task_chunk:
            raise ValueError(f"task_chunk={task_chunk} must divide meta_batch={meta_batch}")
    checkpoint_dir = _validate.path_or_none("checkpoint_dir", checkpoint_dir)
    log_dir = _validate.path_or_none("log_dir", log_dir)
    log_dir = log_dir if log_dir is not None else checkpoint_dir
    host = is_host_source(source)
    if not host and not callable(source):
        raise TypeError(
            f"source must be a host source (a HostSampler, or an object with .sample(num_tasks, index)) "
            f"or a callable (key, num_tasks) -> Task, got {type(source).__name__}"
        )
    if state is not None and not isinstance(state, TrainState):
        raise TypeError(f"state must be a fsl_jax.TrainState or None, got {type(state).__name__}")
    multi = jax.process_count() > 1
    if mesh is None and multi:
        mesh = parallel.task_mesh()  # a multi-process run always spans every process's devices
    if mesh is not None:
        parallel.check_mesh(mesh)
        parallel.check_batch(meta_batch, mesh, f"meta_batch={meta_batch}")
    elif param_rule is not None:
        raise ValueError("param_rule needs mesh= (a mesh with a 'model' axis, see fj.parallel.task_mesh)")
    primary = parallel.is_primary()
    init_key, run_key = jax.random.split(key)

    if state is None:
        example = source.sample(1, index=0) if host else source(init_key, 1)
        validate_task(example, batched=True)
        example = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), example)
        if params is None:
            params = learner.init(init_key, example)
        state = TrainState.create(learner, params, optimizer)
    else:
        example = None
    config = run_config(learner, optimizer, source, meta_batch, key, skip_nonfinite)
    for name, folder in (("checkpoint_dir", checkpoint_dir), ("log_dir", log_dir)):
        if folder is not None and primary:
            _validate.writable_dir(name, folder)
    if mesh is not None:  # placed first, so that a checkpoint restores straight into the mesh's layout
        state = parallel.shard_state(state, mesh, param_rule)

    if checkpoint_dir is not None and latest_step(checkpoint_dir) is not None:
        state = restore_checkpoint(checkpoint_dir, state, config=config, allow_config_change=allow_config_change)
        parallel.sync("fsl_jax.meta_train.restored")
        restored = int(jax.device_get(state.step))
        position = read_loader_state(checkpoint_dir, restored) if _is_loader(source) else None
        if position is not None and int(position.get("next_index", -1)) != restored:
            raise ValueError(
                f"checkpoint_dir {checkpoint_dir!r}: the episode loader's stored position "
                f"{position.get('next_index')!r} does not match the checkpoint's step {restored}"
            )
        if restored > steps:
            raise ValueError(
                f"checkpoint_dir {checkpoint_dir!r} holds a run already at step {restored}, past "
                f"steps={steps}: raise steps to continue it, or use another checkpoint_dir"
            )
        if restored == steps:
            warnings.warn(
                f"checkpoint_dir {checkpoint_dir!r} holds a run already at step {restored} = steps: "
                f"nothing to train (raise steps to continue it)",
                stacklevel=2,
            )
        else:
            _say(f"resuming from step {restored} (checkpoint in {checkpoint_dir})", progress)
    if example is not None and (host or _validate.source_ways(source) is None):
        # (a source with static ways is checked by the compiled step at trace time)
        _validate.check_output_width(learner, state.params, example, _validate.source_ways(source))

    if host:
        step_fn = make_meta_step(
            learner, optimizer, task_chunk=task_chunk, skip_nonfinite=skip_nonfinite, mesh=mesh, param_rule=param_rule
        )
        rows = parallel.local_rows(mesh, meta_batch) if mesh is not None else (0, meta_batch)
    else:
        step_fn = make_meta_step(
            learner,
            optimizer,
            sampler=source,
            meta_batch=meta_batch,
            task_chunk=task_chunk,
            skip_nonfinite=skip_nonfinite,
            mesh=mesh,
            param_rule=param_rule,
        )

    # XLA:CPU runs every simulated device's part of a step on one shared thread pool, and a participant that reaches
    # a collective blocks its thread until all have arrived. With many steps in flight (asynchronous dispatch), the
    # participants of a later step can hold every thread while a participant of an earlier step waits for one: the
    # all-reduce never completes and XLA aborts the process after 40 s. One step in flight avoids that, at the cost
    # of a host sync per step (cheap next to a step; real accelerators keep asynchronous dispatch).
    sync_each_step = mesh is not None and mesh.size > 1 and all(d.platform == "cpu" for d in mesh.devices.flat)
    history = History([], [])
    start = int(jax.device_get(state.step))
    if start >= steps:
        return state, history
    log = _MetricsLog(log_dir, start)
    log.write({"event": "start", "step": start, "steps": steps, "time": time.time()})
    bar = progress_bar(total=steps, initial=start, desc=desc or learner.name, disable=not (progress and primary))
    t0 = time.perf_counter()
    last_save_time, last_saved = t0, start
    first_step_done: float | None = None
    estimated = False
    done, reason = start, "finished"

    def save(at: int, current: TrainState) -> None:
        nonlocal last_save_time, last_saved
        if checkpoint_dir is None or at == last_saved:
            return
        # never checkpoint a NaN state (a save reads the state back anyway)
        _raise_if_nonfinite(int(jax.device_get(current.first_nonfinite_step)), skip_nonfinite, checkpoint_dir, at)
        # the loader's position is the next batch to train on (the iterator itself may have prefetched further)
        position = {"next_index": at, "seed": source.seed} if _is_loader(source) else None
        save_checkpoint(checkpoint_dir, current, keep=keep, config=config, loader_state=position)
        last_save_time, last_saved = time.perf_counter(), at

    def to_devices(local: Task) -> Task:
        return (
            parallel.global_tasks(local, mesh, meta_batch)
            if mesh is not None
            else jax.tree_util.tree_map(jnp.asarray, local)
        )

    batches = _host_batches(source, meta_batch, start, *rows) if host else None
    input_seconds = 0.0  # time the loop spent taking host batches (building them, or waiting for a loader's workers)

    def next_batch() -> Task:
        nonlocal input_seconds
        if batches is None:  # only called for a host source, which always has its batch iterator
            raise RuntimeError("next_batch needs a host source's batch iterator")
        t = time.perf_counter()
        local = next(batches)
        input_seconds += time.perf_counter() - t
        return local

    try:
        with _StopSignals(handle_signals) as stop:
            upcoming = to_devices(next_batch()) if host else None
            for i in range(start, steps):
                if host:  # this process builds only its own rows of the global batch
                    tasks = upcoming
                    state, metrics = step_fn(state, tasks, jax.random.fold_in(run_key, i))
                    if i + 1 < steps:  # batch i + 1 is built and sent to the devices while step i runs
                        upcoming = to_devices(next_batch())
                else:
                    state, metrics = step_fn(state, run_key)
                if sync_each_step:
                    jax.block_until_ready(state.step)
                if first_step_done is None:
                    first_step_done = time.perf_counter()  # the first call includes compilation
                done = i + 1
                logging = done % log_every == 0 or done == steps
                if logging:
                    # the loop's only device-to-host read: metrics and the NaN flag, in one transfer
                    fetched, first_bad = jax.device_get((metrics, state.first_nonfinite_step))
                    values = {k: float(v) for k, v in fetched.items()}
                    _raise_if_nonfinite(int(first_bad), skip_nonfinite, checkpoint_dir, done, values)
                    history.steps.append(done)
                    history.metrics.append(values)
                    log.write({"step": done, **values})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "accuracy")})
                    if not estimated and done - start > 1 and done < steps:
                        estimated = True
                        per_step = (time.perf_counter() - first_step_done) / (done - start - 1)
                        bar.write(
                            f"{desc or learner.name}: {per_step:.3g} s per step after compilation; "
                            f"{steps - done} steps to go: ~{format_duration(per_step * (steps - done))} "
                            f"at this speed"
                        )
                now = time.perf_counter()
                time_due = checkpoint_every_seconds is not None and now - last_save_time >= checkpoint_every_seconds
                over_budget = logging and max_seconds is not None and now - t0 > max_seconds and done < steps
                received = stop.received
                if multi:
                    # Every process must take the same decisions: they are agreed at logging points (a stop
                    # requested by a signal in any process, process 0's clock for time-based saves and the budget).
                    if logging:
                        flags = parallel.agree([_SIGNALS.index(received) + 1 if received else 0, time_due, over_budget])
                        received = _SIGNALS[int(flags[:, 0].max()) - 1] if flags[:, 0].max() else None
                        time_due, over_budget = bool(flags[0, 1]), bool(flags[0, 2])
                    else:
                        received, time_due = None, False
                if over_budget:
                    reason = "max_seconds"
                if received:
                    reason = received
                if done % checkpoint_every == 0 or done == steps or reason != "finished" or time_due:
                    save(done, state)
                bar.update(1)
                if reason != "finished":
                    break
        jax.block_until_ready(state.params)
    except BaseException as exc:
        reason = type(exc).__name__
        raise
    finally:
        if batches is not None and hasattr(batches, "close"):
            batches.close()
        bar.close()
        stop_event = {"event": "stop", "step": done, "reason": reason, "seconds": round(time.perf_counter() - t0, 3)}
        if host:
            stop_event["input_seconds"] = round(input_seconds, 3)
        log.write(stop_event)
        log.close()
    if reason in ("SIGINT", "SIGTERM"):
        where = (
            f"checkpoint {done} saved in {checkpoint_dir!r}; run the same command again to resume from it"
            if checkpoint_dir is not None
            else "no checkpoint_dir was given, so nothing was saved"
        )
        message = f"meta_train stopped by {reason} after step {done}: {where}"
        _say(message, True)
        raise TrainingInterrupted(message, signal=reason, step=done, checkpoint_dir=checkpoint_dir, state=state)
    return state, history


def _raise_if_nonfinite(
    bad: int, skip_nonfinite: bool, checkpoint_dir: str | None, done: int, values: dict | None = None
) -> None:
    if skip_nonfinite or bad < 0:
        return
    if values is None:
        term = "loss or gradient"
    else:
        term = "loss" if not math.isfinite(values.get("loss", 0.0)) else "gradient"
    raise NonFiniteError(
        f"meta-step {bad} produced a non-finite {term} (detected at step {done}); "
        f"last checkpoint: {latest_step(checkpoint_dir) if checkpoint_dir else None}"
    )
