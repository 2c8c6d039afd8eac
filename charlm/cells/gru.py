"""The GRU, as torch.nn.GRU computes it: blocks r, z, n, with b_hn inside the reset product.

    r_t = σ(x_t W_r + h_{t-1} U_r + b_r)      z_t = σ(x_t W_z + h_{t-1} U_z + b_z)
    n_t = tanh(x_t W_n + b_n + r_t ⊙ (h_{t-1} U_n + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

torch's other recurrent biases add to b and are folded into it; b_hn is the extra tensor
bh{l}, shape (H,). No cell state. Its training kernels and its packed step of generation.
"""

import numba as nb
import numpy as np

from charlm.cells.cell import Cell, Extra
from charlm.gemm import matmul
from charlm.kernels import BLOCK, LEAF, ONE, STEP, sigmoid, tanh


@nb.njit(**LEAF)
def gru_forward(Z, U, bh, Hs, Q, Up, R):
    r"""Run one GRU layer over T steps (torch's formulation, b_hn inside the reset product).

    .. math::

        r_t = \sigma(x_t W_r + h_{t-1} U_r + b_r)
        z_t = \sigma(x_t W_z + h_{t-1} U_z + b_z)
        q_t = h_{t-1} U_n + b_{hn}
        n_t = \tanh(x_t W_n + b_n + r_t \odot q_t)
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Parameters
    ----------
    Z : (T, B, 3H) in: x_t W + b for every step. out: r, z, n (after their nonlinearities).
    U : (H, 3H) recurrent weights.  bh : (H,) b_hn, the recurrent bias of n.
    Hs : (T+1, B, H) Hs[0] holds h_0 on entry; step t writes Hs[t+1].
    Q : (T, B, H) out: q_t, which the backward pass needs.
    Up : U as the micro-kernel's panels (charlm.gemm.as_panels_into), read in float32.
    R : (B, 3H) workspace for h_{t-1} U.
    """
    T, B, H3 = Z.shape
    H = H3 // 3
    for t in range(T):
        matmul(Hs[t], U, Up, R)
        for s in range(B):  # streams (n is the candidate)
            xr, xz, xn = Z[t, s, :H], Z[t, s, H : 2 * H], Z[t, s, 2 * H :]
            hr, hz, hn = R[s, :H], R[s, H : 2 * H], R[s, 2 * H :]
            h_prev, h, q = Hs[t, s], Hs[t + 1, s], Q[t, s]
            for j in range(H):
                r = sigmoid(xr[j] + hr[j])
                z = sigmoid(xz[j] + hz[j])
                q[j] = hn[j] + bh[j]
                n = tanh(xn[j] + r * q[j])
                h[j] = (ONE - z) * n + z * h_prev[j]
                xr[j], xz[j], xn[j] = r, z, n


@nb.njit(**LEAF)
def gru_backward(G, U, Q, Hs, dH, dZ, dN, dh, dh_skip, dU, dbh, UTp):
    r"""Backpropagate through one GRU layer over T steps (truncated at the window).

    With dh_t = dL/dh_t (from above plus from step t+1) and a_t = x_t W_n + b_n + r_t q_t:

    .. math::

        da_t = dh_t \odot (1 - z_t) \odot (1 - n_t^2)
        dz^z_t = dh_t \odot (h_{t-1} - n_t) \odot z_t (1 - z_t)
        dz^r_t = da_t \odot q_t \odot r_t (1 - r_t)
        dq_t = da_t \odot r_t
        dh_{t-1} \mathrel{+}= dh_t \odot z_t + [dz^r_t, dz^z_t, dq_t] U^\top
        dU = \sum_t h_{t-1}^\top [dz^r_t, dz^z_t, dq_t] \qquad db_{hn} = \sum_t dq_t

    The recurrent and the input side see n through different products (q_t is scaled by r_t,
    x_t W_n is not), so the n block of the gradient differs between them: it is dq_t for U,
    da_t for W and b.

    Parameters
    ----------
    G : (T, B, 3H) gates r, z, n from gru_forward.  U : (H, 3H).  Q : (T, B, H) from gru_forward.
    Hs : (T+1, B, H) states from gru_forward.  dH : (T, B, H) dL/dh_t from above.
    dZ : (T, B, 3H) out: dL/d(x_t W + b), the input side's gradient (blocks r, z, n).
    dN : (T, B, H) workspace for da_t.  dh, dh_skip : (B, H) workspaces.
    dU : (H, 3H) out: dL/dU.  dbh : (H,) out: dL/db_hn.
    UTp : U^T as panels (as_panels_into), read in float32.
    """
    T, B, H3 = G.shape
    H = H3 // 3
    dh[:] = 0
    for t in range(T - 1, -1, -1):
        for s in range(B):
            gr, gz, gn = G[t, s, :H], G[t, s, H : 2 * H], G[t, s, 2 * H :]
            dzr, dzz, dq = dZ[t, s, :H], dZ[t, s, H : 2 * H], dZ[t, s, 2 * H :]
            h_prev, q, da = Hs[t, s], Q[t, s], dN[t, s]
            dh_s, skip, dh_above = dh[s], dh_skip[s], dH[t, s]
            for j in range(H):
                r, z, n = gr[j], gz[j], gn[j]
                dh_j = dh_above[j] + dh_s[j]
                da[j] = dh_j * (ONE - z) * (ONE - n * n)
                dzz[j] = dh_j * (h_prev[j] - n) * z * (ONE - z)
                dzr[j] = da[j] * q[j] * r * (ONE - r)
                dq[j] = da[j] * r
                skip[j] = dh_j * z
        if t > 0:
            matmul(dZ[t], U.T, UTp, dh)
            for s in range(B):
                dh_s, skip = dh[s], dh_skip[s]
                for j in range(H):
                    dh_s[j] += skip[j]
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    dZ2 = dZ.reshape(T * B, H3)
    np.dot(Hprev.T, dZ2, dU)
    dbh[:] = 0
    dN2 = dN.reshape(T * B, H)
    for k in range(T * B):
        dq, da = dZ2[k, 2 * H :], dN2[k]
        for j in range(H):
            dbh[j] += dq[j]
            dq[j] = da[j]  # from here on dZ is the input side's gradient


@nb.njit(**STEP)
def gru_step(z, P, h, c, h_new, u0, u1):
    r"""The GRU cell of one stream for units [u0, u1) (packed r, z, n).

    .. math::

        r = \sigma(a_r + b_r) \quad u = \sigma(a_z + b_z) \quad
        n = \tanh(a_n + r \odot (b_n + b_{hn})) \qquad h_{new} = (1 - u) \odot n + u \odot h

    z : (6H,) a = x W + b in its first half, b = h U in its second (u is the update gate, the
    z of the equations).  P : (1, H) b_hn in unit order.
    """
    H = h.shape[0]
    for ub in range(u0, u1, BLOCK):
        s = min(BLOCK, H - ub)
        k, kh = 3 * ub, 3 * H + 3 * ub
        xr, xz, xn = z[k : k + s], z[k + s : k + 2 * s], z[k + 2 * s : k + 3 * s]
        hr, hz, hn = z[kh : kh + s], z[kh + s : kh + 2 * s], z[kh + 2 * s : kh + 3 * s]
        bn, hb, hb_new = P[0, ub : ub + s], h[ub : ub + s], h_new[ub : ub + s]
        for j in range(s):
            r = sigmoid(xr[j] + hr[j])
            u = sigmoid(xz[j] + hz[j])
            n = tanh(xn[j] + r * (hn[j] + bn[j]))
            hb_new[j] = (ONE - u) * n + u * hb[j]


def forward(p: dict, ws, layer: int) -> None:
    gru_forward(ws.Z[layer], p[f"U{layer}"], p[f"bh{layer}"], ws.Hs[layer], ws.Q[layer], ws.Up,
                ws.R)


def backward(p: dict, d: dict, ws, layer: int) -> None:
    gru_backward(ws.Z[layer], p[f"U{layer}"], ws.Q[layer], ws.Hs[layer], ws.dH, ws.dZ,
                 ws.dN[layer], ws.dh, ws.dc, d[f"U{layer}"], d[f"bh{layer}"], ws.UTp)


CELL = Cell("gru", blocks=3, gates=("r", "z", "n"), sigmoid_gates=("r", "z"), has_c=False,
            forward=forward, backward=backward, step=gru_step,
            extras=(Extra("bh", 0, "zero"),), split_recurrent=True, buffers=("Q", "dN"),
            torch="GRU", doc="torch.nn.GRU's gated recurrent unit")
