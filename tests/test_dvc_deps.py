"""dvc.yaml's code deps cover each stage's Python import closure, so a code change reruns what it affects.

The closure starts at the stage function's module (from safealign.stages) and follows every ``import`` of a
``safealign`` module in the source, the lazy ones inside functions included, plus the packages around each
module (importing ``safealign.data.validate`` runs ``safealign/data/__init__.py``). A dep covers a module
when it names the module's file or a folder above it. Two kinds of module need no dep, by rule:

* a module with no code (only a docstring and ``__version__``): importing it cannot change a result;
* ``safealign.config``: settings reach a stage through params.yaml, which each stage declares under
  ``params:``; params.yaml is generated from config.py and tests/test_config.py holds the two equal, so a
  changed default is a changed param. The CLI around a stage function (cli.py, stages.py) only dispatches.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from safealign import stages

from helpers.imports import REPO, closure, module_file

SETTINGS_MODULE = "safealign.config"


def has_code(name: str) -> bool:
    tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
    for stmt in tree.body:
        docstring = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        version = isinstance(stmt, ast.Assign) and [ast.unparse(t) for t in stmt.targets] == ["__version__"]
        if not (docstring or version):
            return True
    return False


def needs_dep(name: str) -> bool:
    return name != SETTINGS_MODULE and has_code(name)


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == dep or dep in path.parents for dep in deps)


def code_deps(stage: str) -> list[Path]:
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    # data files shipped in the package (texts/*.jsonl a stage reads) are deps too, but not code
    deps = doc["stages"][stage]["deps"]
    return [REPO / d for d in deps if d.startswith("src/") and Path(d).suffix != ".jsonl"]


@pytest.mark.parametrize("stage", stages.STAGES, ids=stages.NAMES)
def test_code_deps_cover_the_import_closure(stage):
    deps = code_deps(stage.dvc)
    modules = {m for m in closure(stage.module) if needs_dep(m)}
    missing = sorted(
        str(module_file(m).relative_to(REPO)) for m in modules if not covered(module_file(m), deps)
    )
    assert not missing, f"dvc.yaml stage {stage.dvc!r} misses code deps: {missing}"
    # and no dep reruns the stage for code it never imports
    files = [module_file(m) for m in modules]
    idle = [str(d.relative_to(REPO)) for d in deps if not any(covered(f, [d]) for f in files)]
    assert not idle, f"dvc.yaml stage {stage.dvc!r} depends on code it does not import: {idle}"


def test_the_closure_follows_lazy_and_from_package_imports():
    grpo = closure(stages.get("grpo").module)
    assert {"safealign.refusal", "safealign.policy.decoding"} <= grpo  # lazy, in selection
    assert "safealign.data.benign" in closure("safealign.data.build")  # from safealign.data import benign
    # safealign/__init__.py runs code (MLflow telemetry off) in every stage, so every stage names it
    assert not needs_dep("safealign.data") and needs_dep("safealign") and not needs_dep(SETTINGS_MODULE)
    assert needs_dep("safealign.tracking")
