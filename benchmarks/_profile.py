"""What the profile scripts (``profile_maml_step.py``, ``profile_minilm_step.py``) share: dumping the optimised HLO,
summing the XLA:CPU operations of a ``jax.profiler`` trace, and naming each operation from the HLO's metadata."""

from __future__ import annotations

import collections
import glob
import os
import re


def dump_hlo(folder: str, module_re: str) -> None:
    """Asks XLA to write the HLO text of the modules matching ``module_re`` to ``folder/hlo``; call it before JAX is
    imported (XLA reads ``XLA_FLAGS`` once)."""
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={folder}/hlo --xla_dump_hlo_as_text"
        f" --xla_dump_hlo_module_re={module_re}"
    ).strip()


def thunk_seconds(trace_folder: str, calls: int) -> collections.Counter:
    """Seconds per call of each XLA:CPU operation (thunk) recorded on the runtime's threads in the trace under
    ``trace_folder`` (summed over threads, divided by ``calls``)."""
    import jax

    trace = glob.glob(f"{trace_folder}/**/*.xplane.pb", recursive=True)[0]
    per_op: collections.Counter = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(trace).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                    per_op[event.name] += event.duration_ns / (calls * 1e9)
    return per_op


def optimized_hlo(folder: str, name_glob: str) -> str:
    """The text of the largest optimised HLO module under ``folder/hlo`` whose file name matches ``name_glob``
    (the compiled step; smaller matches are helpers), or ``""``."""
    files = sorted(glob.glob(f"{folder}/hlo/{name_glob}after_optimizations.txt"), key=os.path.getsize)
    if not files:
        return ""
    with open(files[-1], encoding="utf-8") as f:
        return f.read()


def op_info(hlo: str, name: str) -> tuple[str, str]:
    """``(shape, JAX source op name)`` of the HLO instruction ``name``, or ``("", "")``."""
    m = re.search(r"%" + re.escape(name) + r" = (\S+) .*?op_name=\"([^\"]+)\"", hlo)
    return (m.group(1), m.group(2)) if m else ("", "")
