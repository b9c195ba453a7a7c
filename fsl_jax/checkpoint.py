"""Checkpoints of a :class:`~fsl_jax.TrainState` with orbax, with the configuration of the run that wrote them.

Each checkpoint is a step-numbered folder under one directory holding two orbax items: ``state`` (the train state's
arrays) and ``meta`` (JSON: the run's configuration, see :func:`fsl_jax.meta_train`). Orbax writes into a temporary
folder and renames it when complete, so a crash mid-save never leaves a half-written checkpoint as the latest one, and
a failed save never deletes an older one; ``keep`` bounds how many are kept. A latest checkpoint that cannot be read
(a truncated file) is skipped with a warning and the newest readable one is restored.
"""

from __future__ import annotations

import os
import re
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from fsl_jax._config import config_diff, key_path
from fsl_jax.step import TrainState


def _manager(directory: str | os.PathLike, keep: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options, item_handlers=handlers)


def _payload(state: TrainState) -> dict:
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "nonfinite_steps": state.nonfinite_steps,
        "first_nonfinite_step": state.first_nonfinite_step,
    }


def save_checkpoint(
    directory: str | os.PathLike,
    state: TrainState,
    *,
    keep: int | None = 3,
    config: dict | None = None,
    loader_state: dict | None = None,
) -> int:
    """Saves ``state`` as checkpoint number ``state.step`` under ``directory``; returns that step.

    Args:
      directory: the checkpoint folder (created if needed).
      state: the train state.
      keep: how many of the newest checkpoints to keep (``None``: all).
      config: the run's configuration (JSON-able), stored beside the state and compared on restore.
      loader_state: the position of the run's episode loader (JSON-able, see
        :meth:`fsl_jax.data.EpisodeIterator.state`), read back with :func:`read_loader_state`.

    Raises:
      OSError: the checkpoint could not be written (folder not writable, disk full); the message names the folder
        and the step, and the checkpoints written before are left as they were.

    Example:
      >>> import tempfile, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse")
      >>> params = learner.init(jax.random.key(0), fj.task_at(fj.data.sinusoid_tasks(jax.random.key(1), 1, 5, 5), 0))
      >>> state = fj.TrainState.create(learner, params, optax.sgd(0.1))
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     fj.save_checkpoint(tmp, state.replace(step=state.step + 3), config={"inner_lr": 0.01})
      ...     fj.latest_step(tmp)
      3
      3
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a fsl_jax.TrainState, got {type(state).__name__}")
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
        raise ValueError(f"keep must be a positive int or None, got {keep!r}")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    if loader_state is not None and not isinstance(loader_state, dict):
        raise TypeError(f"loader_state must be a dict or None, got {type(loader_state).__name__}")
    step = int(state.step)
    previous = latest_step(directory)
    meta = {"config": config, "process_count": jax.process_count(), "time": time.time()}
    if loader_state is not None:
        meta["loader"] = loader_state
    try:
        with _manager(directory, keep) as manager:
            manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(_payload(state)), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            manager.wait_until_finished()
    except Exception as exc:  # noqa: BLE001 - orbax/tensorstore report disk faults under several types
        code = getattr(exc, "errno", None) or re.search(r"os_error_code='(\d+)'", str(exc))
        code = int(code.group(1)) if isinstance(code, re.Match) else code
        kept = f"the previous checkpoint (step {previous}) is intact" if previous is not None else "no checkpoint kept"
        message = f"could not write checkpoint {step} to {os.fspath(directory)!r} ({type(exc).__name__}: {exc}); {kept}"
        raise (OSError(code, message) if code else OSError(message)) from exc
    return step


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest checkpoint's step under ``directory``, or ``None`` when there is none.

    Safe to call while another process is writing to ``directory``: it only lists the finalised step folders (orbax
    writes a checkpoint under a temporary name and renames it to its step when complete), without opening any of
    them, so a folder deleted meanwhile by ``keep`` cannot make it fail.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in ("5", "10", "15.orbax-checkpoint-tmp-1"):
        ...         os.mkdir(os.path.join(tmp, name))
        ...     latest_step(tmp)
        10
    """
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    steps = [int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n))]
    return max(steps) if steps else None


def _check_structure(manager: ocp.CheckpointManager, step: int, target: dict, where: str) -> None:
    """Compares the checkpoint's array tree (from its metadata) with ``target``: a mismatch is a ``ValueError``."""
    stored = manager.item_metadata(step)["state"]
    stored_tree = getattr(stored, "tree", stored)
    flat_stored = {key_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(stored_tree)}
    flat_target = {key_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(target)}
    if set(flat_stored) != set(flat_target):
        only_stored = sorted(set(flat_stored) - set(flat_target))[:3]
        only_target = sorted(set(flat_target) - set(flat_stored))[:3]
        raise ValueError(
            f"checkpoint {step} in {where} does not match target: it has {len(flat_stored)} arrays, "
            f"target has {len(flat_target)} (only in the checkpoint: {only_stored}; only in the target: "
            f"{only_target})"
        )
    wrong = sorted(
        (not path.startswith("params"), path)
        for path, meta in flat_stored.items()
        if tuple(meta.shape) != tuple(np.shape(flat_target[path]))
    )
    if wrong:
        path = wrong[0][1]
        more = f" (and {len(wrong) - 1} more leaves differ)" if len(wrong) > 1 else ""
        raise ValueError(
            f"checkpoint {step} in {where}: leaf {path} has shape {tuple(flat_stored[path].shape)}, "
            f"target has {tuple(np.shape(flat_target[path]))}{more}"
        )


def read_checkpoint_config(directory: str | os.PathLike, step: int | None = None) -> dict | None:
    """The run configuration stored with checkpoint ``step`` (default: the latest), or ``None`` if it has none.

    Example:
      >>> import tempfile, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse", inner_lr=0.4)
      >>> source = lambda key, n: fj.data.sinusoid_tasks(key, n, 5, 5)
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     state, _ = fj.meta_train(learner, optax.adam(1e-3), source, steps=2, meta_batch=2,
      ...                              key=jax.random.key(0), checkpoint_dir=tmp, progress=False)
      ...     config = fj.read_checkpoint_config(tmp)
      >>> config["learner"]["inner_lr"], config["meta_batch"]
      (0.4, 2)
    """
    step = latest_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(f"directory {os.fspath(directory)!r} holds no checkpoint")
    return _read_meta(directory, step).get("config")


def read_loader_state(directory: str | os.PathLike, step: int | None = None) -> dict | None:
    """The episode loader's position stored with checkpoint ``step`` (default: the latest), or ``None``.

    Example:
      >>> import tempfile, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse")
      >>> params = learner.init(jax.random.key(0), fj.task_at(fj.data.sinusoid_tasks(jax.random.key(1), 1, 5, 5), 0))
      >>> state = fj.TrainState.create(learner, params, optax.sgd(0.1)).replace(step=4)
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     _ = fj.save_checkpoint(tmp, state, loader_state={"next_index": 4})
      ...     fj.read_loader_state(tmp)
      {'next_index': 4}
    """
    step = latest_step(directory) if step is None else step
    return None if step is None else _read_meta(directory, step).get("loader")


def _read_meta(directory: str | os.PathLike, step: int) -> dict:
    """The JSON item stored beside checkpoint ``step``'s arrays."""
    with _manager(directory) as manager:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {}


def restore_checkpoint(
    directory: str | os.PathLike,
    target: TrainState,
    *,
    step: int | None = None,
    config: dict | None = None,
    allow_config_change: bool = False,
) -> TrainState:
    """Restores a checkpoint into the structure of ``target`` (same learner, optimiser and shapes).

    Args:
      directory: the checkpoint folder.
      target: a state with the right structure, e.g. ``TrainState.create(learner, params, optimizer)``; its arrays'
        shardings are those of the restored state (so a checkpoint written on one mesh restores onto another).
      step: which checkpoint (default: the latest readable one; an unreadable latest one, e.g. a truncated file, is
        skipped with a warning, renamed ``<step>.unreadable`` and the one before it is restored).
      config: the caller's run configuration; if the checkpoint stores one, every differing field is reported.
      allow_config_change: restore even when ``config`` differs from the stored one (a warning lists the fields).

    Raises:
      FileNotFoundError: no checkpoint in ``directory`` (or not that ``step``).
      ValueError: the checkpoint's structure or shapes do not match ``target`` (naming the leaf and both shapes);
        the stored configuration differs from ``config`` (naming each field and both values); no checkpoint is
        readable.

    Example:
      >>> import tempfile, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse")
      >>> params = learner.init(jax.random.key(0), fj.task_at(fj.data.sinusoid_tasks(jax.random.key(1), 1, 5, 5), 0))
      >>> state = fj.TrainState.create(learner, params, optax.adam(1e-3))
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     fj.save_checkpoint(tmp, state.replace(step=state.step + 7), config={"inner_lr": 0.4})
      ...     restored = fj.restore_checkpoint(tmp, state)
      ...     try:
      ...         fj.restore_checkpoint(tmp, state, config={"inner_lr": 0.1})
      ...     except ValueError as err:
      ...         print(err)
      7
      checkpoint 7 in ... was written by a run with other settings: inner_lr: 0.4 in the checkpoint, 0.1 now...
      >>> int(restored.step)
      7
    """
    if not isinstance(target, TrainState):
        raise TypeError(f"target must be a fsl_jax.TrainState, got {type(target).__name__}")
    where = repr(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {where} does not exist")
    payload = _payload(target)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, payload)
    with _manager(directory) as manager:
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"directory {where} holds no checkpoint")
        if step is not None and step not in steps:
            raise FileNotFoundError(f"step {step} is not among the checkpoints {sorted(steps)} in {where}")
        unreadable: list[tuple[int, Exception]] = []
        for candidate in [step] if step is not None else steps:
            try:
                _check_structure(manager, candidate, payload, where)
                restored = manager.restore(
                    candidate,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
                )
            except ValueError as exc:
                if str(exc).startswith(f"checkpoint {candidate} in {where}"):
                    raise  # a structure mismatch, not a damaged file: an older checkpoint would not match either
                unreadable.append((candidate, exc))
            except Exception as exc:  # noqa: BLE001 - tensorstore/orbax raise several types for damaged files
                unreadable.append((candidate, exc))
            else:
                break
        else:
            first, error = unreadable[0]
            raise ValueError(
                f"no readable checkpoint in {where}: checkpoint {first} failed with {type(error).__name__}: {error}"
            ) from error
    for bad, error in unreadable:
        aside = os.path.join(os.fspath(directory), f"{bad}.unreadable")
        if jax.process_index() == 0 and not os.path.exists(aside):
            os.rename(os.path.join(os.fspath(directory), str(bad)), aside)
        warnings.warn(
            f"checkpoint {bad} in {where} is unreadable ({type(error).__name__}: {str(error)[:200]}); it was "
            f"renamed {os.path.basename(aside)!r} and checkpoint {candidate} was restored instead",
            stacklevel=2,
        )
    stored = (restored["meta"] or {}).get("config")
    if config is not None and stored is not None:
        diff = config_diff(stored, config)
        if diff:
            fields = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())
            if not allow_config_change:
                raise ValueError(
                    f"checkpoint {candidate} in {where} was written by a run with other settings: "
                    f"{fields}. Use another checkpoint folder, or pass allow_config_change=True to "
                    f"continue this run with the new settings"
                )
            warnings.warn(f"continuing checkpoint {candidate} with changed settings: {fields}", stacklevel=2)
    return target.replace(**restored["state"])
