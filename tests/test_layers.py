"""The layering of the code, checked on its imports: no module imports a higher layer,
at module level or inside a function.

From the bottom up: ``certify.core`` (errors, eps, data set specs, devices, files),
``model_zoo``, ``certify.data``, ``certify.bounds``, ``certify.evaluation``, ``reports``,
``certify.pipeline``, ``training``, and the roof: the CLI (``certify.cli``,
``certify.commands``, ``certify.__main__``) and the package's own ``certify/__init__.py``,
which names the verbs of every layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LAYERS = (
    "certify.core",
    "model_zoo",
    "certify.data",
    "certify.bounds",
    "certify.evaluation",
    "reports",
    "certify.pipeline",
    "training",
    "certify",  # the CLI and the package's facade
)
PACKAGES = ("certify", "model_zoo", "reports", "training")


def _layer(module: str) -> int:
    """The layer of a dotted module name: that of its longest matching prefix."""
    matches = [i for i, p in enumerate(LAYERS) if module == p or module.startswith(p + ".")]
    return max(matches, key=lambda i: len(LAYERS[i]), default=-1)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every project module ``path`` imports, anywhere in the file, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def test_every_source_module_has_a_layer() -> None:
    assert _sources()
    assert all(_layer(_module_name(p)) >= 0 for p in _sources())


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    own = _layer(_module_name(path))
    upward = [
        f"line {line}: {name} ({LAYERS[_layer(name)]})"
        for line, name in _imports(path)
        if _layer(name) > own
    ]
    assert not upward, f"{_module_name(path)} ({LAYERS[own]}) imports a higher layer: {upward}"


def test_the_layer_rule_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from training.run import train\n")
    assert _imports(source) == [(2, "training.run")]
    assert _layer("training.run") > _layer("certify.bounds.margins")
    assert _layer("certify.core.errors") < _layer("model_zoo.registry")


_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
_CLI = ("certify.cli", "certify.commands", "certify.__main__")


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _cli_leaks(path: Path) -> list[str]:
    """Flag names in the strings of ``path`` (docstrings aside), and its prints, exits and
    click imports: only the CLI knows flags, prints or exits."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstrings(tree)
    leaks = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings and _FLAG.search(node.value):
                leaks.append(f"line {node.lineno}: flag {_FLAG.search(node.value).group()}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("print", "exit", "quit"):
                leaks.append(f"line {node.lineno}: {node.func.id}()")
        elif isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.exit":
            leaks.append(f"line {node.lineno}: sys.exit")
    leaks += [
        f"line {line}: imports {name}" for line, name in _all_imports(tree) if name == "click"
    ]
    return leaks


def _all_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


_LIBRARY = [
    p for p in _sources() if not _module_name(p).startswith(_CLI) and _module_name(p) != "certify"
]


@pytest.mark.parametrize("path", _LIBRARY, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_library_code_names_no_flag_prints_nothing_and_never_exits(path: Path) -> None:
    leaks = _cli_leaks(path)
    assert not leaks, f"{_module_name(path)} speaks for the CLI: {leaks}"


def test_the_cli_rule_sees_a_flag_a_print_and_an_exit(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        '"""Mentions --flag in a docstring, which is fine."""\n'
        "import sys\n"
        "def f():\n"
        "    raise ValueError('give --model-args')\n"
        "    print('x')\n"
        "    sys.exit(1)\n"
    )
    assert sorted(_cli_leaks(source)) == [
        "line 4: flag --model-args",
        "line 5: print()",
        "line 6: sys.exit",
    ]
