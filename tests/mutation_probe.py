"""Mutation probe: break each core guarantee on purpose and check that the tests claiming it fail.

Each mutant replaces one exact piece of source (which must occur exactly once, so a mutant that no longer applies is
reported, never silently skipped) in a copy of the tree, then runs the tests that guard that guarantee from the copy.
A mutant is *killed* when those tests fail. Run with ``make mutants`` (not part of ``make test``: ~25 min on 2 cores);
``--only NAME`` runs some, ``--list`` shows them, ``--jobs N`` runs N at a time.

    python tests/mutation_probe.py [--only maml_first_order remat_ignored] [--jobs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutant(NamedTuple):
    name: str
    what: str  # the guarantee it breaks, in words
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "maml_first_order",
        "MAML is always first order",
        "fsl_jax/learners/maml.py",
        "            grads = jax.grad(support_loss)(fast_params)\n            if order_first:",
        "            grads = jax.lax.stop_gradient(jax.grad(support_loss)(fast_params))\n            if order_first:",
        ("tests/test_maml.py::test_maml_meta_gradient_equals_closed_form_second_order",),
    ),
    Mutant(
        "anil_metasgd_first_order",
        "ANIL and Meta-SGD first order (MAML unchanged)",
        "fsl_jax/learners/maml.py",
        "        return run(params, task, first_order, trajectory)",
        "        return run(params, task, first_order or heads is not None or learn_lr, trajectory)",
        (
            "tests/test_maml.py::test_anil_meta_gradient_is_second_order",
            "tests/test_maml.py::test_meta_sgd_meta_gradient_is_second_order",
        ),
    ),
    Mutant(
        "remat_ignored",
        "remat=True does not checkpoint the inner step",
        "fsl_jax/learners/maml.py",
        "    step = jax.checkpoint(step)\n    if block is None:",
        "    step = step\n    if block is None:",
        ("tests/test_maml.py::test_remat_is_in_the_meta_gradient_jaxpr",),
    ),
    Mutant(
        "query_leaks_into_adaptation",
        "MAML's inner loop also fits the query set",
        "fsl_jax/learners/maml.py",
        "                predictions = model.apply(full(f, i), task.support_x)\n"
        "                return loss_fn(predictions, task.support_y, task.support_mask, **way_mask_kwargs(task))",
        "                predictions = model.apply(full(f, i), task.support_x)\n"
        "                leak = loss_fn(model.apply(full(f, i), task.query_x), task.query_y, task.query_mask)\n"
        "                return loss_fn(predictions, task.support_y, task.support_mask, **way_mask_kwargs(task)) + leak",
        ("tests/test_maml.py::test_query_set_never_leaks_into_adaptation",),
    ),
    Mutant(
        "remat_block_drops_remainder",
        "a nested remat schedule skips the steps left over after whole blocks",
        "fsl_jax/learners/maml.py",
        "    if rest:\n        carry, tail",
        "    if False:\n        carry, tail",
        ("tests/test_maml_plus_plus.py::test_every_remat_schedule_gives_plain_maml_gradient",),
    ),
    Mutant(
        "imaml_no_linear_solve",
        "iMAML returns the query gradient without the (I + H/lam)^-1 solve",
        "fsl_jax/learners/imaml.py",
        "        theta_bar = conjugate_gradient(matvec, v, cg_steps)",
        "        theta_bar = v",
        ("tests/test_imaml.py::test_imaml_meta_gradient_equals_the_closed_form_when_the_inner_solution_is_exact",),
    ),
    Mutant(
        "imaml_hessian_at_theta",
        "iMAML's Hessian-vector products taken at theta instead of phi*",
        "fsl_jax/learners/imaml.py",
        "        return phi, (phi, data)",
        "        return phi, (theta, data)",
        ("tests/test_imaml.py::test_imaml_matches_the_implicit_formula_on_a_nonlinear_model",),
    ),
    Mutant(
        "per_step_lr_uses_step_0",
        "MAML++'s per-step learning rates always use the first step's rate",
        "fsl_jax/learners/maml.py",
        "lr_i = jax.tree_util.tree_map(lambda lr: lr[i], lrs)",
        "lr_i = jax.tree_util.tree_map(lambda lr: lr[0], lrs)",
        ("tests/test_maml_plus_plus.py::test_maml_plus_plus_options_match_a_hand_unrolled_inner_loop",),
    ),
    Mutant(
        "per_step_norm_off_by_one",
        "MAML++'s query forward after k updates uses norm set k - 1",
        "fsl_jax/learners/maml.py",
        "            return new, (full(new, i + 1) if trajectory else None)",
        "            return new, (full(new, i) if trajectory else None)",
        ("tests/test_maml_plus_plus.py::test_maml_plus_plus_options_match_a_hand_unrolled_inner_loop",),
    ),
    Mutant(
        "derivative_annealing_inverted",
        "derivative-order annealing is second order first, first order after",
        "fsl_jax/learners/maml.py",
        "                                lambda p: run(p, task, True, trajectory),\n"
        "                                lambda p: run(p, task, False, trajectory), params)",
        "                                lambda p: run(p, task, False, trajectory),\n"
        "                                lambda p: run(p, task, True, trajectory), params)",
        (
            "tests/test_maml_plus_plus.py::test_derivative_order_annealing_is_first_order_then_second_order_in_one_compilation",
        ),
    ),
    Mutant(
        "msl_step_ignored",
        "the meta-step never reaches MAML++ (make_meta_step drops state.step)",
        "fsl_jax/step.py",
        "batch_grads(learner, state.params, tasks, key, task_chunk, state.step)",
        "batch_grads(learner, state.params, tasks, key, task_chunk, None)",
        (
            "tests/test_maml_plus_plus.py::test_derivative_order_annealing_is_first_order_then_second_order_in_one_compilation",
        ),
    ),
    Mutant(
        "sampler_support_query_overlap",
        "the device sampler's query set repeats support examples",
        "fsl_jax/data/sampler.py",
        "        query_x = x[:, self.shots :].reshape((self.ways * self.queries, *self.feature_shape))",
        "        query_x = x[:, : self.queries].reshape((self.ways * self.queries, *self.feature_shape))",
        ("tests/test_data.py",),
    ),
    Mutant(
        "task_chunk_wrong_scale",
        "task_chunk sums chunk gradients without the 1/tasks scale",
        "fsl_jax/step.py",
        "    scale = 1.0 / total\n",
        "    scale = 1.0 / total if task_chunk is None else 1.0\n",
        ("tests/test_train.py::test_task_chunks_give_the_same_gradient",),
    ),
    Mutant(
        "donation_off",
        "the train state is not donated",
        "fsl_jax/step.py",
        "    donate_argnums = (0,) if donate else ()",
        "    donate_argnums = ()",
        ("tests/test_train.py::test_step_compiles_once_donates_and_never_syncs",),
    ),
    Mutant(
        "nan_guard_off",
        "non-finite steps are not flagged",
        "fsl_jax/step.py",
        "        finite = jnp.logical_and(jnp.isfinite(loss), _all_finite(grads))",
        "        finite = jnp.array(True)",
        (
            "tests/test_train.py::test_nonfinite_steps_are_flagged_and_optionally_skipped",
            "tests/test_train.py::test_meta_train_stops_on_nan_with_the_step_number",
        ),
    ),
    Mutant(
        "per_step_host_sync",
        "meta_train reads the NaN flag back after every step",
        "fsl_jax/train.py",
        "                done = i + 1\n",
        "                done = i + 1\n                _raise_if_nonfinite(int(state.first_nonfinite_step), "
        "skip_nonfinite, checkpoint_dir, done)\n",
        ("tests/test_train.py::test_meta_train_reads_the_device_only_at_logging_points",),
    ),
    Mutant(
        "sharded_first_device_only",
        "the sharded step uses only the first device's tasks",
        "fsl_jax/step.py",
        "            tasks = jax.lax.with_sharding_constraint(tasks, parallel.task_sharding(mesh))",
        "            n = parallel.task_devices(mesh)\n"
        "            tasks = jax.tree_util.tree_map(lambda x: jnp.concatenate([x[: x.shape[0] // n]] * n), tasks)\n"
        "            tasks = jax.lax.with_sharding_constraint(tasks, parallel.task_sharding(mesh))",
        ("tests/test_parallel.py",),
    ),
    Mutant(
        "sharding_axis_ignored",
        "tasks are replicated instead of split over the mesh",
        "fsl_jax/parallel.py",
        "    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))",
        "    return NamedSharding(mesh, PartitionSpec())",
        ("tests/test_parallel.py",),
    ),
    Mutant(
        "never_resume",
        "meta_train ignores the checkpoint and starts at step 0",
        "fsl_jax/train.py",
        "    if checkpoint_dir is not None and latest_step(checkpoint_dir) is not None:\n",
        "    if False:\n",
        (
            "tests/test_train.py::test_resume_after_stop_is_bit_identical",
            "tests/test_train.py::test_host_sampler_resume_is_bit_identical",
        ),
    ),
    Mutant(
        "restore_drops_opt_state",
        "restoring keeps the target's optimiser state",
        "fsl_jax/checkpoint.py",
        '    return target.replace(**restored["state"])',
        '    return target.replace(**{k: v for k, v in restored["state"].items() if k != "opt_state"})',
        ("tests/test_train.py::test_checkpoint_round_trip_and_errors",),
    ),
    Mutant(
        "other_shape_accepted",
        "a checkpoint of another shape is restored without a clear error",
        "fsl_jax/checkpoint.py",
        "    wrong = sorted(",
        "    return\n    wrong = sorted(",
        ("tests/test_train.py::test_checkpoint_round_trip_and_errors",),
    ),
    Mutant(
        "config_change_accepted",
        "resuming with other settings is silent",
        "fsl_jax/checkpoint.py",
        "        diff = config_diff(stored, config)",
        "        diff = {}",
        ("tests/test_run_safety.py::test_resuming_with_other_settings_names_every_changed_field",),
    ),
    Mutant(
        "signals_ignored",
        "SIGINT/SIGTERM stop the run without saving",
        "fsl_jax/train.py",
        "        self.enabled = enabled and threading",
        "        self.enabled = False and threading",
        ("tests/test_kill_resume.py::test_stop_at_a_random_moment_then_resume_is_bit_identical",),
    ),
    Mutant(
        "no_time_checkpoints",
        "checkpoint_every_seconds is ignored",
        "fsl_jax/train.py",
        "time_due = checkpoint_every_seconds is not None and now - last_save_time >= checkpoint_every_seconds",
        "time_due = False",
        ("tests/test_run_safety.py::test_time_based_checkpoints",),
    ),
    Mutant(
        "metrics_kept_after_checkpoint",
        "a resumed run keeps metrics logged after its checkpoint (duplicates)",
        "fsl_jax/train.py",
        "            kept = [line for line in lines if _line_step(line) <= start]",
        "            kept = lines",
        ("tests/test_kill_resume.py::test_stop_at_a_random_moment_then_resume_is_bit_identical",),
    ),
    Mutant(
        "output_width_unchecked",
        "labels beyond the model's outputs pass silently",
        "fsl_jax/_validate.py",
        "    if ways > width:",
        "    if False:",
        ("tests/test_run_safety.py::test_labels_beyond_the_model_outputs_are_an_error_naming_both",),
    ),
    Mutant(
        "host_rows_of_process_0",
        "every process builds the first rows of a host batch",
        "fsl_jax/parallel.py",
        "    return start, stop\n",
        "    return 0, stop - start\n",
        ("tests/test_multihost.py::test_two_processes_end_where_one_does",),
    ),
    Mutant(
        "way_mask_ignored",
        "padded classes keep their logits (and so some probability)",
        "fsl_jax/learners/base.py",
        "    return jnp.where(way_mask > 0, logits, low)",
        "    return logits",
        ("tests/test_padding.py",),
    ),
    Mutant(
        "padded_support_rows_count",
        "MAML's inner loop also fits the padded support rows",
        "fsl_jax/learners/maml.py",
        "            return loss_fn(predictions, task.support_y, task.support_mask, **way_mask_kwargs(task))",
        "            return loss_fn(predictions, task.support_y, None, **way_mask_kwargs(task))",
        ("tests/test_padding.py",),
    ),
    Mutant(
        "episode_ignores_batch_number",
        "an EpisodeLoader draws the same episodes for every batch",
        "fsl_jax/data/pipeline.py",
        "rng = np.random.default_rng([self.seed, int(index), int(j)])",
        "rng = np.random.default_rng([self.seed, 0, int(j)])",
        ("tests/test_pipeline.py::test_fixed_episodes_are_host_sampler_episodes",),
    ),
    Mutant(
        "loader_restarts_at_batch_0",
        "a resumed run takes its loader's batches from the start again",
        "fsl_jax/train.py",
        "return source.iterate(num_tasks, start_index=first, start=start, stop=stop)",
        "return source.iterate(num_tasks, start_index=0, start=start, stop=stop)",
        ("tests/test_kill_resume.py::test_sigkill_with_an_episode_loader_resumes_bit_identically",),
    ),
    Mutant(
        "model_axis_ignored",
        "parameters stay replicated on a mesh with a model axis",
        "fsl_jax/parallel.py",
        "    if model == 1 or len(shape) < 2:\n        return PartitionSpec()",
        "    if True:\n        return PartitionSpec()",
        ("tests/test_parallel.py::test_model_axis_shards_parameters_and_gives_the_single_device_step",),
    ),
    Mutant(
        "siamese_weight_ignored",
        "siamese query_loss_weight does not scale the gradient",
        "fsl_jax/learners/siamese.py",
        "    if weight == 1.0:\n        return loss_fn",
        "    if True:\n        return loss_fn",
        ("tests/test_metric_learners.py::test_siamese_query_loss_weight_scales_only_the_gradient",),
    ),
]


def _copy_tree(dest: str) -> None:
    ignore = shutil.ignore_patterns(
        ".venv*", ".git", "runs", "docs", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info"
    )
    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def run_mutant(mutant: Mutant, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        _copy_tree(tmp)
        path = os.path.join(tmp, mutant.path)
        with open(path) as f:
            source = f.read()
        count = source.count(mutant.old)
        if count != 1:
            return {"name": mutant.name, "status": "does not apply", "detail": f"found {count} times in {mutant.path}"}
        with open(path, "w") as f:
            f.write(source.replace(mutant.old, mutant.new))
        env = dict(os.environ, PYTHONPATH=tmp, JAX_PLATFORMS="cpu")
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            *mutant.tests,
        ]
        t0 = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"name": mutant.name, "status": "killed (timeout)", "seconds": round(time.perf_counter() - t0)}
        seconds = round(time.perf_counter() - t0)
        failed = re.findall(r"^FAILED (\S+)", result.stdout, flags=re.M)
        if result.returncode == 0:
            return {"name": mutant.name, "status": "SURVIVED", "seconds": seconds}
        if result.returncode == 1 and failed:
            return {"name": mutant.name, "status": "killed", "by": failed[0], "seconds": seconds}
        if result.returncode in (1, 2) and re.search(r"^ERROR ", result.stdout, flags=re.M):
            return {"name": mutant.name, "status": "killed (error)", "detail": result.stdout[-400:], "seconds": seconds}
        # 3: internal error, 4: a test id that does not exist, 5: nothing collected: the probe is wrong, not the code
        return {
            "name": mutant.name,
            "status": f"probe error (pytest exit {result.returncode})",
            "detail": result.stdout[-400:],
            "seconds": seconds,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="mutant names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time (default 1)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant (default 900)")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    names = {m.name for m in MUTANTS}
    unknown = set(args.only or ()) - names
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; known: {sorted(names)}")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what} ({m.path}; guarded by {', '.join(m.tests)})")
        return 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = []
        for mutant, result in zip(chosen, pool.map(lambda m: run_mutant(m, args.timeout), chosen)):
            results.append({**result, "what": mutant.what})
            print(
                f"{mutant.name}: {result['status']}"
                + (f" by {result['by']}" if "by" in result else "")
                + (f" ({result['seconds']} s)" if "seconds" in result else ""),
                flush=True,
            )
    print("\n| mutant | what it breaks | result | killed by |\n|---|---|---|---|")
    for r in results:
        print(f"| `{r['name']}` | {r['what']} | {r['status']} | {('`' + r['by'] + '`') if 'by' in r else '-'} |")
    survived = [r["name"] for r in results if not r["status"].startswith("killed")]
    print(
        f"\n{len(results) - len(survived)} of {len(results)} mutants killed in {time.perf_counter() - t0:.0f} s"
        + (f"; not killed: {survived}" if survived else "")
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
