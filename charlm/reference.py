"""The language model in plain NumPy, written from the README's equations: read this first.

Each cell's step and the forward pass over a window, in float64. The numba kernels compute the
same things fast, and the tests check them against this file. It needs nothing but NumPy, and
speaks the model's parameter names: E, W{l}, U{l}, b{l} (P{l}, bh{l}), Wy, by.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # shifted, so exp cannot overflow
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# one step of each cell: x_t (B, n_in) and h_{t-1}, c_{t-1} (B, H) -> h_t, c_t


def lstm_gates(p, layer, x, h):
    """i, f, g, o, each (B, H): the four blocks of x W + h U + b, side by side in that order."""
    H = h.shape[1]
    z = x @ p[f"W{layer}"] + h @ p[f"U{layer}"] + p[f"b{layer}"]  # (B, 4H)
    i = sigmoid(z[:, :H])  # input gate: how much of g to write
    f = sigmoid(z[:, H : 2 * H])  # forget gate: how much of c to keep
    g = np.tanh(z[:, 2 * H : 3 * H])  # the candidate to write
    o = sigmoid(z[:, 3 * H :])  # output gate: how much of c to show
    return i, f, g, o


def lstm_step(p, layer, x, h, c):
    """c_t = f ⊙ c_{t-1} + i ⊙ g,  h_t = o ⊙ tanh(c_t)."""
    i, f, g, o = lstm_gates(p, layer, x, h)
    c = f * c + i * g
    return o * np.tanh(c), c


def peephole_step(p, layer, x, h, c):
    """Gers and Schmidhuber's: i and f also see c_{t-1}, o sees c_t, through P{l} (3, H)."""
    H = h.shape[1]
    p_i, p_f, p_o = p[f"P{layer}"]  # diagonal weights: one per unit
    z = x @ p[f"W{layer}"] + h @ p[f"U{layer}"] + p[f"b{layer}"]  # (B, 4H), blocks i f g o
    i = sigmoid(z[:, :H] + p_i * c)
    f = sigmoid(z[:, H : 2 * H] + p_f * c)
    g = np.tanh(z[:, 2 * H : 3 * H])
    c = f * c + i * g
    o = sigmoid(z[:, 3 * H :] + p_o * c)
    return o * np.tanh(c), c


def coupled_step(p, layer, x, h, c):
    """The input gate is 1 - f: c_t = f ⊙ c_{t-1} + (1 - f) ⊙ g."""
    H = h.shape[1]
    z = x @ p[f"W{layer}"] + h @ p[f"U{layer}"] + p[f"b{layer}"]  # (B, 3H), blocks f g o
    f = sigmoid(z[:, :H])
    g = np.tanh(z[:, H : 2 * H])
    o = sigmoid(z[:, 2 * H :])
    c = f * c + (1 - f) * g
    return o * np.tanh(c), c


def gru_step(p, layer, x, h, c):
    """torch.nn.GRU's: n = tanh(x W_n + b_n + r ⊙ (h U_n + b_hn)), h_t = (1 - z) ⊙ n + z ⊙ h."""
    H = h.shape[1]
    xw = x @ p[f"W{layer}"] + p[f"b{layer}"]  # (B, 3H), blocks r z n
    hu = h @ p[f"U{layer}"]
    r = sigmoid(xw[:, :H] + hu[:, :H])  # reset gate: how much of h the candidate sees
    z = sigmoid(xw[:, H : 2 * H] + hu[:, H : 2 * H])  # update gate: how much of h to keep
    n = np.tanh(xw[:, 2 * H :] + r * (hu[:, 2 * H :] + p[f"bh{layer}"]))
    return (1 - z) * n + z * h, c


def rnn_step(p, layer, x, h, c):
    """char-rnn's vanilla RNN: h_t = tanh(x W + h U + b); c passes through untouched."""
    return np.tanh(x @ p[f"W{layer}"] + h @ p[f"U{layer}"] + p[f"b{layer}"]), c


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step, "peephole": peephole_step,
         "coupled": coupled_step}


# --------------------------------------------------------------------------------------------
# the forward pass and the loss


def forward(params, n_layer, idx, h0, c0, masks=None, cell="lstm"):
    """Logits (B, T, V) for the characters idx (B, T), and the final h, c (n_layer, B, H).

    h0, c0: (n_layer, B, H), the state before the window (gru and rnn ignore c).
    masks[l]: (T, B, H), dropout on layer l's output (each entry 0 or 1/keep), or None.
    Layer by layer: a layer runs over the whole window, then the next reads its outputs.
    """
    p = {name: np.asarray(v, np.float64) for name, v in params.items()}
    B, T = idx.shape
    xs = [p["E"][idx[:, t]] for t in range(T)]  # x_t = E[char]: T arrays of (B, n_embd)
    h_fin, c_fin = [], []
    for layer in range(n_layer):
        h, c, out = h0[layer], c0[layer], []
        for t in range(T):
            h, c = STEPS[cell](p, layer, xs[t], h, c)
            out.append(h if masks is None else h * masks[layer][t])
        h_fin.append(h)
        c_fin.append(c)
        xs = out  # the next layer (or the head) reads this layer's dropped-out outputs
    logits = np.stack([x @ p["Wy"] + p["by"] for x in xs], axis=1)
    return logits, np.stack(h_fin), np.stack(c_fin)


def cross_entropy(logits, targets):
    """Mean -log softmax(logits)[target] in nats: logits (B, T, V), targets (B, T)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # log softmax, without underflow
    return -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
