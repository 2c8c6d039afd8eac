"""The Reber grammar and the embedded Reber grammar: strings, legal next symbols, and scoring.

The Reber grammar (Reber 1967; Cleeremans, Servan-Schreiber & McClelland 1989) is a small
finite automaton over B, T, P, S, X, V, E; the embedded grammar wraps a Reber string as
B T <reber> T E or B P <reber> P E, so predicting the second-to-last symbol means remembering
the second one across the whole inner string (Hochreiter & Schmidhuber 1997).

Line boundaries: a corpus holds one string per line, and a model trained on it reads one
continuous stream "...E\\nB...", carrying its state across lines. Scoring does the same: the
strings are joined by newlines into streams that start with "\\n", read from the zero state,
so after "\\n" the only legal symbol is B and after a string's last E it is "\\n". A string is
correct when the model's prediction is right at every position from the "\\n" before it to its
E (predicting the "\\n" after it).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from charlm.errors import CharlmError
from charlm.vocab import Vocab

NEWLINE = "\n"
ALPHABET = "BEPSTVX"  # the grammar's symbols; with "\n" between strings, what a model sees
GRAMMARS = ("reber", "embedded-reber")
THRESHOLD = 0.1  # a character is predicted when its probability is above this

# the Reber automaton: state -> {symbol: next state}; 7 accepts, both ways out are equally likely
REBER = {
    0: {"B": 1},
    1: {"T": 2, "P": 3},
    2: {"S": 2, "X": 4},
    3: {"T": 3, "V": 5},
    4: {"X": 3, "S": 6},
    5: {"P": 4, "V": 6},
    6: {"E": 7},
    7: {},
}
ACCEPT = 7


def embedded_automaton() -> dict:
    """The embedded grammar as one automaton: B, then T or P, a Reber string, the same T or P,
    then E. Inner states are (branch, reber state), so the branch is remembered."""
    auto: dict = {"start": {"B": "branch"}, "branch": {"T": ("T", 0), "P": ("P", 0)},
                  "end": {"E": "accept"}, "accept": {}}
    for branch in "TP":
        for s, moves in REBER.items():
            auto[(branch, s)] = {sym: (branch, t) for sym, t in moves.items()}
        auto[(branch, ACCEPT)] = {branch: "end"}
    return auto


AUTOMATA = {"reber": (REBER, 0, ACCEPT), "embedded-reber": (embedded_automaton(), "start",
                                                            "accept")}


def _automaton(grammar: str):
    if grammar not in AUTOMATA:
        raise CharlmError(f"grammar must be one of {', '.join(GRAMMARS)}, got {grammar!r}")
    return AUTOMATA[grammar]


def generate(n: int, seed: int, grammar: str = "reber") -> list[str]:
    """n strings of the grammar, each way out of a state taken with equal probability."""
    auto, state0, _ = _automaton(grammar)
    moves = {state: list(m.items()) for state, m in auto.items()}  # [(symbol, next state)]
    rng = np.random.default_rng(seed)
    u, k = rng.random(4096), 0  # uniforms drawn in blocks: one call per draw is slow
    out = []
    for _ in range(n):
        state, chars = state0, []
        while moves[state]:
            ways = moves[state]
            if k == len(u):
                u, k = rng.random(4096), 0
            sym, state = ways[int(u[k] * len(ways))]
            k += 1
            chars.append(sym)
        out.append("".join(chars))
    return out


def legal_next(text: str, grammar: str = "reber") -> list[frozenset[str]]:
    """After each character of a stream of newline-separated strings, the set of symbols
    that may come next: {B} after "\\n", {"\\n"} after a string's end, else the automaton's."""
    auto, state0, accept = _automaton(grammar)
    state, out = None, []
    for k, ch in enumerate(text):
        if ch == NEWLINE:
            if state not in (None, accept):
                raise CharlmError(f"a string ends before the grammar allows, at {k}")
            state = state0
            out.append(frozenset(auto[state]))
            continue
        if state is None or ch not in auto[state]:
            raise CharlmError(f"{text[max(0, k - 20): k + 1]!r} is not in the {grammar} grammar")
        state = auto[state][ch]
        out.append(frozenset(auto[state]) if state != accept else frozenset(NEWLINE))
    return out


# --------------------------------------------------------------------------------------------
# scoring a predictor


# texts -> for each text, (len(text), V) probabilities of the next character after each one
Predictor = Callable[[list[str]], list[np.ndarray]]


@dataclass
class GrammarScore:
    grammar: str
    n_strings: int
    accuracy: float  # fraction of strings predicted right at every position
    position_accuracy: float  # fraction of positions predicted right
    long_range: float | None  # embedded: mean probability of the right second-to-last symbol
    long_range_argmax: float | None  # embedded: fraction where it is the more probable of T, P
    threshold: float


def streams_of(strings: Sequence[str], n_streams: int) -> list[list[str]]:
    """Deal the strings round-robin into n_streams lists (every stream keeps their order)."""
    n = max(1, min(n_streams, len(strings)))
    return [list(strings[k::n]) for k in range(n)]


def score(predict: Predictor, itos: Sequence[str], strings: Sequence[str],
          grammar: str = "reber", threshold: float = THRESHOLD,
          n_streams: int = 32) -> GrammarScore:
    """How well predict knows the grammar, on these strings (see the module's docstring).

    At each position the predicted set is {v : p_v > threshold}; it must equal the legal set.
    """
    if not strings:
        raise CharlmError("no strings to score")
    missing = sorted(set(ALPHABET + NEWLINE) - set(itos))
    if missing:
        raise CharlmError(f"the model's vocabulary lacks {', '.join(map(repr, missing))}: it "
                          "was not trained on a Reber corpus")
    stoi = Vocab(list(itos)).stoi
    embedded = grammar == "embedded-reber"
    groups = streams_of(strings, n_streams)
    texts = [NEWLINE + NEWLINE.join(g) + NEWLINE for g in groups]
    probs = predict(texts)
    right_strings = right_positions = positions = 0
    long_p, long_argmax = [], []
    for group, text, p in zip(groups, texts, probs, strict=True):
        want = np.zeros(p.shape, bool)
        for k, legal in enumerate(legal_next(text, grammar)):
            want[k, [stoi[ch] for ch in legal]] = True
        right = ((p > threshold) == want).all(axis=1)  # the predicted set is the legal set
        right_positions += int(right[:-1].sum())  # the last "\n" starts no string
        positions += len(text) - 1
        pos = 0  # the "\n" before the current string
        for s in group:
            # from "\n" (predicting B) to the string's E (predicting "\n")
            right_strings += bool(right[pos : pos + len(s) + 1].all())
            if embedded:
                # the answer after the string's third-to-last symbol is its second one
                k = pos + len(s) - 2
                yes, no = stoi[s[1]], stoi["P" if s[1] == "T" else "T"]
                long_p.append(p[k, yes])
                long_argmax.append(p[k, yes] > p[k, no])
            pos += len(s) + 1
    return GrammarScore(
        grammar=grammar, n_strings=len(strings), accuracy=right_strings / len(strings),
        position_accuracy=right_positions / positions,
        long_range=float(np.mean(long_p)) if embedded else None,
        long_range_argmax=float(np.mean(long_argmax)) if embedded else None,
        threshold=threshold)


def model_predictor(model, itos: Sequence[str], seq_len: int = 100) -> Predictor:
    """The predictor of a CharLSTM with vocabulary itos: the texts read side by side from the
    zero state (shorter ones padded with newlines at the end), in windows of seq_len with the
    state carried from one to the next, as in training and `charlm eval`."""
    vocab = Vocab(list(itos))

    def predict(texts: list[str]) -> list[np.ndarray]:
        T = max(len(t) for t in texts)
        idx = np.full((len(texts), T), vocab.stoi[NEWLINE], np.int64)
        for n, text in enumerate(texts):
            idx[n, : len(text)] = vocab.encode(text)
        state = model.zero_state(len(texts))
        out = np.empty((len(texts), T, vocab.vocab_size))
        for t0 in range(0, T, seq_len):
            window = idx[:, t0 : t0 + seq_len]
            B, Tw = window.shape
            z = model.forward(window, state).logits.reshape(Tw, B, -1).astype(np.float64)
            e = np.exp(z - z.max(axis=-1, keepdims=True))
            out[:, t0 : t0 + Tw] = (e / e.sum(axis=-1, keepdims=True)).transpose(1, 0, 2)
        return [out[n, : len(text)] for n, text in enumerate(texts)]

    return predict


def score_model(model, itos: Sequence[str], strings: Sequence[str], grammar: str = "reber",
                threshold: float = THRESHOLD, n_streams: int = 32,
                seq_len: int = 100) -> GrammarScore:
    """score() with a CharLSTM (vocabulary itos) as the predictor."""
    return score(model_predictor(model, itos, seq_len), itos, strings, grammar, threshold,
                 n_streams)
