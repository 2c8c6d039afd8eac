"""Which units of a model can be read as the states of a Reber automaton (`charlm reber units`).

The model reads fresh strings of the grammar as `charlm eval` does (one stream, "\\n" between
strings, from the zero state). After each character we know the automaton's state, and each
unit has a cell value c. For every state s (and, in the embedded grammar, every inner state k
on either branch) we ask how well one threshold on c tells the steps in s from all the others,
in either direction: the balanced accuracy, the mean of the two classes' hit rates, 0.5 for a
unit that knows nothing of s and 1 for a unit that is s. A unit reads as the state it tells
best, and counts as readable at READABLE or above. Some states only one symbol leads into
("start" after "\\n"): a unit for those may be a mere input detector, and they are marked.
In the embedded grammar the long-range memory is scored apart: "the branch is T", on the steps
from the string's second letter to its end.

c is rounded to RESOLUTION first, so that what a unit leaks at the scale of a shut gate
(4.5e-5 in the handmade model) is not mistaken for what it shows.
"""

from dataclasses import dataclass

import numpy as np

from charlm import reber
from charlm.errors import CharlmError
from charlm.model import CharLSTM
from charlm.vocab import Vocab

READABLE = 0.95  # a unit reads as a feature at this balanced accuracy or above
RESOLUTION = 0.01  # c is rounded to this first: a difference a reader cannot see is not read


@dataclass
class UnitReading:
    layer: int
    unit: int
    state: str  # the state it tells best from the others
    accuracy: float  # balanced accuracy of that
    by_input: bool  # the state is the one its incoming symbol always leads to
    branch: float | None  # embedded: balanced accuracy of "the branch is T"

    @property
    def readable(self) -> bool:
        return self.accuracy >= READABLE


def state_name(state) -> str:
    if isinstance(state, tuple):  # the embedded automaton's inner states: (branch, k)
        return f"inner {state[1]} after {state[0]}"
    return f"state {state}" if isinstance(state, int) else str(state)


def walk(text: str, grammar: str) -> list:
    """The automaton's state after each character of a stream of strings."""
    auto, start, _ = reber.AUTOMATA[grammar]
    states, s = [], None
    for ch in text:
        s = start if ch == reber.NEWLINE else auto[s][ch]
        states.append(s)
    return states


def state_features(text: str, grammar: str) -> dict[str, tuple[np.ndarray, bool]]:
    """state name -> (where the automaton is in it, whether its one incoming symbol says so)."""
    states, chars = walk(text, grammar), np.array(list(text))
    named = {state_name(q): np.array([x == q for x in states]) for q in dict.fromkeys(states)}
    if grammar == "embedded-reber":  # inner states on either branch, as the handmade units
        for k in sorted({x[1] for x in states if isinstance(x, tuple)}):
            named[f"inner {k}"] = np.array([isinstance(x, tuple) and x[1] == k for x in states])
    out = {}
    for name, holds in named.items():
        led_by = np.isin(chars, list(set(chars[holds])))  # steps after its incoming symbols
        out[name] = (holds, bool(holds[led_by].all()))
    return out


def branch_feature(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Embedded grammar: (the branch is T, the branch is known) at each step: known from the
    string's second letter to its end (inner states carry it; end and accept keep it)."""
    branch, known, current = [], [], None
    for x in walk(text, "embedded-reber"):
        if isinstance(x, tuple):
            current = x[0]
        elif x in ("start", "branch"):
            current = None
        branch.append(current == "T")
        known.append(current is not None)
    return np.array(branch), np.array(known)


def balanced_accuracy(v: np.ndarray, holds: np.ndarray) -> float:
    """The best (TPR + TNR) / 2 over thresholds on v, either side of it taken as positive."""
    pos, neg = int(holds.sum()), int((~holds).sum())
    if pos == 0 or neg == 0:
        return 0.5
    order = np.argsort(v, kind="stable")
    v, holds = v[order], holds[order]
    cut = np.flatnonzero(np.r_[v[1:] != v[:-1], True])  # the last step of each distinct value
    tp_below, tn_below = np.cumsum(holds)[cut], np.cumsum(~holds)[cut]
    above = (pos - tp_below) / pos + tn_below / neg  # "above the cut holds"
    below = tp_below / pos + (neg - tn_below) / neg  # "at or below the cut holds"
    return float(max(above.max(), below.max()) / 2)


def read_units(model: CharLSTM, itos: list[str], grammar: str, strings: list[str]
               ) -> list[UnitReading]:
    """Every unit of every layer: the state its cell value c tells best, and how well."""
    if grammar not in reber.GRAMMARS:
        raise CharlmError(f"grammar must be one of {', '.join(reber.GRAMMARS)}, got {grammar!r}")
    if model.config.cell not in ("lstm", "peephole", "coupled"):
        raise CharlmError(f"a {model.config.cell} has no cell state c to read")
    missing = sorted(set(reber.ALPHABET + reber.NEWLINE) - set(itos))
    if missing:
        raise CharlmError(f"the model's vocabulary lacks {', '.join(map(repr, missing))}: it "
                          "was not made for a Reber grammar")
    text = reber.NEWLINE + reber.NEWLINE.join(strings) + reber.NEWLINE
    idx = np.array([Vocab(list(itos)).encode(text)], np.int64)
    feats = state_features(text, grammar)
    branch, known = branch_feature(text) if grammar == "embedded-reber" else (None, None)
    out = []
    for layer, acts in enumerate(model.activations(idx)):
        c = np.round(acts["c"][0].astype(np.float64) / RESOLUTION)  # (T, H), in steps
        for unit in range(c.shape[1]):
            scores = {name: balanced_accuracy(c[:, unit], holds)
                      for name, (holds, _) in feats.items()}
            best = max(scores, key=scores.get)
            out.append(UnitReading(
                layer, unit, best, scores[best], feats[best][1],
                None if branch is None else balanced_accuracy(c[known, unit], branch[known])))
    return out
