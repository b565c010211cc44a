"""The import graph shows the design: layers that import only downwards, no cycle, no private name across a module
boundary, benchmarks free of test code, a public API (`__all__`) in every module.

Layers (lowest first), each module may import its own layer and the ones below:

0. plumbing — no method knowledge: the package `__init__` (version, `trainers_path`, the lazily imported public API),
   `files` (atomic writes, JSON-safe values, readers), `nnunet_env` (nnU-Net folders and environment), `inprocess`
   (nnU-Net's steps in this process);
1. the method — pure torch, one module per paper section: `config`, `split`, `confidence`, `alignment`,
   `weighted_loss`, `metrics` (the evaluation metrics, which use the split's edge score for the fuzzy region), and
   `robust_loss` (generalised cross-entropy, the robust-loss baseline);
2. nnU-Net glue: `progress` (nnU-Net's logger with DALE's statistics), `trainer`, `variants`;
3. tools, using the method and the glue: `evaluation` (the folder runner), `compare/`, `audit/`, `omega_maps`,
   `raw_datasets`, `converters/`, `holdout`, `benchmark_data`, `label_noise`;
4. apps: `demo`, `cli`.

Imports inside functions (lazy ones) count like top-level ones: a lazy import hides a cycle from Python, not from the
design. The walker is checked on a planted fake package first, so that an empty result means something.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nnunet_dale

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nnunet_dale"
BENCHMARKS = REPO / "benchmarks"

LAYERS = {
    "nnunet_dale": 0,
    "files": 0,
    "nnunet_env": 0,
    "inprocess": 0,
    "config": 1,
    "split": 1,
    "confidence": 1,
    "alignment": 1,
    "weighted_loss": 1,
    "metrics": 1,
    "robust_loss": 1,
    "progress": 2,
    "trainer": 2,
    "variants": 2,
    "evaluation": 3,
    "compare": 3,
    "audit": 3,
    "omega_maps": 3,
    "raw_datasets": 3,
    "converters": 3,
    "holdout": 3,
    "benchmark_data": 3,
    "label_noise": 3,
    "demo": 4,
    "cli": 4,
}
FORBIDDEN_IN_BENCHMARKS = ("tests", "conftest", "pytest")


# ---------------------------------------------------------------------------------------------------------- walker
def module_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file of every .py file under `root` (the folder of `package`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(path: Path, module: str, is_package: bool) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import in the file, at any depth (lazy ones too)."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(base, alias.name, node.lineno) for alias in node.names]
    return found


def private_attributes(path: Path, known: set[str]) -> list[tuple[str, str, int]]:
    """(module, attribute, line) for `module._private` where `module` is a name bound to a module in `known`."""
    tree = ast.parse(path.read_text())
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in known:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return [
        (bound[node.value.id], node.attr, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in bound
        and is_private(node.attr)
    ]


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], list[str]]:
    """Edges between the modules of `package` (a `from pkg import submodule` is an edge to the submodule) and the
    private names imported across module boundaries ("importer:line imports module.name")."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        for target, name, line in imports(path, module, path.name == "__init__.py"):
            if not (target == package or target.startswith(package + ".")):
                continue
            if name is not None and f"{target}.{name}" in modules:
                target = f"{target}.{name}"
            elif name is not None and is_private(name):
                private.append(f"{module}:{line} imports {target}.{name}")
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module:
                graph[module].add(target)
        private += [f"{module}:{line} uses {m}.{a}" for m, a, line in private_attributes(path, set(modules))]
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles found by a depth-first search (each as the path that closes it)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def layer_of(module: str, package: str, layers: dict[str, int]) -> int:
    parts = module.split(".")
    return layers[package if len(parts) == 1 else parts[1]]


def upward_imports(graph: dict[str, set[str]], package: str, layers: dict[str, int]) -> list[str]:
    return [
        f"{a} (layer {layer_of(a, package, layers)}) imports {b} (layer {layer_of(b, package, layers)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer_of(b, package, layers) > layer_of(a, package, layers)
    ]


# ------------------------------------------------------------------------------------ the walker can fail at all
def write_fake_package(root: Path) -> Path:
    package = root / "fakepkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low.py": "import os\n\ndef f():\n    from fakepkg import high  # upward and lazy\n    return high\n",
        "high.py": "from fakepkg.low import f\nfrom fakepkg import sub\n",
        "sub/__init__.py": "",
        "sub/a.py": "from .b import thing\n",
        "sub/b.py": "def thing():\n    from fakepkg.sub.a import _hidden  # a lazy cycle, a private name\n",
        "peek.py": "import fakepkg.low as low\n\nlow._secret\n",
    }
    for name, text in files.items():
        (package / name).write_text(textwrap.dedent(text))
    return package


def test_the_walker_finds_a_planted_cycle_an_upward_import_and_private_names(tmp_path):
    graph, private = import_graph(write_fake_package(tmp_path), "fakepkg")
    assert graph["fakepkg.sub.a"] == {"fakepkg.sub.b"} and graph["fakepkg.sub.b"] == {"fakepkg.sub.a"}
    assert graph["fakepkg.high"] == {"fakepkg.low", "fakepkg.sub"}
    found = cycles(graph)
    assert ["fakepkg.sub.a", "fakepkg.sub.b", "fakepkg.sub.a"] in found
    assert ["fakepkg.high", "fakepkg.low", "fakepkg.high"] in found
    layers = {"fakepkg": 0, "low": 0, "peek": 0, "sub": 1, "high": 1}
    assert upward_imports(graph, "fakepkg", layers) == ["fakepkg.low (layer 0) imports fakepkg.high (layer 1)"]
    assert sorted(private) == [
        "fakepkg.peek:3 uses fakepkg.low._secret",
        "fakepkg.sub.b:2 imports fakepkg.sub.a._hidden",
    ]


# ------------------------------------------------------------------------------------------------ the real package
def test_every_module_imports():
    names = []
    for info in pkgutil.walk_packages(nnunet_dale.__path__, "nnunet_dale.", onerror=lambda name: pytest.fail(name)):
        importlib.import_module(info.name)
        names.append(info.name)
    assert set(module_files(PACKAGE, "nnunet_dale")) <= {"nnunet_dale", *names}


def test_every_module_has_a_layer():
    assert {m.split(".")[1] for m in module_files(PACKAGE, "nnunet_dale") if "." in m} | {"nnunet_dale"} == set(LAYERS)


def test_no_import_cycle():
    graph, _ = import_graph(PACKAGE, "nnunet_dale")
    assert cycles(graph) == []


def test_imports_point_down_the_layers():
    graph, _ = import_graph(PACKAGE, "nnunet_dale")
    assert upward_imports(graph, "nnunet_dale", LAYERS) == []


def test_no_private_name_crosses_a_module_boundary():
    _, private = import_graph(PACKAGE, "nnunet_dale")
    assert private == []
    benchmarks = module_files(BENCHMARKS, "benchmarks")
    known = set(module_files(PACKAGE, "nnunet_dale")) | set(benchmarks)
    found = []
    for module, path in benchmarks.items():
        found += [
            f"{module}:{line} imports {t}.{n}" for t, n, line in imports(path, module, False) if n and is_private(n)
        ]
        found += [f"{module}:{line} uses {m}.{a}" for m, a, line in private_attributes(path, known)]
    assert found == []


def test_benchmarks_import_no_test_code_and_touch_no_sys_path():
    for module, path in module_files(BENCHMARKS, "benchmarks").items():
        for target, _, line in imports(path, module, path.name == "__init__.py"):
            assert target.split(".")[0] not in FORBIDDEN_IN_BENCHMARKS, f"{module}:{line} imports {target}"
        tree = ast.parse(path.read_text())
        touched = [
            n.lineno
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr == "path" and getattr(n.value, "id", None) == "sys"
        ]
        assert touched == [], f"{module} uses sys.path (lines {touched})"


def test_benchmarks_import_without_pytest():
    """Every benchmark module imports in a Python where pytest cannot be imported (a plain install)."""
    modules = sorted(module_files(BENCHMARKS, "benchmarks"))
    code = "import sys; sys.modules['pytest'] = None\n" + "".join(f"import {m}\n" for m in modules)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_module_lists_its_public_api():
    """`__all__` in every module: its names exist, and every public function and class defined there is listed."""
    for name in sorted(module_files(PACKAGE, "nnunet_dale")):
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} has no __all__"
        assert [n for n in module.__all__ if not hasattr(module, n)] == [], name
        defined = [
            n
            for n, value in vars(module).items()
            if not n.startswith("_")
            and (inspect.isfunction(value) or inspect.isclass(value))
            and getattr(value, "__module__", None) == name
        ]
        assert sorted(set(defined) - set(module.__all__)) == [], f"{name}: public names missing from __all__"


def test_the_package_exports_its_api_lazily():
    """`from nnunet_dale import X` works for every X in `__all__`; importing the package alone loads no torch."""
    assert [n for n in nnunet_dale.__all__ if getattr(nnunet_dale, n, None) is None] == []
    code = "import sys, nnunet_dale; print('torch' in sys.modules or 'nnunetv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
