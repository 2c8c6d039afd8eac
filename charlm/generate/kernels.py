"""The step kernels of generation: every layer of a batch of streams, the head, and the draw.

One step of B streams, as the equations say it (the cell's own step is in its module):

    z^0 = (E W_0 + b_0)[x] + h^0 U_0        z^l = b_l + h^{l-1}_new W_l + h^l U_l
    h^l_new, c^l = cell(z^l, c^l)           logits = h^{L-1} W_y + b_y
    x <- draw(logits / temperature, top-k, top-p)

The kernels take a few named tuples: the packed Weights (see packing.PackedModel), each
stream's State (what it carries from step to step) and Draw (how it draws its characters),
and the Work arrays of a step. The matrix products are gemm.add_rows; `_threads` kernels run
groups of streams, or the parts of each layer's units, concurrently.

Every output element is computed by the same sequence of operations whatever the batch size,
the stream's slot or the number of parts (sums over rows run in row order; no reassociation),
so a stream's text does not depend on what else runs beside it.
"""

from typing import NamedTuple

import numba as nb
import numpy as np

from charlm.cells import cell_step
from charlm.cells.mlstm import mlstm_multiply
from charlm.gemm import add_rows
from charlm.generate.draw import EXACT, draw, uniform
from charlm.kernels import MATVEC


class Weights(NamedTuple):
    """A model packed for the step (float32; see packing.PackedModel)."""

    kind: int  # the cell's number in charlm.cells.CELLS
    EW: np.ndarray  # (V, G H) E W_0 + b_0: layer 0's input part per character, packed columns
    U: np.ndarray  # (L, parts, n_panels, H, 16) recurrent weights as panels, per part
    W: np.ndarray  # (L-1, parts, n_panels, H, 16) input weights of the upper layers
    b: np.ndarray  # (L-1, G H) their biases, packed
    P: np.ndarray  # (L, rows, H) the cell's extra tensors per unit (peepholes, b_hn), if any
    Wy: np.ndarray  # (n_panels, H, 16) the head's weights as panels
    by: np.ndarray  # (V,) the head's bias
    bounds: np.ndarray  # (parts+1,) unit boundaries of the parts (packing.unit_bounds)
    Um: np.ndarray  # (L, n_panels, H, 16) mlstm's U_m (h -> m) as panels; (L, 0, 0, 16) else


class State(NamedTuple):
    """What each of B streams carries from one step to the next."""

    x: np.ndarray  # (B,) the next input (-1: none, start from the zero state); the draw's output
    h: np.ndarray  # (B, L, H)
    c: np.ndarray  # (B, L, H), or (B, L, 0) for cells without a cell state


class Draw(NamedTuple):
    """How each of B streams draws its characters."""

    temperature: np.ndarray  # (B,) float64
    top_k: np.ndarray  # (B,) int64, 0: all
    top_p: np.ndarray  # (B,) float64
    key: np.ndarray  # (B,) uint64: the stream's random numbers (draw.stream_key)
    counter: np.ndarray  # (B,) uint64: numbers drawn so far; advanced by one a step


class Work(NamedTuple):
    """A step's workspaces and outputs."""

    h_new: np.ndarray  # (B, L, H) the new hidden state, committed once the layers are done
    z: np.ndarray  # (B, G H) the pre-activations (the GRU's: (B, 2 G H), h U apart)
    logits: np.ndarray  # (B, V) out: this step's logits
    p: np.ndarray  # (B, V) float64 workspace of the draw
    order: np.ndarray  # (B, V) int64 workspace of the draw
    logp: np.ndarray  # (B,) out: the drawn character's log-probability under softmax(logits)


@nb.njit(**MATVEC)
def add_input(w, layer, part, x, h_new, z, j0, j1):
    r"""z[:, j0:j1] = the input part of this layer's gates, for columns j0 .. j1 of one part.

    .. math::  z^0 = (E W_0 + b_0)[x]  \qquad  z^l = b_l + h^{l-1}_{new} W_l

    Streams without an input (x[n] < 0) keep whatever z held: their sums go unused.
    """
    for n in range(x.shape[0]):
        if x[n] < 0:
            continue
        if layer == 0:
            z[n, j0:j1] = w.EW[x[n], j0:j1]
        else:
            z[n, j0:j1] = w.b[layer - 1, j0:j1]
    if layer > 0:
        add_rows(h_new[:, layer - 1], w.W[layer - 1, part], z, j0, j1 - j0)


@nb.njit(**MATVEC)
def advance(w, layer, part, s, h_new, z):
    r"""One part of one layer (units u0 .. u1) for every stream with an input (x[n] >= 0).

    .. math::

        z^0 = (E W_0 + b_0)[x] + h^0 U_0  \qquad  z^l = b_l + h^{l-1}_{new} W_l + h^l U_l

    then the cell (charlm.cells.cell_step). A cell that keeps h U apart from x W + b (the
    GRU, whose candidate needs the two apart; lnlstm, which normalises them apart) has z twice
    as wide: h U goes in its second half. The multiplicative LSTM's gates read
    m = (x W_m + b_m) ⊙ (h U_m) instead of h: its z holds the gates (4H), then x W_m + b_m,
    where m is formed, then h U_m, and it runs as one part (m is needed whole).
    Reads s.h (the old state, every unit) and h_new[:, layer-1] (the layer below, complete);
    writes only this part's columns of z and units of s.c and h_new, so the parts of a layer
    can run concurrently. The sums of a stream without an input are computed too, and left
    unused: keeping the batch whole for the micro-kernel pays more than skipping the rare
    empty prompt.
    """
    u0, u1 = w.bounds[part], w.bounds[part + 1]
    GH = w.EW.shape[1]
    H = s.h.shape[2]
    G = GH // H  # blocks of the input part: 4 for an LSTM
    j0, j1 = G * u0, G * u1
    add_input(w, layer, part, s.x, h_new, z, j0, j1)
    if w.Um.shape[1] > 0:
        # mlstm (one part, the whole layer): m = (x W_m + b_m) ⊙ (h U_m), then z += m U
        z[:, GH : GH + H] = 0
        add_rows(s.h[:, layer], w.Um[layer], z, GH, H)
        for n in range(s.x.shape[0]):
            mlstm_multiply(z[n], H)
        add_rows(z[:, GH - H : GH], w.U[layer, part], z, 0, GH - H)
    else:
        r0 = GH if z.shape[1] > GH else 0  # where h U accumulates
        if r0:
            z[:, r0 + j0 : r0 + j1] = 0
        add_rows(s.h[:, layer], w.U[layer, part], z, r0 + j0, j1 - j0)
    for n in range(s.x.shape[0]):
        if s.x[n] >= 0:
            cell_step(w.kind, z[n], w.P[layer], s.h[n, layer], s.c[n, layer], h_new[n, layer],
                      u0, u1)


@nb.njit(**EXACT)
def finish(w, s, d, k):
    r"""The streams after their layers: commit the new state, the head, and draw the next input.

    .. math::  z = h^{L-1} W_y + b_y, \qquad x \leftarrow \mathrm{draw}(z), \qquad
               \mathrm{logp} = \log \mathrm{softmax}(z)_x

    A stream with x[n] < 0 had no input (an empty prompt): its state stays zero and the head
    reads it, so its first character comes from softmax(b_y / T).
    """
    B, V = k.logits.shape
    for n in range(B):
        if s.x[n] >= 0:
            s.h[n] = k.h_new[n]
        k.logits[n] = w.by
    add_rows(s.h[:, -1], w.Wy, k.logits, 0, V)
    for n in range(B):
        u = uniform(d.key[n], d.counter[n])
        d.counter[n] += np.uint64(1)
        s.x[n], k.logp[n] = draw(k.logits[n], d.temperature[n], d.top_k[n], d.top_p[n], u,
                                 k.p[n], k.order[n])


@nb.njit(**EXACT)
def step(w, s, d, k):
    """Advance B streams by one character: every layer, the head, and the draw (see the
    module's docstring for the tuples)."""
    for layer in range(w.U.shape[0]):
        for part in range(w.bounds.shape[0] - 1):
            advance(w, layer, part, s, k.h_new, k.z)
    finish(w, s, d, k)


@nb.njit(parallel=True, **EXACT)
def step_threads(w, s, d, k):
    """step on one thread per part: parts of the streams, or of each layer's units.

    With two streams or more per thread, each thread takes a group of streams through the
    whole step, layers, head and draw: one fork-join per step and nothing serial. With fewer,
    the units of each layer are split instead (each thread reads its own part of the weights,
    which is what bounds a single stream), and the head stays serial.
    """
    B, parts = s.x.shape[0], w.bounds.shape[0] - 1
    if B // parts >= 2:
        for g in nb.prange(parts):
            n0, n1 = g * B // parts, (g + 1) * B // parts
            step(w, State(s.x[n0:n1], s.h[n0:n1], s.c[n0:n1]),
                 Draw(d.temperature[n0:n1], d.top_k[n0:n1], d.top_p[n0:n1], d.key[n0:n1],
                      d.counter[n0:n1]),
                 Work(k.h_new[n0:n1], k.z[n0:n1], k.logits[n0:n1], k.p[n0:n1],
                      k.order[n0:n1], k.logp[n0:n1]))
        return
    for layer in range(w.U.shape[0]):
        for part in nb.prange(parts):
            advance(w, layer, part, s, k.h_new, k.z)
    finish(w, s, d, k)


@nb.njit(**EXACT)
def prime(w, idx, s, h_new, z):
    """Feed one stream the characters idx[:-1]; leave x[0] = idx[-1] (or -1 if idx is empty).

    s, h_new, z are that stream's rows (B = 1). The last character is fed by the first step,
    whose head then gives the distribution of the character after the prompt.
    """
    for t in range(idx.shape[0] - 1):
        s.x[0] = idx[t]
        for layer in range(w.U.shape[0]):
            for part in range(w.bounds.shape[0] - 1):
                advance(w, layer, part, s, h_new, z)
        s.h[0] = h_new[0]
    s.x[0] = idx[-1] if idx.shape[0] > 0 else -1


@nb.njit(parallel=True, **EXACT)
def prime_threads(w, idx, s, h_new, z):
    """prime with one thread per part of each layer."""
    for t in range(idx.shape[0] - 1):
        s.x[0] = idx[t]
        for layer in range(w.U.shape[0]):
            for part in nb.prange(w.bounds.shape[0] - 1):
                advance(w, layer, part, s, h_new, z)
        s.h[0] = h_new[0]
    s.x[0] = idx[-1] if idx.shape[0] > 0 else -1


def entry_point(kernel, args: tuple):
    """kernel's compiled code for the types of args, compiled first if need be. Calling it
    skips numba's dispatch, which types every field of the named tuples on every call: 3 us,
    a fifth of a whole step of a small model. The caller keeps it while the types stay."""
    sig = tuple(nb.typeof(a) for a in args)
    if sig not in kernel.overloads:
        kernel.compile(sig)
    return kernel.overloads[sig].entry_point
