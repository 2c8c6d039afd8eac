"""numba's cache of charlm's kernels follows every kernel source, not only the function's file."""

import shutil

import numba as nb

from charlm import jitcache
from charlm.generate import kernels as GK


def test_the_stamp_covers_the_cells_the_step_kernel_inlines(tmp_path):
    root = tmp_path / "charlm"
    shutil.copytree(jitcache.ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    names = {p.relative_to(root).as_posix() for p in jitcache.kernel_sources(root)}
    assert {"kernels.py", "cells/lstm.py", "cells/__init__.py", "generate/kernels.py",
            "gemm.py", "generate/draw.py", "optim.py"} <= names
    before = jitcache.sources_stamp(root)
    assert before == jitcache.STAMP  # the copy is the package
    lstm = root / "cells" / "lstm.py"
    lstm.write_text(lstm.read_text().replace("cb[j] = f * cb[j] + i * g", "cb[j] = f * cb[j]"))
    assert jitcache.sources_stamp(root) != before
    (root / "cells" / "new_cell.py").write_text('"""a cell being added"""\n')
    assert len({before, jitcache.sources_stamp(root)}) == 2


def test_charlms_kernels_are_cached_under_the_stamp():
    """The step kernel (another module's cells inlined in it) and a cell's own step are both
    located by the stamped locator, and their cache's stamp includes the sources' hash."""
    from charlm.cells import lstm

    for kernel in (GK.advance, lstm.lstm_step):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, (jitcache.InTreeLocator, jitcache.UserProvidedLocator))
        assert locator.get_source_stamp()[1] == jitcache.STAMP

    @nb.njit(cache=True)
    def not_charlms(x):  # a test's own function: numba's locators, untouched
        return x

    assert not isinstance(not_charlms._cache._impl.locator, jitcache.InTreeLocator)
