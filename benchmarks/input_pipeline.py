"""Episodes from a folder of PNG files through EpisodeLoader (0, 1, 2 grain workers) against DeviceSampler on the same
glyphs: meta-step time, the loader's episodes/s alone, and the fraction of each step spent waiting for input.

    python benchmarks/input_pipeline.py [--classes 200] [--steps 60] [--meta-batch 8]

The folder is written from `fj.data.glyphs("train")` (`--classes` x 20 PNG files, 28x28 grey). The training loop is
`fj.meta_train`'s: the compiled ProtoNet step (Conv-4, 5-way 1-shot, 15 queries) is dispatched, then the next batch
is taken from the loader and sent to the device while the step runs; "waiting" is the time the loop spent inside
`next()` on the loader's iterator (building the batch itself with 0 workers). Steps are timed after 5 warm-up steps
(compilation excluded), median of 3 windows. Writes benchmarks/results/input_pipeline.json and prints a table.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=200, help="glyph classes written as folders (20 files each)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per window")
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64, help="Conv-4 channels")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "input_pipeline.json")
    )
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import optax

    import fsl_jax as fj

    ways, shots, queries, batch = 5, 1, 15, args.meta_batch
    glyphs = fj.data.glyphs("train", max_classes=args.classes)
    root = tempfile.mkdtemp(prefix="fsl_jax_folder_")
    try:
        t0 = time.perf_counter()
        fj.data.write_image_folder(os.path.join(root, "glyphs"), glyphs.data)
        folder = fj.data.image_folder(os.path.join(root, "glyphs"), size=28, channels=1)
        files = int(folder.counts.sum())
        print(f"wrote {files} PNG files in {len(folder)} class folders ({time.perf_counter() - t0:.1f} s)")

        learner = fj.protonet(fj.models.Conv4(hidden=args.hidden), ways)
        optimizer = optax.adam(1e-3)
        example = fj.task_at(fj.data.HostSampler(glyphs.data, ways, shots, queries).sample(1), 0)
        params = learner.init(jax.random.key(0), jax.tree_util.tree_map(jnp.asarray, example))

        def windows(run_step, wait_clock):
            """Three windows of --steps steps after 5 warm-up steps: (median s/step, waiting fraction)."""
            run_step(5)
            times, waits = [], []
            for _ in range(3):
                w0, t = wait_clock(), time.perf_counter()
                run_step(args.steps)
                elapsed = time.perf_counter() - t
                times.append(elapsed / args.steps)
                waits.append((wait_clock() - w0) / elapsed)
            k = times.index(statistics.median(times))
            return times[k], waits[k]

        rows = {}
        # DeviceSampler: the data on the device, episodes sampled inside the compiled step
        sampler = fj.data.DeviceSampler(glyphs.data, ways, shots, queries)
        device_step = fj.make_meta_step(learner, optimizer, sampler=sampler.sample, meta_batch=batch)
        state = fj.TrainState.create(learner, jax.tree_util.tree_map(jnp.copy, params), optimizer)  # steps donate it
        key = jax.random.key(1)

        def run_device(n):
            nonlocal state
            for _ in range(n):
                state, _ = device_step(state, key)
            jax.block_until_ready(state.params)

        per_step, _ = windows(run_device, lambda: 0.0)
        rows["DeviceSampler (data on the device)"] = {"seconds_per_step": per_step, "waiting": 0.0}
        print(f"DeviceSampler: {1e3 * per_step:.1f} ms/step")

        host_step = fj.make_meta_step(learner, optimizer)
        for workers in (0, 1, 2):
            loader = fj.data.EpisodeLoader(folder, ways, shots, queries, seed=0, workers=workers)
            # the loader alone: batches per second through the iterator
            with loader.iterate(batch) as batches:
                next(batches)  # workers started
                t = time.perf_counter()
                count = 20
                for _ in range(count):
                    next(batches)
                loader_eps = count * batch / (time.perf_counter() - t)
            state = fj.TrainState.create(
                learner, jax.tree_util.tree_map(jnp.copy, params), optimizer
            )  # steps donate it
            batches = loader.iterate(batch, start_index=1000)
            upcoming = jax.tree_util.tree_map(jnp.asarray, next(batches))

            def run_host(n):
                nonlocal state, upcoming
                for i in range(n):
                    state, _ = host_step(state, upcoming, jax.random.fold_in(key, i))
                    upcoming = jax.tree_util.tree_map(jnp.asarray, next(batches))  # built while the step runs
                jax.block_until_ready(state.params)

            try:
                per_step, waiting = windows(run_host, lambda: batches.wait_seconds)
            finally:
                batches.close()
            name = f"EpisodeLoader, PNG folder, {workers} worker{'s' if workers != 1 else ''}"
            rows[name] = {"seconds_per_step": per_step, "waiting": waiting, "loader_episodes_per_second": loader_eps}
            print(f"{name}: {1e3 * per_step:.1f} ms/step, waiting {100 * waiting:.1f} %, loader {loader_eps:.0f} ep/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = rows["DeviceSampler (data on the device)"]["seconds_per_step"]
    table = [
        "| input | ms / step | vs DeviceSampler | waiting for input | loader alone (episodes/s) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        eps = r.get("loader_episodes_per_second")
        table.append(
            f"| {name} | {1e3 * r['seconds_per_step']:.1f} | {r['seconds_per_step'] / base:.2f}x | "
            f"{100 * r['waiting']:.1f} % | {'-' if eps is None else f'{eps:.0f}'} |"
        )
    print("\n".join(table))
    command = (
        f"python benchmarks/input_pipeline.py --classes {args.classes} --steps {args.steps} "
        f"--meta-batch {batch} --hidden {args.hidden}"
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "command": command,
                "files": files,
                "workload": f"ProtoNet Conv-4 ({args.hidden} channels), "
                f"{ways}-way {shots}-shot {queries} queries, meta-batch {batch}",
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "rows": rows,
                "table": table,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":  # grain's worker processes import this file again
    main()
