"""How every kernel is compiled: :func:`kernel`, numba's ``njit`` with one set of options and an
on-disk cache that is fresh for the whole package.

numba's own cache (``cache=True``) stamps a compiled function with the source of its own file
only, so a kernel that calls a function of another module (most kernels call the shared core
of :mod:`mtlsolve.kernels._dense`) would load a stale machine-code copy of that function after
it is edited. The cache here stamps every function with a hash of all the ``.py`` files of its
package instead: an edit of any kernel source invalidates every cached kernel of the package,
and nothing ever has to be purged by hand. (So a kernel calls compiled functions of its own
package only.)
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from collections.abc import Callable
from typing import Any

import numba
from numba.core.caching import CompileResultCacheImpl, FunctionCache

#: the compile options of every kernel: IEEE arithmetic exactly as written (no fastmath: the
#: certificates measure round-off) and Python's error model (a division by zero raises)
OPTIONS = {"fastmath": False, "error_model": "python"}


@functools.cache
def package_stamp(directory: str) -> str:
    """A SHA-256 hash of the names and contents of the ``.py`` files in ``directory``."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py"):
            with open(os.path.join(directory, name), "rb") as source:
                digest.update(name.encode() + b"\0" + source.read() + b"\0")
    return digest.hexdigest()


class _PackageStampedLocator:
    """numba's cache locator of a function, with the stamp of its whole package as the source stamp
    (numba discards an index whose stamp differs and compiles afresh)."""

    def __init__(self, locator: Any, stamp: str) -> None:
        self._locator = locator
        self._stamp = stamp

    def get_source_stamp(self) -> str:
        return self._stamp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._locator, name)


class _PackageCacheImpl(CompileResultCacheImpl):
    def __init__(self, py_func: Callable) -> None:
        super().__init__(py_func)
        stamp = package_stamp(os.path.dirname(os.path.abspath(inspect.getfile(py_func))))
        self._locator = _PackageStampedLocator(self._locator, stamp)


class PackageCache(FunctionCache):
    """numba's function cache, stamped with :func:`package_stamp` of the function's package."""

    _impl_class = _PackageCacheImpl


def kernel(function: Callable | None = None, *, inline: bool = False) -> Any:
    """Compile ``function`` with numba (``njit`` and :data:`OPTIONS`), cached on disk under the
    stamp of its whole package (module docstring). ``inline``: compile it into each caller
    (numba's ``inline="always"``), for the small helpers of the active-set loop of
    :mod:`mtlsolve.kernels._dense`, where a call that passes a handful of arrays costs as much as
    the work it does. Use as ``@kernel`` or ``@kernel(inline=True)``."""
    if function is None:
        return functools.partial(kernel, inline=inline)
    dispatcher = numba.njit(**OPTIONS, inline="always" if inline else "never")(function)
    dispatcher._cache = PackageCache(function)
    return dispatcher
