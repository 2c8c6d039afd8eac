"""The multiplicative LSTM (Krause et al. 2016): the gates read m = (x W_m + b_m) ⊙ (h U_m), not h.

    m_t = (x_t W_m + b_m) ⊙ (h_{t-1} U_m)
    i_t = σ(x_t W_i + m_t U_i + b_i)          f_t = σ(x_t W_f + m_t U_f + b_f)
    g_t = tanh(x_t W_g + m_t U_g + b_g)       o_t = σ(x_t W_o + m_t U_o + b_o)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t           h_t = o_t ⊙ tanh(c_t)

W, b and U have five blocks, i, f, g, o, m: the input's linear map computes x W_m + b_m beside
the gates' input parts in one product, U's first four blocks multiply m and its last block
(U_m) multiplies h. The paper writes no biases at all; b_m starts at zero, where m is the
paper's, and lets the transition also depend on h alone (b_m ⊙ h U_m). Training runs the
equations over a window (mlstm_forward, mlstm_backward); generation computes m between its two
products (mlstm_multiply, see charlm.generate.kernels.advance) and then the LSTM's cell on the
gates (mlstm_step). Both writings are here and tested one against the other.
"""

import numba as nb
import numpy as np

from charlm.cells.cell import Cell, scratch
from charlm.cells.lstm import lstm_step
from charlm.gemm import PANEL, as_panels_into, matmul
from charlm.kernels import LEAF, ONE, STEP, sigmoid, tanh


@nb.njit(**LEAF)
def mlstm_forward(Z, Ug, Um, Hs, Cs, Rm, M, R, Ugp, Ump):
    r"""Run one multiplicative LSTM layer over T steps.

    .. math::

        r_t = h_{t-1} U_m \qquad m_t = a_t \odot r_t \quad (a_t = x_t W_m + b_m)
        [z^i, z^f, z^g, z^o]_t = x_t W + b + m_t U
        c_t = \sigma(z^f_t) \odot c_{t-1} + \sigma(z^i_t) \odot \tanh(z^g_t)
        h_t = \sigma(z^o_t) \odot \tanh(c_t)

    Parameters
    ----------
    Z : (T, B, 5H) in: x_t W + b, blocks i, f, g, o, m. out: the gates i, f, g, o after their
        nonlinearities; the m block keeps a_t.
    Ug : (H, 4H) m -> gates (U's first four blocks).  Um : (H, H) h -> m (U's last block).
    Hs, Cs : (T+1, B, H) h_0, c_0 on entry; step t writes Hs[t+1], Cs[t+1].
    Rm : (T, B, H) out: r_t.  M : (T, B, H) out: m_t.  R : (B, 4H) workspace for m_t U.
    Ugp, Ump : U_g and U_m as the micro-kernel's panels (charlm.gemm), read in float32.
    """
    T, B, H5 = Z.shape
    H = H5 // 5
    for t in range(T):
        matmul(Hs[t], Um, Ump, Rm[t])
        for n in range(B):
            a, r, m = Z[t, n, 4 * H :], Rm[t, n], M[t, n]
            for j in range(H):
                m[j] = a[j] * r[j]
        matmul(M[t], Ug, Ugp, R)
        for n in range(B):
            zi, zf = Z[t, n, :H], Z[t, n, H : 2 * H]
            zg, zo = Z[t, n, 2 * H : 3 * H], Z[t, n, 3 * H : 4 * H]
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
def mlstm_backward(G, UgT, UmT, Hs, Cs, Rm, M, dH, dZ, dG, dR, dh, dc, dm, dUg, dUm, UgTp,
                   UmTp):
    r"""Backpropagate through one multiplicative LSTM layer over T steps (truncated at the window).

    dz^{i,f,g,o}_t as the LSTM's (lstm_backward), then through m:

    .. math::

        dm_t = dz_t U_{i,f,g,o}^\top \qquad da_t = dm_t \odot r_t \qquad dr_t = dm_t \odot a_t
        dh_{t-1} \mathrel{+}= dr_t U_m^\top
        dU_{i,f,g,o} = \sum_t m_t^\top dz_t \qquad dU_m = \sum_t h_{t-1}^\top dr_t

    Parameters
    ----------
    G : (T, B, 5H) gates i, f, g, o and a_t from mlstm_forward.
    UgT : (4H, H), UmT : (H, H) the transposes of U's two parts, contiguous.
    Hs, Cs : (T+1, B, H) states.  Rm, M : (T, B, H) r_t and m_t from mlstm_forward.
    dH : (T, B, H) dL/dh_t from above.  dZ : (T, B, 5H) out: dL/d(x_t W + b).
    dG : (T, B, 4H), dR : (T, B, H) workspaces: the gates' gradient and dr_t.
    dh, dc, dm : (B, H) workspaces.  dUg : (H, 4H), dUm : (H, H) out: the parts of dL/dU.
    UgTp, UmTp : U_g^T and U_m^T as the micro-kernel's panels, read in float32.
    """
    T, B, H5 = G.shape
    H = H5 // 5
    dh[:] = 0
    dc[:] = 0
    for t in range(T - 1, -1, -1):
        for n in range(B):
            gi, gf = G[t, n, :H], G[t, n, H : 2 * H]
            gg, go = G[t, n, 2 * H : 3 * H], G[t, n, 3 * H : 4 * H]
            dzi, dzf = dG[t, n, :H], dG[t, n, H : 2 * H]
            dzg, dzo = dG[t, n, 2 * H : 3 * H], dG[t, n, 3 * H :]
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
            dZ[t, n, : 4 * H] = dG[t, n]
        matmul(dG[t], UgT, UgTp, dm)
        for n in range(B):
            a, r, dm_n = G[t, n, 4 * H :], Rm[t, n], dm[n]
            da, dr = dZ[t, n, 4 * H :], dR[t, n]
            for j in range(H):
                da[j] = dm_n[j] * r[j]
                dr[j] = dm_n[j] * a[j]
        if t > 0:
            matmul(dR[t], UmT, UmTp, dh)
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(M.reshape(T * B, H).T, dG.reshape(T * B, 4 * H), dUg)
    np.dot(Hprev.T, dR.reshape(T * B, H), dUm)


@nb.njit(**STEP)
def mlstm_multiply(z, H):
    r"""m = a ⊙ r for one stream, between generation's two products.

    .. math::  m = (x W_m + b_m) \odot (h U_m)

    z : (6H,) the gates' input parts (4H, packed), then a (H, unit order), then r = h U_m (H);
    m is left where a was, the input of the product m U.
    """
    for j in range(H):
        z[4 * H + j] = z[4 * H + j] * z[5 * H + j]


@nb.njit(**STEP)
def mlstm_step(z, P, h, c, h_new, u0, u1):
    """The multiplicative LSTM's cell for units [u0, u1): the LSTM's (lstm_step), on gates that
    read m (their first 4H columns of z, packed)."""
    lstm_step(z, P, h, c, h_new, u0, u1)


def forward(p: dict, ws, layer: int) -> None:
    U = p[f"U{layer}"]
    H = U.shape[0]
    # contiguous copies for float64's BLAS (gradient checks); float32 reads the panels
    Ug, Um = scratch(ws, "Ug", (H, 4 * H)), scratch(ws, "Um", (H, H))
    Ug[:], Um[:] = U[:, : 4 * H], U[:, 4 * H :]
    # the model packed all of U into ws.Up: U_g is its first 4H columns (the product reads no
    # further), and U_m the panels after them when 4H falls on a panel's edge (H a multiple of
    # 4), else U_m is packed apart
    first, rest = divmod(4 * H, PANEL)
    if rest == 0 or ws.Up.shape[0] == 0:
        Ump = ws.Up[first:]
    else:
        Ump = scratch(ws, "Ump", (-(-H // PANEL), H, PANEL))
        as_panels_into(Um, Ump)
    mlstm_forward(ws.Z[layer], Ug, Um, ws.Hs[layer], ws.Cs[layer], ws.Rm[layer], ws.M[layer],
                  scratch(ws, "R4", (ws.B, 4 * H)), ws.Up, Ump)


def backward(p: dict, d: dict, ws, layer: int) -> None:
    U, dU = p[f"U{layer}"], d[f"U{layer}"]
    H = U.shape[0]
    T, B = ws.T, ws.B
    UgT, UmT = scratch(ws, "UgT", (4 * H, H)), scratch(ws, "UmT", (H, H))
    UgT[:], UmT[:] = U[:, : 4 * H].T, U[:, 4 * H :].T
    dUg, dUm = scratch(ws, "dUg", (H, 4 * H)), scratch(ws, "dUm", (H, H))
    # ws.UTp holds U^T's panels: U_g^T is their first 4H rows and U_m^T the rest (the
    # micro-kernel reads a panel's rows by its strides, so slices along k serve as they are)
    mlstm_backward(ws.Z[layer], UgT, UmT, ws.Hs[layer], ws.Cs[layer], ws.Rm[layer], ws.M[layer],
                   ws.dH, ws.dZ, scratch(ws, "dG", (T, B, 4 * H)), scratch(ws, "dR", (T, B, H)),
                   ws.dh, ws.dc, scratch(ws, "dm", (B, H)), dUg, dUm, ws.UTp[:, : 4 * H],
                   ws.UTp[:, 4 * H :])
    dU[:, : 4 * H], dU[:, 4 * H :] = dUg, dUm


CELL = Cell("mlstm", blocks=5, gates=("i", "f", "g", "o"), sigmoid_gates=("i", "f", "o"),
            has_c=True, forward=forward, backward=backward, step=mlstm_step, forget=1,
            buffers=("Rm", "M"), multiplicative=True, whole_layer=True,
            doc="the multiplicative LSTM (Krause et al. 2016)")
