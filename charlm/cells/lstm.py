"""The LSTM: its training kernels (forward and backward through time) and its packed step.

    i_t = σ(x_t W_i + h_{t-1} U_i + b_i)      f_t = σ(x_t W_f + h_{t-1} U_f + b_f)
    g_t = tanh(x_t W_g + h_{t-1} U_g + b_g)   o_t = σ(x_t W_o + h_{t-1} U_o + b_o)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t           h_t = o_t ⊙ tanh(c_t)

Gate blocks of a 4H vector are laid out in the order i, f, g, o. Training runs the equations
over a window (lstm_forward, lstm_backward); generation runs them one step at a time on the
packed columns (lstm_step). Both writings are here, side by side, and tested one against the
other (tests/test_engine.py, tests/test_generate.py).
"""

import numba as nb
import numpy as np

from charlm.cells.cell import Cell
from charlm.gemm import matmul
from charlm.kernels import BLOCK, LEAF, ONE, STEP, sigmoid, tanh


@nb.njit(**LEAF)
def lstm_forward(Z, U, Hs, Cs, Up, R):
    r"""Run one LSTM layer over T steps.

    .. math::

        i_t = \sigma(x_t W_i + h_{t-1} U_i + b_i)
        f_t = \sigma(x_t W_f + h_{t-1} U_f + b_f)
        g_t = \tanh(x_t W_g + h_{t-1} U_g + b_g)
        o_t = \sigma(x_t W_o + h_{t-1} U_o + b_o)
        c_t = f_t \odot c_{t-1} + i_t \odot g_t
        h_t = o_t \odot \tanh(c_t)

    The input part x_t W + b of all T steps is one large matrix multiply done by the caller;
    only h_{t-1} U is left inside the time loop.

    Parameters
    ----------
    Z : (T, B, 4H) in: x_t W + b for every step. out: the gates i, f, g, o (after their
        nonlinearities), which the backward pass needs.
    U : (H, 4H) recurrent weights.
    Hs, Cs : (T+1, B, H) Hs[0], Cs[0] hold h_0, c_0 on entry; step t writes Hs[t+1], Cs[t+1].
    Up : U as the micro-kernel's panels (charlm.gemm.as_panels_into), read in float32.
    R : (B, 4H) workspace for h_{t-1} U.
    """
    T, B, H4 = Z.shape
    H = H4 // 4
    for t in range(T):
        matmul(Hs[t], U, Up, R)
        for n in range(B):
            # one view per gate block, so LLVM sees four streams it can vectorise
            zi, zf = Z[t, n, :H], Z[t, n, H : 2 * H]
            zg, zo = Z[t, n, 2 * H : 3 * H], Z[t, n, 3 * H :]
            ri, rf, rg, ro = R[n, :H], R[n, H : 2 * H], R[n, 2 * H : 3 * H], R[n, 3 * H :]
            c_prev, c, h = Cs[t, n], Cs[t + 1, n], Hs[t + 1, n]
            for j in range(H):
                i = sigmoid(zi[j] + ri[j])
                f = sigmoid(zf[j] + rf[j])
                g = tanh(zg[j] + rg[j])
                o = sigmoid(zo[j] + ro[j])
                c[j] = f * c_prev[j] + i * g
                h[j] = o * tanh(c[j])
                zi[j], zf[j], zg[j], zo[j] = i, f, g, o


@nb.njit(**LEAF)
def lstm_backward(G, U, Hs, Cs, dH, dZ, dh, dc, dU, UTp):
    r"""Backpropagate through one LSTM layer over T steps (truncated at the window).

    With dh_t = dL/dh_t (from above plus from step t+1) and dc_t = dL/dc_t:

    .. math::

        dc_t = dc_{t+1} \odot f_{t+1} + dh_t \odot o_t \odot (1 - \tanh^2 c_t)
        dz^i_t = dc_t \odot g_t \odot i_t (1 - i_t)
        dz^f_t = dc_t \odot c_{t-1} \odot f_t (1 - f_t)
        dz^g_t = dc_t \odot i_t \odot (1 - g_t^2)
        dz^o_t = dh_t \odot \tanh c_t \odot o_t (1 - o_t)
        dh_{t-1} \mathrel{+}= dz_t U^\top
        dU = \sum_t h_{t-1}^\top dz_t

    Parameters
    ----------
    G : (T, B, 4H) gates i, f, g, o from lstm_forward.
    U : (H, 4H) recurrent weights.
    Hs, Cs : (T+1, B, H) states from lstm_forward.
    dH : (T, B, H) dL/dh_t from the layer above (or the head).
    dZ : (T, B, 4H) out: dL/dz_t, the gradient of the pre-activations.
    dh, dc : (B, H) workspaces for the gradient carried back in time.
    dU : (H, 4H) out: dL/dU.
    UTp : U^T as the micro-kernel's panels (as_panels_into), read in float32.
    """
    T, B, H4 = G.shape
    H = H4 // 4
    # nothing flows in from beyond the window: truncated BPTT
    dh[:] = 0
    dc[:] = 0
    for t in range(T - 1, -1, -1):
        for n in range(B):
            gi, gf = G[t, n, :H], G[t, n, H : 2 * H]
            gg, go = G[t, n, 2 * H : 3 * H], G[t, n, 3 * H :]
            dzi, dzf = dZ[t, n, :H], dZ[t, n, H : 2 * H]
            dzg, dzo = dZ[t, n, 2 * H : 3 * H], dZ[t, n, 3 * H :]
            c_prev, c = Cs[t, n], Cs[t + 1, n]
            dh_n, dc_n, dh_above = dh[n], dc[n], dH[t, n]
            for j in range(H):
                i, f, g, o = gi[j], gf[j], gg[j], go[j]
                tanh_c = tanh(c[j])
                dh_j = dh_above[j] + dh_n[j]
                dc_j = dc_n[j] + dh_j * o * (ONE - tanh_c * tanh_c)
                dzi[j] = dc_j * g * i * (ONE - i)
                dzf[j] = dc_j * c_prev[j] * f * (ONE - f)
                dzg[j] = dc_j * i * (ONE - g * g)
                dzo[j] = dh_j * tanh_c * o * (ONE - o)
                dc_n[j] = dc_j * f
        if t > 0:
            matmul(dZ[t], U.T, UTp, dh)
    # weight gradient with one large matrix multiply after the time loop
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dZ.reshape(T * B, H4), dU)


@nb.njit(**STEP)
def lstm_step(z, P, h, c, h_new, u0, u1):
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


def forward(p: dict, ws, layer: int) -> None:
    lstm_forward(ws.Z[layer], p[f"U{layer}"], ws.Hs[layer], ws.Cs[layer], ws.Up, ws.R)


def backward(p: dict, d: dict, ws, layer: int) -> None:
    lstm_backward(ws.Z[layer], p[f"U{layer}"], ws.Hs[layer], ws.Cs[layer], ws.dH, ws.dZ, ws.dh,
                  ws.dc, d[f"U{layer}"], ws.UTp)


CELL = Cell("lstm", blocks=4, gates=("i", "f", "g", "o"), sigmoid_gates=("i", "f", "o"),
            has_c=True, forward=forward, backward=backward, step=lstm_step, forget=1,
            torch="LSTM", doc="the LSTM (the default)")
