"""What the command line is built from: typed choices, one-line errors, and printed samples."""

import functools
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import fields
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TextIO

import typer

from charlm import reber
from charlm.data import ENCODING_ERRORS
from charlm.errors import CharlmError
from charlm.model import CELLS, DTYPES
from charlm.optim import OPTIMIZERS
from charlm.train import LR_DECAYS

if TYPE_CHECKING:
    from charlm.generate import Completion, Distribution, Generator, SampleSettings

CELL_NAMES = ", ".join(list(CELLS)[:-1]) + f" or {list(CELLS)[-1]}"  # for messages
CELL_HELP = "The recurrent cell: " + "; ".join(f"{name}, {c.doc}" for name, c in CELLS.items())


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum of the values: typer lists them in --help, completes them, refuses others."""
    return Enum(name, [(v, v) for v in values], type=str)


Cell = choices("Cell", CELLS)
Optimizer = choices("Optimizer", OPTIMIZERS)
LrDecay = choices("LrDecay", LR_DECAYS)
Dtype = choices("Dtype", DTYPES)
EncodingErrors = choices("EncodingErrors", ENCODING_ERRORS)
Grammar = choices("Grammar", reber.GRAMMARS)


def config(cls, params: dict):
    """cls from the command's parameters named as its fields; a choice gives its value."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v.value if isinstance(v, Enum) else v for k, v in params.items()
                  if k in names})


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def friendly(fn):
    """Turn CharlmError (and file-system errors) into a one-line message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CharlmError as e:
            raise fail(str(e)) from None
        except OSError as e:
            raise fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None
        except KeyboardInterrupt:
            raise fail("interrupted") from None

    return wrapper


def service_module(name: str) -> ModuleType:
    """A module of the HTTP service: installed, the package is charlm_service; in a checkout
    that is not installed, the folder service/ (the library itself never imports either)."""
    package = "charlm_service" if importlib.util.find_spec("charlm_service") else "service"
    return importlib.import_module(f"{package}.{name}")


def checkpoint_for(path: Path | None) -> Path:
    """The checkpoint file a command runs on: path, a directory's best.npz (else latest.npz),
    or with no path the one checkpoint.default_checkpoint picks, named on stderr."""
    from charlm.checkpoint import BEST, LATEST, default_checkpoint, find_checkpoint

    if path is None:
        found = default_checkpoint()
        typer.echo(f"using {found} (name a checkpoint to choose another)", err=True)
        return found
    if path.is_dir() and not any((path / n).is_file() for n in (BEST, LATEST)):
        return default_checkpoint(path)  # its runs and exports, or the error saying what to do
    return find_checkpoint(path)


def is_checkpoint(path: Path) -> bool:
    """Whether path is a directory or an npz archive (a text file to score is neither)."""
    if path.is_dir():
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return path.suffix == ".npz"  # a missing file: its name says what it was meant to be


def visible(ch: str) -> str:
    """A character as it can be seen in a table: repr without quotes, and space as a quoted ' '."""
    if ch == " ":
        return "' '"
    return repr(ch)[1:-1]


def distribution_table(dist: "Distribution", top_n: int | None = None):
    """A rich Table of the distribution: character, probability, most probable first."""
    from rich.table import Table

    table = Table(title=f"next character  (temperature {dist.temperature:g}, "
                        f"entropy {dist.entropy:.3f} nats)")
    table.add_column("char")
    table.add_column("prob", justify="right")
    for ch, prob in dist.top(top_n):
        table.add_row(visible(ch), f"{prob:.4f}")
    return table


def print_sample(gen: "Generator", prompt: str, settings: "SampleSettings",
                 file: TextIO | None = None, drop_unknown: bool = False) -> "Completion":
    """Print prompt, then each character as it is drawn; return the completion."""
    from charlm.generate import Completion

    file = file or sys.stdout
    gen.prime(prompt, drop_unknown)
    file.write(prompt)
    tokens = []
    for tok in gen.generate(settings):
        file.write(tok.char)
        file.flush()
        tokens.append(tok)
    if tokens and tokens[-1].char != "\n":
        file.write("\n")
    file.flush()
    return Completion("".join(t.char for t in tokens), tokens, gen.finish_reason, gen.seed)
