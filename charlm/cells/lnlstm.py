"""The layer-normalised LSTM (Ba et al. 2016): the gates' two products and the cell are normalised.

    z_t = LN(x_t W; γ_x) + LN(h_{t-1} U; γ_h) + b          (4H: blocks i, f, g, o)
    i_t = σ(z^i_t)  f_t = σ(z^f_t)  g_t = tanh(z^g_t)  o_t = σ(z^o_t)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                        h_t = o_t ⊙ tanh(LN(c_t; γ_c) + β_c)

    LN(v; γ) = γ ⊙ (v - mean(v)) / sqrt(var(v) + ε),  ε = 1e-5 (torch's LayerNorm default)

As Ba et al.'s recurrent LSTM: the input and the recurrent products are normalised apart, each
over its whole 4H vector (the statistics are those of all four gates' pre-activations together),
and the cell is normalised over its H units before its tanh; the carried state c_t is the one
before normalisation. Each normalisation has a gain per element (γ_x, γ_h: (4, H); γ_c: (H,),
starting at 1); their shifts would add up to one bias per gate, which is b (4H, added after the
normalisations, so the forget gate's starts at forget_bias), and the cell's shift is β_c
(starting at 0). Training runs the equations over a window (lnlstm_forward, lnlstm_backward);
generation runs them one step at a time on a whole layer (lnlstm_step).
"""

import numba as nb
import numpy as np

from charlm.cells.cell import Cell, Extra, scratch
from charlm.gemm import matmul
from charlm.kernels import BLOCK, LEAF, ONE, STEP, sigmoid, tanh

EPS = 1e-5  # added to the variance under the square root


@nb.njit(inline="always", **LEAF)
def moments(v, eps):
    """mean(v) and 1 / sqrt(var(v) + eps), in two passes (the variance of what is left)."""
    n = v.shape[0]
    mu = v[0] * 0
    for k in range(n):
        mu += v[k]
    mu /= np.float32(n)  # a float32 divisor keeps float32 code float32
    var = v[0] * 0
    for k in range(n):
        d = v[k] - mu
        var += d * d
    var /= np.float32(n)
    return mu, ONE / np.sqrt(var + eps)


@nb.njit(**LEAF)
def lnlstm_forward(Z, U, b, gx, gh, gc, bc, Hs, Cs, XW, HU, S, eps, Up):
    r"""Run one layer-normalised LSTM layer over T steps.

    .. math::

        \hat{u} = (u - \mu_u) / \sqrt{\sigma^2_u + \epsilon} \quad \text{for } u = x_t W,\;
            h_{t-1} U \text{ (over } 4H) \text{ and } c_t \text{ (over } H)
        z_t = \gamma_x \odot \widehat{x_t W} + \gamma_h \odot \widehat{h_{t-1} U} + b
        c_t = \sigma(z^f_t) \odot c_{t-1} + \sigma(z^i_t) \odot \tanh(z^g_t)
        h_t = \sigma(z^o_t) \odot \tanh(\gamma_c \odot \hat{c}_t + \beta_c)

    Parameters
    ----------
    Z : (T, B, 4H) in: x_t W (without b). out: the gates i, f, g, o after their nonlinearities.
    U : (H, 4H).  b, gx, gh : (4H,) the bias and the products' gains.  gc, bc : (H,).
    Hs, Cs : (T+1, B, H) h_0, c_0 on entry; step t writes Hs[t+1], Cs[t+1] (c before LN).
    XW, HU : (T, B, 4H) out: x_t W and h_{t-1} U.  S : (T, B, 6) out: mean and 1/std of x_t W,
    h_{t-1} U and c_t.  eps : the variance's epsilon.
    Up : U as the micro-kernel's panels (charlm.gemm.as_panels_into), read in float32.
    """
    T, B, H4 = Z.shape
    H = H4 // 4
    for t in range(T):
        matmul(Hs[t], U, Up, HU[t])
        for n in range(B):
            z, xw, hu, s = Z[t, n], XW[t, n], HU[t, n], S[t, n]
            xw[:] = z
            mx, rx = moments(xw, eps)
            mh, rh = moments(hu, eps)
            for k in range(H4):
                z[k] = gx[k] * (xw[k] - mx) * rx + gh[k] * (hu[k] - mh) * rh + b[k]
            zi, zf, zg, zo = z[:H], z[H : 2 * H], z[2 * H : 3 * H], z[3 * H :]
            c_prev, c, h = Cs[t, n], Cs[t + 1, n], Hs[t + 1, n]
            for j in range(H):
                i = sigmoid(zi[j])
                f = sigmoid(zf[j])
                g = tanh(zg[j])
                c[j] = f * c_prev[j] + i * g
                zi[j], zf[j], zg[j], zo[j] = i, f, g, sigmoid(zo[j])
            mc, rc = moments(c, eps)
            for j in range(H):
                h[j] = zo[j] * tanh(gc[j] * (c[j] - mc) * rc + bc[j])
            s[0], s[1], s[2], s[3], s[4], s[5] = mx, rx, mh, rh, mc, rc


@nb.njit(**LEAF)
def lnlstm_backward(G, U, gx, gh, gc, bc, Hs, Cs, XW, HU, S, dH, dZ, dHU, dh, dc, dU, db, dgx,
                    dgh, dgc, dbc, UTp):
    r"""Backpropagate through one layer-normalised LSTM layer over T steps (truncated).

    With y = γ ⊙ û + β and û = (u - μ) r (r = 1/std) over n elements, LN's backward is (a bar
    is the mean over the n elements)

    .. math::

        d\hat{u} = dy \odot \gamma \qquad
        du = r (d\hat{u} - \overline{d\hat{u}} - \hat{u} \, \overline{d\hat{u} \odot \hat{u}})
        \qquad d\gamma = \sum dy \odot \hat{u} \qquad d\beta = \sum dy

    applied to h_t's LN(c_t) (dy = dh_t ⊙ o_t ⊙ (1 - tanh^2 y)), giving dc_t with the carried
    dc_{t+1} ⊙ f_{t+1}; then dz_t as the LSTM's, db = Σ dz_t, and dz_t through the two
    products' LNs: d(x_t W) into dZ, d(h_{t-1} U) into dHU, dh_{t-1} = d(h_{t-1} U) U^T.

    Parameters
    ----------
    G : (T, B, 4H) gates from lnlstm_forward.  U : (H, 4H).  gx, gh : (4H,).  gc, bc : (H,).
    Hs, Cs, XW, HU, S : from lnlstm_forward.  dH : (T, B, H) dL/dh_t from above.
    dZ : (T, B, 4H) out: dL/d(x_t W).  dHU : (T, B, 4H) out: dL/d(h_{t-1} U).
    dh, dc : (B, H) workspaces.  dU : (H, 4H), db, dgx, dgh : (4H,), dgc, dbc : (H,) out.
    UTp : U^T as the micro-kernel's panels, read in float32.
    """
    T, B, H4 = G.shape
    H = H4 // 4
    dh[:] = 0
    dc[:] = 0
    db[:] = 0
    dgx[:] = 0
    dgh[:] = 0
    dgc[:] = 0
    dbc[:] = 0
    for t in range(T - 1, -1, -1):
        for n in range(B):
            gi, gf = G[t, n, :H], G[t, n, H : 2 * H]
            gg, go = G[t, n, 2 * H : 3 * H], G[t, n, 3 * H :]
            dz = dZ[t, n]
            dzi, dzf = dz[:H], dz[H : 2 * H]
            dzg, dzo = dz[2 * H : 3 * H], dz[3 * H :]
            c_prev, c, s = Cs[t, n], Cs[t + 1, n], S[t, n]
            dh_n, dc_n, dh_above = dh[n], dc[n], dH[t, n]
            mc, rc = s[4], s[5]
            # through h_t = o ⊙ tanh(γ_c ĉ + β_c): dĉ waits in dz's i block for its means
            s1 = s2 = gc[0] * 0
            for j in range(H):
                o = go[j]
                c_hat = (c[j] - mc) * rc
                tanh_y = tanh(gc[j] * c_hat + bc[j])
                dh_j = dh_above[j] + dh_n[j]
                dy = dh_j * o * (ONE - tanh_y * tanh_y)
                dzo[j] = dh_j * tanh_y * o * (ONE - o)
                dgc[j] += dy * c_hat
                dbc[j] += dy
                dzi[j] = dy * gc[j]
                s1 += dzi[j]
                s2 += dzi[j] * c_hat
            s1 /= np.float32(H)
            s2 /= np.float32(H)
            for j in range(H):
                i, f, g = gi[j], gf[j], gg[j]
                c_hat = (c[j] - mc) * rc
                dc_j = dc_n[j] + rc * (dzi[j] - s1 - c_hat * s2)
                dzi[j] = dc_j * g * i * (ONE - i)
                dzf[j] = dc_j * c_prev[j] * f * (ONE - f)
                dzg[j] = dc_j * i * (ONE - g * g)
                dc_n[j] = dc_j * f
            # dz_t through the two products' normalisations
            xw, hu, dhu = XW[t, n], HU[t, n], dHU[t, n]
            mx, rx, mh, rh = s[0], s[1], s[2], s[3]
            sx1 = sx2 = sh1 = sh2 = gc[0] * 0
            for k in range(H4):
                x_hat, h_hat = (xw[k] - mx) * rx, (hu[k] - mh) * rh
                db[k] += dz[k]
                dgx[k] += dz[k] * x_hat
                dgh[k] += dz[k] * h_hat
                sx1 += dz[k] * gx[k]
                sx2 += dz[k] * gx[k] * x_hat
                sh1 += dz[k] * gh[k]
                sh2 += dz[k] * gh[k] * h_hat
            sx1 /= np.float32(H4)
            sx2 /= np.float32(H4)
            sh1 /= np.float32(H4)
            sh2 /= np.float32(H4)
            for k in range(H4):
                x_hat, h_hat = (xw[k] - mx) * rx, (hu[k] - mh) * rh
                dhu[k] = rh * (dz[k] * gh[k] - sh1 - h_hat * sh2)
                dz[k] = rx * (dz[k] * gx[k] - sx1 - x_hat * sx2)
        if t > 0:
            matmul(dHU[t], U.T, UTp, dh)
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dHU.reshape(T * B, H4), dU)


# moments again, under STEP: numba's cache index does not key on flags, so one Python function
# jitted twice (fastmath for training, exact for generation) could load the other's code
@nb.njit(**STEP)
def _moments_step(v, eps):
    """mean(v) and 1 / sqrt(var(v) + eps) in order of v's elements (generation's, exact)."""
    n = v.shape[0]
    mu = v[0] * 0
    for k in range(n):
        mu += v[k]
    mu /= np.float32(n)  # a float32 divisor keeps float32 code float32
    var = v[0] * 0
    for k in range(n):
        d = v[k] - mu
        var += d * d
    var /= np.float32(n)
    return mu, ONE / np.sqrt(var + eps)


@nb.njit(**STEP)
def lnlstm_step(z, P, h, c, h_new, u0, u1):
    r"""The layer-normalised LSTM cell of one stream, a whole layer (u0 = 0, u1 = H).

    .. math::

        z = \gamma_x \odot \widehat{x W} + \gamma_h \odot \widehat{h U} + b \qquad
        c \leftarrow \sigma(z_f) \odot c + \sigma(z_i) \odot \tanh(z_g) \qquad
        h_{new} = \sigma(z_o) \odot \tanh(\gamma_c \odot \hat{c} + \beta_c)

    z : (8H,) x W in its first half, h U in its second, packed (see block_columns); the
    statistics are taken over each whole half, so the step needs the whole layer.
    P : (14, H) per unit: b (4 rows: i, f, g, o), γ_x (4), γ_h (4), γ_c, β_c.
    """
    H = c.shape[0]
    eps = np.float32(EPS)
    mx, rx = _moments_step(z[: 4 * H], eps)
    mh, rh = _moments_step(z[4 * H :], eps)
    for ub in range(u0, u1, BLOCK):
        s = min(BLOCK, H - ub)
        k, kh = 4 * ub, 4 * H + 4 * ub
        cb = c[ub : ub + s]
        for j in range(s):
            u = ub + j
            zi = P[4, u] * (z[k + j] - mx) * rx + P[8, u] * (z[kh + j] - mh) * rh + P[0, u]
            zf = (P[5, u] * (z[k + s + j] - mx) * rx + P[9, u] * (z[kh + s + j] - mh) * rh
                  + P[1, u])
            zg = (P[6, u] * (z[k + 2 * s + j] - mx) * rx
                  + P[10, u] * (z[kh + 2 * s + j] - mh) * rh + P[2, u])
            zo = (P[7, u] * (z[k + 3 * s + j] - mx) * rx
                  + P[11, u] * (z[kh + 3 * s + j] - mh) * rh + P[3, u])
            cb[j] = sigmoid(zf) * cb[j] + sigmoid(zi) * tanh(zg)
            z[k + 3 * s + j] = sigmoid(zo)  # o waits for the cell's statistics
    mc, rc = _moments_step(c, eps)
    for ub in range(u0, u1, BLOCK):
        s = min(BLOCK, H - ub)
        for j in range(s):
            u = ub + j
            h_new[u] = z[4 * ub + 3 * s + j] * tanh(P[12, u] * (c[u] - mc) * rc + P[13, u])


def forward(p: dict, ws, layer: int) -> None:
    T, B, H4 = ws.Z[layer].shape
    lnlstm_forward(ws.Z[layer], p[f"U{layer}"], p[f"b{layer}"], p[f"gx{layer}"].reshape(H4),
                   p[f"gh{layer}"].reshape(H4), p[f"gc{layer}"], p[f"bc{layer}"], ws.Hs[layer],
                   ws.Cs[layer], scratch(ws, f"XW{layer}", (T, B, H4)),
                   scratch(ws, f"HU{layer}", (T, B, H4)), scratch(ws, f"S{layer}", (T, B, 6)),
                   ws.dh.dtype.type(EPS), ws.Up)


def backward(p: dict, d: dict, ws, layer: int) -> None:
    T, B, H4 = ws.Z[layer].shape
    lnlstm_backward(ws.Z[layer], p[f"U{layer}"], p[f"gx{layer}"].reshape(H4),
                    p[f"gh{layer}"].reshape(H4), p[f"gc{layer}"], p[f"bc{layer}"], ws.Hs[layer],
                    ws.Cs[layer], getattr(ws, f"XW{layer}"), getattr(ws, f"HU{layer}"),
                    getattr(ws, f"S{layer}"), ws.dH, ws.dZ, scratch(ws, "dHU", (T, B, H4)),
                    ws.dh, ws.dc, d[f"U{layer}"], d[f"b{layer}"], d[f"gx{layer}"].reshape(H4),
                    d[f"gh{layer}"].reshape(H4), d[f"gc{layer}"], d[f"bc{layer}"], ws.UTp)


CELL = Cell("lnlstm", blocks=4, gates=("i", "f", "g", "o"), sigmoid_gates=("i", "f", "o"),
            has_c=True, forward=forward, backward=backward, step=lnlstm_step, forget=1,
            extras=(Extra("gx", 4, "one"), Extra("gh", 4, "one"), Extra("gc", 0, "one"),
                    Extra("bc", 0, "zero")),
            split_recurrent=True, own_bias=True, whole_layer=True,
            doc="the layer-normalised LSTM (Ba et al. 2016)")
