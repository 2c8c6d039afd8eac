"""Numba kernels of the other recurrent cells: GRU, vanilla RNN, peephole and coupled LSTM.

The same design as kernels.lstm_forward / lstm_backward: the caller computes the input part
x_t W + b of all T steps in one matrix multiply and allocates every output and workspace; only
h_{t-1} U (forward) and dz_t U^T (backward) stay inside the time loop, the gate arithmetic of a
step is one fused pass over one 1-D view per gate block (which LLVM vectorises), and the
recurrent weight gradient is one matrix multiply after the loop. Arrays are time-major.
"""

import numba as nb
import numpy as np

from charlm.kernels import LEAF, ONE, sigmoid, tanh

# --------------------------------------------------------------------------------------------
# vanilla RNN (char-rnn's "rnn"): one block


@nb.njit(**LEAF)
def rnn_forward(Z, U, Hs, R):
    r"""Run one tanh RNN layer over T steps.

    .. math::  h_t = \tanh(x_t W + h_{t-1} U + b)

    Parameters
    ----------
    Z : (T, B, H) x_t W + b for every step (left as it is: the backward pass needs only h).
    U : (H, H) recurrent weights.
    Hs : (T+1, B, H) Hs[0] holds h_0 on entry; step t writes Hs[t+1].
    R : (B, H) workspace for h_{t-1} U.
    """
    T, B, H = Z.shape
    for t in range(T):
        np.dot(Hs[t], U, R)
        for n in range(B):
            a, r, h = Z[t, n, :H], R[n, :H], Hs[t + 1, n]
            for j in range(H):
                h[j] = tanh(a[j] + r[j])


@nb.njit(**LEAF)
def rnn_backward(U, Hs, dH, dZ, dh, dU, UT):
    r"""Backpropagate through one tanh RNN layer over T steps (truncated at the window).

    .. math::

        dz_t = (dh_t + dz_{t+1} U^\top) \odot (1 - h_t^2)
        dU = \sum_t h_{t-1}^\top dz_t

    Parameters
    ----------
    U : (H, H) recurrent weights.  Hs : (T+1, B, H) states from rnn_forward.
    dH : (T, B, H) dL/dh_t from the layer above (or the head).
    dZ : (T, B, H) out: dL/dz_t, the gradient of the pre-activations.
    dh : (B, H) workspace for the gradient carried back in time.
    dU : (H, H) out: dL/dU.  UT : (H, H) workspace for a contiguous copy of U^T.
    """
    T, B, H = dH.shape
    dh[:] = 0
    UT[:] = U.T
    for t in range(T - 1, -1, -1):
        for n in range(B):
            h, dz = Hs[t + 1, n], dZ[t, n, :H]
            dh_n, dh_above = dh[n], dH[t, n]
            for j in range(H):
                dz[j] = (dh_above[j] + dh_n[j]) * (ONE - h[j] * h[j])
        if t > 0:
            np.dot(dZ[t], UT, dh)
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dZ.reshape(T * B, H), dU)


# --------------------------------------------------------------------------------------------
# GRU, as torch.nn.GRU computes it: blocks r, z, n


@nb.njit(**LEAF)
def gru_forward(Z, U, bh, Hs, Q, R):
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
    R : (B, 3H) workspace for h_{t-1} U.
    """
    T, B, H3 = Z.shape
    H = H3 // 3
    for t in range(T):
        np.dot(Hs[t], U, R)
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
def gru_backward(G, U, Q, Hs, dH, dZ, dN, dh, dh_skip, dU, dbh, UT):
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
    dU : (H, 3H) out: dL/dU.  dbh : (H,) out: dL/db_hn.  UT : (3H, H) workspace.
    """
    T, B, H3 = G.shape
    H = H3 // 3
    dh[:] = 0
    UT[:] = U.T
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
            np.dot(dZ[t], UT, dh)
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


# --------------------------------------------------------------------------------------------
# peephole LSTM (Gers & Schmidhuber): the gates also see the cell


@nb.njit(**LEAF)
def peephole_forward(Z, U, P, Hs, Cs, R):
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
    R : (B, 4H) workspace for h_{t-1} U.
    """
    T, B, H4 = Z.shape
    H = H4 // 4
    pi, pf, po = P[0], P[1], P[2]
    for t in range(T):
        np.dot(Hs[t], U, R)
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
def peephole_backward(G, U, P, Hs, Cs, dH, dZ, dh, dc, dU, dP, UT):
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
    dU : (H, 4H) out: dL/dU.  dP : (3, H) out: dL/dP.  UT : (4H, H) workspace.
    """
    T, B, H4 = G.shape
    H = H4 // 4
    dh[:] = 0
    dc[:] = 0
    dP[:] = 0
    UT[:] = U.T
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
            np.dot(dZ[t], UT, dh)
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dZ.reshape(T * B, H4), dU)


# --------------------------------------------------------------------------------------------
# coupled LSTM: the input gate is 1 - f, blocks f, g, o


@nb.njit(**LEAF)
def coupled_forward(Z, U, Hs, Cs, R):
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
    R : (B, 3H) workspace for h_{t-1} U.
    """
    T, B, H3 = Z.shape
    H = H3 // 3
    for t in range(T):
        np.dot(Hs[t], U, R)
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
def coupled_backward(G, U, Hs, Cs, dH, dZ, dh, dc, dU, UT):
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
    dU : (H, 3H) out: dL/dU.  UT : (3H, H) workspace.
    """
    T, B, H3 = G.shape
    H = H3 // 3
    dh[:] = 0
    dc[:] = 0
    UT[:] = U.T
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
            np.dot(dZ[t], UT, dh)
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dZ.reshape(T * B, H3), dU)
