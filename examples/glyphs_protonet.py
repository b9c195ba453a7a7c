"""ProtoNet on the offline glyph benchmark: accuracy with a 95 % CI and a confusion-matrix PNG.

python examples/glyphs_protonet.py            # 5-way 1-shot, 3 minutes of training on a laptop CPU
python examples/glyphs_protonet.py --quick    # a smoke run on a few classes
"""

import argparse

import jax
import numpy as np
import optax

import fsl_jax as fj

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
parser.add_argument("--shots", type=int, default=1)
parser.add_argument("--seconds", type=float, default=180, help="training time budget")
parser.add_argument("--out", default="runs/examples/glyphs_confusion.png")
args = parser.parse_args()

limit = 40 if args.quick else None  # classes per split
train = fj.data.glyphs("train", max_classes=limit)
test = fj.data.glyphs("test", max_classes=limit)
print(f"glyphs: {train.data.shape[0]} training classes, {test.data.shape[0]} unseen test classes")

ways, queries = 5, 15
learner = fj.protonet(fj.models.Conv4(hidden=16 if args.quick else 64), ways)
train_tasks = fj.data.DeviceSampler(train.data, ways, args.shots, queries)
test_tasks = fj.data.DeviceSampler(test.data, ways, args.shots, queries)
state, history = fj.meta_train(
    learner,
    optax.adam(1e-3),
    train_tasks.sample,
    steps=10 if args.quick else 100_000,
    meta_batch=4,
    key=jax.random.key(0),
    log_every=5 if args.quick else 10,
    progress=not args.quick,
    max_seconds=args.seconds,
)
result = fj.evaluate(learner, state.params, test_tasks, episodes=20 if args.quick else 600, key=jax.random.key(1))
print(f"5-way {args.shots}-shot on unseen scripts after {int(state.step)} steps: {result}")

# One test episode in detail: per-class precision / recall / F1 and the confusion matrix.
task = fj.task_at(test_tasks.sample(jax.random.key(2), 1), 0)
prototypes = learner.adapt(state.params, task, jax.random.key(0))
predicted = np.asarray(learner.predict(state.params, prototypes, task.query_x).argmax(-1))
report = fj.classification_report(np.asarray(task.query_y), predicted)
print(report)
print("confusion matrix:", fj.plot_confusion_matrix(report.confusion_matrix, args.out, title="one test episode"))
