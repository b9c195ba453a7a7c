#!/usr/bin/env bash
# Creates the PyTorch benchmark-peer environment .venv-bench (idempotent; the library's .venv never gets torch).
#
#   bash benchmarks/setup_bench_env.sh            # torch 2.13.0 (CPU wheel) + numpy + transformers, then learn2learn 0.2.0
#   BENCH_VENV=/tmp/vb bash benchmarks/setup_bench_env.sh
#   SKIP_L2L=1 bash benchmarks/setup_bench_env.sh # torch only
#
# learn2learn 0.2.0 ships only an sdist whose generated C files do not compile on Python 3.11: the .pyx files are
# re-cythonized first. It also imports torchvision, whose PyPI wheel does not load against the CPU torch wheel
# (`operator torchvision::nms does not exist`); benchmarks/maml_peers_torch.py handles that (see benchmarks/README.md).
# A learn2learn failure does not fail this script: the benchmark then reports learn2learn as unavailable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"  # the release paired with torch 2.13
L2L_VERSION="0.2.0"
PY="$VENV/bin/python"
PIP=(pip_quiet)
# pip, minus the warnings this machine's pip config prints about index folders that do not exist.
pip_quiet() { "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
start=$(date +%s)

if [ ! -x "$PY" ]; then
  echo "[bench-env] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Keep the venv out of git without touching the repository's .gitignore.
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"

if ! "$PY" -c "import torch, numpy, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "[bench-env] installing torch==$TORCH_VERSION numpy"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" numpy
fi
"$PY" -c "import torch; print('[bench-env] torch', torch.__version__)"

# transformers (PyTorch BERT) for the MiniLM fine-tuning peer of benchmarks/minilm_throughput.py.
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-4.57.6}"
if ! "$PY" -c "import transformers, sys; sys.exit(0 if transformers.__version__ == '$TRANSFORMERS_VERSION' else 1)" 2>/dev/null; then
  echo "[bench-env] installing transformers==$TRANSFORMERS_VERSION"
  "${PIP[@]}" install -q "transformers==$TRANSFORMERS_VERSION"
fi

if [ "${SKIP_L2L:-0}" = "1" ]; then
  echo "[bench-env] SKIP_L2L=1: not installing learn2learn"
elif "$PY" -c "import importlib.metadata as m; m.version('learn2learn')" 2>/dev/null; then
  echo "[bench-env] learn2learn already installed"
else
  (
    set -e
    echo "[bench-env] building learn2learn==$L2L_VERSION from its sdist (re-cythonized)"
    # learn2learn's runtime dependencies; qpth without its own (it pins old cvxpy).
    "${PIP[@]}" install -q cython "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" gym scipy requests tqdm
    "${PIP[@]}" install -q --no-deps qpth
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    # The sdist only (learn2learn has no wheel); --no-build-isolation so pip does not build Cython from source too.
    "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary learn2learn "learn2learn==$L2L_VERSION" -d "$build"
    tar -xzf "$build"/learn2learn-"$L2L_VERSION".tar.gz -C "$build"
    src="$build/learn2learn-$L2L_VERSION"
    find "$src/learn2learn" -name '*.pyx' -print0 | while IFS= read -r -d '' pyx; do
      "$VENV/bin/cython" -3 "$pyx"
    done
    "${PIP[@]}" install -q --no-build-isolation --no-deps "$src" > "$build/install.log" 2>&1 \
      || { tail -20 "$build/install.log"; exit 1; }
  ) || echo "[bench-env] WARNING: learn2learn did not install; the benchmark will report it as unavailable"
fi

# Report whether learn2learn imports (directly, or with the torchvision stand-in the peer script uses).
"$PY" "$ROOT/benchmarks/maml_peers_torch.py" --probe || true
echo "[bench-env] done in $(( $(date +%s) - start )) s: $VENV"
