"""Every example runs end to end with --quick."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))
# ~30-50 s each on 2 cores; what they show is tested directly (MAML / FOMAML / ANIL in tests/test_maml.py, a custom
# Learner in base.py's doctest, the in-context learner in tests/test_icl_distill_augment.py, the glyph data set in
# tests/test_datasets.py with ProtoNet training in tests/test_metric_learners.py and the confusion-matrix plot in
# tests/test_report.py, image folders and the grain EpisodeLoader in tests/test_folders.py and tests/test_pipeline.py),
# so they run in `make test-slow` and keep `make test` near 15 minutes.
SLOW = {"maml_to_anil.py", "custom_learner.py", "icl_gpt2.py", "glyphs_protonet.py", "image_folder_episodes.py"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in EXAMPLES])
def test_example_runs_quick(name, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip(), "an example must print its result"
