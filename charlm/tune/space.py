"""The search space of `charlm tune`: the default one, a TOML file that changes it, and a trial's
draw from it as `charlm train` options.

A space maps training options to one of: `choices = [...]` (categorical), `low`/`high` with
optional `log = true` or `step` (a range; ints for integer options), or `value = x` (fixed).
A file's entries replace the default's one by one, so a file can narrow the space (fix an
option, shorten a range) or widen it (a longer range, an option the default leaves alone).
"""

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError
from charlm.model import CELLS
from charlm.optim import OPTIMIZERS
from charlm.train import LR_DECAYS, TrainConfig

try:
    import tomllib
except ImportError:  # python 3.10
    import tomli as tomllib

MAX_SPACE_BYTES = 64 * 1024  # a space file is a few lines; refuse anything huge before parsing
MAX_CHOICES = 64


@dataclass(frozen=True)
class Option:
    """What an option may take: its type, its legal bounds (the configs' own, plus sizes that
    keep one trial within a laptop's memory) or its legal values."""

    kind: type  # int, float or str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed (lr > 0, dropout < 1)
    high_open: bool = False
    values: tuple[str, ...] = ()  # the legal values of a str option


# the options a space may search: every `charlm train` option that shapes the model or the
# optimisation. Budgets, --eval-every, --val-frac and --seed are the study's, the same for all.
OPTIONS = {
    "n_layer": Option(int, 1, 8),
    "n_hidden": Option(int, 1, 4096),
    "n_embd": Option(int, 1, 4096),
    "cell": Option(str, values=tuple(CELLS)),
    "dropout": Option(float, 0.0, 0.95),
    "forget_bias": Option(float, -10.0, 10.0),
    "seq_len": Option(int, 1, 10000),
    "batch_size": Option(int, 1, 4096),
    "lr": Option(float, 0.0, 1.0, low_open=True),
    "optimizer": Option(str, values=tuple(OPTIMIZERS)),
    "lr_decay": Option(str, values=LR_DECAYS),
    "min_lr_frac": Option(float, 0.0, 1.0),
    "warmup_steps": Option(int, 0, 10**6),
    "grad_clip": Option(float, 0.0, 1e6),
}


@dataclass(frozen=True)
class Param:
    """One option's part of the space: exactly one of choices, a range, or a fixed value."""

    name: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    value: Any = None

    def to_dict(self) -> dict:
        if self.choices:
            return {"choices": list(self.choices)}
        if self.low is not None:
            d = {"low": self.low, "high": self.high}
            if self.log:
                d["log"] = True
            if self.step is not None:
                d["step"] = self.step
            return d
        return {"value": self.value}

    def describe(self) -> str:
        """One line for the README and `charlm tune --help`."""
        if self.choices:
            return ", ".join(str(c) for c in self.choices)
        if self.low is not None:
            extra = " (log)" if self.log else (f" step {self.step:g}" if self.step else "")
            return f"{self.low:g} .. {self.high:g}{extra}"
        return f"fixed at {self.value}"


# the default space: sizes a laptop trains in minutes, and the ranges char-rnn users try. rnn
# is left out (it trails every gated cell on prose: README, Cells); add it in a space file.
DEFAULT_SPACE: dict[str, Param] = {p.name: p for p in (
    Param("n_layer", low=1, high=3),
    Param("n_hidden", choices=(128, 192, 256, 384, 512)),
    Param("cell", choices=("lstm", "gru", "peephole", "coupled")),
    Param("lr", low=1e-3, high=1e-2, log=True),
    Param("dropout", low=0.0, high=0.3),
    Param("seq_len", choices=(50, 100, 150, 200)),
    Param("batch_size", choices=(16, 32, 64, 128)),
    Param("forget_bias", choices=(0.0, 0.5, 1.0)),
)}


def _where(source: str, name: str) -> str:
    return f"{source}: [{name}]"


def _typed(value: Any, opt: Option, where: str, what: str) -> Any:
    """value as the option's type, or a CharlmError naming the entry."""
    if opt.kind is str:
        if not isinstance(value, str):
            raise CharlmError(f"{where}: {what} must be a string, got {value!r}")
        if value not in opt.values:
            raise CharlmError(f"{where}: {what} {value!r} is not one of {', '.join(opt.values)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CharlmError(f"{where}: {what} must be a number, got {value!r}")
    if opt.kind is int and not isinstance(value, int):
        raise CharlmError(f"{where}: {what} must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise CharlmError(f"{where}: {what} must be finite, got {value!r}")
    low_ok = opt.low is None or (value > opt.low if opt.low_open else value >= opt.low)
    high_ok = opt.high is None or (value < opt.high if opt.high_open else value <= opt.high)
    if not (low_ok and high_ok):
        lo = "(" if opt.low_open else "["
        hi = ")" if opt.high_open else "]"
        raise CharlmError(f"{where}: {what} {value!r} is outside {lo}{opt.low:g}, {opt.high:g}{hi}")
    return opt.kind(value)


def parse_param(name: str, entry: Any, source: str = "space") -> Param:
    """One entry of a space file, checked: known option, one form, right types, legal range."""
    where = _where(source, name)
    if name not in OPTIONS:
        raise CharlmError(f"{source}: unknown option {name!r} (options: {', '.join(OPTIONS)})")
    opt = OPTIONS[name]
    if not isinstance(entry, dict):
        raise CharlmError(f"{where} must be a table such as {{ choices = [...] }}, "
                          f"{{ low = .., high = .. }} or {{ value = .. }}")
    keys = set(entry)
    unknown = keys - {"choices", "low", "high", "log", "step", "value"}
    if unknown:
        raise CharlmError(f"{where}: unknown key {sorted(unknown)[0]!r} (keys: choices, low, "
                          "high, log, step, value)")
    forms = [f for f in ("choices", "low", "value") if f in keys]
    if "high" in keys and "low" not in keys:
        forms.append("high")
    if len(forms) != 1:
        raise CharlmError(f"{where} needs exactly one of: choices, low and high, value")
    if "choices" in keys:
        if keys - {"choices"}:
            raise CharlmError(f"{where}: choices takes no other keys")
        choices = entry["choices"]
        if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES:
            raise CharlmError(f"{where}: choices must be a list of 1 to {MAX_CHOICES} values")
        typed = tuple(_typed(c, opt, where, "choice") for c in choices)
        if len(set(typed)) != len(typed):
            raise CharlmError(f"{where}: choices repeat a value")
        return Param(name, choices=typed)
    if "value" in keys:
        if keys - {"value"}:
            raise CharlmError(f"{where}: value takes no other keys")
        return Param(name, value=_typed(entry["value"], opt, where, "value"))
    if opt.kind is str:
        raise CharlmError(f"{where}: {name} takes choices or a value, not a range")
    if "high" not in keys:
        raise CharlmError(f"{where}: low needs a high")
    low = _typed(entry["low"], opt, where, "low")
    high = _typed(entry["high"], opt, where, "high")
    if not low < high:
        raise CharlmError(f"{where}: low ({low}) must be below high ({high})")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise CharlmError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise CharlmError(f"{where}: a log range needs low > 0")
    step = entry.get("step")
    if step is not None:
        if log:
            raise CharlmError(f"{where}: a range takes log or step, not both")
        step = _typed(step, replace(opt, low=0.0, low_open=True, high=None), where, "step")
    return Param(name, low=low, high=high, log=log, step=step)


def load_space(path: Path | None) -> dict[str, Param]:
    """The default space, with a TOML file's entries (if any) in place of the default's."""
    space = dict(DEFAULT_SPACE)
    if path is None:
        return space
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPACE_BYTES:
            raise CharlmError(f"{path}: a space file is at most {MAX_SPACE_BYTES // 1024} KB")
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CharlmError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise CharlmError(f"{path}: not valid UTF-8") from None
    for name, entry in table.items():
        space[name] = parse_param(name, entry, str(path))
    return space


def space_json(space: dict[str, Param]) -> str:
    """The space as canonical JSON: what a study remembers, to refuse another space."""
    return json.dumps({n: space[n].to_dict() for n in sorted(space)}, sort_keys=True)


def suggest(trial, space: dict[str, Param]) -> dict[str, Any]:
    """The trial's options (a dict of `charlm train` option names, as fields, to values)."""
    out = {}
    for name, p in space.items():
        opt = OPTIONS[name]
        if p.choices:
            out[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.low is not None and opt.kind is int:
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log,
                                          step=int(p.step or 1))
        elif p.low is not None:
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        else:
            out[name] = p.value
    return out


def largest_batch(space: dict[str, Param]) -> tuple[int, int]:
    """The largest batch_size and seq_len the space can draw (the corpus must fill them)."""

    def top(name: str, default: int) -> int:
        p = space.get(name)
        if p is None:
            return default
        if p.choices:
            return max(p.choices)
        return int(p.high) if p.low is not None else p.value

    return top("batch_size", TrainConfig.batch_size), top("seq_len", TrainConfig.seq_len)
