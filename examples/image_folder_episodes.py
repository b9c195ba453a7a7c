"""Your data is a folder of images, one sub-folder per class: ProtoNet on Meta-Dataset-style variable episodes.

python examples/image_folder_episodes.py            # 5..10-way episodes, 2 minutes of training on a laptop CPU
python examples/image_folder_episodes.py --quick    # a smoke run on a few classes
"""

import argparse
import os
import shutil
import time

import jax
import optax

import fsl_jax as fj


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=120, help="training time budget")
    parser.add_argument("--out", default="runs/examples/glyph_folder")
    args = parser.parse_args()

    # 1. An image folder root/<class>/<image files>, here written from the offline glyphs (train and held-out test).
    limit = 40 if args.quick else None  # classes per split
    shutil.rmtree(args.out, ignore_errors=True)  # a fresh folder (and a fresh checkpoint_dir: no resuming)
    for split in ("train", "test"):
        fj.data.write_image_folder(os.path.join(args.out, split), fj.data.glyphs(split, max_classes=limit).data)

    # 2. Class sources over the folders: only the file listing is read; images are decoded when an episode needs them.
    train = fj.data.image_folder(os.path.join(args.out, "train"), size=28, channels=1)
    test = fj.data.image_folder(os.path.join(args.out, "test"), size=28, channels=1)
    for name, folder in (("train", train), ("test", test)):
        print(f"{name} folder {folder.root}: {folder.num_classes} classes, {int(folder.counts.sum())} files")

    # 3. Variable episodes built by grain worker processes: 5..10 ways, Meta-Dataset's support rule (shots=None),
    #    5 queries per class, padded to static shapes (masks mark the real rows and classes).
    loader = fj.data.EpisodeLoader(train, ways=(5, 10), shots=None, queries=5, seed=0, workers=1 if args.quick else 2)
    print(loader)

    # 4. Meta-train a ProtoNet as wide as the padded ways; layer norm treats every row on its own, so padded rows do
    #    not leak into the real ones (batch norm would).
    encoder = fj.models.Conv4(hidden=16 if args.quick else 64, norm="layer")
    learner = fj.protonet(encoder, ways=loader.max_ways)
    t0 = time.perf_counter()
    state, history = fj.meta_train(
        learner,
        optax.adam(1e-3),
        loader,
        steps=6 if args.quick else 100_000,
        meta_batch=2 if args.quick else 4,
        key=jax.random.key(0),
        log_every=3 if args.quick else 10,
        progress=not args.quick,
        max_seconds=args.seconds,
        checkpoint_dir=os.path.join(args.out, "checkpoints"),
    )
    seconds = time.perf_counter() - t0
    print(
        f"meta-trained {int(state.step)} steps in {seconds:.0f} s ({seconds / int(state.step):.2f} s per step, "
        f"compilation included); last training loss {history.metrics[-1]['loss']:.3f}"
    )

    # 5. Fixed 5-way 1-shot episodes from the held-out folder; a 5-way ProtoNet shares the trained encoder's weights.
    episodes = 20 if args.quick else 600
    test_tasks = fj.data.EpisodeLoader(test, ways=5, shots=1, queries=15, seed=1).sample(episodes)
    result = fj.evaluate(fj.protonet(encoder, ways=5), state.params, test_tasks, episodes, key=jax.random.key(1))
    print(f"5-way 1-shot on {test.num_classes} unseen classes after {int(state.step)} steps: {result}")


if __name__ == "__main__":  # grain's worker processes import this script again: run nothing on import
    main()
