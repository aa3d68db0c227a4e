"""The dependency rule of DESIGN.md, read from the code: every import of every module.

The daemons share only protos/ and the daemon runtime; the scheduler and the kvstore never load
torch; the kernels depend on nothing of the project; the composition package (strata/) may import
every daemon and no daemon imports it. An arrow is any `import`, `from ... import` (relative ones
resolved), or `importlib.import_module` / `__import__` with a constant name, anywhere in a module
(inside functions and `if TYPE_CHECKING:` too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("scheduler", "executor", "kvstore", "kernels", "protos", "runtime", "strata", "bench")
DAEMONS = ("scheduler", "executor", "kvstore")
# package -> top-level names it must never import
FORBIDDEN = {
    "scheduler": {"executor", "kvstore", "kernels", "torch", "strata", "bench"},
    "kvstore": {"torch", "executor", "scheduler", "kernels", "strata", "bench"},
    "executor": {"scheduler", "strata", "bench"},
    "kernels": set(PROJECT) - {"kernels"},
    "protos": set(PROJECT) - {"protos"},
    "runtime": set(PROJECT) - {"runtime", "protos"} | {"torch"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name this tree imports, absolute."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.add(node.args[0].value)
    return names


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            tree = ast.parse(path.read_text(), str(path))
            names = imported_names(tree, module, path.name == "__init__.py")
            for name in sorted(names):
                if name.split(".")[0] in forbidden:
                    found.append(f"{path.relative_to(root)}: {package} -> {name}")
    return found


def test_no_forbidden_import_arrow():
    assert violations() == []


def test_daemons_never_import_the_composition_package():
    for package in DAEMONS:
        assert "strata" in FORBIDDEN[package]


@pytest.mark.parametrize("source, expected", [
    ("import torch\n", {"torch"}),
    ("from executor.daemon import main\n", {"executor.daemon"}),
    ("def f():\n    import kvstore.store\n", {"kvstore.store"}),
    ("import importlib\nm = importlib.import_module('executor.settings')\n", {"importlib", "executor.settings"}),
    ("from importlib import import_module\nimport_module('kernels')\n", {"importlib", "kernels"}),
    ("__import__('torch')\n", {"torch"}),
    ("from . import block_pool\n", {"scheduler"}),
    ("from .block_pool import BlockPool\n", {"scheduler.block_pool"}),
])
def test_imported_names_sees_every_form(source, expected):
    assert imported_names(ast.parse(source), "scheduler.scheduler", False) == expected


def test_a_forbidden_arrow_is_reported(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "bad.py").write_text("def f():\n    import torch\n")
    (tmp_path / "kvstore").mkdir()
    (tmp_path / "kvstore" / "ok.py").write_text("import grpc\nfrom protos.v1 import kvstore_pb2\n")
    assert violations(tmp_path) == ["scheduler/bad.py: scheduler -> torch"]
