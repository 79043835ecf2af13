"""The package's import graph: every module imports, none is part of a cycle, and the
runtime imports no torch.

The graph is read from the source (``ast``), so it holds the imports inside functions
too: a lazy import that closes a cycle (``commands.evaluate`` ⇄ ``commands._evaluate_model``
was one) is a tangle even when Python happens to get through it.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Import package -> its folder in the repository ([tool.scikit-build] wheel.packages).
PACKAGES = {"micronet": "micronet", "micronet.runtime": "runtime", "micronet.trainer": "trainer", "micronet.export": "export"}

# Cycles allowed to remain. Empty: a new cycle is never added here.
KNOWN_CYCLES: set[frozenset[str]] = set()

# Packages that only some modules need; a module that cannot import without them is skipped.
OPTIONAL = {"torch", "safetensors", "onnx", "onnxscript", "matplotlib", "tensorrt", "cupy", "cuda", "openslide", "ray"}


def package_modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> source file."""
    found = {}
    for package, folder in PACKAGES.items():
        root = REPO / folder
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if package == "micronet" and parts[0] in ("runtime", "trainer", "export"):
                continue  # only in an editable checkout's tree; the real ones are listed above
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = package_modules()


def imports_of(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (module level, inside
    functions, ``importlib.import_module("literal")``), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    targets = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from a import b` imports the module a.b if there is one, else a name of a.
            targets.update(f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets.add(node.args[0].value)
    return {t for t in targets if t in MODULES and t != name}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_covers_the_whole_package():
    for name in ("micronet.cli", "micronet.commands.evaluate", "micronet.runtime.evaluation.evaluate", "micronet.trainer.validate", "micronet.export.onnx"):
        assert name in MODULES
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    assert "micronet.runtime.evaluation.sweep" in graph["micronet.trainer.validate"]  # module level
    assert "micronet.runtime.detector" in graph["micronet.runtime.evaluation.evaluate"]  # inside a function


def test_no_import_cycles():
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    found = cycles(graph)
    new = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles (each: the modules that import one another in a ring): " + "; ".join(
        " ⇄ ".join(c) for c in new
    )
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"no longer a cycle, remove it from KNOWN_CYCLES: {gone}"


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith(".__main__")))
def test_every_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"{name} needs {exc.name}")


def test_the_runtime_imports_no_torch():
    runtime = sorted(n for n in MODULES if n == "micronet.runtime" or n.startswith("micronet.runtime."))
    code = f"import importlib, sys\nfor m in {runtime!r}:\n    importlib.import_module(m)\nassert 'torch' not in sys.modules, 'torch'\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# --- the runtime's rooms -------------------------------------------------------------------

# The inference core: the runtime's top-level modules and its backends. `slide` reads
# slides; `evaluation`, `runs` and `diagnostics` sit above them.
UPPER_ROOMS = ("micronet.runtime.runs", "micronet.runtime.evaluation", "micronet.runtime.diagnostics")

# Imports that point up, each a front door of the Detector handing its work to the room
# that does it, lazily: (importer, imported) -> why.
UPWARD_DOORS = {
    ("micronet.runtime.detector", "micronet.runtime.runs.slide_run"): "Detector.detect_slide runs a slide",
    ("micronet.runtime.detector", "micronet.runtime.diagnostics.check"): "Detector(verify=True) runs the known-answer check",
}

# Runtime modules that still import the export package: none since the TensorRT builder
# the engine cache calls moved into the runtime's backends (backends/tensorrt_build.py).
PENDING_EXPORT_IMPORTS: set[tuple[str, str]] = set()


def _room(name: str) -> str:
    for room in UPPER_ROOMS:
        if name == room or name.startswith(room + "."):
            return room
    return "core" if name.startswith("micronet.runtime") else name


def test_the_runtime_imports_neither_trainer_nor_export():
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    found = {
        (name, target)
        for name, targets in graph.items()
        if name.startswith("micronet.runtime")
        for target in targets
        if target.startswith(("micronet.trainer", "micronet.export"))
    }
    assert found <= PENDING_EXPORT_IMPORTS, f"the runtime imports the trainer or export (pass a callable instead): {sorted(found - PENDING_EXPORT_IMPORTS)}"


def test_imports_point_down_inside_the_runtime():
    """core ← slide ← evaluation, runs ← diagnostics: the core imports no upper room, and
    evaluation and runs import neither each other nor diagnostics."""
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    allowed = {
        "core": {"core"},
        "micronet.runtime.evaluation": {"core", "micronet.runtime.evaluation"},
        "micronet.runtime.runs": {"core", "micronet.runtime.runs"},
        "micronet.runtime.diagnostics": {"core", "micronet.runtime.evaluation", "micronet.runtime.diagnostics"},
    }
    wrong = sorted(
        (name, target)
        for name, targets in graph.items()
        if name.startswith("micronet.runtime.")
        for target in targets
        if target.startswith("micronet.runtime.")
        and _room(target) not in allowed[_room(name)]
        and (name, target) not in UPWARD_DOORS
    )
    assert not wrong, "imports that point up or sideways between the runtime's rooms: " + "; ".join(f"{a} -> {b}" for a, b in wrong)
