"""Packaging: a light ``import fsl_jax``, every public name still there, dependency ranges that the tested pins satisfy.

The import checks run in fresh subprocesses (this process has imported everything already).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["fsl_jax", "fsl_jax.data", "fsl_jax.models", "fsl_jax.llm"]
HEAVY = ["matplotlib", "transformers", "sklearn", "torch", "orbax"]
# Names in an __all__ that are meant to be modules; any other module there shadows a function of the same name.
MODULE_NAMES = {"fsl_jax": {"data", "llm", "models", "parallel", "plots"}, "fsl_jax.data": {"corpora", "text"}}


def run_python(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_leaves_heavy_modules_out():
    loaded = run_python(f"""
import json, sys
import fsl_jax
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
""")
    assert loaded == [], f"import fsl_jax imported {loaded}"


def type_checking_imports(package: str) -> dict[str, str]:
    """``{name: module}`` for the imports under ``if _TYPE_CHECKING:`` in ``package``'s __init__ (the lazy names)."""
    path = ROOT / Path(*package.split(".")) / "__init__.py"
    names: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), ast.unparse(imp)
                for alias in imp.names:
                    names[alias.asname or alias.name] = imp.module
    return names


def test_every_public_name_resolves_and_loads_its_module_on_first_use():
    lazy = {package: type_checking_imports(package) for package in PACKAGES}
    result = run_python(f"""
import importlib, json, sys
lazy = {lazy!r}
heavy = {HEAVY!r}
problems = []
import fsl_jax
for package, names in lazy.items():
    pkg = importlib.import_module(package)
    missing = sorted(set(pkg.__all__) - set(dir(pkg)))
    if missing:
        problems.append(f"dir({{package}}) lacks {{missing}}")
    for name in sorted(set(pkg.__all__) | set(names)):
        value = getattr(pkg, name)
        if name in names:  # the lazy value is what the TYPE_CHECKING import names
            module = importlib.import_module(names[name])
            expected = module if module.__name__ == f"{{package}}.{{name}}" else getattr(module, name)
            if value is not expected:
                problems.append(f"{{package}}.{{name}} is {{value!r}}, not {{expected!r}}")
print(json.dumps({{"problems": problems, "loaded": [m for m in heavy if m in sys.modules],
                   "fsl": sorted(m for m in sys.modules if m.startswith("fsl_jax"))}}))
""")
    assert result["problems"] == []
    # the lazy modules are loaded now: matplotlib by fj.plots, orbax by the checkpoint functions
    for module in [
        "fsl_jax.plots",
        "fsl_jax.checkpoint",
        "fsl_jax.train",
        "fsl_jax.llm.finetune",
        "fsl_jax.data.pipeline",
        "fsl_jax.models.hub",
    ]:
        assert module in result["fsl"]
    assert {"matplotlib", "orbax"} <= set(result["loaded"])
    # transformers / sklearn / torch stay out: only the functions that need them import them
    assert not {"transformers", "sklearn", "torch"} & set(result["loaded"])


def test_no_public_function_is_shadowed_by_its_module():
    """``fj.evaluate``, ``fj.data.glyphs``, ``fj.llm.distill`` name both a module and a function: with every submodule
    imported (which binds each module onto its package), the public name must still be the function."""
    result = run_python(f"""
import importlib, json, pkgutil, types
import fsl_jax
for info in pkgutil.walk_packages(fsl_jax.__path__, "fsl_jax."):
    importlib.import_module(info.name)
modules = {{k: sorted(v) for k, v in {MODULE_NAMES!r}.items()}}
shadowed = []
for package in {PACKAGES!r}:
    pkg = importlib.import_module(package)
    for name in pkg.__all__:
        if isinstance(getattr(pkg, name), types.ModuleType) and name not in modules.get(package, []):
            shadowed.append(f"{{package}}.{{name}}")
print(json.dumps(shadowed))
""")
    assert result == []


def test_lazy_attribute_errors_are_attribute_errors():
    import fsl_jax as fj

    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        fj.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="fsl_jax.data"):
        fj.data.no_such_name  # noqa: B018
    assert not hasattr(fj, "__wrapped__")
    assert fj.train.meta_train is fj.meta_train  # any submodule stays reachable as an attribute


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins() -> dict[str, Version]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[canonicalize_name(name)] = Version(version)
    return found


def requirements() -> list[tuple[str, Requirement]]:
    meta = project()
    found = [("dependencies", Requirement(r)) for r in meta["dependencies"]]
    for extra, reqs in meta.get("optional-dependencies", {}).items():
        found += [(f"[{extra}]", Requirement(r)) for r in reqs]
    return found


def test_dependencies_are_ranges_that_the_tested_pins_satisfy():
    pinned = pins()
    reqs = requirements()
    assert reqs
    exact = [f"{where}: {req}" for where, req in reqs if any(s.operator in ("==", "===") for s in req.specifier)]
    assert exact == [], "pyproject pins exact versions; use ranges (the exact set lives in constraints.txt)"
    unbounded = [f"{where}: {req}" for where, req in reqs if not any(s.operator == ">=" for s in req.specifier)]
    assert unbounded == [], "each dependency needs a tested lower bound"
    unpinned = [f"{where}: {req.name}" for where, req in reqs if canonicalize_name(req.name) not in pinned]
    assert unpinned == [], "constraints.txt must pin every dependency pyproject names"
    outside = [
        f"{where}: {req} vs =={pinned[canonicalize_name(req.name)]}"
        for where, req in reqs
        if not req.specifier.contains(pinned[canonicalize_name(req.name)], prereleases=True)
    ]
    assert outside == [], "a tested pin in constraints.txt falls outside its range in pyproject.toml"


def test_every_upper_bound_says_why():
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    for where, req in requirements():
        if not any(s.operator in ("<", "<=", "~=", "!=") for s in req.specifier):
            continue
        at = next(
            i
            for i, line in enumerate(lines)
            if re.search(rf'"{re.escape(req.name)}(\[[^]]*\])?\s*[<>=~!]', line) and re.search(r"<|~=|!=", line)
        )
        commented = "#" in lines[at] or lines[at - 1].strip().startswith("#")
        assert commented, f"{where}: {req} has an upper bound with no comment giving the break it avoids"


def test_makefile_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-c constraints\.txt -e '\.\[[^]]*test[^]]*\]'", makefile.replace("$(PIP)", "pip"))


def module_imports(path: Path, package_root: Path) -> set[str]:
    """The fsl_jax modules ``path`` imports at module level (not inside functions or ``if TYPE_CHECKING:``)."""
    name = ".".join(path.relative_to(package_root.parent).with_suffix("").parts).removesuffix(".__init__")
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fsl_jax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fsl_jax") and not node.level:
            for alias in node.names:  # `from fsl_jax import parallel` imports the module fsl_jax.parallel
                sub = f"{node.module}.{alias.name}"
                is_module = (package_root.parent / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    package_root.parent / Path(*sub.split(".")) / "__init__.py"
                ).exists()
                found.add(sub if is_module else node.module)
    found.discard(name)
    return found


def test_the_module_level_import_graph_has_no_cycle():
    package_root = ROOT / "fsl_jax"
    graph = {}
    for path in package_root.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = module_imports(path, package_root)
    # an edge to a parent package closes a cycle only if that package imports the module back at module level
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node)
    assert "fsl_jax.step" in graph["fsl_jax.checkpoint"] and "fsl_jax.train" not in graph["fsl_jax.checkpoint"]
    llm_top = [m for m in graph if m.startswith("fsl_jax.llm.") and "fsl_jax" in graph[m]]
    assert llm_top == [], f"llm modules import the package top: {llm_top}"
    # the text classifier's method modules import concrete submodules, never fsl_jax.llm (whose lazy table they serve)
    methods = [m for m in graph if m.startswith("fsl_jax.llm.text_methods.")]
    assert "fsl_jax.llm.text_methods.episodic" in methods
    assert [m for m in methods if {"fsl_jax", "fsl_jax.llm"} & graph[m]] == []
    assert {f"fsl_jax.llm.text_methods.{m}" for m in ("head", "finetune", "setfit", "episodic")} <= graph[
        "fsl_jax.llm.finetune"
    ]
    # the shared argument checks sit below everything that uses them
    above = ("fsl_jax.learners", "fsl_jax.llm", "fsl_jax.data", "fsl_jax.train")
    assert [m for m in graph["fsl_jax._validate"] if m.startswith(above)] == []
