"""An independent plain-NumPy LSTM language model, written step by step from the equations.

It shares nothing with the kernels but the parameter names, and is used only by the tests.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_forward(params, n_layer, idx, h0, c0, masks=None):
    """Logits (B, T, V) and final (h, c) for idx (B, T); masks[l] is (T, B, H) or None."""
    B, T = idx.shape
    H = params["U0"].shape[0]
    x_seq = [params["E"][idx[:, t]] for t in range(T)]
    h_fin, c_fin = [], []
    for layer in range(n_layer):
        W, U, b = params[f"W{layer}"], params[f"U{layer}"], params[f"b{layer}"]
        h, c = h0[layer].copy(), c0[layer].copy()
        out = []
        for t in range(T):
            z = x_seq[t] @ W + h @ U + b
            i = sigmoid(z[:, :H])
            f = sigmoid(z[:, H : 2 * H])
            g = np.tanh(z[:, 2 * H : 3 * H])
            o = sigmoid(z[:, 3 * H :])
            c = f * c + i * g
            h = o * np.tanh(c)
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
