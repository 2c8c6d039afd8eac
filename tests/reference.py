"""An independent plain-NumPy LSTM language model, written step by step from the equations.

It shares nothing with the kernels but the parameter names, and is used only by the tests.
Every cell of charlm.model.CELLS has its step here; the default is the LSTM.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(p, layer, x, h, c):
    H = h.shape[1]
    z = x @ p[f"W{layer}"] + h @ p[f"U{layer}"] + p[f"b{layer}"]
    i = sigmoid(z[:, :H])
    f = sigmoid(z[:, H : 2 * H])
    g = np.tanh(z[:, 2 * H : 3 * H])
    o = sigmoid(z[:, 3 * H :])
    c = f * c + i * g
    return o * np.tanh(c), c


def peephole_step(p, layer, x, h, c):
    """Gers & Schmidhuber: i and f see c_{t-1}, o sees c_t, through diagonal weights."""
    H = h.shape[1]
    p_i, p_f, p_o = p[f"P{layer}"]
    z = x @ p[f"W{layer}"] + h @ p[f"U{layer}"] + p[f"b{layer}"]
    i = sigmoid(z[:, :H] + p_i * c)
    f = sigmoid(z[:, H : 2 * H] + p_f * c)
    g = np.tanh(z[:, 2 * H : 3 * H])
    c = f * c + i * g
    o = sigmoid(z[:, 3 * H :] + p_o * c)
    return o * np.tanh(c), c


def coupled_step(p, layer, x, h, c):
    """Blocks f, g, o; the input gate is 1 - f."""
    H = h.shape[1]
    z = x @ p[f"W{layer}"] + h @ p[f"U{layer}"] + p[f"b{layer}"]
    f = sigmoid(z[:, :H])
    g = np.tanh(z[:, H : 2 * H])
    o = sigmoid(z[:, 2 * H :])
    c = f * c + (1 - f) * g
    return o * np.tanh(c), c


def gru_step(p, layer, x, h, c):
    """torch.nn.GRU: blocks r, z, n, with b_hn inside the reset product."""
    H = h.shape[1]
    W, U, b = p[f"W{layer}"], p[f"U{layer}"], p[f"b{layer}"]
    xw, hu = x @ W + b, h @ U
    r = sigmoid(xw[:, :H] + hu[:, :H])
    z = sigmoid(xw[:, H : 2 * H] + hu[:, H : 2 * H])
    n = np.tanh(xw[:, 2 * H :] + r * (hu[:, 2 * H :] + p[f"bh{layer}"]))
    return (1 - z) * n + z * h, c


def rnn_step(p, layer, x, h, c):
    return np.tanh(x @ p[f"W{layer}"] + h @ p[f"U{layer}"] + p[f"b{layer}"]), c


STEPS = {"lstm": lstm_step, "peephole": peephole_step, "coupled": coupled_step,
         "gru": gru_step, "rnn": rnn_step}


def reference_forward(params, n_layer, idx, h0, c0, masks=None, cell="lstm"):
    """Logits (B, T, V) and final (h, c) for idx (B, T); masks[l] is (T, B, H) or None."""
    B, T = idx.shape
    step = STEPS[cell]
    x_seq = [params["E"][idx[:, t]] for t in range(T)]
    h_fin, c_fin = [], []
    for layer in range(n_layer):
        h, c = h0[layer].copy(), c0[layer].copy()
        out = []
        for t in range(T):
            h, c = step(params, layer, x_seq[t], h, c)
            out.append(h * masks[layer][t] if masks is not None else h)
        h_fin.append(h)
        c_fin.append(c)
        x_seq = out
    logits = np.stack([x @ params["Wy"] + params["by"] for x in x_seq], axis=1)
    return logits, np.stack(h_fin), np.stack(c_fin)


def reference_loss(logits, targets):
    """Mean cross-entropy in nats."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
