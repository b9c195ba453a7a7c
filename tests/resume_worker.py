"""Worker for test_kill_resume.py: meta-trains with checkpoints and writes the final parameters to an .npz.

usage: resume_worker.py CKPT_DIR|- OUT.npz STEPS LOG_DIR [slow|loader]

Exits 0 when the run finished, 3 when a SIGINT / SIGTERM stopped it (after printing ``STOPPED <signal> <step>``).
With ``slow``, every host-sampled batch takes two seconds, so a test can send a second signal while the first one
waits for the step in flight. With ``loader``, variable-way episodes come from an EpisodeLoader with one grain worker
process (its position is stored with each checkpoint).
"""

import functools
import sys
import time

import jax
import numpy as np
import optax

import fsl_jax as fj


class SlowSampler(fj.data.HostSampler):
    def sample(self, num_tasks, index=None):
        time.sleep(2.0)
        return super().sample(num_tasks, index)


def main(ckpt_dir: str, out: str, steps: int, log_dir: str, mode: str) -> None:
    learner = fj.maml(fj.models.MLP(hidden=(32, 32)), "mse", inner_lr=0.01, inner_steps=2)
    if mode == "loader":
        data = np.random.default_rng(0).normal(size=(12, 10, 3)).astype(np.float32)
        source = fj.data.EpisodeLoader(data, ways=(2, 4), queries=2, seed=5, workers=1)
        learner = fj.maml(fj.models.MLP(hidden=(8,), out=4), "xent", inner_lr=0.1, inner_steps=1)
    elif mode == "slow":
        source = SlowSampler(np.random.default_rng(0).normal(size=(6, 10, 3)).astype(np.float32), 2, 2, 2)
        learner = fj.maml(fj.models.MLP(hidden=(8,), out=2), "xent", inner_lr=0.1, inner_steps=1)
    else:
        source = functools.partial(fj.data.sinusoid_tasks, shots=5, queries=5)
    try:
        state, _ = fj.meta_train(
            learner,
            optax.adam(1e-3),
            source,
            steps=steps,
            meta_batch=8,
            key=jax.random.key(3),
            checkpoint_dir=None if ckpt_dir == "-" else ckpt_dir,
            checkpoint_every=5,
            log_every=5,
            keep=2,
            log_dir=log_dir,
            progress=True,
        )
    except fj.TrainingInterrupted as stop:
        print(f"STOPPED {stop.signal} {stop.step}", flush=True)
        sys.exit(3)
    leaves = jax.tree_util.tree_leaves((state.params, state.opt_state))
    np.savez(out, step=int(state.step), *[np.asarray(x) for x in leaves])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "")
