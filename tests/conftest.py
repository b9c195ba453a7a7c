"""Where the suite's time goes: with ``FSL_JAX_SUITE_TIMES=<folder>`` every pytest process (each xdist worker) writes
``<folder>/times-<worker>.json``: per test, its wall seconds (setup + call + teardown) and, of those, the seconds this
process spent in XLA compilation and in tracing / lowering to MLIR (JAX's own monitoring events). Time spent inside
processes a test starts (CLI, kill / resume, multi-host, examples) counts as the test's wall time only.
``python tools/suite_times.py <folder>`` sums it per file. Without the variable nothing is recorded.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import pytest

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
