"""How the iMAML image recipe's ``lam`` and inner steps were chosen: 60 s of meta-training on the glyph "train"
scripts, scored on 300 episodes of the "val" scripts (never the "test" ones), 5-way 1-shot, Conv-4 (32 channels).

    python benchmarks/imaml_sweep.py LAM INNER_STEPS INNER_LR SECONDS      # e.g. 0.2 10 0.4 60

Results of the sweep (this 2-core CPU): lam / steps / lr -> val accuracy %: 1.0 / 5 / 0.4 -> 54.9 (test, the first
setting); 0.5 / 5 / 0.4 -> 61.6; 2.0 / 5 / 0.4 -> 34.5; 5.0 / 5 / 0.2 -> 37.1; 0.2 / 5 / 0.4 -> 67.9;
0.5 / 10 / 0.4 -> 73.1; 0.2 / 10 / 0.4 -> 84.6 (chosen).
"""

import sys
import time

import jax
import optax

import fsl_jax as fj


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__)
        return 2
    lam, steps, lr, seconds = float(argv[0]), int(argv[1]), float(argv[2]), float(argv[3])
    train, val = fj.data.glyphs("train").data, fj.data.glyphs("val").data
    train_sampler, val_sampler = fj.data.DeviceSampler(train, 5, 1, 15), fj.data.DeviceSampler(val, 5, 1, 15)
    learner = fj.imaml(fj.models.Conv4(num_classes=5, hidden=32), "xent", lr, steps, lam=lam, cg_steps=5)
    t0 = time.time()
    state, _ = fj.meta_train(
        learner,
        optax.adam(1e-3),
        train_sampler.sample,
        steps=100_000,
        meta_batch=4,
        key=jax.random.key(0),
        log_every=25,
        max_seconds=seconds,
        progress=False,
    )
    result = fj.evaluate(learner, state.params, val_sampler, episodes=300, key=jax.random.key(1))
    print(
        f"lam={lam} steps={steps} lr={lr}: val {100 * result.mean:.1f} +- {100 * result.ci95:.1f} % after "
        f"{int(state.step)} meta-steps ({time.time() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
