"""The character-level LSTM language model: parameters, forward pass and backward pass.

embedding E -> n_layer recurrent layers (dropout between them) -> dropout -> linear head ->
softmax. The recurrent cell is an LSTM by default, or any other of charlm.cells.CELLS.
All parameters live in one flat vector `theta` (and their gradients in `grad`), with one
named view per tensor, so the optimizer and clipping are single passes over memory.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

from charlm import kernels as K
from charlm.cells import CELLS
from charlm.gemm import PANEL, as_panels_into
from charlm.limits import check_model_size

DTYPES = ("float32", "float64")  # float64 for gradient checks


@dataclass
class ModelConfig:
    vocab_size: int = 65  # number of distinct characters
    n_embd: int = 64  # size of the character embedding
    n_hidden: int = 512  # units per LSTM layer
    n_layer: int = 2  # stacked LSTM layers
    dropout: float = 0.1  # between layers and before the head, training only
    dtype: str = "float32"  # float64 for gradient checks
    cell: str = "lstm"  # the recurrent cell: see charlm.cells.CELLS
    forget_bias: float = 0.0  # the forget gate's bias at init: 0 learns faster, 1 remembers

    def validate(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        check_model_size(self)  # sizes and parameter count, before anything is allocated
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not math.isfinite(self.forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {self.forget_bias}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter tensor, in the order they sit in theta."""
    V, H, G = cfg.vocab_size, cfg.n_hidden, CELLS[cfg.cell].blocks
    shapes: dict[str, tuple[int, ...]] = {"E": (V, cfg.n_embd)}
    n_in = cfg.n_embd
    for layer in range(cfg.n_layer):
        shapes[f"W{layer}"] = (n_in, G * H)  # input weights, gate blocks side by side
        shapes[f"U{layer}"] = (H, G * H)  # recurrent weights
        shapes[f"b{layer}"] = (G * H,)
        for extra in CELLS[cfg.cell].extras:  # the peepholes, the GRU's b_hn
            shapes[f"{extra.name}{layer}"] = extra.shape(H)
        n_in = H
    shapes["Wy"] = (H, V)  # head
    shapes["by"] = (V,)
    return shapes


def split_views(flat: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Named C-contiguous views into one flat vector."""
    views, k = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        views[name] = flat[k : k + size].reshape(shape)
        k += size
    return views


@dataclass
class State:
    """The recurrent state carried between windows: h and c of every layer, (n_layer, B, H).

    Cells without a cell state (gru, rnn) have c of shape (n_layer, B, 0).
    """

    h: np.ndarray
    c: np.ndarray


class Workspace:
    """Every buffer one forward/backward pass at a given (T, B) needs, allocated once."""

    def __init__(self, cfg: ModelConfig, T: int, B: int) -> None:
        L, H, V, dt = cfg.n_layer, cfg.n_hidden, cfg.vocab_size, np.dtype(cfg.dtype)
        cell = CELLS[cfg.cell]
        GH = cell.blocks * H  # width of the gate blocks side by side
        Hc = H if cell.has_c else 0  # units of the cell state
        self.T, self.B = T, B
        self.idx = np.empty((T, B), np.int64)  # inputs, time-major
        self.targets = np.empty((T, B), np.int64)
        self.EW = np.empty((V, GH), dt)  # E W0 + b0: the first layer's input part per char
        self.dEW = np.empty((V, GH), dt)
        self.Z = [np.empty((T, B, GH), dt) for _ in range(L)]  # gates per layer
        self.Hs = [np.empty((T + 1, B, H), dt) for _ in range(L)]  # h_0 .. h_T per layer
        self.Cs = [np.empty((T + 1, B, Hc), dt) for _ in range(L)]
        self.masks = [np.empty((T, B, H), dt) for _ in range(L)]  # dropout on each layer's h
        self.dropped = [np.empty((T, B, H), dt) for _ in range(L)]  # h * mask
        self.logits = np.empty((T * B, V), dt)
        self.R = np.empty((B, GH), dt)
        # U and U^T as the micro-kernel's panels, packed once per window (float32 only: float64
        # models multiply with BLAS, and their buffers hold no panels)
        n_up, n_utp = (-(-GH // PANEL), -(-H // PANEL)) if dt == np.float32 else (0, 0)
        self.Up = np.zeros((n_up, H, PANEL), np.float32)
        self.UTp = np.zeros((n_utp, GH, PANEL), np.float32)
        self.dh = np.empty((B, H), dt)
        self.dc = np.empty((B, H), dt)  # dc carried back in time (gru: dh_t z_t)
        self.dZ = np.empty((T, B, GH), dt)
        self.dH = np.empty((T, B, H), dt)
        self.outputs: list[np.ndarray] = []  # each layer's output as the next layer sees it
        self.no_bias = np.zeros(GH, dt)  # the input's b, for cells that add b themselves
        self.no_bias_grad = np.empty(GH, dt)
        for name in cell.buffers:  # the cell's own, per layer (the GRU's q_t and da_t)
            setattr(self, name, [np.empty((T, B, H), dt) for _ in range(L)])


class CharLSTM:
    """The model: config, flat parameters and gradients, and workspaces per (T, B)."""

    def __init__(self, cfg: ModelConfig, theta: np.ndarray | None = None, seed: int = 0) -> None:
        cfg.validate()
        self.config = cfg
        self.shapes = param_shapes(cfg)
        self.dtype = np.dtype(cfg.dtype)
        n = sum(int(np.prod(s)) for s in self.shapes.values())
        self.theta = np.zeros(n, self.dtype)
        self.grad = np.zeros(n, self.dtype)
        self.params = split_views(self.theta, self.shapes)
        self.grads = split_views(self.grad, self.shapes)
        if theta is None:
            self.init_params(np.random.default_rng(seed))
        else:
            self.theta[:] = theta
        self._workspaces: dict[tuple[int, int], Workspace] = {}

    @property
    def n_params(self) -> int:
        return self.theta.size

    def init_params(self, rng: np.random.Generator) -> None:
        """Uniform(+-1/sqrt(H)) weights as torch's nn.LSTM, N(0, 1) embedding, zero biases
        but the forget gate's, which is forget_bias (every cell but gru and rnn); the gains
        of a normalisation (lnlstm's) start at 1."""
        H, cell = self.config.n_hidden, CELLS[self.config.cell]
        k = 1.0 / np.sqrt(H)
        zero = {"by"} | {f"{e.name}{layer}" for e in cell.extras if e.init == "zero"
                         for layer in range(self.config.n_layer)}
        one = {f"{e.name}{layer}" for e in cell.extras if e.init == "one"
               for layer in range(self.config.n_layer)}
        for name, p in self.params.items():
            if name == "E":
                p[:] = rng.standard_normal(p.shape)
            elif name in zero:
                p[:] = 0
            elif name in one:  # a normalisation's gain starts as the identity
                p[:] = 1
            else:
                p[:] = rng.uniform(-k, k, p.shape)
        forget = cell.forget
        for layer in range(self.config.n_layer):
            b = self.params[f"b{layer}"]
            b[:] = 0
            if forget is not None:
                # remember by default until the gradient says otherwise
                b[forget * H : (forget + 1) * H] = self.config.forget_bias

    def zero_state(self, B: int) -> State:
        L, H = self.config.n_layer, self.config.n_hidden
        Hc = H if CELLS[self.config.cell].has_c else 0
        return State(np.zeros((L, B, H), self.dtype), np.zeros((L, B, Hc), self.dtype))

    def workspace(self, T: int, B: int) -> Workspace:
        ws = self._workspaces.get((T, B))
        if ws is None:
            ws = self._workspaces[(T, B)] = Workspace(self.config, T, B)
        return ws

    def sample_masks(self, ws: Workspace, rng: np.random.Generator) -> list[np.ndarray]:
        """Inverted-dropout masks, each entry 0 or 1/keep, drawn into the workspace."""
        keep = 1.0 - self.config.dropout
        for m in ws.masks:
            rng.random(out=m, dtype=m.dtype)
            # u ~ U[0, 1): floor(u + keep) is 1 with probability keep, else 0
            np.floor(m + m.dtype.type(keep), out=m)
            m *= m.dtype.type(1.0 / keep)
        return ws.masks

    def forward(self, idx: np.ndarray, state: State,
                masks: list[np.ndarray] | None = None) -> Workspace:
        """Logits for idx (B, T) from `state`, which is advanced in place to the final state.

        masks: one (T, B, H) dropout mask per layer's output, or None for no dropout.
        The logits are left in ws.logits, (T*B, V) time-major.
        """
        B, T = idx.shape
        p, cell = self.params, CELLS[self.config.cell]
        ws = self.workspace(T, B)
        ws.idx[:] = idx.T
        N, H4 = T * B, ws.R.shape[1]  # 4H for an LSTM, blocks x H in general
        # x_t = E[idx_t], so x_t W0 + b0 is a row of the (V, 4H) table E W0 + b0
        K.linear_forward(p["E"], p["W0"], self.bias_in(ws, 0), ws.EW)
        K.gather_rows(ws.EW, ws.idx.reshape(N), ws.Z[0].reshape(N, H4))
        ws.outputs = []
        for layer in range(self.config.n_layer):
            Z, Hs, Cs = ws.Z[layer], ws.Hs[layer], ws.Cs[layer]
            if layer > 0:
                x = ws.outputs[-1].reshape(N, -1)
                K.linear_forward(x, p[f"W{layer}"], self.bias_in(ws, layer), Z.reshape(N, H4))
            Hs[0], Cs[0] = state.h[layer], state.c[layer]
            as_panels_into(p[f"U{layer}"], ws.Up)
            cell.forward(p, ws, layer)
            state.h[layer], state.c[layer] = Hs[T], Cs[T]
            out = Hs[1:]
            if masks is not None:
                out = np.multiply(out, masks[layer], out=ws.dropped[layer])
            ws.outputs.append(out)
        K.linear_forward(ws.outputs[-1].reshape(N, -1), p["Wy"], p["by"], ws.logits)
        return ws

    def loss_and_grad(self, idx: np.ndarray, targets: np.ndarray, state: State,
                      masks: list[np.ndarray] | None = None) -> float:
        """Mean cross-entropy (nats/char) of targets (B, T) given idx (B, T); fills self.grad.

        state is advanced in place to the state after the window (truncated BPTT).
        """
        ws = self.forward(idx, state, masks)
        B, T = idx.shape
        N, H = T * B, self.config.n_hidden
        p, d, cell = self.params, self.grads, CELLS[self.config.cell]
        ws.targets[:] = targets.T
        dlogits = ws.logits  # overwritten in place
        loss = K.softmax_cross_entropy(ws.logits, ws.targets.reshape(N), dlogits)
        # dH holds dL/d(output of the layer being processed), walking down the stack
        K.linear_backward(ws.outputs[-1].reshape(N, H), p["Wy"], dlogits, ws.dH.reshape(N, H),
                          d["Wy"], d["by"])
        for layer in range(self.config.n_layer - 1, -1, -1):
            if masks is not None:
                ws.dH *= masks[layer]
            as_panels_into(p[f"U{layer}"].T, ws.UTp)
            cell.backward(p, d, ws, layer)
            dZ = ws.dZ.reshape(N, -1)
            if layer > 0:
                K.linear_backward(ws.outputs[layer - 1].reshape(N, H), p[f"W{layer}"], dZ,
                                  ws.dH.reshape(N, H), d[f"W{layer}"], self.dbias_in(ws, layer))
            else:
                K.scatter_add_rows(dZ, ws.idx.reshape(N), ws.dEW)
                K.linear_backward(p["E"], p["W0"], ws.dEW, d["E"], d["W0"], self.dbias_in(ws, 0))
        return float(loss)

    def bias_in(self, ws: Workspace, layer: int) -> np.ndarray:
        """b of the input's linear map x W + b: zeros for a cell that adds b itself (lnlstm)."""
        if CELLS[self.config.cell].own_bias:
            return ws.no_bias
        return self.params[f"b{layer}"]

    def dbias_in(self, ws: Workspace, layer: int) -> np.ndarray:
        """Where the input's linear map leaves db: a cell that adds b itself filled db already."""
        if CELLS[self.config.cell].own_bias:
            return ws.no_bias_grad
        return self.grads[f"b{layer}"]

    def activations(self, idx: np.ndarray, state: State | None = None) -> list[dict]:
        """What every layer computed at every step of idx (B, T), from state (default zero).

        One dict per layer: the cell's gates after their nonlinearities (lstm and peephole
        i, f, g, o; coupled f, g, o and i = 1 - f; gru r, z, n; rnn none), the cell state c
        (cells that have one) and h, each (B, T, H), batch-major copies. state is advanced.
        """
        B, T = idx.shape
        state = self.zero_state(B) if state is None else state
        ws = self.forward(idx, state)
        cell, H = CELLS[self.config.cell], self.config.n_hidden
        layers = []
        for layer in range(self.config.n_layer):
            Z = ws.Z[layer]
            acts = {g: Z[:, :, k * H : (k + 1) * H].transpose(1, 0, 2).copy()
                    for k, g in enumerate(cell.gates)}
            if cell.derived is not None:  # gates that are functions of others
                acts.update(cell.derived(acts))
            if cell.has_c:
                acts["c"] = ws.Cs[layer][1:].transpose(1, 0, 2).copy()
            acts["h"] = ws.Hs[layer][1:].transpose(1, 0, 2).copy()
            layers.append(acts)
        return layers

    def loss(self, idx: np.ndarray, targets: np.ndarray, state: State) -> float:
        """Total cross-entropy in nats of targets (B, T) given idx (B, T), without dropout."""
        ws = self.forward(idx, state)
        ws.targets[:] = targets.T
        return float(K.cross_entropy(ws.logits, ws.targets.reshape(-1)))
