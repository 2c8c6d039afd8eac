"""What a recurrent cell declares once: its blocks, gates, extra tensors and kernels."""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Extra:
    """A per-layer tensor besides W, U and b: the peepholes, the GRU's b_hn."""

    name: str  # the tensor of layer l is called f"{name}{l}"
    rows: int  # shape (rows, H), or (H,) for rows = 0
    init: str  # "uniform" (as the weights), "zero" or "one" (a normalisation's gain)

    def shape(self, H: int) -> tuple[int, ...]:
        return (self.rows, H) if self.rows else (H,)


@dataclass(frozen=True)
class Cell:
    """One recurrent cell: everything the model, generation, the service and the CLI ask of it.

    forward(params, ws, layer) runs the training kernel over a window: the input part x W + b
    is in ws.Z[layer], h_0 (c_0) in ws.Hs[layer][0] (ws.Cs); it leaves the gates in ws.Z.
    backward(params, grads, ws, layer) fills dU (and the extras' gradients) and ws.dZ from
    ws.dH. step is the packed step of generation (see charlm.cells.cell_step).
    """

    name: str
    blocks: int  # gate blocks side by side in W, U and b
    gates: tuple[str, ...]  # the gates the forward pass leaves in Z, block by block
    sigmoid_gates: tuple[str, ...]  # the gates that pass through a sigmoid (saturation plots)
    has_c: bool  # keeps a cell state c besides h
    forward: Callable
    backward: Callable
    step: Callable
    forget: int | None = None  # the block whose bias starts at forget_bias (remember)
    extras: tuple[Extra, ...] = ()
    # generation keeps h U apart from x W + b (the GRU's candidate needs the two apart)
    split_recurrent: bool = False
    # buffers of its own per layer, name -> (T, B, H) (the GRU keeps q_t and da_t)
    buffers: tuple[str, ...] = ()
    # gates that are functions of others, for activations (coupled: i = 1 - f)
    derived: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    # the cell adds b itself, after normalising x W (lnlstm): the input's linear map goes
    # without it, and the cell's backward fills db
    own_bias: bool = False
    # the gates read m = (x W_m + b_m) ⊙ (h U_m) instead of h (mlstm): W, b and U have one
    # block more than the gates, the last, and U's first blocks multiply m, its last h
    multiplicative: bool = False
    # its step needs the whole of a layer between products (m before m U; a normalisation's
    # statistics), so generation runs each layer in one part (streams still run in groups)
    whole_layer: bool = False
    torch: str | None = None  # torch.nn's module of the same cell, if it has one
    doc: str = field(default="", compare=False)  # one line for --help


def scratch(ws, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A workspace array of the cell's own, allocated on first use and kept on ws."""
    a = getattr(ws, name, None)
    if a is None or a.shape != shape:
        a = np.empty(shape, ws.dh.dtype)
        setattr(ws, name, a)
    return a
