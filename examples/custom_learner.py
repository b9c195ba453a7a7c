"""Writing a new learner on the Learner contract: a nearest-centroid classifier with a learned metric scale.

A learner is four pure functions for ONE task; fsl_jax vmaps it over tasks, differentiates, jits and shards it.

    python examples/custom_learner.py [--quick]
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import fsl_jax as fj

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()


def centroid_learner(encoder: nn.Module, ways: int) -> fj.Learner:
    def init(key, task):
        return {"encoder": encoder.init(key, task.support_x), "log_scale": jnp.zeros(())}

    def adapt(params, task, key):  # support set only: class centroids of the embeddings
        z = encoder.apply(params["encoder"], task.support_x)
        onehot = jax.nn.one_hot(task.support_y, ways)
        return (onehot.T @ z) / onehot.sum(0)[:, None]

    def predict(params, centroids, x):  # logits: scaled negative squared distances
        z = encoder.apply(params["encoder"], x)
        d = jnp.sum((z[:, None, :] - centroids[None]) ** 2, axis=-1)
        return -jnp.exp(params["log_scale"]) * d

    return fj.Learner(init, adapt, predict, loss=fj.xent_loss, kind="classification", name="centroid")


data = fj.data.digits().data  # [10 classes, 174, 8, 8, 1]
train = fj.data.DeviceSampler(data[:5], ways=5, shots=1, queries=10)
test = fj.data.DeviceSampler(data[5:], ways=5, shots=1, queries=10)
learner = centroid_learner(fj.models.Conv4(hidden=32, blocks=3), ways=5)
state, history = fj.meta_train(
    learner,
    optax.adam(1e-3),
    train.sample,
    steps=30 if args.quick else 1000,
    meta_batch=8,
    key=jax.random.key(0),
    progress=not args.quick,
)
print(
    "unseen digits 5-9, 5-way 1-shot:",
    fj.evaluate(learner, state.params, test, episodes=100 if args.quick else 600, key=jax.random.key(1)),
)
