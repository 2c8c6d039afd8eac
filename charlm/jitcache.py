"""numba's on-disk cache, keyed on all of charlm's kernel sources, not only a function's own file.

numba keeps a cached function while the file that defines it is unchanged. A kernel compiled
with another module's function inside it (generation's step inlines each cell's step from
charlm/cells/, every kernel inlines sigmoid and tanh) would then keep a stale copy: a changed
or newly registered cell would run the old code, silently. The locators here add the hash of
every kernel source of charlm to the stamp of each charlm function's cache, so a change to any
of them compiles them all afresh. charlm.kernels installs them before any kernel is defined.
"""

import hashlib
from pathlib import Path

from numba.core import caching

# newer numba names these without the leading underscore
_CacheImpl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
_UserProvided = (getattr(caching, "UserProvidedCacheLocator", None)
                 or caching._UserProvidedCacheLocator)
_InTree = getattr(caching, "InTreeCacheLocator", None) or caching._InTreeCacheLocator
ROOT = Path(__file__).resolve().parent
# the files that define numba functions, or hold what they inline
KERNEL_SOURCES = ("kernels.py", "gemm.py", "optim.py", "cells", "generate")


def kernel_sources(root: Path = ROOT) -> list[Path]:
    """Every source file whose change can change a compiled kernel, in a fixed order."""
    files = []
    for name in KERNEL_SOURCES:
        path = root / name
        files += sorted(path.glob("*.py")) if path.is_dir() else [path]
    return files


def sources_stamp(root: Path = ROOT) -> str:
    """sha256 over the kernel sources' names and contents."""
    h = hashlib.sha256()
    for path in kernel_sources(root):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


STAMP = sources_stamp()


class _Stamped:
    """A locator for charlm's own functions whose stamp includes STAMP."""

    def get_source_stamp(self):
        return (super().get_source_stamp(), STAMP)

    @classmethod
    def from_function(cls, py_func, py_file):
        if not Path(py_file).resolve().is_relative_to(ROOT):
            return None  # not charlm's: numba's own locators decide
        return super().from_function(py_func, py_file)


class UserProvidedLocator(_Stamped, _UserProvided):
    """$NUMBA_CACHE_DIR, as numba's own."""


class InTreeLocator(_Stamped, _InTree):
    """__pycache__ beside the source, as numba's own."""


def install() -> None:
    """Put the stamped locators ahead of numba's (the user-provided directory first, as
    numba orders its own); idempotent."""
    classes = _CacheImpl._locator_classes
    for cls in (InTreeLocator, UserProvidedLocator):
        if cls not in classes:
            classes.insert(0, cls)
