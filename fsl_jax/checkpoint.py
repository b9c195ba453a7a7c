"""Checkpoints of a :class:`~fsl_jax.TrainState` with orbax.

Each checkpoint is a step-numbered folder under one directory. Orbax writes into a temporary folder and renames it
when complete, so a crash mid-save never leaves a half-written checkpoint as the latest one; ``keep`` bounds how
many are kept.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fsl_jax.train import TrainState


def _manager(directory: str | os.PathLike, keep: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)


def _payload(state: TrainState) -> dict:
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "nonfinite_steps": state.nonfinite_steps,
        "first_nonfinite_step": state.first_nonfinite_step,
    }


def save_checkpoint(directory: str | os.PathLike, state: TrainState, *, keep: int | None = 3) -> int:
    """Saves ``state`` as checkpoint number ``state.step`` under ``directory``; returns that step.

    Args:
      directory: the checkpoint folder (created if needed).
      state: the train state.
      keep: how many of the newest checkpoints to keep (``None``: all).

    Example:
      >>> fj.save_checkpoint("runs/maml/ckpt", state)          # doctest: +SKIP
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a fsl_jax.TrainState, got {type(state).__name__}")
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be a positive int or None, got {keep!r}")
    step = int(state.step)
    with _manager(directory, keep) as manager:
        manager.save(step, args=ocp.args.StandardSave(_payload(state)), force=True)
        manager.wait_until_finished()
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


def restore_checkpoint(directory: str | os.PathLike, target: TrainState, *, step: int | None = None) -> TrainState:
    """Restores a checkpoint into the structure of ``target`` (same learner, optimiser and shapes).

    Args:
      directory: the checkpoint folder.
      target: a state with the right structure, e.g. ``TrainState.create(learner, params, optimizer)``.
      step: which checkpoint (default: the latest).

    Raises:
      FileNotFoundError: no checkpoint in ``directory`` (or not that ``step``).
      ValueError: the checkpoint's structure or shapes do not match ``target``.

    Example:
      >>> import tempfile, jax, optax, fsl_jax as fj
      >>> learner = fj.maml(fj.models.MLP((8,)), "mse")
      >>> params = learner.init(jax.random.key(0), fj.task_at(fj.data.sinusoid_tasks(jax.random.key(1), 1, 5, 5), 0))
      >>> state = fj.TrainState.create(learner, params, optax.adam(1e-3))
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     fj.save_checkpoint(tmp, state.replace(step=state.step + 7))
      ...     restored = fj.restore_checkpoint(tmp, state)
      7
      >>> int(restored.step)
      7
    """
    if not isinstance(target, TrainState):
        raise TypeError(f"target must be a fsl_jax.TrainState, got {type(target).__name__}")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {os.fspath(directory)!r} does not exist")
    with _manager(directory) as manager:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"directory {os.fspath(directory)!r} holds no checkpoint")
        if step is None:
            step = manager.latest_step()
        elif step not in steps:
            raise FileNotFoundError(f"step {step} is not among the checkpoints {sorted(steps)} in {os.fspath(directory)!r}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _payload(target))
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"checkpoint {step} in {os.fspath(directory)!r} does not match target: {exc}") from exc
    for path, (a, b) in _leaf_pairs(restored, _payload(target)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"checkpoint leaf {path} has shape {np.shape(a)}, target has {np.shape(b)}")
    return target.replace(**restored)


def _leaf_pairs(a: Any, b: Any):
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = jax.tree_util.tree_leaves(b)
    if len(flat_a) != len(flat_b):
        raise ValueError(f"checkpoint has {len(flat_a)} arrays, target has {len(flat_b)}")
    return [(jax.tree_util.keystr(path), (x, y)) for (path, x), y in zip(flat_a, flat_b)]
