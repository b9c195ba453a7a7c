"""The ``fsl-jax`` command: ``demo``, ``train``, ``eval``, ``report``.

Every subcommand takes the same episode flags (``--learner --data --ways --shots --queries --meta-batch --steps
--seed --out``). ``train`` writes a run folder (``config.json``, ``metrics.jsonl``, ``checkpoints/``); ``eval`` reads
one back and reports accuracy (or MSE) with a 95 % confidence interval.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import time
from typing import Any, Callable, Sequence

from fsl_jax.recipes import GRADIENT_BASED, IMAGE_LEARNERS

LEARNERS = IMAGE_LEARNERS
DATASETS = ("sinusoid", "digits", "glyphs")


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: no usage dump, no traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# Defaults that finish in minutes on a 2-core CPU (measured: glyphs ProtoNet ~0.8 s per step at meta-batch 4; at the
# old defaults, meta-batch 25 x 2,000 steps, it took about 3 hours).
DEFAULTS = {
    "sinusoid": {"meta_batch": 25, "steps": 2000},
    "digits": {"meta_batch": 16, "steps": 500},
    "glyphs": {"meta_batch": 4, "steps": 500},
}


def _per_data(name: str) -> str:
    return ", ".join(f"{data} {DEFAULTS[data][name]:,}" for data in DATASETS)


def _episode_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--learner", choices=LEARNERS, default="maml", help="meta-learner (default: maml)")
    p.add_argument("--data", choices=DATASETS, default="sinusoid", help="episode source (default: sinusoid)")
    p.add_argument("--ways", type=int, default=5, help="classes per task, N (classification data; default 5)")
    p.add_argument("--shots", type=int, default=5, help="support examples per class, K (default 5)")
    p.add_argument("--queries", type=int, default=15, help="query examples per class (default 15)")
    p.add_argument(
        "--meta-batch",
        type=int,
        default=None,
        help="tasks per meta-step (default per data set: " + _per_data("meta_batch") + ")",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="meta-steps (default per data set: " + _per_data("steps") + "; the expected time is printed "
        "after the first logging point)",
    )
    p.add_argument("--inner-lr", type=float, default=None, help="inner-loop learning rate (default: per data set)")
    p.add_argument("--inner-steps", type=int, default=None, help="inner-loop steps (default: per data set)")
    p.add_argument("--lr", type=float, default=1e-3, help="outer Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--episodes", type=int, default=600, help="test episodes for evaluation (default 600)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fsl-jax", description="Few-shot and meta-learning in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="MAML and Meta-SGD on sinusoid regression vs the published MSE",
        description="Meta-trains MAML and Meta-SGD on sinusoid regression for 5/10/20 shots, "
        "prints post-adaptation MSE (mean +- 95 % CI over 600 tasks) beside the "
        "published figures, and writes results.json and PNG plots to --out.",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--steps", type=int, default=20000, help="meta-steps per (learner, shots) (default 20000)")
    demo.add_argument("--episodes", type=int, default=600, help="test tasks (default 600)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quick", action="store_true", help="a short run (500 steps, 100 tasks) to check the set-up")

    train = sub.add_parser(
        "train",
        help="meta-train a learner and save a run folder",
        description="Meta-trains a learner on episodes and writes config.json, metrics.jsonl "
        "and checkpoints/ to --out; an existing run folder is resumed.",
    )
    _episode_flags(train)
    train.add_argument("--out", default=None, help="run folder (default runs/<learner>-<data>)")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    train.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run as N local processes on JAX's distributed runtime (to try multi-host on one "
        "machine; on a cluster start one process per host instead, see the README); default 1",
    )

    ev = sub.add_parser(
        "eval",
        help="evaluate a trained run folder",
        description="Restores the latest checkpoint of a run folder and evaluates it on test "
        "episodes: accuracy (or MSE) with a 95 % confidence interval.",
    )
    ev.add_argument("run", help="run folder written by 'fsl-jax train'")
    ev.add_argument("--episodes", type=int, default=600, help="test episodes (default 600)")
    ev.add_argument("--seed", type=int, default=1, help="random seed of the test episodes (default 1)")

    rep = sub.add_parser(
        "report",
        help="summarise a run folder and draw its learning curve",
        description="Prints a run folder's settings, last logged metrics and evaluation, and draws "
        "learning_curve.png from metrics.jsonl (training loss, and for classifiers the "
        "training query accuracy).",
    )
    rep.add_argument("run", help="run folder written by 'fsl-jax train'")

    from fsl_jax.llm.prompt_cli import add_prompt_parser
    from fsl_jax.llm.text_cli import add_text_parser

    add_text_parser(sub)
    add_prompt_parser(sub)
    return parser


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _image_splits(data: str):
    """(meta-train, meta-test) class arrays of an image data set."""
    import fsl_jax as fj

    if data == "digits":
        images = fj.data.digits().data
        return images[:5], images[5:]  # classes 0-4 for meta-training, 5-9 unseen at test time
    if data == "glyphs":
        return fj.data.glyphs("train").data, fj.data.glyphs("test").data  # test scripts are unseen in training
    raise ValueError(f"--data must be one of {DATASETS}, got {data!r}")


def _build(config: dict[str, Any]):
    """(Recipe, training source, test source) for a run configuration."""
    import optax
    import fsl_jax as fj
    from fsl_jax.recipes import Recipe, image_learner

    data = config["data"]
    name = config["learner"]
    if data == "sinusoid":
        if name not in GRADIENT_BASED:
            raise ValueError(f"--learner {name} needs classification data; sinusoid takes one of {GRADIENT_BASED}")
        model = fj.models.MLP(hidden=(40, 40), out=1)
        inner_lr = config["inner_lr"] or 0.01
        inner_steps = config["inner_steps"] or 1
        train_source: Callable[..., Any] = functools.partial(
            fj.data.sinusoid_tasks, shots=config["shots"], queries=config["queries"]
        )
        test_source: Callable[..., Any] = functools.partial(fj.data.sinusoid_tasks, shots=config["shots"], queries=100)
        if name in ("maml", "fomaml"):
            learner = fj.maml(model, "mse", inner_lr, inner_steps, first_order=name == "fomaml")
        elif name == "anil":
            learner = fj.anil(model, "mse", inner_lr, inner_steps)
        elif name == "meta_sgd":
            learner = fj.meta_sgd(model, "mse", inner_lr, inner_steps)
        elif name == "maml++":
            learner = fj.maml(
                model, "mse", inner_lr, max(inner_steps, 2), per_step_lr=True, multi_step_loss=100, first_order_steps=50
            )
        elif name == "imaml":
            learner = fj.imaml(model, "mse", inner_lr, max(inner_steps, 5), lam=1.0, cg_steps=5)
        else:
            learner = fj.reptile(model, "mse", inner_lr, max(inner_steps, 5))
        return Recipe(learner, optax.adam(config["lr"])), train_source, test_source
    train_data, test_data = _image_splits(data)
    ways = config["ways"]
    for split_name, split in (("training", train_data), ("test", test_data)):
        if ways > split.shape[0]:
            raise ValueError(f"--ways {ways} exceeds the {split.shape[0]} {split_name} classes of {data}")
    recipe = image_learner(
        name,
        ways,
        image_shape=train_data.shape[2:],
        inner_lr=config["inner_lr"],
        inner_steps=config["inner_steps"],
        learning_rate=config["lr"],
    )
    train_source = fj.data.DeviceSampler(train_data, ways, config["shots"], config["queries"]).sample
    test_source = fj.data.DeviceSampler(test_data, ways, config["shots"], config["queries"]).sample
    return recipe, train_source, test_source


def _cmd_demo(args: argparse.Namespace) -> int:
    from fsl_jax.demo import format_table, run_sinusoid

    _positive(args, "steps", "episodes")
    steps, episodes = (500, 100) if args.quick else (args.steps, args.episodes)
    t0 = time.perf_counter()
    summary = run_sinusoid(args.out, steps=steps, episodes=episodes, seed=args.seed)
    print()
    print(
        f"Sinusoid regression, post-adaptation MSE over {episodes} test tasks (mean +- 95% CI), "
        f"{steps} meta-steps each, {time.perf_counter() - t0:.0f} s in total:"
    )
    print(format_table(summary))
    print(f"\nresults and plots: {os.path.abspath(args.out)}")
    return 0


def _launch_local_processes(args: argparse.Namespace) -> int:
    """Runs this same command as ``--processes`` local processes joined through JAX's distributed runtime (process 0
    listens on a free local port) and returns the worst exit status. Ctrl-C reaches every process (they share the
    terminal's process group); SIGTERM sent to this launcher is passed on to them."""
    import signal
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    children = []
    for i in range(args.processes):
        env = dict(
            os.environ,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=str(args.processes),
            JAX_PROCESS_ID=str(i),
        )
        children.append(subprocess.Popen([sys.executable, "-m", "fsl_jax.cli", *args.argv], env=env))

    def forward(signum: int, frame: Any) -> None:
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in ((signal.SIGTERM, forward), (signal.SIGINT, signal.SIG_IGN))
    }
    try:
        codes = [c.wait() for c in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for c in children:
            if c.poll() is None:
                c.kill()
    return max(codes, key=abs)


def _cmd_train(args: argparse.Namespace) -> int:
    _positive(args, "processes")
    if args.processes > 1 and "JAX_PROCESS_ID" not in os.environ:
        return _launch_local_processes(args)
    import fsl_jax as fj

    fj.parallel.initialize()  # joins the other processes when started by --processes or on a cluster; else nothing
    import jax

    primary = fj.parallel.is_primary()
    for name in ("meta_batch", "steps"):
        if getattr(args, name) is None:
            setattr(args, name, DEFAULTS[args.data][name])
    _positive(args, "ways", "shots", "queries", "meta_batch", "steps", "inner_steps", "episodes")
    config = {
        k: getattr(args, k)
        for k in (
            "learner",
            "data",
            "ways",
            "shots",
            "queries",
            "meta_batch",
            "steps",
            "inner_lr",
            "inner_steps",
            "lr",
            "seed",
            "episodes",
        )
    }
    out = args.out or os.path.join("runs", f"{args.learner}-{args.data}")
    config_path = os.path.join(out, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        changed = {
            k: (previous.get(k), v)
            for k, v in config.items()
            if k not in ("steps", "episodes") and previous.get(k) != v
        }
        if changed:
            raise ValueError(f"run folder {out!r} was made with other settings {changed}; use another --out")
    recipe, train_source, test_source = _build(config)  # every setting is checked before the folder is written
    learner = recipe.learner
    if not recipe.trainable:  # a fixed baseline: nothing to train, evaluate it as it is
        example = jax.tree_util.tree_map(lambda x: x[0], test_source(jax.random.key(0), 1))
        params = learner.init(jax.random.key(0), example)
        result = fj.evaluate(learner, params, test_source, episodes=args.episodes, key=jax.random.key(args.seed + 1))
        print(f"test ({args.learner}, no training): {result}")
        return 0
    if primary:
        os.makedirs(out, exist_ok=True)
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)
    try:
        state, history = fj.meta_train(
            learner,
            recipe.optimizer,
            train_source,
            steps=args.steps,
            meta_batch=args.meta_batch,
            key=jax.random.key(args.seed),
            log_every=max(1, min(100, args.steps // 20)),
            checkpoint_dir=os.path.join(out, "checkpoints"),
            log_dir=out,
            desc=f"{args.learner} on {args.data}",
        )
    except fj.TrainingInterrupted as stop:
        if primary:
            command = " ".join(["fsl-jax"] + [shlex.quote(a) for a in (args.argv or [])])
            print(
                f"fsl-jax train: stopped by {stop.signal} after step {stop.step}; checkpoint saved in "
                f"{os.path.join(out, 'checkpoints')}. Resume with: {command}",
                file=sys.stderr,
            )
        return 130 if stop.signal == "SIGINT" else 143
    say = print if primary else (lambda *a, **k: None)
    if history.metrics:
        say(f"step {history.steps[-1]}: " + ", ".join(f"{k} {v:.4g}" for k, v in history.metrics[-1].items()))
    rows = _logged_rows(out) if primary else []
    if rows:
        say(f"learning curve: {_draw_learning_curve(out, config, rows)}")
    if not args.no_eval:  # every process takes part; process 0 reports
        result = fj.evaluate(
            learner,
            state.params,
            test_source,
            episodes=args.episodes,
            key=jax.random.key(args.seed + 1),
            progress=primary,
        )
        say(f"test: {result}")
        if primary:
            _save_eval(out, result, int(jax.device_get(state.step)))
    say(f"run folder: {os.path.abspath(out)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import jax
    import fsl_jax as fj

    _positive(args, "episodes")
    config_path = os.path.join(args.run, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"run folder {args.run!r} has no config.json (was it written by 'fsl-jax train'?)")
    with open(config_path) as f:
        config = json.load(f)
    recipe, train_source, test_source = _build(config)
    learner = recipe.learner
    example = jax.tree_util.tree_map(lambda x: x[0], train_source(jax.random.key(0), 1))
    params = learner.init(jax.random.key(0), example)
    target = fj.TrainState.create(learner, params, recipe.optimizer)
    state = fj.restore_checkpoint(os.path.join(args.run, "checkpoints"), target)
    result = fj.evaluate(
        learner, state.params, test_source, episodes=args.episodes, key=jax.random.key(args.seed), progress=True
    )
    print(
        f"{config['learner']} on {config['data']} ({config['ways']}-way {config['shots']}-shot) after "
        f"{int(state.step)} steps: {result}"
    )
    return 0


def _save_eval(out: str, result: Any, step: int) -> None:
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(
            {
                "step": step,
                "metric": result.metric,
                "mean": result.mean,
                "ci95": result.ci95,
                "episodes": len(result.values),
            },
            f,
            indent=2,
        )


def _logged_rows(run: str) -> list[dict]:
    """The metric lines of a run folder's metrics.jsonl (event lines left out)."""
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if "step" in r and "event" not in r]


def _draw_learning_curve(run: str, config: dict, rows: list[dict]) -> str:
    """learning_curve.png: the training loss (left axis) and, for classifiers, the training query accuracy (right)."""
    import fsl_jax as fj

    steps = [r["step"] for r in rows]
    loss = {"training loss (query set, after adaptation)": (steps, [r["loss"] for r in rows])}
    accuracy = (
        {"training query accuracy": (steps, [r["accuracy"] for r in rows])}
        if all("accuracy" in r for r in rows)
        else None
    )
    episode = (
        f"{config['shots']}-shot regression"
        if config["data"] == "sinusoid"
        else f"{config['ways']}-way {config['shots']}-shot"
    )
    return str(
        fj.plot_learning_curve(
            loss,
            None,
            os.path.join(run, "learning_curve.png"),
            ylabel="loss",
            right=accuracy,
            right_ylabel="accuracy",
            title=f"{config['learner']} on {config['data']}, {episode}: training episodes",
        )
    )


def _cmd_report(args: argparse.Namespace) -> int:

    config_path = os.path.join(args.run, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"run folder {args.run!r} has no config.json (was it written by 'fsl-jax train'?)")
    with open(config_path) as f:
        config = json.load(f)
    print("settings: " + ", ".join(f"{k}={v}" for k, v in config.items() if v is not None))
    rows = _logged_rows(args.run)
    if not rows:
        print("no metrics logged yet")
    else:
        last = rows[-1]
        print(
            f"logged {len(rows)} times, last at step {last['step']}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
        )
        print(f"plot: {_draw_learning_curve(args.run, config, rows)}")
    eval_path = os.path.join(args.run, "eval.json")
    if os.path.exists(eval_path):
        with open(eval_path) as f:
            ev = json.load(f)
        scale, unit = (100, " %") if ev["metric"] == "accuracy" else (1, "")
        print(
            f"test at step {ev['step']}: {ev['metric']} {scale * ev['mean']:.4g} +- {scale * ev['ci95']:.2g}{unit} "
            f"({ev['episodes']} episodes)"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fsl-jax`` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 0
    from fsl_jax.llm.prompt_cli import run_prompt
    from fsl_jax.llm.text_cli import run_text

    commands = {
        "demo": _cmd_demo,
        "train": _cmd_train,
        "eval": _cmd_eval,
        "report": _cmd_report,
        "text": run_text,
        "prompt": run_prompt,
    }
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"fsl-jax {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
