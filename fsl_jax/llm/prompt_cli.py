"""The ``fsl-jax prompt`` subcommand: zero- / few-shot classification by prompting a local GPT-2 folder.

For each of ``--draws`` draws it samples ``--shots`` support texts per class as the demonstration pool, builds a
:class:`~fsl_jax.llm.prompting.PromptClassifier` (``--template``, ``--label-words``, ``--demonstrations``,
``--selection``, ``--orders``, ``--calibrate``) and classifies a test set of ``--test-per-class`` texts per class
(drawn once from ``--seed`` and kept for every draw); then it prints the per-class classification report pooled over
draws and the accuracy mean +- 95 % CI over draws, and writes ``results.json`` to ``--out`` if given.
``--shots 0`` is zero-shot (every draw then gives the same predictions; use ``--draws 1``).

Example::

    fsl-jax prompt --model ./gpt2 --data bbc --template "Article: {text}\\nTopic: {label}" \\
        --label-words "business=business;entertainment=entertainment;politics=politics;sports=sports;tech=technology" \\
        --shots 1 --draws 3 --calibrate --max-text-tokens 60

Wiring (in ``fsl_jax/cli.py``)::

    from fsl_jax.llm.prompt_cli import add_prompt_parser, run_prompt
    add_prompt_parser(sub)                # in build_parser(), with the other subcommands
    commands["prompt"] = run_prompt       # in main()
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

__all__ = ["add_prompt_parser", "run_prompt"]

DEFAULT_TEMPLATE = "Article: {text}\\nTopic: {label}"


def add_prompt_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``prompt`` subcommand to an ``argparse`` sub-parser collection and returns its parser.

    Example:
        >>> parser = argparse.ArgumentParser(prog="fsl-jax")
        >>> p = add_prompt_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["prompt", "--model", "gpt2", "--shots", "2"]).shots
        2
    """
    p = subparsers.add_parser(
        "prompt",
        help="zero- / few-shot text classification by prompting a local GPT-2 folder",
        description="Scores label words after a prompt (with --demonstrations in-context examples) over --draws "
        "random support draws; prints a classification report and accuracy mean +- 95 % CI.",
    )
    p.add_argument("--model", required=True, help="local GPT-2 folder (config.json, model.safetensors, tokenizer)")
    p.add_argument("--data", default="bbc", help="'bbc' (bundled BBC News) or a .csv / .tsv / .jsonl / .json file")
    p.add_argument("--text-column", default="text", help="text column of --data files (default: text)")
    p.add_argument("--label-column", default="label", help="label column of --data files (default: label)")
    p.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE,
        help=f"prompt pattern with {{text}} and {{label}}; \\n and \\t are unescaped (default: {DEFAULT_TEMPLATE!r})",
    )
    p.add_argument(
        "--label-words", default=None, help="'label=word,word;label=word' (default: every label is its own word)"
    )
    p.add_argument(
        "--shots",
        type=int,
        default=4,
        help="support texts per class in the demonstration pool (0: zero-shot; default 4)",
    )
    p.add_argument(
        "--demonstrations", type=int, default=None, help="demonstrations per prompt (default: shots x classes)"
    )
    p.add_argument(
        "--selection",
        choices=("random", "balanced", "nearest"),
        default="balanced",
        help="demonstration selection (nearest: MiniLM similarity; default balanced)",
    )
    p.add_argument("--embed-model", default="all-MiniLM-L6-v2", help="sentence encoder for --selection nearest")
    p.add_argument("--orders", type=int, default=1, help="demonstration orders averaged (default 1)")
    p.add_argument("--calibrate", action="store_true", help="contextual calibration with the input 'N/A'")
    p.add_argument("--reduce", choices=("sum", "mean"), default="sum", help="label-word token log-prob reduction")
    p.add_argument("--max-text-tokens", type=int, default=64, help="cut each text to this many tokens (default 64)")
    p.add_argument("--draws", type=int, default=5, help="random support draws (default 5)")
    p.add_argument("--test-per-class", type=int, default=50, help="test texts per class (default 50)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per compiled call (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None, help="folder for results.json (default: none written)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _unescape(pattern: str) -> str:
    return pattern.replace("\\n", "\n").replace("\\t", "\t")


def run_prompt(args: argparse.Namespace) -> int:
    """Runs the ``prompt`` subcommand; returns the exit status (0).

    Raises:
      ValueError / FileNotFoundError: bad flags, data or model folder (``fsl-jax``'s ``main`` prints them).
    """
    import numpy as np
    from fsl_jax._progress import progress

    from fsl_jax.data.text import bbc_news, few_shot_split, load_text_file
    from fsl_jax.llm.prompting import PromptClassifier, Template, Verbalizer, sentence_embed_fn
    from fsl_jax.models.hub import from_pretrained
    from fsl_jax.report import classification_report, mean_ci

    for name in ("draws", "test_per_class", "orders", "max_text_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.shots < 0:
        raise ValueError(f"--shots must be >= 0, got {args.shots}")
    if args.demonstrations is not None and args.demonstrations < 0:
        raise ValueError(f"--demonstrations must be >= 0, got {args.demonstrations}")
    if args.data == "bbc":
        dataset, data_name = bbc_news(), "BBC News"
    else:
        dataset, data_name = load_text_file(args.data, args.text_column, args.label_column), os.path.basename(args.data)
    names = list(dataset.label_names)
    if args.label_words:
        verbalizer = Verbalizer.parse(args.label_words)
        if all(isinstance(n, str) for n in names):
            verbalizer.check_labels(names)
        else:  # non-string labels (JSON ints): match by their text
            by_text = {str(k): v for k, v in verbalizer.words.items()}
            missing = [n for n in names if str(n) not in by_text]
            if missing:
                verbalizer.check_labels(missing)
            verbalizer = Verbalizer({n: by_text[str(n)] for n in names})
    else:
        verbalizer = Verbalizer({n: [str(n)] for n in names})
    template = Template(_unescape(args.template))
    lm, params, tokenizer = from_pretrained(args.model)
    if type(lm).__name__ != "GPT2":
        raise ValueError(f"--model {args.model!r} is a {type(lm).__name__}; the prompt command needs a GPT-2 folder")
    if tokenizer is None:
        raise ValueError(f"--model {args.model!r} has no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    demonstrations = args.demonstrations if args.demonstrations is not None else args.shots * len(names)
    if args.shots == 0 and demonstrations:
        raise ValueError(f"--demonstrations {demonstrations} needs --shots >= 1 (a pool to draw them from)")
    embed_fn = sentence_embed_fn(args.embed_model) if args.selection == "nearest" and demonstrations else None
    print(
        f"{data_name}: {len(dataset)} texts, {len(names)} classes; GPT-2 {args.model} "
        f"({lm.config.n_layer} layers, context {lm.config.n_positions}); {args.shots} shots per class, "
        f"{demonstrations} demonstrations ({args.selection}), orders {args.orders}, "
        f"calibrate {args.calibrate}, {args.draws} draws, {args.test_per_class} test texts per class"
    )

    accuracies, pooled_true, pooled_pred, draws = [], [], [], []
    t_start = time.perf_counter()
    bar = progress(range(args.draws), desc="prompt", disable=args.no_progress)
    for d in bar:
        support_x, support_y, test_x, test_y = few_shot_split(
            dataset,
            max(args.shots, 1),
            seed=args.seed * 100_003 + d + 1,
            test_per_class=args.test_per_class,
            test_seed=args.seed,
        )
        clf = PromptClassifier(
            lm,
            params,
            tokenizer,
            template,
            verbalizer,
            demonstrations=demonstrations,
            selection=args.selection,
            orders=args.orders,
            calibrate=args.calibrate,
            reduce=args.reduce,
            embed_fn=embed_fn,
            max_text_tokens=args.max_text_tokens,
            batch_size=args.batch_size,
            seed=args.seed + d,
        )
        if args.shots:
            clf.fit(support_x, support_y)
        t0 = time.perf_counter()
        predictions = clf.predict(test_x)
        accuracy = float(np.mean([p == t for p, t in zip(predictions, test_y)]))
        accuracies.append(accuracy)
        pooled_true += list(test_y)
        pooled_pred += predictions
        draws.append({"draw": d, "accuracy": accuracy, "seconds": time.perf_counter() - t0, "test_size": len(test_x)})
        bar.set_postfix(acc=f"{accuracy:.3f}")
    bar.close()
    total_s = time.perf_counter() - t_start

    labels = [str(n) for n in names]
    report = classification_report(
        [str(v) for v in pooled_true], [str(v) for v in pooled_pred], labels=labels, label_names=labels
    )
    ci = mean_ci(accuracies)
    print()
    print(f"per-class scores, pooled over {args.draws} draws ({len(pooled_true)} test predictions):")
    print(report.to_string(digits=3))
    ci_text = f"{100 * ci.mean:.2f} +- {100 * ci.ci95:.2f} %" if args.draws > 1 else f"{100 * ci.mean:.2f} %"
    print(
        f"accuracy over {args.draws} draws: {ci_text} (95% CI); per draw: "
        + ", ".join(f"{100 * a:.1f}" for a in accuracies)
    )
    print(f"time: {total_s:.1f} s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        result = {
            "data": args.data,
            "model": args.model,
            "template": template.pattern,
            "label_words": {str(k): list(v) for k, v in verbalizer.words.items()},
            "shots": args.shots,
            "demonstrations": demonstrations,
            "selection": args.selection,
            "orders": args.orders,
            "calibrate": args.calibrate,
            "reduce": args.reduce,
            "max_text_tokens": args.max_text_tokens,
            "draws": args.draws,
            "seed": args.seed,
            "test_per_class": args.test_per_class,
            "accuracy": {"mean": ci.mean, "ci95": None if args.draws == 1 else ci.ci95, "per_draw": accuracies},
            "seconds": total_s,
            "draw_details": draws,
            "report": report.as_dict(),
            "confusion_matrix": report.confusion_matrix.tolist(),
        }
        path = os.path.join(args.out, "results.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"results: {os.path.abspath(path)}")
    return 0
