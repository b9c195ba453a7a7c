"""BBC News 8-shot: knowledge distillation and text augmentation, each with vs without, over support draws.

    python benchmarks/text_distill_augment.py                  # 10 draws, 8 per class, ~5 min on a 2-core CPU
    python benchmarks/text_distill_augment.py --draws 3 --pool 300

Protocol: the fixed test set of ``--test-per-class`` articles per class (seed 0) of ``benchmarks/text_accuracy.py``;
draw ``d`` takes ``--shots`` support articles per class (seed ``d + 1``) and ``--pool`` *unlabelled* articles from the
rest (never the test set). Every row is the accuracy mean +- 95 % CI over the draws, and the paired difference.

* **Distillation** (:func:`fsl_jax.llm.distill`): the teacher is the ``head`` :class:`FewShotTextClassifier`
  (frozen all-MiniLM-L6-v2 + logistic regression) fitted on the support set. The student is a linear model on
  hashed bag-of-words features (no transformer at inference). *Without*: the student trained on the 40 labelled
  support texts alone (``alpha=0``). *With*: the student trained on the teacher's temperature-softened logits over
  the support set plus the unlabelled pool, and the hard labels of the support set (``alpha=0.7``, ``T=2``). Same
  student, optimiser, steps and batch size; only the targets differ.
* **Augmentation** (:class:`fsl_jax.llm.Augmenter` with the EDA operations, ``n_aug`` copies per text): the ``head``
  classifier fitted on the support set with vs without the augmented copies.

Prints a table and writes ``benchmarks/results/text_distill_augment.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fsl_jax as fj  # noqa: E402
from fsl_jax.data.text import bbc_news, few_shot_split  # noqa: E402
from fsl_jax.llm import Augmenter, FewShotTextClassifier, distill, eda  # noqa: E402

WORD = re.compile(r"[a-z0-9']+")


def bag_of_words(texts: list[str], dim: int) -> np.ndarray:
    """Hashed unigram + bigram counts, log1p and L2-normalised: ``[n, dim]`` float32 (a cheap student input)."""
    out = np.zeros((len(texts), dim), np.float32)
    for i, text in enumerate(texts):
        words = WORD.findall(text.lower())
        for tok in words + [a + " " + b for a, b in zip(words, words[1:])]:
            out[i, zlib.crc32(tok.encode()) % dim] += 1.0
    out = np.log1p(out)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def student_apply(params, bow, teacher_logits):  # teacher_logits ride along as an input; the student ignores them
    del teacher_logits
    return bow @ params["w"] + params["b"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--pool", type=int, default=1000, help="unlabelled articles per draw for distillation")
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--bow-dim", type=int, default=8192)
    p.add_argument("--steps", type=int, default=600, help="student optimisation steps")
    p.add_argument("--n-aug", type=int, default=4, help="augmented copies per support text")
    p.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "text_distill_augment.json"),
    )
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    ds = bbc_news()
    rows: dict[str, list[float]] = {
        k: [] for k in ("teacher_head", "student_hard_only", "student_distilled", "head", "head_augmented")
    }
    for d in range(args.draws):
        sx, sy, tx, ty = few_shot_split(ds, args.shots, seed=d + 1, test_per_class=args.test_per_class, test_seed=0)
        used = set(sx) | set(tx)
        rest = [t for t in ds.texts if t not in used]
        pool = [rest[i] for i in np.random.default_rng(1000 + d).permutation(len(rest))[: args.pool]]

        # Distillation: MiniLM head teacher -> bag-of-words linear student.
        teacher = FewShotTextClassifier(
            "all-MiniLM-L6-v2", "head", seed=d, max_length=args.max_length, progress=False
        ).fit(sx, sy)
        classes = list(teacher.classes_)
        y_support = np.array([classes.index(y) for y in sy], np.int32)
        y_test = np.array([classes.index(y) for y in ty])
        rows["teacher_head"].append(teacher.score(tx, ty))
        texts = list(sx) + pool
        t_logits = np.log(np.clip(teacher.predict_proba(texts), 1e-9, None)).astype(np.float32)
        bow, bow_test = bag_of_words(texts, args.bow_dim), bag_of_words(tx, args.bow_dim)
        init = {"w": jnp.zeros((args.bow_dim, len(classes))), "b": jnp.zeros((len(classes),))}
        common = dict(steps=args.steps, learning_rate=0.05, batch_size=32, key=jax.random.key(d))
        n = len(sx)
        hard = distill(lambda b, t: t, student_apply, init, (bow[:n], t_logits[:n]), y_support, alpha=0.0, **common)
        labels = np.concatenate([y_support, -np.ones(len(pool), np.int32)])
        soft = distill(
            lambda b, t: t, student_apply, init, (bow, t_logits), labels, alpha=0.7, temperature=2.0, **common
        )
        for name, params in (("student_hard_only", hard), ("student_distilled", soft)):
            pred = np.asarray(student_apply(params, jnp.asarray(bow_test), None).argmax(-1))
            rows[name].append(float(np.mean(pred == y_test)))

        # Augmentation: the head classifier with vs without EDA copies of the support set.
        rows["head"].append(rows["teacher_head"][-1])
        ax, ay = Augmenter(eda(alpha=0.1), n_aug=args.n_aug, seed=d)(sx, sy)
        augmented = FewShotTextClassifier(
            "all-MiniLM-L6-v2", "head", seed=d, max_length=args.max_length, progress=False
        ).fit(ax, ay)
        rows["head_augmented"].append(augmented.score(tx, ty))
        print(f"draw {d}: " + ", ".join(f"{k} {100 * v[-1]:.1f}" for k, v in rows.items()), flush=True)

    total = time.perf_counter() - t_start
    summary = {k: fj.mean_ci(v) for k, v in rows.items()}
    pairs = {"distillation": ("student_hard_only", "student_distilled"), "augmentation": ("head", "head_augmented")}
    print(
        f"\nBBC News 5-way {args.shots}-shot, {args.draws} draws, test {args.test_per_class} per class; "
        f"{total:.0f} s in total\n"
    )
    print("| technique | without (%) | with (%) | paired difference (points) |")
    print("|---|---|---|---|")
    result_pairs = {}
    for name, (a, b) in pairs.items():
        diff = fj.mean_ci(np.array(rows[b]) - np.array(rows[a]))
        result_pairs[name] = {"without": a, "with": b, "difference_mean": diff.mean, "difference_ci95": diff.ci95}
        print(
            f"| {name} | {100 * summary[a].mean:.1f} +- {100 * summary[a].ci95:.1f} | "
            f"{100 * summary[b].mean:.1f} +- {100 * summary[b].ci95:.1f} | "
            f"{100 * diff.mean:+.1f} +- {100 * diff.ci95:.1f} |"
        )
    print(
        f"teacher (MiniLM head): {100 * summary['teacher_head'].mean:.1f} +- {100 * summary['teacher_head'].ci95:.1f} %"
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "settings": vars(args),
                "per_draw": rows,
                "pairs": result_pairs,
                "summary": {k: {"mean": v.mean, "ci95": v.ci95} for k, v in summary.items()},
                "total_seconds": total,
                "command": " ".join(["python"] + sys.argv),
                "machine": f"{os.cpu_count()} CPU cores, jax {jax.__version__} {jax.default_backend()}",
            },
            f,
            indent=2,
        )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
