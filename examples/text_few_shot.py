"""8-shot BBC News topic classification with FewShotTextClassifier on the offline all-MiniLM-L6-v2.

    python examples/text_few_shot.py                     # method "finetune", 8 per class, 100 test per class
    python examples/text_few_shot.py --method setfit     # or head / protonet / anil
    python examples/text_few_shot.py --quick             # frozen-encoder head, short texts: a smoke run

Labels are plain strings; the classifier is sklearn-style (fit / predict / predict_proba / save / load).
"""

import argparse
import time

import fsl_jax as fj
from fsl_jax.llm import FewShotTextClassifier

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
parser.add_argument("--method", default=None, help="head, finetune, setfit, protonet or anil")
parser.add_argument("--shots", type=int, default=8)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--save", default=None, help="folder to save the fitted classifier to")
args = parser.parse_args()

method = args.method or ("head" if args.quick else "finetune")
data = fj.data.text.bbc_news()
print(f"BBC News: {len(data)} articles, classes {data.class_counts()}")

# K support articles per class, and a disjoint test set drawn once (seed 0) as in the README table.
support_x, support_y, test_x, test_y = fj.data.text.few_shot_split(
    data, args.shots, seed=args.seed, test_per_class=20 if args.quick else 100, test_seed=0
)

clf = FewShotTextClassifier(
    "all-MiniLM-L6-v2", method, seed=0, max_length=64 if args.quick else 128, progress=not args.quick
)
start = time.perf_counter()
clf.fit(support_x, support_y)
print(f"fit {method} on {len(support_x)} articles in {time.perf_counter() - start:.1f} s")

predicted = clf.predict(test_x)
names = [str(c) for c in clf.classes_]
index = {c: i for i, c in enumerate(clf.classes_)}
report = fj.classification_report([index[y] for y in test_y], [index[y] for y in predicted], label_names=names)
print(report)

print(
    "one prediction:",
    repr(test_x[0][:70]) + "...",
    "->",
    predicted[0],
    {c: round(float(p), 3) for c, p in zip(names, clf.predict_proba(test_x[:1])[0])},
)
if args.save:
    clf.save(args.save)
    print("saved; reload with FewShotTextClassifier.load(", repr(args.save), ")")
