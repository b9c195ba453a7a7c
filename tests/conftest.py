"""One XLA compilation cache per test run, and where the suite's time goes.

The suite is mostly XLA compilation (``tools/suite_times.py``), and the processes it starts (CLI runs, kill and
resume, two-process runs, examples) compile the same steps again and again. So a run shares one persistent
compilation cache among its pytest workers and every process they start: a fresh temporary folder created here
(by the first pytest process, inherited by the xdist workers and subprocesses through ``JAX_COMPILATION_CACHE_DIR``)
and removed when the run ends. Only compilations of 0.3 s or more are stored. A cache hit returns the executable XLA
compiled for the same program, so the numbers tests compare are the same; ``FSL_JAX_TEST_XLA_CACHE=0`` turns it off,
and a ``JAX_COMPILATION_CACHE_DIR`` set by the caller is used as is (and kept).

Where the suite's time goes: with ``FSL_JAX_SUITE_TIMES=<folder>`` every pytest process (each xdist worker) writes
``<folder>/times-<worker>.json``: per test, its wall seconds (setup + call + teardown) and, of those, the seconds this
process spent in XLA compilation and in tracing / lowering to MLIR (JAX's own monitoring events). Time spent inside
processes a test starts (CLI, kill / resume, multi-host, examples) counts as the test's wall time only.
``python tools/suite_times.py <folder>`` sums it per file. Without the variable nothing is recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

import pytest

_CACHE_OWNER = "FSL_JAX_TEST_XLA_CACHE_OWNER"
if os.environ.get("FSL_JAX_TEST_XLA_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fsl_jax-test-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"
    os.environ[_CACHE_OWNER] = str(os.getpid())
    if "jax" in sys.modules:  # a plugin imported jax before this file: set its flags directly
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)


def pytest_unconfigure(config):
    if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


_FOLDER = os.environ.get("FSL_JAX_SUITE_TIMES")
_EVENTS = {
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "trace",
}

if _FOLDER:
    _current: dict[str, float] = defaultdict(float)
    _records: dict[str, dict[str, float]] = {}

    def _listener(event: str, seconds: float, **_: object) -> None:
        kind = _EVENTS.get(event)
        if kind:
            _current[kind] += seconds

    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_listener)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _current.clear()
        start = time.perf_counter()
        yield
        _records[item.nodeid] = {"wall": time.perf_counter() - start, **_current}

    def pytest_sessionfinish(session):
        os.makedirs(_FOLDER, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(_FOLDER, f"times-{worker}.json"), "w") as f:
            json.dump(_records, f, indent=1)
