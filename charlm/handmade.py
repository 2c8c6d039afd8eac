"""An LSTM whose weights are set by hand to predict the Reber grammars: no training, a construction.

The model is an ordinary charlm LSTM (one layer, embedding = the one-hot code of the 8 symbols
"\\n" B E P S T V X) read by the ordinary forward pass, so every equation is the README's:

    z_t = x_t W + h_{t-1} U + b          (x_t = E[char] = the one-hot row: E is the identity)
    i, f, o = σ(z^i), σ(z^f), σ(z^o)     g = tanh(z^g)
    c_t = f ⊙ c_{t-1} + i ⊙ g             h_t = o ⊙ tanh(c_t)          logits = h_t W_y + b_y

One unit per state of the automaton (for the embedded grammar, one per outer state and one per
inner Reber state, shared by both branches, plus one memory). A unit's memory c is 1 while the
automaton is in its state and 0 otherwise, so its output h is tanh(1) ≈ 0.76 or 0. The parts,
named by role, and every weight:

- K = 10 is the one scale. A gate is open at σ(+K) = 1 - 4.5e-5 and shut at σ(-K) = 4.5e-5;
  tanh(±K) = ±1 to 8 digits. A symbol contributes its W row, a previous state its h ≈ tanh(1)
  times its U row, so a state's weight is 2K / tanh(1) where a symbol's is 2K: equal votes.
- writer (candidate g): b^g = +K, so g = 1: a unit that writes, writes "I am the state".
- write filter (input gate i): opens when the symbol read and the state before agree, an AND of
  two inputs and a threshold. W^i[sym] = 2K for each symbol of an edge into the state,
  U^i[pred] = 2K / tanh(1) for each state such an edge leaves, b^i = -3K: both agree -> +K
  (open), one -> -K, neither -> -3K (shut). Where the symbol alone says where the automaton
  goes (B, E and "\\n" in the Reber grammar; "\\n" in the embedded one, which also starts every
  stream from the zero state), the symbol is enough: W^i[sym] = 2K, b^i = -K. The builder checks
  that for every edge of the automaton exactly the right unit opens.
- eraser (forget gate f): shut, b^f = -K, so every symbol erases the old state, except a
  self-loop's symbol, which keeps the state it loops on: W^f[sym] = 2K (S in state 2, T in
  state 3: +K, open). Keeping a unit that is off keeps 0, so the eraser needs no AND.
- read filter (output gate o): b^o = +K, always open: each unit shows its state.
- reader (head): W_y[state, sym] = K / tanh(1) for each symbol legal after the state, b_y = 0:
  the legal symbols' logits are K, the others' 0, so one legal symbol gets 1 - 3e-4, two get
  0.5 each, and an illegal one at most 4.5e-5, far from any threshold between.
- U has no other weights, W no other rows: units only read the previous state.

The embedded grammar needs the second letter (T or P) at the end of the inner string. One more
unit, the memory, holds it as c = +1 (T) or -1 (P):
- its writer reads the letter: W^g[T] = +K, W^g[P] = -K, so g = ±1;
- its write filter opens after the branch state: U^i[branch] = 2K / tanh(1), b^i = -K;
- its eraser holds (b^f = +K: f = 1 - 4.5e-5, 0.2 % lost over 50 symbols) except at that same
  step, U^f[branch] = -2K / tanh(1), so the new letter replaces the old;
- its read filter opens only when the inner E arrives from inner state 6, an AND as above
  (W^o[E] = 2K, U^o[inner 6] = 2K / tanh(1), b^o = -3K): the memory is shown exactly when the
  remembered letter is next, and hidden while T and P mean other things;
- its reader: W_y[memory, T] = +K / tanh(1), W_y[memory, P] = -K / tanh(1). Inner state 7 (after
  the inner E) has no reader weights of its own: it knows only that the letter comes next.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm import reber
from charlm.checkpoint import save_checkpoint
from charlm.model import CharLSTM, ModelConfig
from charlm.vocab import Vocab

K = 10.0  # the one scale: σ(±K) is 1 - 4.5e-5 or 4.5e-5
H1 = math.tanh(1.0)  # an active unit's output: c = 1 shown through an open read filter
VOCAB = Vocab.from_text(reber.ALPHABET + reber.NEWLINE)  # as `charlm train` builds it
I, F, G, O = range(4)  # the gate blocks, side by side in this order
MEMORY = "memory"


@dataclass
class Machine:
    """The automaton as the LSTM sees it: state units, edges, and what each state predicts."""

    states: list  # one unit each, in this order
    edges: list[tuple]  # (from, symbol, to); from None: from anywhere, even the zero state
    legal: dict  # state -> the symbols the head predicts after it
    branch: object = None  # embedded: the state after which the memory is written
    recall: object = None  # embedded: the state from which the inner E opens the memory


def reber_machine() -> Machine:
    """The Reber grammar's states 0..7, and "\\n" that starts every string."""
    edges = [(s, sym, t) for s, moves in reber.REBER.items() for sym, t in moves.items()]
    edges.append((None, reber.NEWLINE, 0))
    legal = {s: set(moves) for s, moves in reber.REBER.items()}
    legal[reber.ACCEPT] = {reber.NEWLINE}
    return Machine(list(reber.REBER), edges, legal)


def embedded_machine() -> Machine:
    """The embedded grammar with one inner Reber automaton for both branches (which branch is
    the memory's job): start -B-> branch -T|P-> inner 0 .. inner 7 -T|P-> end -E-> accept."""
    inner = {s: f"inner {s}" for s in reber.REBER}
    edges = [(inner[s], sym, inner[t]) for s, moves in reber.REBER.items()
             for sym, t in moves.items()]
    edges += [(None, reber.NEWLINE, "start"), ("start", "B", "branch"),
              ("branch", "T", inner[0]), ("branch", "P", inner[0]),
              (inner[reber.ACCEPT], "T", "end"), (inner[reber.ACCEPT], "P", "end"),
              ("end", "E", "accept")]
    legal = {inner[s]: set(moves) for s, moves in reber.REBER.items()}
    legal.update({"start": {"B"}, "branch": {"T", "P"}, "end": {"E"},
                  "accept": {reber.NEWLINE}})  # inner 7: none of its own, the memory's
    states = ["start", "branch", *inner.values(), "end", "accept"]
    return Machine(states, edges, legal, branch="branch", recall=inner[6])


def unit_name(machine: Machine, s) -> str:
    if s == MEMORY:
        return "memory: the second letter, +1 T, -1 P"
    nxt = "/".join(sorted(machine.legal[s])).replace(reber.NEWLINE, "\\n")
    label = f"state {s}" if isinstance(s, int) else s
    return f"{label}: {nxt or 'the remembered T/P'} next"


def build(embedded: bool = False) -> tuple[CharLSTM, list[str]]:
    """The handmade model and its unit names (see the module's docstring for every weight)."""
    machine = embedded_machine() if embedded else reber_machine()
    units = machine.states + ([MEMORY] if embedded else [])
    H, V, stoi = len(units), VOCAB.vocab_size, VOCAB.stoi
    u = {s: k for k, s in enumerate(units)}
    cfg = ModelConfig(vocab_size=V, n_embd=V, n_hidden=H, n_layer=1, dropout=0.0, cell="lstm")
    model = CharLSTM(cfg)
    model.theta[:] = 0
    p = {name: np.zeros(a.shape) for name, a in model.params.items()}  # float64 while building
    p["E"][:] = np.eye(V)  # x_t is the one-hot code of the symbol
    W, U, b, Wy = p["W0"], p["U0"], p["b0"], p["Wy"]

    def col(gate: int, s) -> int:
        return gate * H + u[s]

    state_weight = 2 * K / H1  # a previous state's vote, as large as a symbol's through h ≈ H1
    for s in machine.states:
        into = [(src, sym) for src, sym, dst in machine.edges if dst == s and src != s]
        syms = {sym for _, sym in into}
        # the symbol alone says where the automaton goes: no need to ask the previous state
        alone = all(dst == s for _, sym, dst in machine.edges if sym in syms)
        for sym in syms:
            W[stoi[sym], col(I, s)] = 2 * K
        if alone:
            b[col(I, s)] = -K
        else:
            for src, _ in into:
                U[u[src], col(I, s)] = state_weight
            b[col(I, s)] = -3 * K
        for src, sym, dst in machine.edges:  # a self-loop's symbol keeps the state
            if src == dst == s:
                W[stoi[sym], col(F, s)] = 2 * K
        b[col(F, s)] = -K
        b[col(G, s)] = K
        b[col(O, s)] = K
        for sym in machine.legal[s]:
            Wy[u[s], stoi[sym]] = K / H1
    if embedded:
        m, T, P = MEMORY, stoi["T"], stoi["P"]
        W[T, col(G, m)], W[P, col(G, m)] = K, -K
        U[u[machine.branch], col(I, m)], b[col(I, m)] = state_weight, -K
        U[u[machine.branch], col(F, m)], b[col(F, m)] = -state_weight, K
        W[stoi["E"], col(O, m)], U[u[machine.recall], col(O, m)] = 2 * K, state_weight
        b[col(O, m)] = -3 * K
        Wy[u[m], T], Wy[u[m], P] = K / H1, -K / H1
    check(machine, p, u, H)
    for name, a in p.items():
        model.params[name][:] = a
    return model, [unit_name(machine, s) for s in units]


def check(machine: Machine, p: dict, u: dict, H: int) -> None:
    """Every edge of the automaton, read from its state's one-hot h, leaves exactly its target
    on: the target's write filter opens (or, on a self-loop, its eraser keeps it), no other
    write filter opens, and the state left is erased (a unit already off may keep its 0)."""
    for src, sym, dst in machine.edges:
        h = np.zeros(H)
        if src is not None:
            h[u[src]] = H1
        z = p["E"][VOCAB.stoi[sym]] @ p["W0"] + h @ p["U0"] + p["b0"]
        for s in machine.states:
            write, keep = z[I * H + u[s]], z[F * H + u[s]]
            if s == dst and src != dst:
                assert write >= K - 1e-9, (src, sym, s)
            else:
                assert write <= -K + 1e-9, (src, sym, s)
            if s == src:
                assert (keep >= K - 1e-9) if s == dst else (keep <= -K + 1e-9), (src, sym, s)
            elif src is None and s != dst:  # any state may have been on: all are erased
                assert keep <= -K + 1e-9, (src, sym, s)


def write(path: Path | str, embedded: bool = False) -> list[str]:
    """Build the handmade model and save it as a checkpoint at path; returns its unit names."""
    model, names = build(embedded)
    grammar = "embedded-reber" if embedded else "reber"
    save_checkpoint(path, model, VOCAB.itos, {
        "unit_names": [names],
        "corpus": f"none: {grammar} by hand (charlm reber handmade)"})
    return names
