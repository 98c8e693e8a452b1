"""The kernels' on-disk numba cache is fresh for the whole package (mtlsolve/kernels/_numba.py):
a kernel that calls a function of another module is compiled afresh when that module changes."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numba

import mtlsolve.kernels
from mtlsolve.kernels._numba import PackageCache, package_stamp

ROOT = Path(mtlsolve.kernels.__file__).resolve().parents[2]

CALLEE = """
from mtlsolve.kernels._numba import kernel


@kernel
def value():
    return {value}
"""

CALLER = """
from callee import value
from mtlsolve.kernels._numba import kernel


@kernel
def call():
    return value()
"""

RUN = """
import json
import caller
result = caller.call()
print(json.dumps({"value": result, "hits": sum(caller.call.stats.cache_hits.values())}))
"""


def test_a_dependency_edit_invalidates_the_callers_cache(tmp_path):
    """Two modules in a scratch package: ``caller`` calls ``callee``. numba's own cache stamps
    ``caller`` with its own file only and would return the old value after ``callee`` changes;
    the package stamp makes the edit of ``callee`` a cache miss for ``caller`` too."""
    package = tmp_path / "package"
    package.mkdir()
    (package / "caller.py").write_text(CALLER)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(package), str(ROOT)]),
        NUMBA_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONDONTWRITEBYTECODE="1",  # an edit within the same second must not reuse bytecode
    )

    def run(value: float) -> dict:
        (package / "callee.py").write_text(CALLEE.format(value=value))
        done = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    assert run(1.0) == {"value": 1.0, "hits": 0}  # compiled and cached
    assert run(1.0) == {"value": 1.0, "hits": 1}  # loaded from the cache
    assert run(2.0) == {"value": 2.0, "hits": 0}  # callee edited: caller compiled afresh


def test_the_stamp_covers_every_source_of_the_package(tmp_path):
    for name, text in (("a.py", "x = 1\n"), ("b.py", "y = 2\n"), ("notes.txt", "n\n")):
        (tmp_path / name).write_text(text)
    stamp = package_stamp.__wrapped__(str(tmp_path))
    (tmp_path / "notes.txt").write_text("not a source\n")
    assert package_stamp.__wrapped__(str(tmp_path)) == stamp
    (tmp_path / "b.py").write_text("y = 3\n")
    assert package_stamp.__wrapped__(str(tmp_path)) != stamp


def test_every_kernel_uses_the_package_cache():
    """No kernel is compiled with numba's own cache (or none): all go through ``kernel``."""
    dispatchers = []
    for info in pkgutil.iter_modules(mtlsolve.kernels.__path__):
        module = importlib.import_module(f"mtlsolve.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.__module__ == module.__name__:
                dispatchers.append((module.__name__, name, obj))
    assert len(dispatchers) > 20
    for module, name, dispatcher in dispatchers:
        assert isinstance(dispatcher._cache, PackageCache), f"{module}.{name}"
