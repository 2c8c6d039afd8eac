"""Numba kernels every cell shares: the nonlinearities, the linear maps, the embedding and the head.

Every kernel is a plain function over arrays; the caller allocates outputs and workspaces once
and passes them in, so nothing here allocates inside a time loop. Arrays are time-major:
T, B = time steps, batch. The cells' own kernels are in charlm/cells/, one module per cell.
"""

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

from charlm import jitcache

jitcache.install()  # before any kernel is defined: see jitcache

# constants typed float32 so float32 code stays float32 (an int or a python float would promote
# to float64); in float64 kernels they promote exactly.
ONE = np.float32(1.0)
HALF = np.float32(0.5)

# arithmetic leaves: fastmath lets LLVM vectorise; error_model="numpy" drops the zero-division
# check that otherwise turns every division into a branch (and blocks vectorisation).
LEAF = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)
# generation's products (explicit fmas) and cells: fma contraction only, so no sum is reordered
# (fastmath=True would allow reassociation, which can differ between inlined copies)
MATVEC = dict(cache=True, fastmath={"contract"}, error_model="numpy", nogil=True)
# the cells' packed steps of generation: no contraction at all. A sum of two products (f c + i g)
# can be fused into an fma around either one, and LLVM's choice follows the code around it
# (the serial step or a thread's group of streams, a fresh compile or numba's cache), so a
# stream's text would depend on how it was run. fastmath=False is set, not left out: left out,
# numba lets a function inherit its first caller's flags.
STEP = dict(cache=True, fastmath=False, error_model="numpy", nogil=True)
BLOCK = 16  # units per gate block of generation's packed columns: two float32 vectors a gate


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
