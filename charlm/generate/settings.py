"""What a stream is asked for and gives back: settings, tokens, completions, distributions."""

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from charlm.errors import CharlmError
from charlm.generate.draw import entropy
from charlm.limits import MAX_INT64


@dataclass(frozen=True)
class SampleSettings:
    """How a stream draws its characters; invalid values raise CharlmError on construction."""

    temperature: float = 1.0  # divides the logits; 0 is greedy (argmax)
    top_k: int = 0  # keep only the k most probable characters; 0 keeps all
    top_p: float = 1.0  # nucleus: keep the fewest most probable characters with mass >= top_p
    seed: int | None = None  # None draws a fresh one (reported back, so a run can be repeated)
    max_new_chars: int = 500  # characters to draw at most
    stop: tuple[str, ...] = ()  # end at the first of these, which is left out of the text
    top_n: int = 0  # report each character's n most probable alternatives too

    def __post_init__(self) -> None:
        # a single string is one stop string, not a set of one-character ones
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        t = self.temperature
        if not _is_real(t) or not math.isfinite(t) or t < 0:
            raise CharlmError(f"temperature must be a finite number >= 0, got {t!r}")
        # the kernels keep counts in int64: a larger one would overflow there, not here
        if not _is_int(self.top_k) or not 0 <= self.top_k <= MAX_INT64:
            raise CharlmError(f"top_k must be an integer in [0, 2**63) (0 keeps all), "
                              f"got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise CharlmError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            raise CharlmError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if not _is_int(self.max_new_chars) or not 0 <= self.max_new_chars <= MAX_INT64:
            raise CharlmError(f"max_new_chars must be an integer in [0, 2**63), "
                              f"got {self.max_new_chars!r}")
        if not all(isinstance(s, str) and s for s in stop):
            raise CharlmError(f"stop strings must be non-empty strings, got {stop!r}")
        if not _is_int(self.top_n) or not 0 <= self.top_n <= MAX_INT64:
            raise CharlmError(f"top_n must be an integer in [0, 2**63), got {self.top_n!r}")


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class Token(NamedTuple):
    """One generated character and what the model thought of it.

    logprob and top are under the model's own distribution softmax(logits): temperature 1,
    before top-k and top-p, so they measure the model whatever the sampling settings.
    """

    char: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # top_n (char, logprob), most probable first


class Completion(NamedTuple):
    text: str
    tokens: list[Token]
    finish_reason: str
    seed: int


@dataclass
class Distribution:
    """The next-character distribution after a prompt."""

    probs: np.ndarray  # (V,) float64 softmax(logits / temperature); one-hot at temperature 0
    itos: list[str]
    temperature: float

    @property
    def entropy(self) -> float:
        """H = -sum_v p_v log p_v, in nats."""
        return entropy(self.probs)

    def top(self, n: int | None = None) -> list[tuple[str, float]]:
        """The n most probable (char, prob), most probable first (all of them for None)."""
        order = np.argsort(-self.probs, kind="stable")[:n]
        return [(self.itos[v], float(self.probs[v])) for v in order]
