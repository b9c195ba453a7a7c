"""One process of a multi-process run for test_multihost.py (and the single-process reference run).

usage: multihost_worker.py SCENARIO OUT_DIR NUM_PROCESSES PROCESS_ID PORT [STEPS [CHECKPOINT_DIR]]

Every process runs the same code with the same arguments (JAX's multi-controller model); with NUM_PROCESSES > 1 it
first joins the others through ``fj.parallel.initialize``. Process 0 writes the results to OUT_DIR.

Scenarios:
  equivalence  device-side source (sinusoid MAML), host-side sources (HostSampler MAML, EpisodeLoader with padded
               variable-way episodes and a grain worker per process), a metric learner
               (ProtoNet on DeviceSampler episodes) and evaluate(); final parameters and the evaluation to OUT_DIR.
  train        device-side sinusoid MAML to STEPS with checkpoints in CHECKPOINT_DIR (every 5 steps, log every 5),
               resuming from it; final parameters to OUT_DIR/train.npz. Exits 3 when stopped by a signal.
"""


def main() -> None:
    # a function, run under the __main__ guard: grain's worker processes (spawned) re-import this script
    import functools
    import json
    import os
    import sys

    scenario, out, num_processes, process_id, port = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5],
    )
    steps = int(sys.argv[6]) if len(sys.argv) > 6 else 20
    checkpoint_dir = sys.argv[7] if len(sys.argv) > 7 else None

    import fsl_jax as fj  # noqa: E402

    if num_processes > 1:
        fj.parallel.initialize(
            f"127.0.0.1:{port}", num_processes, process_id, timeout_seconds=120, heartbeat_timeout_seconds=10
        )

    import jax  # noqa: E402
    import numpy as np  # noqa: E402
    import optax  # noqa: E402

    assert jax.process_count() == num_processes and jax.device_count() == 8, (jax.process_count(), jax.devices())
    mesh = fj.parallel.task_mesh()

    def save(name, state):
        leaves = [np.asarray(jax.device_get(x)) for x in jax.tree_util.tree_leaves((state.params, state.opt_state))]
        if jax.process_index() == 0:
            np.savez(os.path.join(out, f"{name}.npz"), *leaves)

    sinusoids = functools.partial(fj.data.sinusoid_tasks, shots=5, queries=5)
    maml = fj.maml(fj.models.MLP(hidden=(16, 16)), "mse", inner_lr=0.01, inner_steps=1)

    if scenario == "equivalence":
        kw = dict(meta_batch=8, log_every=5, progress=False, mesh=mesh)
        state, history = fj.meta_train(maml, optax.adam(1e-2), sinusoids, steps=steps, key=jax.random.key(0), **kw)
        save("device", state)
        rng = np.random.default_rng(0)
        classes = rng.normal(size=(12, 10, 6)).astype(np.float32) + 2 * rng.normal(size=(12, 1, 6)).astype(np.float32)
        host = fj.data.HostSampler(classes, ways=3, shots=2, queries=3, seed=4)
        xent = fj.maml(fj.models.MLP(hidden=(8,), out=3), "xent", inner_lr=0.1, inner_steps=1)
        xent_state, _ = fj.meta_train(xent, optax.adam(1e-2), host, steps=steps, key=jax.random.key(1), **kw)
        save("host", xent_state)
        # variable-way episodes padded to 4 ways, built by a grain worker in each process (only that process's rows)
        loader = fj.data.EpisodeLoader(classes, ways=(2, 4), queries=2, seed=6, workers=1)
        padded = fj.maml(fj.models.MLP(hidden=(8,), out=4), "xent", inner_lr=0.1, inner_steps=1)
        loader_state, _ = fj.meta_train(padded, optax.adam(1e-2), loader, steps=steps, key=jax.random.key(5), **kw)
        save("loader", loader_state)
        episodes = fj.data.DeviceSampler(classes, ways=3, shots=2, queries=3)
        protonet = fj.protonet(fj.models.MLP(hidden=(16,), out=8), ways=3)
        # SGD: ProtoNet's output bias has a zero gradient (it shifts every embedding alike), and Adam would turn the
        # float noise in it into steps of the learning rate's size
        state, _ = fj.meta_train(protonet, optax.sgd(0.5), episodes.sample, steps=steps, key=jax.random.key(2), **kw)
        save("metric", state)
        result = fj.evaluate(
            protonet, state.params, episodes, episodes=64, batch_size=16, key=jax.random.key(3), mesh=mesh
        )
        host_result = fj.evaluate(
            xent, xent_state.params, host, episodes=32, batch_size=8, key=jax.random.key(4), mesh=mesh
        )
        if jax.process_index() == 0:
            with open(os.path.join(out, "evaluate.json"), "w") as f:
                json.dump(
                    {
                        "device": [result.mean, result.ci95, result.values.tolist()],
                        "host": [host_result.mean, host_result.ci95, host_result.values.tolist()],
                        "logged": history.steps,
                        "loss": history.series("loss").tolist(),
                    },
                    f,
                )
    elif scenario == "train":
        try:
            state, _ = fj.meta_train(
                maml,
                optax.adam(1e-2),
                sinusoids,
                steps=steps,
                meta_batch=8,
                key=jax.random.key(0),
                log_every=5,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=5,
                mesh=mesh,
                progress=True,
            )
        except fj.TrainingInterrupted as stop:
            print(f"STOPPED {stop.signal} {stop.step}", flush=True)
            sys.exit(3)
        save("train", state)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print(f"process {process_id} done", flush=True)


if __name__ == "__main__":
    main()
