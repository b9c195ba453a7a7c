"""In-context few-shot learning: a GPT-2-style transformer meta-trained to classify from its context alone.

    python examples/icl_gpt2.py                        # 600 meta-steps (~2 min on a 2-core CPU), then 1..5 shots
    python examples/icl_gpt2.py --gpt2 ./my-gpt2       # also: prompt a local GPT-2 folder on BBC News, 1 demo/class
    python examples/icl_gpt2.py --quick                # a smoke run

No GPT-2 checkpoint ships offline, so the first part trains one from scratch on 5-way episodes of random Gaussian
classes with shuffled labels: nothing can be memorised, the query's label must be read from the demonstrations.
It is compared with ProtoNet (nearest class mean) on the same test episodes.
"""

import argparse

import jax

import fsl_jax as fj
from fsl_jax.llm import PromptClassifier
from fsl_jax.llm.icl import evaluate_icl, meta_train_icl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
parser.add_argument("--steps", type=int, default=600)
parser.add_argument("--gpt2", default=None, help="a local GPT-2 folder (config.json, model.safetensors, tokenizer)")
args = parser.parse_args()

size = dict(n_embd=32, n_layer=1, n_head=2) if args.quick else dict(n_embd=128, n_layer=4, n_head=4)
result = meta_train_icl(
    jax.random.key(0),
    ways=5,
    max_shots=5,
    steps=20 if args.quick else args.steps,
    meta_batch=8 if args.quick else 32,
    progress=not args.quick,
    **size,
)
print(f"meta-trained {result.steps} steps in {result.seconds:.0f} s")

episodes = 50 if args.quick else 1000
print("shots | in-context GPT-2 | ProtoNet, same episodes  (5-way accuracy %, +- 95 % CI)")
for shots in range(1, 6):
    accs = evaluate_icl(
        result.model,
        result.params,
        ways=5,
        shots=shots,
        episodes=episodes,
        key=jax.random.key(10_000),
        batch_size=min(200, episodes),
        **result.episode_kwargs,
    )
    icl, proto = fj.mean_ci(accs["icl"]), fj.mean_ci(accs["protonet"])
    print(
        f"{shots:5d} | {100 * icl.mean:7.1f} +- {100 * icl.ci95:4.1f}  | {100 * proto.mean:7.1f} +- "
        f"{100 * proto.ci95:4.1f}"
    )

if args.gpt2:  # The same idea with words: demonstrations rendered into a prompt, label words scored.
    lm, params, tokenizer = fj.models.from_pretrained(args.gpt2)
    data = fj.data.text.bbc_news()
    support_x, support_y, test_x, test_y = fj.data.text.few_shot_split(data, 1, seed=1, test_per_class=20, test_seed=0)
    words = {label: ["technology" if label == "tech" else label] for label in data.label_names}
    clf = PromptClassifier(
        lm,
        params,
        tokenizer,
        "Article: {text}\nTopic: {label}",
        words,
        demonstrations=5,
        selection="balanced",
        calibrate=True,
        max_text_tokens=60,
    )
    predicted = clf.fit(support_x, support_y).predict(test_x)
    index = {c: i for i, c in enumerate(data.label_names)}
    print(
        fj.classification_report(
            [index[y] for y in test_y], [index[y] for y in predicted], label_names=[str(c) for c in data.label_names]
        )
    )
else:
    print("pass --gpt2 FOLDER to also prompt a local GPT-2 checkpoint (see `fsl-jax prompt --help`)")
