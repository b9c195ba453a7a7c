"""The same Conv-4 trained with MAML, FOMAML and ANIL: time and accuracy side by side.

python examples/maml_to_anil.py            # 60 s of training each on glyphs, 5-way 1-shot
python examples/maml_to_anil.py --quick
"""

import argparse
import time

import jax
import optax

import fsl_jax as fj

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
parser.add_argument("--seconds", type=float, default=60)
args = parser.parse_args()

limit = 30 if args.quick else None
train = fj.data.DeviceSampler(fj.data.glyphs("train", max_classes=limit).data, ways=5, shots=1, queries=15)
test = fj.data.DeviceSampler(fj.data.glyphs("test", max_classes=limit).data, ways=5, shots=1, queries=15)
model = fj.models.Conv4(num_classes=5, hidden=8, blocks=2) if args.quick else fj.models.Conv4(num_classes=5, hidden=32)
learners = {
    "MAML (2nd order)": fj.maml(model, "xent", inner_lr=0.4, inner_steps=1),
    "FOMAML": fj.maml(model, "xent", inner_lr=0.4, inner_steps=1, first_order=True),
    "ANIL (head only)": fj.anil(model, "xent", inner_lr=0.4, inner_steps=5, head="head"),
}
rows = []
for name, learner in learners.items():
    step = fj.make_meta_step(learner, optax.adam(1e-3), sampler=train.sample, meta_batch=4)
    state = fj.TrainState.create(
        learner, learner.init(jax.random.key(0), fj.task_at(train.sample(jax.random.key(0), 1), 0)), optax.adam(1e-3)
    )
    t0 = time.perf_counter()
    state, _ = step(state, jax.random.key(1))
    jax.block_until_ready(state.params)
    compile_s, t0 = time.perf_counter() - t0, time.perf_counter()
    while time.perf_counter() - t0 < (0.5 if args.quick else args.seconds):
        state, metrics = step(state, jax.random.key(1))
        jax.block_until_ready(metrics["loss"])
    steps, per_step = int(state.step) - 1, (time.perf_counter() - t0) / max(int(state.step) - 1, 1)
    result = fj.evaluate(learner, state.params, test, episodes=10 if args.quick else 600, key=jax.random.key(2))
    rows.append((name, compile_s, per_step, steps, result))

print("| learner | compile (s) | s / meta-step | meta-steps | 5-way 1-shot accuracy |\n|---|---|---|---|---|")
for name, compile_s, per_step, steps, result in rows:
    print(
        f"| {name} | {compile_s:.1f} | {per_step:.3f} | {steps} | {100 * result.mean:.1f} +- {100 * result.ci95:.1f} % |"
    )
