"""Weights laid out for the step kernels: packed once per model, shared read-only.

- layer 0's input part is the table E W0 + b0 (one row per character, since x_t = E[char]);
- each layer's G*H columns (G gate blocks: 4 for an LSTM) are regrouped into blocks of BLOCK
  units holding [i | f | g | o] of those units, so a run of columns is a set of whole units
  that a thread can finish (matrix product and cell) without the others;
- the units are split into parts, one per thread, and each part's columns of W and U are
  stored as panels of 16 columns (gemm.as_panels), the layout the micro-kernel reads.
"""

import importlib
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numba as nb
import numpy as np

from charlm.cells import CELLS, KIND
from charlm.errors import CharlmError
from charlm.gemm import PANEL, as_panels
from charlm.generate import kernels as GK
from charlm.kernels import BLOCK
from charlm.model import CharLSTM
from charlm.vocab import Vocab

# about one core's L2: weights beyond it stream from L3, which two cores read faster than one
PART_BYTES = 1 << 20


def block_columns(H: int, G: int = 4) -> np.ndarray:
    """Permutation of the G*H gate columns into the packed layout: new[:, n] = old[:, perm[n]].

    Units are grouped in blocks of BLOCK (the last one may be shorter); the block of units
    u0 .. u0+s-1 occupies columns G u0 .. G (u0+s) - 1 as [i (s) | f (s) | g (s) | o (s)] for
    an LSTM (G = 4), and likewise with any G gate blocks.
    """
    perm = np.empty(G * H, np.int64)
    for u0 in range(0, H, BLOCK):
        s = min(BLOCK, H - u0)
        for q in range(G):  # gate blocks, e.g. i, f, g, o
            perm[G * u0 + q * s : G * u0 + (q + 1) * s] = q * H + u0 + np.arange(s)
    return perm


def unit_bounds(H: int, parts: int) -> np.ndarray:
    """Unit boundaries (parts+1,) splitting H units into parts of whole blocks, near equal."""
    n_blocks = -(-H // BLOCK)
    cuts = [min(H, round(p * n_blocks / parts) * BLOCK) for p in range(parts + 1)]
    return np.array(cuts, np.int64)


def pack_panels(M: np.ndarray, bounds: np.ndarray, G: int = 4) -> np.ndarray:
    """(K, G*H) packed columns -> (P, n_panels, K, PANEL): part p's columns G u0 .. G u1 as
    panels (see gemm.as_panels), as many for every part as the widest needs."""
    widths = G * np.diff(bounds)
    n_panels = max(-(-int(widths.max()) // PANEL), 1)
    return np.stack([as_panels(M[:, G * u0 : G * u0 + w], n_panels)
                     for u0, w in zip(bounds[:-1], widths, strict=True)])


class Primed(NamedTuple):
    """A stream's state after reading a prompt, away from any batch (PackedModel.read)."""

    x: int  # the prompt's last character, which the first step feeds (-1: empty prompt)
    h: np.ndarray  # (L, H)
    c: np.ndarray  # (L, H), or (L, 0) for cells without a cell state


def threadsafe_pool() -> bool:
    """Whether numba's thread pool will be tbb or omp (workqueue is not thread-safe, and slow).

    Decided from the configuration, without starting the pool, which is not fork-safe.
    """
    layer = str(nb.config.THREADING_LAYER).lower()
    if layer in ("tbb", "omp", "safe", "threadsafe", "forksafe"):
        return True  # numba refuses to run rather than fall back
    if layer == "workqueue":
        return False
    for name in nb.config.THREADING_LAYER_PRIORITY:
        if name == "workqueue":
            return False
        try:
            importlib.import_module(f"numba.np.ufunc.{name}pool")
            return True
        except ImportError:
            continue
    return False


def default_threads(weight_bytes: int) -> int:
    """One part per PART_BYTES of weights, at most one per numba thread, if the pool is safe."""
    if not threadsafe_pool():
        return 1
    return max(1, min(nb.config.NUMBA_NUM_THREADS, weight_bytes // PART_BYTES))


class PackedModel:
    """A model's weights laid out for the step kernel (float32), built once, shared read-only.

    threads: parts each layer is split into, run one per thread; None gives one part per
    PART_BYTES of weights (what outgrows a core's L2), at most one per numba thread: 1 for
    2x128, 2 for 2x512 on two cores. Results do not depend on it, nor on whether the parts
    run on one thread or several, so each Batch picks, as it goes, whichever of the threaded
    and the serial kernel has been faster lately: on a busy machine a fork-join step waits for
    a descheduled thread and can be many times slower than one core alone. A server either
    runs all its streams in one Batch driven by one Python thread (which then gets every core
    from threads), or drives streams from several Python threads with threads=1 (the kernels
    release the GIL).
    """

    def __init__(self, model: CharLSTM, itos: Sequence[str], threads: int | None = None) -> None:
        cfg = model.config
        cell = CELLS[cfg.cell]
        L, H, V, G = cfg.n_layer, cfg.n_hidden, cfg.vocab_size, cell.blocks
        if len(itos) != V:
            raise CharlmError(f"itos has {len(itos)} characters but the model's vocabulary {V}")
        if any(len(ch) != 1 for ch in itos):
            raise CharlmError("every entry of itos must be a single character")
        self.vocab = Vocab(list(itos))
        self.itos, self.stoi = self.vocab.itos, self.vocab.stoi
        self.config = cfg
        if threads is None:
            # what one step reads: U, W, the head, and a row of E W0 + b0
            nbytes = 4 * ((2 * L - 1) * H * G * H + (H + 1) * V + G * H)
            threads = default_threads(nbytes)
        if not isinstance(threads, numbers.Integral) or threads < 1:
            raise CharlmError(f"threads must be an integer >= 1, got {threads!r}")
        # mlstm and lnlstm need a layer's whole vector between products: one part a layer
        self.threads = 1 if cell.whole_layer else int(threads)
        bounds = unit_bounds(H, self.threads)
        p = {name: w.astype(np.float32) for name, w in model.params.items()}
        # mlstm: U's last block (U_m, h -> m) is a product of its own, W's last block (W_m)
        # rides along with the gates' input parts, its columns after theirs in unit order
        Gz = G - 1 if cell.multiplicative else G  # the gate blocks
        perm = block_columns(H, Gz)
        perm_in = np.concatenate([perm, np.arange(Gz * H, G * H)])
        # a cell that adds b itself (lnlstm) gets it with its extra tensors instead
        bias = {l: (np.zeros(G * H, np.float32) if cell.own_bias else p[f"b{l}"])
                for l in range(L)}
        U = np.stack([pack_panels(p[f"U{l}"][:, perm], bounds, Gz) for l in range(L)])
        Um = np.stack([as_panels(p[f"U{l}"][:, Gz * H :]) if cell.multiplicative
                       else np.zeros((0, 0, PANEL), np.float32) for l in range(L)])
        # layers above the first: input weights and biases (none for a single layer)
        Ws = [pack_panels(p[f"W{l}"][:, perm_in], bounds, G) for l in range(1, L)]
        W = np.stack(Ws) if Ws else np.zeros((0, *U.shape[1:]), np.float32)
        b = np.zeros((L - 1, G * H), np.float32)
        for l in range(1, L):
            b[l - 1] = bias[l][perm_in]
        # the cell's extra tensors per unit, row after row: the peepholes, the GRU's b_hn
        # (lnlstm: b first, then its gains and the cell's shift)
        rows = []
        for l in range(L):
            own = [p[f"b{l}"].reshape(-1, H)] if cell.own_bias else []
            rows.append(own + [p[f"{e.name}{l}"].reshape(-1, H) for e in cell.extras])
        n_rows = sum(r.shape[0] for r in rows[0])
        P = np.zeros((L, n_rows, H if n_rows else 0), np.float32)
        for l in range(L):
            if n_rows:
                P[l] = np.concatenate(rows[l])
        self.weights = GK.Weights(
            KIND[cfg.cell],
            # x_t = E[idx], so layer 0's input part x_t W0 + b0 is a row of E W0 + b0
            np.ascontiguousarray((p["E"] @ p["W0"] + bias[0])[:, perm_in]),
            U, W, b, P, as_panels(p["Wy"]), np.ascontiguousarray(p["by"]), bounds, Um)
        # per stream: cell-state units (gru and rnn keep none), and the step's accumulators z
        # (a cell that keeps h U apart from x W + b needs twice the gate columns; mlstm's
        # x W_m + b_m and h U_m need H columns each beside the gates')
        self.c_units = H if cell.has_c else 0
        self.z_width = ((2 if cell.split_recurrent else 1) * Gz * H
                        + (2 * H if cell.multiplicative else 0))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, drop_unknown: bool = False) -> np.ndarray:
        """Character indices of text.

        Characters outside the vocabulary raise CharlmError listing them, or are dropped with
        drop_unknown.
        """
        ids = self.vocab.encode(text, unknown="drop").astype(np.int64)
        if not drop_unknown and len(ids) < len(text):
            unknown = [ch for ch in dict.fromkeys(text) if ch not in self.stoi]
            listed = ", ".join(repr(ch) for ch in unknown)
            raise CharlmError(f"the prompt has characters that are not in the vocabulary: "
                              f"{listed} (drop them with drop_unknown)")
        return ids

    def read(self, prompt: str, drop_unknown: bool = False, threaded: bool = False) -> Primed:
        """Read prompt on the calling thread, with the serial kernel (which releases the GIL),
        or the threaded one.

        A server reads each request's prompt on the request's own thread and hands the
        result to Batch.add, so a long prompt never holds up the streams already running.
        The state is the one either kernel reaches, bit for bit.
        """
        idx = self.encode(prompt, drop_unknown)
        L, H = self.config.n_layer, self.config.n_hidden
        f32 = np.float32
        s = GK.State(np.zeros(1, np.int64), np.zeros((1, L, H), f32),
                     np.zeros((1, L, self.c_units), f32))
        h_new, z = np.zeros((1, L, H), f32), np.zeros((1, self.z_width), f32)
        prime = GK.prime_threads if threaded and self.threads > 1 else GK.prime
        prime(self.weights, idx, s, h_new, z)
        return Primed(int(s.x[0]), s.h[0], s.c[0])
