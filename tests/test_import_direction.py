"""Imports point one way: the core below the solver plugins, the plugins below the adapters.

* the core (``mtlsolve/``) never imports the solver plugins (``plugins/``, installed as
  ``mtlsolve.plugins``) or the PyTorch adapters (``adapters/``, installed as ``mtlsolve.adapters``):
  solvers reach it through the registry's entry points, not through imports;
* the adapters never import a concrete plugin module (``mtlsolve.plugins.<family>.<method>``):
  they take any solver through the ``Solver`` interface;
* the application on top (``mtlsolve/bench``, the ``mtlsolve bench`` job) may use the adapters and
  is held to the adapters' rule.

Checked statically with :mod:`ast` over every source file, so imports inside functions count too,
and so do ``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package it installs as
PACKAGES = {"mtlsolve": "mtlsolve", "plugins": "mtlsolve.plugins", "adapters": "mtlsolve.adapters"}
#: the application on top of every layer: ``mtlsolve bench`` trains its models through the adapters,
#: so it is held to the adapters' rule (no concrete plugin), not to the core's
APPLICATION = "mtlsolve/bench"


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    """The installed dotted name of a source file (``adapters/ddp.py`` -> ``mtlsolve.adapters.ddp``)."""
    rel = path.relative_to(root).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in a file: ``import a.b``, ``from a import b``
    (both ``a`` and ``a.b``, since ``b`` may be a module), relative imports resolved against the
    file's package, and literal ``importlib.import_module`` / ``__import__`` calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            out.append((node.lineno, source))
            out += [(node.lineno, f"{source}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
    return out


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(path: Path, forbidden) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    return [f"{rel}:{line}: imports {name}" for line, name in imported_names(path) if forbidden(name)]


def core_forbidden(name: str) -> bool:
    return any(within(name, p) for p in ("mtlsolve.plugins", "mtlsolve.adapters", "plugins", "adapters"))


def concrete_plugin(name: str) -> bool:
    """``mtlsolve.plugins.<family>.<method>`` (or ``plugins.<family>.<method>``) and anything below it."""
    parts = name.split(".")
    if parts[0] == "mtlsolve":
        parts = parts[1:]
    return len(parts) >= 3 and parts[0] == "plugins"


def _params(folder: str, application: bool) -> list:
    """The source files of ``folder``, those of the application only (``application``) or none of them."""
    out = []
    for path in sources(folder):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(APPLICATION + "/") == application:
            out.append(pytest.param(path, id=rel))
    return out


@pytest.mark.parametrize("path", _params("mtlsolve", application=False))
def test_core_imports_neither_plugins_nor_adapters(path):
    found = violations(path, core_forbidden)
    assert not found, "the core must not import plugins or adapters:\n" + "\n".join(found)


@pytest.mark.parametrize("path", _params("adapters", application=False) + _params("mtlsolve", application=True))
def test_adapters_import_no_concrete_plugin(path):
    found = violations(path, concrete_plugin)
    assert not found, "the adapters must reach solvers through the Solver interface:\n" + "\n".join(found)


def test_the_checks_see_function_level_and_relative_imports(tmp_path):
    code = (
        "from . import solver\n"
        "def f():\n"
        "    from mtlsolve.adapters.backward import MultiTaskBackward\n"
        "    import importlib\n"
        "    return importlib.import_module('mtlsolve.plugins.gramian.upgrad')\n"
    )
    (tmp_path / "mtlsolve").mkdir()
    path = tmp_path / "mtlsolve" / "example.py"
    path.write_text(code)
    names = [name for _, name in imported_names(path, tmp_path)]
    assert "mtlsolve.solver" in names
    assert "mtlsolve.adapters.backward" in names
    assert "mtlsolve.plugins.gramian.upgrad" in names
    assert core_forbidden("mtlsolve.adapters.backward") and concrete_plugin("mtlsolve.plugins.gramian.upgrad")
    assert not concrete_plugin("mtlsolve.plugins.gramian") and not core_forbidden("mtlsolve.solver")
