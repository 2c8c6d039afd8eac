"""The coupled LSTM: the input gate is 1 - f, blocks f, g, o (a quarter fewer weights).

    f_t, g_t, o_t as the LSTM's    c_t = f_t ⊙ c_{t-1} + (1 - f_t) ⊙ g_t    h_t = o_t ⊙ tanh(c_t)

Its training kernels and its packed step of generation.
"""

import numba as nb
import numpy as np

from charlm.cells.cell import Cell
from charlm.gemm import matmul
from charlm.kernels import BLOCK, LEAF, ONE, STEP, sigmoid, tanh


@nb.njit(**LEAF)
def coupled_forward(Z, U, Hs, Cs, Up, R):
    r"""Run one LSTM layer with coupled input and forget gates over T steps.

    .. math::

        f_t = \sigma(x_t W_f + h_{t-1} U_f + b_f)
        g_t = \tanh(x_t W_g + h_{t-1} U_g + b_g)
        o_t = \sigma(x_t W_o + h_{t-1} U_o + b_o)
        c_t = f_t \odot c_{t-1} + (1 - f_t) \odot g_t
        h_t = o_t \odot \tanh(c_t)

    Parameters
    ----------
    Z : (T, B, 3H) in: x_t W + b. out: the gates f, g, o.  U : (H, 3H).
    Hs, Cs : (T+1, B, H) h_0, c_0 on entry; step t writes Hs[t+1], Cs[t+1].
    Up : U as the micro-kernel's panels (charlm.gemm.as_panels_into), read in float32.
    R : (B, 3H) workspace for h_{t-1} U.
    """
    T, B, H3 = Z.shape
    H = H3 // 3
    for t in range(T):
        matmul(Hs[t], U, Up, R)
        for n in range(B):
            zf, zg, zo = Z[t, n, :H], Z[t, n, H : 2 * H], Z[t, n, 2 * H :]
            rf, rg, ro = R[n, :H], R[n, H : 2 * H], R[n, 2 * H :]
            c_prev, c, h = Cs[t, n], Cs[t + 1, n], Hs[t + 1, n]
            for j in range(H):
                f = sigmoid(zf[j] + rf[j])
                g = tanh(zg[j] + rg[j])
                o = sigmoid(zo[j] + ro[j])
                c[j] = f * c_prev[j] + (ONE - f) * g
                h[j] = o * tanh(c[j])
                zf[j], zg[j], zo[j] = f, g, o


@nb.njit(**LEAF)
def coupled_backward(G, U, Hs, Cs, dH, dZ, dh, dc, dU, UTp):
    r"""Backpropagate through one coupled LSTM layer over T steps (truncated at the window).

    .. math::

        dc_t = dc_{t+1} \odot f_{t+1} + dh_t \odot o_t \odot (1 - \tanh^2 c_t)
        dz^f_t = dc_t \odot (c_{t-1} - g_t) \odot f_t (1 - f_t)
        dz^g_t = dc_t \odot (1 - f_t) \odot (1 - g_t^2)
        dz^o_t = dh_t \odot \tanh c_t \odot o_t (1 - o_t)

    Parameters
    ----------
    G : (T, B, 3H) gates f, g, o from coupled_forward.  U : (H, 3H).
    Hs, Cs : (T+1, B, H) states.  dH : (T, B, H) dL/dh_t from above.
    dZ : (T, B, 3H) out: dL/dz_t.  dh, dc : (B, H) workspaces.
    dU : (H, 3H) out: dL/dU.
    UTp : U^T as panels (as_panels_into), read in float32.
    """
    T, B, H3 = G.shape
    H = H3 // 3
    dh[:] = 0
    dc[:] = 0
    for t in range(T - 1, -1, -1):
        for n in range(B):
            gf, gg, go = G[t, n, :H], G[t, n, H : 2 * H], G[t, n, 2 * H :]
            dzf, dzg, dzo = dZ[t, n, :H], dZ[t, n, H : 2 * H], dZ[t, n, 2 * H :]
            c_prev, c = Cs[t, n], Cs[t + 1, n]
            dh_n, dc_n, dh_above = dh[n], dc[n], dH[t, n]
            for j in range(H):
                f, g, o = gf[j], gg[j], go[j]
                tanh_c = tanh(c[j])
                dh_j = dh_above[j] + dh_n[j]
                dc_j = dc_n[j] + dh_j * o * (ONE - tanh_c * tanh_c)
                dzf[j] = dc_j * (c_prev[j] - g) * f * (ONE - f)
                dzg[j] = dc_j * (ONE - f) * (ONE - g * g)
                dzo[j] = dh_j * tanh_c * o * (ONE - o)
                dc_n[j] = dc_j * f
        if t > 0:
            matmul(dZ[t], U.T, UTp, dh)
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dZ.reshape(T * B, H3), dU)


@nb.njit(**STEP)
def coupled_step(z, P, h, c, h_new, u0, u1):
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


def forward(p: dict, ws, layer: int) -> None:
    coupled_forward(ws.Z[layer], p[f"U{layer}"], ws.Hs[layer], ws.Cs[layer], ws.Up, ws.R)


def backward(p: dict, d: dict, ws, layer: int) -> None:
    coupled_backward(ws.Z[layer], p[f"U{layer}"], ws.Hs[layer], ws.Cs[layer], ws.dH, ws.dZ,
                     ws.dh, ws.dc, d[f"U{layer}"], ws.UTp)


def derived(acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"i": 1 - acts["f"]}


CELL = Cell("coupled", blocks=3, gates=("f", "g", "o"), sigmoid_gates=("i", "f", "o"),
            has_c=True, forward=forward, backward=backward, step=coupled_step, forget=0,
            derived=derived, doc="the LSTM with input gate 1 - f")
