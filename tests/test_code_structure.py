"""Structure checks on src/: the import layering, no import cycle among safealign modules, no function over
80 lines.

Imports are read with ``ast`` wherever they appear (module level and inside functions alike), so a cycle
hidden behind a lazy import still counts: a function-level import is for a heavy or optional dependency,
never a way around a cycle. A module loaded by name counts as imported too: a string that is exactly a
safealign module's dotted name (``"safealign.reward.train:train_reward"`` in the stage registry, ``-m
safealign.results``) is an arrow like an ``import``. Loading code by file path or editing ``sys.path`` is
refused outright: it hides an arrow from every check here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
TESTS = Path(__file__).resolve().parent
# Every folder whose Python imports safealign: an import of a moved module must fail here, not at run time.
IMPORTERS = ("src", "tests", "bench", "scripts")
MAX_FUNCTION_LINES = 80
# Long functions owned by work in progress elsewhere; each entry must still be too long (else remove it).
KNOWN_LONG: set[str] = set()

# The layers of src/safealign, lowest first: a module may import its own layer and the layers below it,
# never one above (data <- reward <- policy <- evaluation <- registry/kfp/team). Each entry is a list of
# module prefixes (a prefix names the module and everything under it; ``safealign`` itself names only the
# package's __init__). Every module must be in a layer, so a new package or top-level module has to be
# placed here on purpose.
Layers = list[tuple[str, tuple[str, ...]]]
LAYERS: Layers = [
    ("foundation", ("safealign", "safealign.errors", "safealign.config", "safealign.common",
                    "safealign.tracking")),
    ("data", ("safealign.data",)),
    ("reward", ("safealign.reward",)),
    ("refusal judge", ("safealign.refusal",)),
    ("policy", ("safealign.policy",)),
    ("evaluation", ("safealign.evaluation",)),
    ("refresh rounds", ("safealign.refresh",)),
    ("registry, serving, team", ("safealign.registry", "safealign.serving", "safealign.team")),
    ("stage registry", ("safealign.stages", "safealign.results")),
    ("front ends", ("safealign.kfp", "safealign.run", "safealign.cli")),
]
# A string that IS a module name, optionally with ``:attribute`` (importlib and ``python -m`` targets).
MODULE_STRING = re.compile(r"(safealign(?:\.\w+)*)(?::\w+)?")
# Calls that load code by file path or change where imports are looked up.
PATH_LOADS = ("spec_from_file_location", "run_path", "sys.path.insert", "sys.path.append", "sys.path.extend")


def _modules(src: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(src: Path, package: str = "safealign") -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its body (``from a import b`` -> ``a.b`` when
    ``b`` is a module, else ``a``)."""
    modules = _modules(src)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name != package and not name.startswith(package + "."):
            continue
        is_pkg = path.name == "__init__.py"
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == package)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1 more
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.split(".")[0] == package:
                    targets.update(resolve(f"{base}.{a.name}") for a in node.names)
        targets.update(_loaded_by_name(path, modules))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions (prose, not load targets)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _loaded_by_name(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules a file names in a string that is exactly a module path (``pkg.mod``, ``pkg.mod:attr``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _docstrings(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            match = MODULE_STRING.fullmatch(node.value)
            if match and match.group(1) in modules:
                found.add(match.group(1))
    return found


def path_loads(src: Path) -> dict[str, list[str]]:
    """module -> the calls in it that load code by file path or edit ``sys.path`` (see ``PATH_LOADS``)."""
    out: dict[str, list[str]] = {}
    for name, path in _modules(src).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                if any(called == p or called.endswith("." + p) for p in PATH_LOADS):
                    out.setdefault(name, []).append(f"{called} (line {node.lineno})")
    return out


def _bound_names(path: Path) -> set[str]:
    """The names a module binds at its top level (also inside top-level ``if``/``try`` blocks)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        for sub in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(sub.name)
            elif isinstance(sub, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".")[0] for a in sub.names)
            elif isinstance(sub, ast.Assign | ast.AnnAssign):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _in(module: str | None, package: str) -> bool:
    return (module or "").split(".")[0] == package


def unresolved_imports(src: Path, files: list[Path], package: str = "safealign") -> list[str]:
    """``file:line name`` for every import of a ``package`` module, or of a name from one, that does not
    exist (module-level and lazy imports alike: a lazy import of a moved module fails only when it runs)."""
    modules = _modules(src)
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            wanted: list[str] = []
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names if a.name.split(".")[0] == package]
                wanted = [name for name in wanted if name not in modules]
            elif isinstance(node, ast.ImportFrom) and not node.level and _in(node.module, package):
                if node.module not in modules:
                    wanted = [node.module]
                else:
                    bound = _bound_names(modules[node.module])
                    names = [a.name for a in node.names if a.name != "*" and a.name not in bound]
                    wanted = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" not in modules]
            found += [f"{path}:{node.lineno} {name}" for name in wanted]
    return found


def layer_of(module: str, layers: Layers = LAYERS) -> int | None:
    """Index of the layer holding ``module``: the one with the longest matching prefix."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            under = "." in prefix and module.startswith(prefix + ".")  # the root package is only itself
            if module == prefix or under:
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def upward_imports(graph: dict[str, set[str]], layers: Layers = LAYERS) -> list[str]:
    """Every arrow from a module to one in a higher layer, as ``a (layer) -> b (layer)``."""
    found = []
    for module in sorted(graph):
        low = layer_of(module, layers)
        for target in sorted(graph[module]):
            high = layer_of(target, layers)
            if low is not None and high is not None and high > low:
                found.append(f"{module} ({layers[low][0]}) -> {target} ({layers[high][0]})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def long_functions(src: Path, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``module.function`` (or ``module.Class.method``) -> lines, for every def longer than ``limit``."""
    out = {}
    for name, path in _modules(src).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    qual = f"{prefix}.{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        lines = child.end_lineno - child.lineno + 1
                        if lines > limit:
                            out[qual] = lines
                    walk(child, qual)
                else:
                    walk(child, prefix)

        walk(tree, name)
    return out


def test_no_import_cycles_in_src():
    found = cycles(import_graph(SRC))
    assert not found, "import cycles (module-level and function-level imports alike): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_the_cycle_check_sees_a_cycle_hidden_in_a_function(tmp_path):
    """A lazy import inside a function closes the loop just as well: the check must report it."""
    _write(tmp_path, {
        "safealign/__init__.py": "",
        "safealign/policy/__init__.py": "",
        "safealign/policy/a.py": "from safealign.policy.b import g\n",
        "safealign/policy/b.py": "def g():\n    from safealign.policy import a\n    return a\n",
        "safealign/policy/c.py": "from . import a\n",
    })  # fmt: skip
    graph = import_graph(tmp_path)
    assert graph["safealign.policy.c"] == {"safealign.policy.a"}  # relative imports resolve
    assert cycles(graph) == [["safealign.policy.a", "safealign.policy.b"]]


def test_every_import_of_a_safealign_module_resolves():
    files = [p for d in IMPORTERS for p in sorted((REPO / d).rglob("*.py"))]
    found = unresolved_imports(SRC, files)
    assert not found, f"imports of safealign modules or names that do not exist: {found}"


def test_the_resolve_check_sees_a_moved_module(tmp_path):
    _write(tmp_path, {
        "safealign/__init__.py": "VERSION = 1\n",
        "safealign/registry/__init__.py": "",
        "safealign/registry/promotion.py": "def promote():\n    pass\n",
        "user.py": "from safealign import VERSION\nfrom safealign.registry.promotion import promote\n\n"
                   "def f():\n    from safealign import promotion\n    import safealign.serving\n"
                   "    from safealign.registry.promotion import rollback\n",
    })  # fmt: skip
    found = unresolved_imports(tmp_path, [tmp_path / "user.py"])
    assert [f.split(" ")[1] for f in found] == [
        "safealign.promotion", "safealign.serving", "safealign.registry.promotion.rollback"
    ]


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _modules(SRC) if m.startswith("safealign") and layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS on purpose): {unplaced}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    found = upward_imports(import_graph(SRC))
    assert not found, "imports that point up the layers (move shared code down): " + "; ".join(found)


def test_nothing_in_src_loads_code_by_path_or_edits_sys_path():
    found = path_loads(SRC)
    assert not found, f"import these as modules instead: {found}"


LAYERED_TREE = {
    "safealign/__init__.py": "",
    "safealign/data/__init__.py": "",
    "safealign/data/schema.py": "KINDS = ('a', 'b')\n",
    "safealign/evaluation/__init__.py": "",
    "safealign/evaluation/stats.py": "def mean(x):\n    return sum(x) / len(x)\n",
}


@pytest.mark.parametrize(
    "violation",
    [
        "from safealign.evaluation.stats import mean\n",  # at module level
        "def f():\n    from safealign.evaluation import stats\n    return stats\n",  # lazy, in a function
        "import importlib\nSTATS = importlib.import_module('safealign.evaluation.stats')\n",  # by name
        "TARGET = 'safealign.evaluation.stats:mean'\n",  # a stage-registry style reference
    ],
    ids=["module-level", "in-a-function", "import_module", "registry-string"],
)
def test_the_layer_check_sees_an_upward_import(tmp_path, violation):
    """A lower layer reaching up, however it does it, is reported; prose naming a module is not."""
    _write(tmp_path, {**LAYERED_TREE, "safealign/data/onpolicy.py": violation})
    layers = [("foundation", ("safealign",)), ("data", ("safealign.data",)),
              ("evaluation", ("safealign.evaluation",))]
    graph = import_graph(tmp_path)
    assert upward_imports(graph, layers) == [
        "safealign.data.onpolicy (data) -> safealign.evaluation.stats (evaluation)"
    ]
    _write(tmp_path, {"safealign/data/onpolicy.py": '"""Measured with safealign.evaluation.stats."""\n'
                                                   "from safealign.data.schema import KINDS\n"})
    assert upward_imports(import_graph(tmp_path), layers) == []


def test_the_path_load_check_sees_sys_path_edits_and_file_loads(tmp_path):
    _write(tmp_path, {
        "safealign/__init__.py": "",
        "safealign/a.py": "import sys\nsys.path.insert(0, '/somewhere')\n",
        "safealign/b.py": "import importlib.util\nimportlib.util.spec_from_file_location('x', 'x.py')\n",
        "safealign/c.py": "import sys\nprint(sys.path)\n",
    })  # fmt: skip
    found = path_loads(tmp_path)
    assert set(found) == {"safealign.a", "safealign.b"}


def imported_test_modules(path: Path) -> set[str]:
    """The test modules (``test_*``) a file imports: shared test code belongs in tests/helpers/."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if any(part.startswith("test_") for part in n.split(".")))
    return found


def test_no_test_module_imports_another_test_module():
    files = sorted(TESTS.rglob("*.py"))
    found = {str(p.relative_to(TESTS)): sorted(m) for p in files if (m := imported_test_modules(p))}
    assert not found, f"move what they share into tests/helpers/: {found}"


def test_the_test_import_check_sees_one(tmp_path):
    path = tmp_path / "test_x.py"
    path.write_text("import os\nfrom helpers.data import make_data\n\ndef f():\n    from test_y import z\n")
    assert imported_test_modules(path) == {"test_y", "test_y.z"}


def test_no_function_in_src_is_longer_than_80_lines():
    found = long_functions(SRC)
    unexpected = {k: v for k, v in found.items() if k not in KNOWN_LONG}
    assert not unexpected, f"functions over {MAX_FUNCTION_LINES} lines (split them): {unexpected}"
    fixed = KNOWN_LONG - set(found)
    assert not fixed, f"no longer over {MAX_FUNCTION_LINES} lines, drop from KNOWN_LONG: {sorted(fixed)}"
