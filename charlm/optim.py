"""In-place optimizer updates over the flat parameter vector: Adam, RMSprop, global-norm clipping.

The parameters and their gradients each live in one flat array (see model.py), so every update
below is a single pass over memory.
"""

import math

import numba as nb
import numpy as np

from charlm.kernels import LEAF, ONE


@nb.njit(**LEAF)
def adam_update(theta, grad, m, v, lr_t, beta1, beta2, eps):
    r"""One Adam step, with the bias corrections folded into lr_t by the caller.

    .. math::

        m \leftarrow \beta_1 m + (1-\beta_1) g
        v \leftarrow \beta_2 v + (1-\beta_2) g^2
        \theta \leftarrow \theta - \mathrm{lr}_t \, m / (\sqrt{v} + \epsilon)
    """
    for k in range(theta.shape[0]):
        g = grad[k]
        m[k] = beta1 * m[k] + (ONE - beta1) * g
        v[k] = beta2 * v[k] + (ONE - beta2) * g * g
        theta[k] -= lr_t * m[k] / (np.sqrt(v[k]) + eps)


@nb.njit(**LEAF)
def rmsprop_update(theta, grad, v, lr, alpha, eps):
    r"""One RMSprop step as char-rnn used it.

    .. math::

        v \leftarrow \alpha v + (1-\alpha) g^2
        \theta \leftarrow \theta - \mathrm{lr}\, g / (\sqrt{v} + \epsilon)
    """
    for k in range(theta.shape[0]):
        g = grad[k]
        v[k] = alpha * v[k] + (ONE - alpha) * g * g
        theta[k] -= lr * g / (np.sqrt(v[k]) + eps)


@nb.njit(cache=True, nogil=True)
def global_norm(grad):
    """sqrt(sum g^2), accumulated in float64 so a float32 sum of millions of terms stays exact."""
    s = 0.0
    for k in range(grad.shape[0]):
        s += np.float64(grad[k]) ** 2
    return np.sqrt(s)


@nb.njit(**LEAF)
def scale(x, a):
    """x *= a in place."""
    for k in range(x.shape[0]):
        x[k] *= a


def clip_grad_norm(grad: np.ndarray, max_norm: float) -> float:
    """Scale grad in place so its global norm is at most max_norm; return the norm before."""
    norm = float(global_norm(grad))
    if max_norm > 0 and norm > max_norm:
        scale(grad, grad.dtype.type(max_norm / (norm + 1e-6)))
    return norm


class Adam:
    """Adam over a flat parameter vector (state: m, v, step), updated in place."""

    def __init__(self, n: int, dtype: np.dtype, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        self.m = np.zeros(n, dtype)
        self.v = np.zeros(n, dtype)
        self.step = 0
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def update(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.step += 1
        # bias corrections of m and v folded into the step size
        lr_t = lr * math.sqrt(1 - self.beta2**self.step) / (1 - self.beta1**self.step)
        f = theta.dtype.type
        adam_update(theta, grad, self.m, self.v, f(lr_t), f(self.beta1), f(self.beta2),
                    f(self.eps))

    def state(self) -> dict[str, np.ndarray]:
        return {"m": self.m, "v": self.v, "step": np.array(self.step)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.m[:] = state["m"]
        self.v[:] = state["v"]
        self.step = int(state["step"])


class RMSprop:
    """RMSprop over a flat parameter vector (state: v), updated in place."""

    def __init__(self, n: int, dtype: np.dtype, alpha: float = 0.95, eps: float = 1e-8) -> None:
        self.v = np.zeros(n, dtype)
        self.step = 0
        self.alpha, self.eps = alpha, eps

    def update(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.step += 1
        f = theta.dtype.type
        rmsprop_update(theta, grad, self.v, f(lr), f(self.alpha), f(self.eps))

    def state(self) -> dict[str, np.ndarray]:
        return {"v": self.v, "step": np.array(self.step)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.v[:] = state["v"]
        self.step = int(state["step"])


OPTIMIZERS = {"adam": Adam, "rmsprop": RMSprop}
