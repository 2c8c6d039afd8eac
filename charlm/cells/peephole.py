"""The peephole LSTM (Gers and Schmidhuber): the gates also see the cell, through diagonal weights.

    i_t = σ(x_t W_i + h_{t-1} U_i + p_i ⊙ c_{t-1} + b_i)   f_t likewise, with p_f
    o_t = σ(x_t W_o + h_{t-1} U_o + p_o ⊙ c_t + b_o)       g_t, c_t, h_t as the LSTM's

The peepholes are the extra tensor P{l}, shape (3, H): p_i, p_f, p_o. Its training kernels
and its packed step of generation.
"""

import numba as nb
import numpy as np

from charlm.cells.cell import Cell, Extra
from charlm.gemm import matmul
from charlm.kernels import BLOCK, LEAF, ONE, STEP, sigmoid, tanh


@nb.njit(**LEAF)
def peephole_forward(Z, U, P, Hs, Cs, Up, R):
    r"""Run one peephole LSTM layer over T steps.

    .. math::

        i_t = \sigma(x_t W_i + h_{t-1} U_i + p_i \odot c_{t-1} + b_i)
        f_t = \sigma(x_t W_f + h_{t-1} U_f + p_f \odot c_{t-1} + b_f)
        g_t = \tanh(x_t W_g + h_{t-1} U_g + b_g)
        c_t = f_t \odot c_{t-1} + i_t \odot g_t
        o_t = \sigma(x_t W_o + h_{t-1} U_o + p_o \odot c_t + b_o)
        h_t = o_t \odot \tanh(c_t)

    Parameters
    ----------
    Z : (T, B, 4H) in: x_t W + b. out: the gates i, f, g, o.  U : (H, 4H).
    P : (3, H) the peephole weights p_i, p_f, p_o (diagonal: one per unit).
    Hs, Cs : (T+1, B, H) h_0, c_0 on entry; step t writes Hs[t+1], Cs[t+1].
    Up : U as the micro-kernel's panels (charlm.gemm.as_panels_into), read in float32.
    R : (B, 4H) workspace for h_{t-1} U.
    """
    T, B, H4 = Z.shape
    H = H4 // 4
    pi, pf, po = P[0], P[1], P[2]
    for t in range(T):
        matmul(Hs[t], U, Up, R)
        for n in range(B):
            zi, zf = Z[t, n, :H], Z[t, n, H : 2 * H]
            zg, zo = Z[t, n, 2 * H : 3 * H], Z[t, n, 3 * H :]
            ri, rf, rg, ro = R[n, :H], R[n, H : 2 * H], R[n, 2 * H : 3 * H], R[n, 3 * H :]
            c_prev, c, h = Cs[t, n], Cs[t + 1, n], Hs[t + 1, n]
            for j in range(H):
                i = sigmoid(zi[j] + ri[j] + pi[j] * c_prev[j])
                f = sigmoid(zf[j] + rf[j] + pf[j] * c_prev[j])
                g = tanh(zg[j] + rg[j])
                c[j] = f * c_prev[j] + i * g
                o = sigmoid(zo[j] + ro[j] + po[j] * c[j])
                h[j] = o * tanh(c[j])
                zi[j], zf[j], zg[j], zo[j] = i, f, g, o


@nb.njit(**LEAF)
def peephole_backward(G, U, P, Hs, Cs, dH, dZ, dh, dc, dU, dP, UTp):
    r"""Backpropagate through one peephole LSTM layer over T steps (truncated at the window).

    .. math::

        dz^o_t = dh_t \odot \tanh c_t \odot o_t (1 - o_t)
        dc_t = dc_{t+1}' + dh_t \odot o_t \odot (1 - \tanh^2 c_t) + dz^o_t \odot p_o
        dz^i_t = dc_t \odot g_t \odot i_t (1 - i_t) \qquad
        dz^f_t = dc_t \odot c_{t-1} \odot f_t (1 - f_t)
        dz^g_t = dc_t \odot i_t \odot (1 - g_t^2)
        dc_t' = dc_t \odot f_t + dz^i_t \odot p_i + dz^f_t \odot p_f \quad \text{(to } t-1)
        dp_i = \sum_t dz^i_t \odot c_{t-1} \quad dp_f = \sum_t dz^f_t \odot c_{t-1} \quad
        dp_o = \sum_t dz^o_t \odot c_t

    Parameters
    ----------
    G : (T, B, 4H) gates from peephole_forward.  U : (H, 4H).  P : (3, H).
    Hs, Cs : (T+1, B, H) states from peephole_forward.  dH : (T, B, H) dL/dh_t from above.
    dZ : (T, B, 4H) out: dL/dz_t.  dh, dc : (B, H) workspaces.
    dU : (H, 4H) out: dL/dU.  dP : (3, H) out: dL/dP.
    UTp : U^T as panels (as_panels_into), read in float32.
    """
    T, B, H4 = G.shape
    H = H4 // 4
    dh[:] = 0
    dc[:] = 0
    dP[:] = 0
    pi, pf, po = P[0], P[1], P[2]
    dpi, dpf, dpo = dP[0], dP[1], dP[2]
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
                do = dh_j * tanh_c * o * (ONE - o)
                dc_j = dc_n[j] + dh_j * o * (ONE - tanh_c * tanh_c) + do * po[j]
                di = dc_j * g * i * (ONE - i)
                df = dc_j * c_prev[j] * f * (ONE - f)
                dzi[j], dzf[j], dzo[j] = di, df, do
                dzg[j] = dc_j * i * (ONE - g * g)
                dc_n[j] = dc_j * f + di * pi[j] + df * pf[j]
                dpi[j] += di * c_prev[j]
                dpf[j] += df * c_prev[j]
                dpo[j] += do * c[j]
        if t > 0:
            matmul(dZ[t], U.T, UTp, dh)
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dZ.reshape(T * B, H4), dU)


@nb.njit(**STEP)
def peephole_step(z, P, h, c, h_new, u0, u1):
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


def forward(p: dict, ws, layer: int) -> None:
    peephole_forward(ws.Z[layer], p[f"U{layer}"], p[f"P{layer}"], ws.Hs[layer], ws.Cs[layer],
                     ws.Up, ws.R)


def backward(p: dict, d: dict, ws, layer: int) -> None:
    peephole_backward(ws.Z[layer], p[f"U{layer}"], p[f"P{layer}"], ws.Hs[layer], ws.Cs[layer],
                      ws.dH, ws.dZ, ws.dh, ws.dc, d[f"U{layer}"], d[f"P{layer}"], ws.UTp)


CELL = Cell("peephole", blocks=4, gates=("i", "f", "g", "o"), sigmoid_gates=("i", "f", "o"),
            has_c=True, forward=forward, backward=backward, step=peephole_step, forget=1,
            extras=(Extra("P", 3, "uniform"),), doc="the LSTM whose gates also see the cell")
