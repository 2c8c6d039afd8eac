"""The minimal trainable LSTM: one layer learning a sequence to sequence map, in plain NumPy.

A sibling of charlm/reference.py with the same equations and names (z = x W + h U + b, gate
blocks i, f, g, o side by side): one LSTM layer over a sequence x_1..x_T of vectors (or integer
ids, read as one-hot vectors), an output y_t per step, a loss summed over the steps, its
gradient by backpropagation through time, and plain gradient descent. The output is either a
linear head, y_t = h_t W_y + b_y, or (head=False) the first out_dim units of h_t themselves.
The loss is the squared error Σ_t |y_t - target_t|² ("mse", targets are vectors) or the
cross-entropy Σ_t -log softmax(y_t)[target_t] ("xent", targets are ids).

`python -m charlm.seq2seq` runs the two toy tasks this grew from, printing the loss as it
learns: four random input vectors mapped to the numbers -0.5, 0.2, 0.1, -0.5 read off the first
unit of h (squared error), and an integer-encoded delayed echo (cross-entropy).
"""

import numpy as np

from charlm.reference import lstm_gates, softmax

LOSSES = ("mse", "xent")


class LSTM_RNN:  # noqa: N801 (the name its first document gave it)
    """One LSTM layer and its output, trained on one sequence by BPTT and gradient descent."""

    def __init__(self, lr: float, in_dim: int, h_dim: int, out_dim: int, loss: str = "mse",
                 head: bool = True, seed: int = 0) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if not head and out_dim > h_dim:
            raise ValueError(f"without a head the output is h[:out_dim]: out_dim {out_dim} > "
                             f"h_dim {h_dim}")
        self.lr, self.in_dim, self.h_dim, self.out_dim = lr, in_dim, h_dim, out_dim
        self.loss_name, self.head = loss, head
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(h_dim)  # torch's nn.LSTM init
        shapes = {"W0": (in_dim, 4 * h_dim), "U0": (h_dim, 4 * h_dim), "b0": (4 * h_dim,)}
        if head:
            shapes.update(Wy=(h_dim, out_dim), by=(out_dim,))
        self.params = {name: rng.uniform(-k, k, shape) for name, shape in shapes.items()}

    def _inputs(self, inputs) -> np.ndarray:
        """(T, in_dim) vectors, from vectors or from ids (T,) read as one-hot rows."""
        x = np.asarray(inputs)
        if x.ndim == 1:  # ids
            return np.eye(self.in_dim)[x]
        return x.astype(np.float64)

    def forward(self, inputs, h=None, c=None):
        """The outputs y (T, out_dim) and each step's cache, from h, c (default zero)."""
        p, H = self.params, self.h_dim
        h = np.zeros((1, H)) if h is None else h
        c = np.zeros((1, H)) if c is None else c
        ys, caches = [], []
        for x in self._inputs(inputs):
            x = x[None]  # (1, in_dim): a batch of one, as reference.lstm_gates takes
            i, f, g, o = lstm_gates(p, 0, x, h)
            c_new = f * c + i * g
            caches.append((x, h, c, i, f, g, o, c_new))
            h, c = o * np.tanh(c_new), c_new
            ys.append((h @ p["Wy"] + p["by"])[0] if self.head else h[0, : self.out_dim])
        return np.array(ys), caches

    def predict(self, inputs) -> np.ndarray:
        """The outputs (T, out_dim); with the cross-entropy, the most probable id per step."""
        y, _ = self.forward(inputs)
        return y.argmax(axis=1) if self.loss_name == "xent" else y

    def loss_and_grad(self, inputs, targets) -> tuple[float, dict[str, np.ndarray]]:
        """The loss summed over the steps, and its gradient (named and shaped as params).

        The output's gradient dy_t enters h_t (through W_y, or directly into its first units),
        then the LSTM's backward step runs from t = T down to 1, as in reference.loss_and_grad:

            dc_t = dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ o_t ⊙ (1 - tanh²(c_t))
            dz_t = [dc ⊙ g ⊙ i(1-i), dc ⊙ c_{t-1} ⊙ f(1-f), dc ⊙ i ⊙ (1-g²), dh ⊙ tanh(c) ⊙ o(1-o)]
            dh_{t-1} = dz_t Uᵀ,  dW += x_tᵀ dz_t,  dU += h_{t-1}ᵀ dz_t,  db += dz_t
        """
        p = self.params
        y, caches = self.forward(inputs)
        if self.loss_name == "mse":
            err = y - np.asarray(targets, np.float64).reshape(y.shape)
            loss, dy = float((err**2).sum()), 2 * err
        else:
            t = np.asarray(targets)
            probs = softmax(y)
            loss = float(-np.log(probs[np.arange(len(t)), t]).sum())
            dy = probs - np.eye(self.out_dim)[t]
        grads = {name: np.zeros_like(v) for name, v in p.items()}
        dh_next = dc_next = np.zeros((1, self.h_dim))
        for t in reversed(range(len(caches))):
            x, h_prev, c_prev, i, f, g, o, c = caches[t]
            dh = dh_next.copy()
            if self.head:
                h = o * np.tanh(c)
                grads["Wy"] += h.T @ dy[t : t + 1]
                grads["by"] += dy[t]
                dh += dy[t : t + 1] @ p["Wy"].T
            else:
                dh[0, : self.out_dim] += dy[t]
            tanh_c = np.tanh(c)
            dc = dc_next + dh * o * (1 - tanh_c**2)
            dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                                 dc * i * (1 - g**2), dh * tanh_c * o * (1 - o)], axis=1)
            grads["W0"] += x.T @ dz
            grads["U0"] += h_prev.T @ dz
            grads["b0"] += dz[0]
            dh_next, dc_next = dz @ p["U0"].T, dc * f
        return loss, grads

    def train(self, iterations: int, inputs, targets, every: int = 0,
              log=print) -> list[float]:
        """Gradient descent on one sequence; every `every` iterations (0: never) log the loss.
        Returns the loss before each update."""
        losses = []
        for it in range(iterations):
            loss, grads = self.loss_and_grad(inputs, targets)
            losses.append(loss)
            for name, g in grads.items():
                self.params[name] -= self.lr * g
            if every and (it % every == 0 or it == iterations - 1):
                log(f"iter {it:4d}: loss {loss:.6f}")
        return losses


# --------------------------------------------------------------------------------------------
# the two toy tasks


def numbers_task(log=print) -> tuple[LSTM_RNN, np.ndarray, np.ndarray]:
    """Four random input vectors (50 numbers each) -> -0.5, 0.2, 0.1, -0.5, read off h's first
    unit with the squared error: 100 hidden units, gradient descent at 0.1, 100 iterations."""
    rng = np.random.default_rng(0)
    inputs, targets = rng.random((4, 50)), np.array([[-0.5], [0.2], [0.1], [-0.5]])
    net = LSTM_RNN(0.1, 50, 100, 1, loss="mse", head=False, seed=0)
    net.train(100, inputs, targets, every=10, log=log)
    return net, inputs, targets


def echo_task(log=print) -> tuple[LSTM_RNN, np.ndarray, np.ndarray]:
    """Integer ids in, the id read two steps earlier out (0 before that), cross-entropy: the
    network must hold two ids in its memory. 4 ids, 16 hidden units, 300 iterations."""
    inputs = np.array([1, 3, 2, 2, 0, 1, 1, 3, 0, 2, 3, 1, 0, 0, 2, 1])
    targets = np.concatenate([[0, 0], inputs[:-2]])
    net = LSTM_RNN(0.1, 4, 16, 4, loss="xent", seed=0)
    net.train(300, inputs, targets, every=30, log=log)
    return net, inputs, targets


if __name__ == "__main__":
    print("numbers: four vectors -> -0.5 0.2 0.1 -0.5 on h[0], squared error")
    net, inputs, targets = numbers_task()
    print("predicted", np.round(net.predict(inputs)[:, 0], 4), "wanted", targets[:, 0])
    print("echo: ids in, the id of two steps before out, cross-entropy")
    net, inputs, targets = echo_task()
    print("predicted", net.predict(inputs), "wanted", targets)
