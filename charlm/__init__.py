"""charlm: a character-level LSTM language model you can read, train, sample and serve."""

import sys
import types

__version__ = "0.1.0"

__all__ = ["CharlmError", "DynamicResult", "Evaluation", "Model", "load", "train"]

# what `import charlm` offers, imported on first use: the import itself stays instant (numba,
# numpy and the kernels load only when a model is trained or loaded)
_LAZY = {"train": "charlm.api", "load": "charlm.api", "Model": "charlm.api",
         "Evaluation": "charlm.api", "DynamicResult": "charlm.dynamic",
         "CharlmError": "charlm.errors"}


class _Package(types.ModuleType):
    """charlm's own module type: charlm.train stays the API's function.

    Importing the submodule charlm/train.py would otherwise set the package's `train` to that
    module; it stays reachable as `from charlm.train import ...` (and in sys.modules).
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'charlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
