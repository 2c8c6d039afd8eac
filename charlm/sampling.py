"""Numba kernels for generation: one step of a batch of streams, the head, and the draw.

- the weights are packed once (see generate.PackedModel): layer 0's input part is the table
  E W0 + b0 (one row per character), and each layer's G*H columns (G gate blocks: 4 for an
  LSTM) are regrouped into blocks of BLOCK units holding [i | f | g | o] of those units, so a
  run of columns is a set of whole units that a thread can finish (matrix product and cell)
  without the others;
- the units are split into parts, one per thread, and each part's columns of W and U are
  stored as panels of 16 columns, each a contiguous (K, 16) block (pack_panels);
- the matrix products run on tiles.tile, which keeps a few streams' sums over a few panels
  in registers while k runs over the whole of K: a panel is read from memory once for all
  the streams of a step;
- the `_threads` kernels run groups of streams, or the parts of each layer, concurrently.

Every cell of model.CELLS runs through the same kernels: `kind` picks the cell function per
part, outside the loops over units (the GRU has its own advance_gru).

Every output element is computed by the same sequence of operations whatever the batch size,
the stream's slot or the number of parts (sums over rows run in row order; no reassociation),
so a stream's text does not depend on what else runs beside it. Random numbers are
counter-based: the k-th draw of a stream is a hash of (its key, k).
"""

import numba as nb
import numpy as np

from charlm.kernels import ONE, sigmoid, tanh
from charlm.tiles import PANEL, fma, tile, tile_shape

BLOCK = 16  # units per gate block of the packed columns: two float32 vectors of each gate
# the cells, as the step kernels know them (kind is a run-time argument: one compiled kernel)
LSTM, GRU, RNN, PEEPHOLE, COUPLED = range(5)
KINDS = {"lstm": LSTM, "gru": GRU, "rnn": RNN, "peephole": PEEPHOLE, "coupled": COUPLED}

# the products (explicit fmas in tiles.tile) and the cells: fma contraction only, so no
# sum is reordered (fastmath=True would allow reassociation, which can differ between
# inlined copies).
MATVEC = dict(cache=True, fastmath={"contract"}, error_model="numpy", nogil=True)
# softmax, log-sum-exp and sampling rely on exact inf/NaN semantics: no fastmath
EXACT = dict(cache=True, nogil=True)

# splitmix64 constants (Steele, Lea, Flood 2014), typed uint64 so numba never mixes in int64
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
S11, S27, S30, S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
TWO_M53 = 2.0**-53


# --------------------------------------------------------------------------------------------
# the packed layout (used by generate.PackedModel) and random numbers


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


def as_panels(M: np.ndarray, n_panels: int | None = None) -> np.ndarray:
    """(K, W) -> (n_panels, K, PANEL): M's columns in contiguous panels of PANEL, the layout
    tiles.tile reads; columns past W (a last partial panel, or whole panels up to n_panels)
    are zeros that are never read."""
    K, W = M.shape
    n_panels = max(-(-W // PANEL), 1) if n_panels is None else n_panels
    padded = np.zeros((K, n_panels * PANEL), np.float32)
    padded[:, :W] = M
    return np.ascontiguousarray(padded.reshape(K, n_panels, PANEL).transpose(1, 0, 2))


def pack_panels(M: np.ndarray, bounds: np.ndarray, G: int = 4) -> np.ndarray:
    """(K, G*H) packed columns -> (P, n_panels, K, PANEL): part p's columns G u0 .. G u1 as
    panels (see as_panels), as many for every part as the widest needs."""
    widths = G * np.diff(bounds)
    n_panels = max(-(-int(widths.max()) // PANEL), 1)
    return np.stack([as_panels(M[:, G * u0 : G * u0 + w], n_panels)
                     for u0, w in zip(bounds[:-1], widths, strict=True)])


MASK64 = (1 << 64) - 1


def stream_key(seed: int) -> int:
    """The 64-bit key of a stream's random numbers: splitmix64 of the seed."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@nb.njit(**EXACT)
def uniform(key, counter):
    r"""The counter-th uniform number of the stream with this key, in [0, 1) with 53 bits.

    .. math::  u = \lfloor \mathrm{mix}(\mathrm{key} + (k+1)\,\varphi) / 2^{11} \rfloor \, 2^{-53}

    with mix the splitmix64 finaliser and phi = 0x9E3779B97F4A7C15: a counter-based generator,
    so a stream's numbers depend only on its key and how many it has drawn.
    """
    z = key + (counter + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    z = z ^ (z >> S31)
    return np.float64(z >> S11) * TWO_M53


# --------------------------------------------------------------------------------------------
# arithmetic leaves: the matrix-vector products and the cell


@nb.njit(**MATVEC)
def add_rows(X, Mp, z, j0, width):
    r"""z[n, j0:j0+width] += X[n] M[:, :width] for every stream n, with M stored as panels.

    .. math::  z_{n,j_0+j} \mathrel{+}= \sum_k X_{nk} M_{kj}
               \quad \text{(one fused multiply-add per k, in order of k)}

    Whole panels go through tiles.tile, a block of streams and a few panels at a time,
    panel by panel so that a panel stays in L1 while the blocks of streams take turns. The
    columns of a last, partial panel are summed one at a time with the same chain of fmas,
    so every element comes out the same whatever the batch and whichever path computes it.

    Parameters
    ----------
    X : (B, K) the inputs of the B streams (a strided view is fine: only scalars are read).
    Mp : (n_panels, K, PANEL) the columns of a (K, width) matrix M (see pack_panels).
    z : (B, *) accumulators, each row contiguous.
    """
    B, K = X.shape
    r, q = tile_shape(B)
    full = width // PANEL
    for p0 in range(0, full, q):
        p1 = min(p0 + q, full)
        c0, c1 = j0 + PANEL * p0, j0 + PANEL * p1
        for n in range(0, B, r):
            tile(X[n : n + r], Mp[p0:p1], z[n : n + r, c0:c1])
    if full * PANEL < width:
        c0 = j0 + PANEL * full
        M = Mp[full]
        for n in range(B):
            for j in range(width - PANEL * full):
                acc = z[n, c0 + j]
                for k in range(K):
                    acc = fma(X[n, k], M[k, j], acc)
                z[n, c0 + j] = acc


@nb.njit(**MATVEC)
def lstm_cell(z, c, h_new, u0, u1):
    r"""The LSTM cell of one stream for units [u0, u1), from gates z in the packed layout.

    .. math::

        i = \sigma(z_i) \quad f = \sigma(z_f) \quad g = \tanh(z_g) \quad o = \sigma(z_o)
        c \leftarrow f \odot c + i \odot g \qquad h_{new} = o \odot \tanh(c)

    Parameters
    ----------
    z : (4H,) pre-activations in the packed layout (see block_columns).
    c : (H,) this layer's cell state, updated in place.
    h_new : (H,) out: this layer's new hidden state.
    """
    H = c.shape[0]
    for ub in range(u0, u1, BLOCK):
        s = min(BLOCK, H - ub)
        zi, zf = z[4 * ub : 4 * ub + s], z[4 * ub + s : 4 * ub + 2 * s]
        zg, zo = z[4 * ub + 2 * s : 4 * ub + 3 * s], z[4 * ub + 3 * s : 4 * ub + 4 * s]
        cb, hb = c[ub : ub + s], h_new[ub : ub + s]
        for j in range(s):
            i = sigmoid(zi[j])
            f = sigmoid(zf[j])
            g = tanh(zg[j])
            o = sigmoid(zo[j])
            cb[j] = f * cb[j] + i * g
            hb[j] = o * tanh(cb[j])


@nb.njit(**MATVEC)
def peephole_cell(z, P, c, h_new, u0, u1):
    r"""The peephole LSTM cell of one stream for units [u0, u1) (packed i, f, g, o).

    .. math::

        i = \sigma(z_i + p_i \odot c) \quad f = \sigma(z_f + p_f \odot c) \quad g = \tanh(z_g)
        c \leftarrow f \odot c + i \odot g \qquad o = \sigma(z_o + p_o \odot c) \qquad
        h_{new} = o \odot \tanh(c)

    P : (3, H) the peepholes p_i, p_f, p_o, in unit order.
    """
    H = c.shape[0]
    for ub in range(u0, u1, BLOCK):
        s = min(BLOCK, H - ub)
        zi, zf = z[4 * ub : 4 * ub + s], z[4 * ub + s : 4 * ub + 2 * s]
        zg, zo = z[4 * ub + 2 * s : 4 * ub + 3 * s], z[4 * ub + 3 * s : 4 * ub + 4 * s]
        pi, pf, po = P[0, ub : ub + s], P[1, ub : ub + s], P[2, ub : ub + s]
        cb, hb = c[ub : ub + s], h_new[ub : ub + s]
        for j in range(s):
            i = sigmoid(zi[j] + pi[j] * cb[j])
            f = sigmoid(zf[j] + pf[j] * cb[j])
            g = tanh(zg[j])
            cb[j] = f * cb[j] + i * g
            o = sigmoid(zo[j] + po[j] * cb[j])
            hb[j] = o * tanh(cb[j])


@nb.njit(**MATVEC)
def coupled_cell(z, c, h_new, u0, u1):
    r"""The coupled LSTM cell of one stream for units [u0, u1) (packed f, g, o).

    .. math::  c \leftarrow f \odot c + (1 - f) \odot g \qquad h_{new} = o \odot \tanh(c)
    """
    H = c.shape[0]
    for ub in range(u0, u1, BLOCK):
        s = min(BLOCK, H - ub)
        k = 3 * ub
        zf, zg, zo = z[k : k + s], z[k + s : k + 2 * s], z[k + 2 * s : k + 3 * s]
        cb, hb = c[ub : ub + s], h_new[ub : ub + s]
        for j in range(s):
            f = sigmoid(zf[j])
            g = tanh(zg[j])
            o = sigmoid(zo[j])
            cb[j] = f * cb[j] + (ONE - f) * g
            hb[j] = o * tanh(cb[j])


@nb.njit(**MATVEC)
def gru_cell(z, bh, h, h_new, u0, u1):
    r"""The GRU cell of one stream for units [u0, u1) (packed r, z, n).

    .. math::

        r = \sigma(a_r + b_r) \quad u = \sigma(a_z + b_z) \quad
        n = \tanh(a_n + r \odot (b_n + b_{hn})) \qquad h_{new} = (1 - u) \odot n + u \odot h

    z : (6H,) a = x W + b in its first half, b = h U in its second (u is the update gate, the
    z of the equations).  bh : (H,) b_hn in unit order.
    """
    H = h.shape[0]
    for ub in range(u0, u1, BLOCK):
        s = min(BLOCK, H - ub)
        k, kh = 3 * ub, 3 * H + 3 * ub
        xr, xz, xn = z[k : k + s], z[k + s : k + 2 * s], z[k + 2 * s : k + 3 * s]
        hr, hz, hn = z[kh : kh + s], z[kh + s : kh + 2 * s], z[kh + 2 * s : kh + 3 * s]
        bn, hb, hb_new = bh[ub : ub + s], h[ub : ub + s], h_new[ub : ub + s]
        for j in range(s):
            r = sigmoid(xr[j] + hr[j])
            u = sigmoid(xz[j] + hz[j])
            n = tanh(xn[j] + r * (hn[j] + bn[j]))
            hb_new[j] = (ONE - u) * n + u * hb[j]


@nb.njit(**MATVEC)
def rnn_cell(z, h_new, u0, u1):
    r"""The tanh RNN cell of one stream for units [u0, u1): h_new = tanh(z)."""
    for j in range(u0, u1):
        h_new[j] = tanh(z[j])


@nb.njit(**MATVEC)
def add_input(layer, part, EW, W, b, x, h_new, z, j0, j1):
    r"""z[:, j0:j1] = the input part of this layer's gates, for columns j0 .. j1 of one part.

    .. math::  z^0 = (E W_0 + b_0)[x]  \qquad  z^l = b_l + h^{l-1}_{new} W_l

    Streams without an input (x[n] < 0) keep whatever z held: their sums go unused.
    """
    for n in range(x.shape[0]):
        if x[n] < 0:
            continue
        if layer == 0:
            z[n, j0:j1] = EW[x[n], j0:j1]
        else:
            z[n, j0:j1] = b[layer - 1, j0:j1]
    if layer > 0:
        add_rows(h_new[:, layer - 1], W[layer - 1, part], z, j0, j1 - j0)


@nb.njit(**MATVEC)
def advance(kind, layer, part, bounds, EW, U, W, b, P, x, h, c, h_new, z):
    r"""One part of one layer (units u0 .. u1) for every stream with an input (x[n] >= 0).

    .. math::

        z^0 = (E W_0 + b_0)[x] + h^0 U_0  \qquad  z^l = b_l + h^{l-1}_{new} W_l + h^l U_l

    then the cell of this kind (the GRU: see advance_gru). Reads h (the old state, every unit)
    and h_new[:, layer-1] (the layer below, complete); writes only z columns G u0 .. G u1 and
    c, h_new of units u0 .. u1, so the parts of a layer can run concurrently. The sums of a
    stream without an input are computed too, and left unused: keeping the batch whole for
    the tiles pays more than skipping the rare empty prompt.
    """
    if kind == GRU:
        advance_gru(layer, part, bounds, EW, U, W, b, P, x, h, h_new, z)
        return
    u0, u1 = bounds[part], bounds[part + 1]
    G = EW.shape[1] // h.shape[2]  # gate blocks: 4 for an LSTM
    j0, j1 = G * u0, G * u1
    add_input(layer, part, EW, W, b, x, h_new, z, j0, j1)
    add_rows(h[:, layer], U[layer, part], z, j0, j1 - j0)
    for n in range(x.shape[0]):
        if x[n] < 0:
            continue
        if kind == LSTM:
            lstm_cell(z[n], c[n, layer], h_new[n, layer], u0, u1)
        elif kind == RNN:
            rnn_cell(z[n], h_new[n, layer], u0, u1)
        elif kind == PEEPHOLE:
            peephole_cell(z[n], P[layer], c[n, layer], h_new[n, layer], u0, u1)
        else:
            coupled_cell(z[n], c[n, layer], h_new[n, layer], u0, u1)


@nb.njit(**MATVEC)
def advance_gru(layer, part, bounds, EW, U, W, b, P, x, h, h_new, z):
    """advance for the GRU: x W + b accumulates in z[:, :3H] and h U apart in z[:, 3H:], since
    the candidate needs x W_n and r * (h U_n + b_hn) apart; b_hn is P[layer, 0]."""
    u0, u1 = bounds[part], bounds[part + 1]
    GH = EW.shape[1]  # 3H: where the h U half starts
    j0, j1 = 3 * u0, 3 * u1
    add_input(layer, part, EW, W, b, x, h_new, z, j0, j1)
    z[:, GH + j0 : GH + j1] = 0
    add_rows(h[:, layer], U[layer, part], z, GH + j0, j1 - j0)
    for n in range(x.shape[0]):
        if x[n] >= 0:
            gru_cell(z[n], P[layer, 0], h[n, layer], h_new[n, layer], u0, u1)


# --------------------------------------------------------------------------------------------
# the head and the draw: exact arithmetic


@nb.njit(**EXACT)
def draw(z, temperature, top_k, top_p, u, p, order):
    r"""The next character, drawn with uniform u, and its log-probability under softmax(z).

    .. math::

        p_v \propto \exp((z_v - \max z) / T), \qquad
        \mathrm{logp}_y = z_y - \log \sum_v \exp z_v

    The draw is from p, filtered by pick; T = 0 is greedy, the first index of the largest
    logit. logp is under the model's own distribution (T = 1, unfiltered), whatever the
    settings, so it says what the model thought of the character.

    Parameters
    ----------
    z : (V,) logits.
    p : (V,) float64 workspace, order : (V,) int64 workspace.

    Returns
    -------
    y, logp
    """
    V = z.shape[0]
    m = np.float64(z[0])
    best = 0
    for v in range(1, V):
        if z[v] > m:
            m, best = np.float64(z[v]), v
    # softmax(z): the normaliser of logp, and at T = 1 the weights of the draw too
    s = 0.0
    for v in range(V):
        p[v] = np.exp(np.float64(z[v]) - m)
        s += p[v]
    lse = m + np.log(s)
    if temperature == 0.0:
        return best, np.float64(z[best]) - lse
    total = s
    if temperature != 1.0:
        total = 0.0
        for v in range(V):
            p[v] = np.exp((np.float64(z[v]) - m) / temperature)
            total += p[v]
    y = pick(p, total, best, top_k, top_p, u, order)
    return y, np.float64(z[y]) - lse


@nb.njit(**EXACT)
def pick(p, total, best, top_k, top_p, u, order):
    r"""Index drawn with uniform u from unnormalised weights p (summing to total).

    Restricted to the top_k largest weights (top_k > 0), then to the fewest largest of those
    whose renormalised mass is at least top_p (nucleus); the pick is the first character
    whose cumulative kept mass exceeds u times the kept mass. Ties keep index order.
    best (the largest weight's index) is the answer if rounding leaves u past the sum.
    """
    V = p.shape[0]
    if (top_k <= 0 or top_k >= V) and top_p >= 1.0:
        target, acc, last = u * total, 0.0, best
        for v in range(V):
            if p[v] > 0.0:
                acc += p[v]
                last = v
                if acc > target:
                    return v
        return last  # rounding left u * total beyond the sum
    # order by descending weight, index order among ties (a stable insertion sort)
    for v in range(V):
        r = v
        while r > 0 and p[order[r - 1]] < p[v]:
            order[r] = order[r - 1]
            r -= 1
        order[r] = v
    n_keep = V if top_k <= 0 else min(top_k, V)
    kept = 0.0
    for r in range(n_keep):
        kept += p[order[r]]
    if top_p < 1.0:  # of the mass top-k kept, as if renormalised first
        acc = 0.0
        for r in range(n_keep):
            acc += p[order[r]]
            if acc >= top_p * kept:
                n_keep = r + 1
                kept = acc
                break
    target, acc = u * kept, 0.0
    for r in range(n_keep):
        acc += p[order[r]]
        if acc > target:
            return order[r]
    return order[n_keep - 1]


@nb.njit(**EXACT)
def finish(Wy, by, x, h, h_new, temperature, top_k, top_p, key, counter, logits, p, order,
           logp):
    r"""The streams after their layers: commit the new state, the head, and draw the next input.

    .. math::  z = h^{L-1} W_y + b_y, \qquad x \leftarrow \mathrm{draw}(z), \qquad
               \mathrm{logp} = \log \mathrm{softmax}(z)_x

    A stream with x[n] < 0 had no input (an empty prompt): its state stays zero and the head
    reads it, so its first character comes from softmax(b_y / T).
    """
    B, V = logits.shape
    for n in range(B):
        if x[n] >= 0:
            h[n] = h_new[n]
        logits[n] = by
    add_rows(h[:, -1], Wy, logits, 0, V)
    for n in range(B):
        u = uniform(key[n], counter[n])
        counter[n] += np.uint64(1)
        x[n], logp[n] = draw(logits[n], temperature[n], top_k[n], top_p[n], u, p[n], order[n])


# --------------------------------------------------------------------------------------------
# the step and the prompt: one jitted call each, serial or with one thread per part


@nb.njit(**EXACT)
def step(kind, EW, U, W, b, P, Wy, by, bounds, x, h, c, h_new, z, temperature, top_k, top_p,
         key, counter, logits, p, order, logp):
    r"""Advance B streams by one character: every layer, the head, and the draw.

    Parameters
    ----------
    kind : the cell (LSTM, GRU, RNN, PEEPHOLE or COUPLED).
    EW : (V, G*H) E W_0 + b_0, packed columns.  U : (L, P, n_panels, H, 16), W : (L-1, ...)
    the parts' panels (see pack_panels), b : (L-1, G*H) packed.  P : (L, 3, H) the cell's
    parameters per unit: the peepholes p_i, p_f, p_o, or the GRU's b_hn in P[:, 0] (width 0
    for the other cells).
    Wy : (n_panels, H, 16) the head's weights as panels (see as_panels), by : (V,) its bias.
    bounds : (P+1,) unit boundaries of the parts (see unit_bounds).
    x : (B,) in: each stream's input character (-1: none, start from the zero state);
        out: the character drawn, which is the next input.
    h : (B, L, H), c : (B, L, H or 0) recurrent state, advanced in place.  h_new : (B, L, H),
    z : (B, G*H; the GRU's 2 G*H) workspaces.  temperature, top_k, top_p : (B,) per-stream
    settings.  key, counter : (B,) uint64 random streams; counter is advanced by one.
    logits : (B, V) out: the logits of this step.  p : (B, V), order : (B, V) workspaces.
    logp : (B,) out: log-probability of the drawn character under softmax(logits).
    """
    for layer in range(U.shape[0]):
        for part in range(bounds.shape[0] - 1):
            advance(kind, layer, part, bounds, EW, U, W, b, P, x, h, c, h_new, z)
    finish(Wy, by, x, h, h_new, temperature, top_k, top_p, key, counter, logits, p, order, logp)


@nb.njit(parallel=True, **EXACT)
def step_threads(kind, EW, U, W, b, P, Wy, by, bounds, x, h, c, h_new, z, temperature, top_k,
                 top_p, key, counter, logits, p, order, logp):
    """step on one thread per part: parts of the streams, or of each layer's units.

    With two streams or more per thread, each thread takes a group of streams through the
    whole step, layers, head and draw: one fork-join per step and nothing serial. With fewer, the
    units of each layer are split instead (each thread reads its own part of the weights,
    which is what bounds a single stream), and the head stays serial.
    """
    B, parts = x.shape[0], bounds.shape[0] - 1
    if B // parts >= 2:
        for g in nb.prange(parts):
            n0, n1 = g * B // parts, (g + 1) * B // parts
            step(kind, EW, U, W, b, P, Wy, by, bounds, x[n0:n1], h[n0:n1], c[n0:n1],
                 h_new[n0:n1], z[n0:n1], temperature[n0:n1], top_k[n0:n1], top_p[n0:n1],
                 key[n0:n1], counter[n0:n1], logits[n0:n1], p[n0:n1], order[n0:n1],
                 logp[n0:n1])
        return
    for layer in range(U.shape[0]):
        for part in nb.prange(parts):
            advance(kind, layer, part, bounds, EW, U, W, b, P, x, h, c, h_new, z)
    finish(Wy, by, x, h, h_new, temperature, top_k, top_p, key, counter, logits, p, order, logp)


@nb.njit(**EXACT)
def prime(kind, EW, U, W, b, P, bounds, idx, x, h, c, h_new, z):
    """Feed one stream the characters idx[:-1]; leave x[0] = idx[-1] (or -1 if idx is empty).

    x, h, c, h_new, z are that stream's rows (B = 1). The last character is fed by the
    first step, whose head then gives the distribution of the character after the prompt.
    """
    for t in range(idx.shape[0] - 1):
        x[0] = idx[t]
        for layer in range(U.shape[0]):
            for part in range(bounds.shape[0] - 1):
                advance(kind, layer, part, bounds, EW, U, W, b, P, x, h, c, h_new, z)
        h[0] = h_new[0]
    x[0] = idx[-1] if idx.shape[0] > 0 else -1


@nb.njit(parallel=True, **EXACT)
def prime_threads(kind, EW, U, W, b, P, bounds, idx, x, h, c, h_new, z):
    """prime with one thread per part of each layer."""
    for t in range(idx.shape[0] - 1):
        x[0] = idx[t]
        for layer in range(U.shape[0]):
            for part in nb.prange(bounds.shape[0] - 1):
                advance(kind, layer, part, bounds, EW, U, W, b, P, x, h, c, h_new, z)
        h[0] = h_new[0]
    x[0] = idx[-1] if idx.shape[0] > 0 else -1


def warmup() -> None:
    """Compile (or load from the cache) every generation kernel, on tiny float32 arrays.

    The arrays have the types the Batch passes, so later calls find the compiled code. The
    threaded kernels are compiled without being run: a server that forks after warming up
    (a preloading gunicorn) does not start numba's thread pool, which is not fork-safe.
    """
    L, H, V, B = 2, 4, 3, 1
    f32 = np.float32
    # one compiled kernel serves every cell (kind is an argument): warm it with the LSTM
    weights = (LSTM, np.zeros((V, 4 * H), f32), np.zeros((L, 1, 1, H, PANEL), f32),
               np.zeros((L - 1, 1, 1, H, PANEL), f32), np.zeros((L - 1, 4 * H), f32),
               np.zeros((L, 3, 0), f32))
    head = (as_panels(np.zeros((H, V), f32)), np.zeros(V, f32))
    bounds = unit_bounds(H, 1)
    x = np.zeros(B, np.int64)
    state = (np.zeros((B, L, H), f32), np.zeros((B, L, H), f32), np.zeros((B, L, H), f32),
             np.zeros((B, 4 * H), f32))
    settings = (np.ones(B), np.zeros(B, np.int64), np.ones(B), np.zeros(B, np.uint64),
                np.zeros(B, np.uint64))
    outputs = (np.zeros((B, V), f32), np.zeros((B, V)), np.zeros((B, V), np.int64), np.zeros(B))
    idx = np.zeros(2, np.int64)
    step_args = (*weights, *head, bounds, x, *state, *settings, *outputs)
    prime_args = (*weights, bounds, idx, x, *state)
    step(*step_args)
    prime(*prime_args)
    step_threads.compile(tuple(nb.typeof(a) for a in step_args))
    prime_threads.compile(tuple(nb.typeof(a) for a in prime_args))
