"""MAML vs Meta-SGD on sinusoid regression, with a plot of the adapted curves.

python examples/sinusoid_maml.py            # 10,000 meta-steps each, ~30 s on a laptop CPU
python examples/sinusoid_maml.py --quick    # a smoke run
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fsl_jax as fj

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="a few hundred steps only")
parser.add_argument("--shots", type=int, default=10)
parser.add_argument("--out", default="runs/examples/sinusoid_maml.png")
args = parser.parse_args()
steps, episodes = (300, 50) if args.quick else (10_000, 600)

train = functools.partial(fj.data.sinusoid_tasks, shots=args.shots, queries=args.shots)
test = functools.partial(fj.data.sinusoid_tasks, shots=args.shots, queries=100)
model = fj.models.MLP(hidden=(40, 40), out=1)
learners = {"MAML": fj.maml(model, "mse", inner_lr=0.01), "Meta-SGD": fj.meta_sgd(model, "mse", inner_lr=0.01)}

probe = fj.task_at(fj.data.sinusoid_tasks(jax.random.key(42), 1, args.shots, 1), 0)
grid = jnp.linspace(-5, 5, 200)[:, None]
curves = {}
for name, learner in learners.items():
    state, _ = fj.meta_train(
        learner,
        optax.adam(1e-3),
        train,
        steps=steps,
        meta_batch=25,
        key=jax.random.key(0),
        progress=not args.quick,
        desc=name,
    )
    result = fj.evaluate(learner, state.params, test, episodes=episodes, key=jax.random.key(1))
    print(f"{name:8s} {args.shots}-shot post-adaptation {result}")
    adapted = learner.adapt(state.params, probe, jax.random.key(0))
    curves[f"{name} adapted"] = np.asarray(learner.predict(state.params, adapted, grid))[:, 0]

# The truth of the probe task, recovered exactly from its noise-free support points.
x, y = np.asarray(probe.support_x[:, 0]), np.asarray(probe.support_y[:, 0])
(a, b), *_ = np.linalg.lstsq(np.stack([np.sin(x), -np.cos(x)], 1), y, rcond=None)
curves["truth"] = np.hypot(a, b) * np.sin(np.asarray(grid[:, 0]) - np.arctan2(b, a))
path = fj.plots.plot_regression_fits(
    np.asarray(grid[:, 0]), curves, args.out, points=(x, y), title=f"{args.shots}-shot sinusoid after one inner step"
)
print(f"plot: {path}")
