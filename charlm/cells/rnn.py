"""The vanilla tanh RNN (char-rnn's "rnn"): h_t = tanh(x_t W + h_{t-1} U + b).

One block, no gates, no cell state. Its training kernels and its packed step of generation.
"""

import numba as nb
import numpy as np

from charlm.cells.cell import Cell
from charlm.gemm import matmul
from charlm.kernels import LEAF, ONE, STEP, tanh


@nb.njit(**LEAF)
def rnn_forward(Z, U, Hs, Up, R):
    r"""Run one tanh RNN layer over T steps.

    .. math::  h_t = \tanh(x_t W + h_{t-1} U + b)

    Parameters
    ----------
    Z : (T, B, H) x_t W + b for every step (left as it is: the backward pass needs only h).
    U : (H, H) recurrent weights.
    Hs : (T+1, B, H) Hs[0] holds h_0 on entry; step t writes Hs[t+1].
    Up : U as the micro-kernel's panels (charlm.gemm.as_panels_into), read in float32.
    R : (B, H) workspace for h_{t-1} U.
    """
    T, B, H = Z.shape
    for t in range(T):
        matmul(Hs[t], U, Up, R)
        for n in range(B):
            a, r, h = Z[t, n, :H], R[n, :H], Hs[t + 1, n]
            for j in range(H):
                h[j] = tanh(a[j] + r[j])


@nb.njit(**LEAF)
def rnn_backward(U, Hs, dH, dZ, dh, dU, UTp):
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
    dU : (H, H) out: dL/dU.
    UTp : U^T as panels (as_panels_into), read in float32.
    """
    T, B, H = dH.shape
    dh[:] = 0
    for t in range(T - 1, -1, -1):
        for n in range(B):
            h, dz = Hs[t + 1, n], dZ[t, n, :H]
            dh_n, dh_above = dh[n], dH[t, n]
            for j in range(H):
                dz[j] = (dh_above[j] + dh_n[j]) * (ONE - h[j] * h[j])
        if t > 0:
            matmul(dZ[t], U.T, UTp, dh)
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dZ.reshape(T * B, H), dU)


@nb.njit(**STEP)
def rnn_step(z, P, h, c, h_new, u0, u1):
    r"""The tanh RNN cell of one stream for units [u0, u1): h_new = tanh(z)."""
    for j in range(u0, u1):
        h_new[j] = tanh(z[j])


def forward(p: dict, ws, layer: int) -> None:
    rnn_forward(ws.Z[layer], p[f"U{layer}"], ws.Hs[layer], ws.Up, ws.R)


def backward(p: dict, d: dict, ws, layer: int) -> None:
    rnn_backward(p[f"U{layer}"], ws.Hs[layer], ws.dH, ws.dZ, ws.dh, d[f"U{layer}"], ws.UTp)


CELL = Cell("rnn", blocks=1, gates=(), sigmoid_gates=(), has_c=False, forward=forward,
            backward=backward, step=rnn_step, torch="RNN", doc="the vanilla tanh RNN")
