"""Numba kernels of the LSTM language model: forward and backward through time, and the head.

Every kernel is a plain function over arrays; the caller allocates outputs and workspaces once
and passes them in, so nothing here allocates inside a time loop. Arrays are time-major:
T, B = time steps, batch. Gate blocks of a 4H vector are laid out in the order i, f, g, o.
"""

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

# constants typed float32 so float32 code stays float32 (an int or a python float would promote
# to float64); in float64 kernels they promote exactly.
ONE = np.float32(1.0)
HALF = np.float32(0.5)

# arithmetic leaves: fastmath lets LLVM vectorise; error_model="numpy" drops the zero-division
# check that otherwise turns every division into a branch (and blocks vectorisation).
LEAF = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)


def tanh(x):
    """tanh, vectorisable in float32 (see the overload below); libm's in float64."""
    return np.tanh(x)


# sigmoid and tanh are compiled with flags of their own: a function called from a kernel
# otherwise inherits the fastmath flags of whichever kernel compiled it first in the process,
# and every kernel compiled later inlines that copy, so the same kernel's results would depend
# on what ran before it (contraction decides where a product is rounded).
INNER = dict(fastmath={"contract"}, error_model="numpy")


@overload(tanh, jit_options=INNER)
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        # libm's tanhf is a scalar call that LLVM cannot vectorise (a 50x512 gate step cost
        # ~1 ms with it). this rational approximation (the one Eigen uses for float) is within
        # a few ulp of tanhf on [-9, 9], beyond which tanh rounds to +-1 in float32.
        def tanh_f32(x):
            x = np.float32(9.0) if x > np.float32(9.0) else x
            x = np.float32(-9.0) if x < np.float32(-9.0) else x
            x2 = x * x
            p = np.float32(-2.76076847742355e-16)
            p = p * x2 + np.float32(2.00018790482477e-13)
            p = p * x2 + np.float32(-8.60467152213735e-11)
            p = p * x2 + np.float32(5.12229709037114e-08)
            p = p * x2 + np.float32(1.48572235717979e-05)
            p = p * x2 + np.float32(6.37261928875436e-04)
            p = p * x2 + np.float32(4.89352455891786e-03)
            q = np.float32(1.19825839466702e-06)
            q = q * x2 + np.float32(1.18534705686654e-04)
            q = q * x2 + np.float32(2.26843463243900e-03)
            q = q * x2 + np.float32(4.89352518554385e-03)
            return x * p / q

        return tanh_f32
    # float64 is for gradient checks: exact libm tanh
    return lambda x: np.tanh(x)


@nb.njit(**INNER)
def sigmoid(x):
    """sigma(x) = 1 / (1 + exp(-x)) = (1 + tanh(x/2)) / 2, so it vectorises like tanh."""
    return HALF + HALF * tanh(HALF * x)


# --------------------------------------------------------------------------------------------
# the LSTM recurrence


@nb.njit(**LEAF)
def lstm_forward(Z, U, Hs, Cs, R):
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
    R : (B, 4H) workspace for h_{t-1} U.
    """
    T, B, H4 = Z.shape
    H = H4 // 4
    for t in range(T):
        np.dot(Hs[t], U, R)
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
def lstm_backward(G, U, Hs, Cs, dH, dZ, dh, dc, dU, UT):
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
    UT : (4H, H) workspace for a contiguous copy of U^T (BLAS reads it faster than U.T).
    """
    T, B, H4 = G.shape
    H = H4 // 4
    # nothing flows in from beyond the window: truncated BPTT
    dh[:] = 0
    dc[:] = 0
    UT[:] = U.T
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
            np.dot(dZ[t], UT, dh)
    # weight gradient with one large matrix multiply after the time loop
    Hprev = Hs.reshape((T + 1) * B, H)[: T * B]
    np.dot(Hprev.T, dZ.reshape(T * B, H4), dU)


# --------------------------------------------------------------------------------------------
# linear maps, the embedding and the head


@nb.njit(cache=True, nogil=True)
def linear_forward(X, W, b, Y):
    """Y = X W + b for X (N, n_in), W (n_in, n_out), b (n_out,), Y (N, n_out)."""
    np.dot(X, W, Y)
    for n in range(Y.shape[0]):
        Y[n] += b


@nb.njit(cache=True, nogil=True)
def linear_backward(X, W, dY, dX, dW, db):
    """Given dY = dL/dY for Y = X W + b: dW = X^T dY, db = sum_n dY[n], and dX = dY W^T.

    Pass dX with zero rows to skip the input gradient (the bottom of the network).
    """
    np.dot(X.T, dY, dW)
    db[:] = 0
    for n in range(dY.shape[0]):
        db += dY[n]
    if dX.shape[0] > 0:
        np.dot(dY, W.T, dX)


@nb.njit(cache=True, nogil=True)
def gather_rows(table, idx, Y):
    """Y[n] = table[idx[n]]: the first layer's x_t W + b is a row of (E W + b), x_t = E[idx]."""
    for n in range(idx.shape[0]):
        Y[n] = table[idx[n]]


@nb.njit(cache=True, nogil=True)
def scatter_add_rows(dY, idx, dtable):
    """dtable = sum over n of dY[n] into row idx[n]: the transpose of gather_rows."""
    dtable[:] = 0
    for n in range(idx.shape[0]):
        dtable[idx[n]] += dY[n]


@nb.njit(cache=True, nogil=True)
def softmax_cross_entropy(logits, targets, dlogits):
    r"""Mean cross-entropy (nats) of rows of logits against targets, and its gradient.

    .. math::  p = \mathrm{softmax}(z),\quad L = -\frac{1}{N}\sum_n \log p_{n, y_n},\quad
               \frac{\partial L}{\partial z_n} = (p_n - \mathrm{onehot}(y_n)) / N

    No fastmath here: the max-shift and log rely on exact inf/NaN semantics. dlogits may be
    the same array as logits.
    """
    N, V = logits.shape
    total = 0.0
    for n in range(N):
        z, dz = logits[n], dlogits[n]
        y = targets[n]
        m = z.max()
        total += m - z[y]  # read before dz (possibly z itself) is written
        s = 0.0
        for v in range(V):
            e = np.exp(z[v] - m)
            dz[v] = e
            s += e
        total += np.log(s)
        inv = 1.0 / (s * N)
        for v in range(V):
            dz[v] *= inv
        dz[y] -= 1.0 / N
    return total / N


@nb.njit(cache=True, nogil=True)
def cross_entropy(logits, targets):
    """Sum over rows of -log softmax(logits)[target] in nats (for evaluation: no gradient)."""
    total = 0.0
    for n in range(logits.shape[0]):
        z = logits[n]
        m = z.max()
        s = 0.0
        for v in range(z.shape[0]):
            s += np.exp(z[v] - m)
        total += np.log(s) + m - z[targets[n]]
    return total
