"""Drawing a character: softmax with temperature, top-k, top-p, and the counter-based RNG.

The kernels here run on every step of generation, in exact arithmetic (no fastmath: softmax,
log-sum-exp and sampling rely on inf/NaN semantics). log_softmax and entropy are the NumPy
forms that the library's distributions and the service's /next share.
"""

import numba as nb
import numpy as np

from charlm import jitcache

jitcache.install()  # before any kernel is defined: see jitcache
EXACT = dict(cache=True, nogil=True)

# splitmix64 constants (Steele, Lea, Flood 2014), typed uint64 so numba never mixes in int64
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
S11, S27, S30, S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
TWO_M53 = 2.0**-53
MASK64 = (1 << 64) - 1


def stream_key(seed: int) -> int:
    """The 64-bit key of a stream's random numbers: splitmix64 of the seed."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@nb.njit(**EXACT)
def uniform(key, counter):
    r"""The counter-th uniform number of the stream with this key, in [0, 1) with 53 bits.

    .. math::  u = \lfloor \mathrm{mix}(\mathrm{key} + (k+1)\,\varphi) / 2^{11} \rfloor \, 2^{-53}

    with mix the splitmix64 finaliser and phi = 0x9E3779B97F4A7C15: a counter-based generator,
    so a stream's numbers depend only on its key and how many it has drawn.
    """
    z = key + (counter + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    z = z ^ (z >> S31)
    return np.float64(z >> S11) * TWO_M53


@nb.njit(**EXACT)
def draw(z, temperature, top_k, top_p, u, p, order):
    r"""The next character, drawn with uniform u, and its log-probability under softmax(z).

    .. math::

        p_v \propto \exp((z_v - \max z) / T), \qquad
        \mathrm{logp}_y = z_y - \log \sum_v \exp z_v

    The draw is from p, filtered by pick; T = 0 is greedy, the first index of the largest
    logit. logp is under the model's own distribution (T = 1, unfiltered), whatever the
    settings, so it says what the model thought of the character.

    Parameters
    ----------
    z : (V,) logits.
    p : (V,) float64 workspace, order : (V,) int64 workspace.

    Returns
    -------
    y, logp
    """
    V = z.shape[0]
    m = np.float64(z[0])
    best = 0
    for v in range(1, V):
        if z[v] > m:
            m, best = np.float64(z[v]), v
    # softmax(z): the normaliser of logp, and at T = 1 the weights of the draw too
    s = 0.0
    for v in range(V):
        p[v] = np.exp(np.float64(z[v]) - m)
        s += p[v]
    lse = m + np.log(s)
    if temperature == 0.0:
        return best, np.float64(z[best]) - lse
    total = s
    if temperature != 1.0:
        total = 0.0
        for v in range(V):
            p[v] = np.exp((np.float64(z[v]) - m) / temperature)
            total += p[v]
    y = pick(p, total, best, top_k, top_p, u, order)
    return y, np.float64(z[y]) - lse


@nb.njit(**EXACT)
def pick(p, total, best, top_k, top_p, u, order):
    r"""Index drawn with uniform u from unnormalised weights p (summing to total).

    Restricted to the top_k largest weights (top_k > 0), then to the fewest largest of those
    whose renormalised mass is at least top_p (nucleus); the pick is the first character
    whose cumulative kept mass exceeds u times the kept mass. Ties keep index order.
    best (the largest weight's index) is the answer if rounding leaves u past the sum.
    """
    V = p.shape[0]
    if (top_k <= 0 or top_k >= V) and top_p >= 1.0:
        target, acc, last = u * total, 0.0, best
        for v in range(V):
            if p[v] > 0.0:
                acc += p[v]
                last = v
                if acc > target:
                    return v
        return last  # rounding left u * total beyond the sum
    # order by descending weight, index order among ties (a stable insertion sort)
    for v in range(V):
        r = v
        while r > 0 and p[order[r - 1]] < p[v]:
            order[r] = order[r - 1]
            r -= 1
        order[r] = v
    n_keep = V if top_k <= 0 else min(top_k, V)
    kept = 0.0
    for r in range(n_keep):
        kept += p[order[r]]
    if top_p < 1.0:  # of the mass top-k kept, as if renormalised first
        acc = 0.0
        for r in range(n_keep):
            acc += p[order[r]]
            if acc >= top_p * kept:
                n_keep = r + 1
                kept = acc
                break
    target, acc = u * kept, 0.0
    for r in range(n_keep):
        acc += p[order[r]]
        if acc > target:
            return order[r]
    return order[n_keep - 1]


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax in float64."""
    z = z.astype(np.float64)
    z -= z.max()
    return z - np.log(np.exp(z).sum())


def entropy(p: np.ndarray, logp: np.ndarray | None = None) -> float:
    """H = -sum_v p_v log p_v in nats, over the characters with p_v > 0 (logp: log p, if known)."""
    keep = p > 0
    logp = np.log(p[keep]) if logp is None else logp[keep]
    return float(-(p[keep] * logp).sum())
