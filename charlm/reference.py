"""The language model in plain NumPy, written from the README's equations: read this first.

Each cell's step, the forward pass over a window, backpropagation through time (LSTM) and a
sampling loop in the style of nanoGPT's `generate`, in float64. The numba kernels compute the
same things fast, and the tests check them against this file. It needs nothing but NumPy, and
speaks the model's parameter names: E, W{l}, U{l}, b{l} (P{l}, bh{l}, gx{l} ...), Wy, by.
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


def mlstm_step(p, layer, x, h, c):
    """Krause et al.'s multiplicative LSTM: the gates read m = (x W_m + b_m) ⊙ (h U_m), not h."""
    H = h.shape[1]
    W, U, b = p[f"W{layer}"], p[f"U{layer}"], p[f"b{layer}"]  # blocks i f g o m (5H)
    m = (x @ W[:, 4 * H :] + b[4 * H :]) * (h @ U[:, 4 * H :])
    z = x @ W[:, : 4 * H] + m @ U[:, : 4 * H] + b[: 4 * H]  # (B, 4H), blocks i f g o
    i, f, o = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), sigmoid(z[:, 3 * H :])
    c = f * c + i * np.tanh(z[:, 2 * H : 3 * H])
    return o * np.tanh(c), c


def layer_norm(v, gain, shift=0.0, eps=1e-5):
    """gain ⊙ (v - mean) / sqrt(var + eps) + shift, over the last axis."""
    mu, var = v.mean(axis=-1, keepdims=True), v.var(axis=-1, keepdims=True)
    return gain * (v - mu) / np.sqrt(var + eps) + shift


def lnlstm_step(p, layer, x, h, c):
    """Ba et al.'s layer-normalised LSTM: x W and h U normalised apart over their 4H, then + b;
    the cell normalised over its H before its tanh (the carried c is the one before)."""
    H = h.shape[1]
    gx, gh = p[f"gx{layer}"].reshape(-1), p[f"gh{layer}"].reshape(-1)  # (4, H) -> (4H,)
    z = (layer_norm(x @ p[f"W{layer}"], gx) + layer_norm(h @ p[f"U{layer}"], gh)
         + p[f"b{layer}"])
    i, f, o = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), sigmoid(z[:, 3 * H :])
    c = f * c + i * np.tanh(z[:, 2 * H : 3 * H])
    return o * np.tanh(layer_norm(c, p[f"gc{layer}"], p[f"bc{layer}"])), c


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step, "peephole": peephole_step,
         "coupled": coupled_step, "mlstm": mlstm_step, "lnlstm": lnlstm_step}


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


# --------------------------------------------------------------------------------------------
# backpropagation through time (LSTM)


def loss_and_grad(params, n_layer, idx, targets, h0, c0, masks=None):
    """The LSTM's mean cross-entropy of targets (B, T) after idx (B, T), and its gradient.

    The forward pass keeps every step's gates and states; the backward pass runs the same steps
    in reverse, top layer first. With dh_t the gradient reaching h_t (from the layer above,
    plus from step t+1) and dc_t the one reaching c_t:

        dc_t = dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ o_t ⊙ (1 - tanh²(c_t))
        dz^i = dc_t ⊙ g_t ⊙ i_t(1 - i_t)        dz^f = dc_t ⊙ c_{t-1} ⊙ f_t(1 - f_t)
        dz^g = dc_t ⊙ i_t ⊙ (1 - g_t²)           dz^o = dh_t ⊙ tanh(c_t) ⊙ o_t(1 - o_t)
        dh_{t-1} += dz_t Uᵀ    dU = Σ_t h_{t-1}ᵀ dz_t    dW = Σ_t x_tᵀ dz_t    db = Σ_t dz_t

    Returns the loss and a dict of gradients named and shaped as the parameters.
    """
    p = {name: np.asarray(v, np.float64) for name, v in params.items()}
    B, T = idx.shape
    xs = [p["E"][idx[:, t]] for t in range(T)]
    caches = []  # per layer, per step: (x, h_prev, c_prev, i, f, g, o, c)
    for layer in range(n_layer):
        h, c, cache, out = h0[layer], c0[layer], [], []
        for t in range(T):
            i, f, g, o = lstm_gates(p, layer, xs[t], h)
            c_new = f * c + i * g
            cache.append((xs[t], h, c, i, f, g, o, c_new))
            h, c = o * np.tanh(c_new), c_new
            out.append(h if masks is None else h * masks[layer][t])
        caches.append(cache)
        xs = out
    logits = np.stack([x @ p["Wy"] + p["by"] for x in xs])  # (T, B, V)
    loss = cross_entropy(logits, targets.T)
    probs, onehot = softmax(logits), np.eye(logits.shape[-1])[targets.T]  # (T, B, V) each

    grads = {name: np.zeros_like(v) for name, v in p.items()}
    dlogits = (probs - onehot) / (T * B)  # the mean over all T*B predictions
    grads["Wy"] += sum(x.T @ dy for x, dy in zip(xs, dlogits, strict=True))
    grads["by"] += dlogits.sum(axis=(0, 1))
    dxs = list(dlogits @ p["Wy"].T)  # per step, the gradient reaching the layer's output
    for layer in reversed(range(n_layer)):
        W, U = p[f"W{layer}"], p[f"U{layer}"]
        dh_next = dc_next = np.zeros((B, U.shape[0]))  # nothing comes back from step T+1
        for t in reversed(range(T)):
            x, h_prev, c_prev, i, f, g, o, c = caches[layer][t]
            dh = dxs[t] if masks is None else dxs[t] * masks[layer][t]  # from above
            dh = dh + dh_next  # and from step t+1
            tanh_c = np.tanh(c)
            dc = dc_next + dh * o * (1 - tanh_c**2)
            dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                                 dc * i * (1 - g**2), dh * tanh_c * o * (1 - o)], axis=1)
            grads[f"W{layer}"] += x.T @ dz
            grads[f"U{layer}"] += h_prev.T @ dz
            grads[f"b{layer}"] += dz.sum(axis=0)
            dh_next, dc_next = dz @ U.T, dc * f  # to step t-1
            dxs[t] = dz @ W.T  # to the layer below (or the embedding)
    for t in range(T):  # x_t = E[idx_t] gathers rows, so its gradient adds into them
        np.add.at(grads["E"], idx[:, t], dxs[t])
    return loss, grads


# --------------------------------------------------------------------------------------------
# sampling


def sample_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution the next character is drawn from, given its logits (V,).

    softmax(logits / temperature), cropped to the top_k most probable characters, then to the
    nucleus: the fewest most probable of those whose mass reaches top_p of the mass they hold.
    Temperature 0 is greedy: all the mass on the first most probable character.
    """
    if temperature == 0:
        return np.eye(len(logits))[np.argmax(logits)]
    p = softmax(np.asarray(logits, np.float64) / temperature)
    keep = np.argsort(-p, kind="stable")  # most probable first, ties in index order
    if top_k:
        keep = keep[:top_k]
    if top_p is not None and top_p < 1:
        mass = np.cumsum(p[keep]) / p[keep].sum()
        keep = keep[: np.searchsorted(mass, top_p) + 1]  # the first whose mass reaches top_p
    q = np.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


def read(params, n_layer, cell, ids, h, c):
    """Feed ids (a list) from h, c (n_layer, 1, H): the logits (V,) after them, the new h, c."""
    if not ids:  # nothing to read: the head sees h as it is
        return (h[-1] @ params["Wy"] + params["by"])[0], h, c
    logits, h, c = forward(params, n_layer, np.array([ids]), h, c, cell=cell)
    return logits[0, -1], h, c


def next_distribution(params, n_layer, cell, idx, temperature=1.0, top_k=None, top_p=None):
    """The distribution of the character after the prompt idx (a list of ids), from zero."""
    h = np.zeros((n_layer, 1, params["U0"].shape[0]))  # the zero state (gru and rnn ignore c)
    logits, _, _ = read(params, n_layer, cell, list(idx), h, h)
    return sample_probs(logits, temperature, top_k, top_p)


def generate(params, n_layer, cell, idx, max_new_chars, temperature=1.0, top_k=None,
             top_p=None, rng=None):
    """Continue the prompt idx (a list of ids) by max_new_chars characters, as nanoGPT does.

    Each step feeds what is new (the prompt, then the last character drawn), divides the
    logits by the temperature, crops them to top_k and top_p, and draws. Returns idx + new.
    """
    rng = np.random.default_rng() if rng is None else rng
    params = {name: np.asarray(v, np.float64) for name, v in params.items()}
    h = c = np.zeros((n_layer, 1, params["U0"].shape[0]))  # the zero state
    idx, new = list(idx), list(idx)
    for _ in range(max_new_chars):
        logits, h, c = read(params, n_layer, cell, new, h, c)
        probs = sample_probs(logits, temperature, top_k, top_p)
        new = [int(rng.choice(len(probs), p=probs))]
        idx += new
    return idx


if __name__ == "__main__":  # learn a line by BPTT and Adagrad (min-char-rnn), then sample it
    text = "hello world, hello charlm. " * 3
    itos = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(itos)}
    data = np.array([[stoi[ch] for ch in text]])  # (1, len(text)): one stream
    V, n_embd, n_hidden = len(itos), 8, 32
    rng = np.random.default_rng(0)
    shapes = {"E": (V, n_embd), "W0": (n_embd, 4 * n_hidden), "U0": (n_hidden, 4 * n_hidden),
              "b0": (4 * n_hidden,), "Wy": (n_hidden, V), "by": (V,)}
    params = {name: rng.uniform(-0.3, 0.3, shape) for name, shape in shapes.items()}
    memory = {name: np.zeros(shape) for name, shape in shapes.items()}  # Adagrad's sum of g²
    h0 = c0 = np.zeros((1, 1, n_hidden))  # (n_layer, B, H): every window starts from zero
    for it in range(201):
        loss, grads = loss_and_grad(params, 1, data[:, :-1], data[:, 1:], h0, c0)
        for name in params:
            memory[name] += grads[name] ** 2
            params[name] -= 0.1 * grads[name] / np.sqrt(memory[name] + 1e-8)
        if it % 50 == 0:
            print(f"iter {it}: loss {loss:.4f}")
    ids = generate(params, 1, "lstm", [stoi["h"]], 60, temperature=0.5, rng=rng)
    print("".join(itos[i] for i in ids))
