"""Worker for test_kill_resume.py: meta-trains with checkpoints and writes the final parameters to an .npz."""

import functools
import sys

import jax
import numpy as np
import optax

import fsl_jax as fj


def main(ckpt_dir: str, out: str, steps: int) -> None:
    learner = fj.maml(fj.models.MLP(hidden=(32, 32)), "mse", inner_lr=0.01, inner_steps=2)
    source = functools.partial(fj.data.sinusoid_tasks, shots=5, queries=5)
    state, _ = fj.meta_train(learner, optax.adam(1e-3), source, steps=steps, meta_batch=8, key=jax.random.key(3),
                             checkpoint_dir=None if ckpt_dir == "-" else ckpt_dir, checkpoint_every=5,
                             log_every=5, keep=2, progress=False)
    leaves = jax.tree_util.tree_leaves((state.params, state.opt_state))
    np.savez(out, step=int(state.step), *[np.asarray(x) for x in leaves])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
