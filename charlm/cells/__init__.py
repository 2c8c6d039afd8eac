"""The recurrent cells, one module each, registered here once.

A cell's module holds its equations twice: the training kernels over a window, and the packed
step of generation, side by side; and its Cell record, which says everything else the model,
generation, the service and the CLI need. To add a cell, write its module and add it to CELLS
and to cell_step below.
"""

import numba as nb

from charlm.cells import coupled, gru, lnlstm, lstm, mlstm, peephole, rnn
from charlm.cells.cell import Cell, Extra
from charlm.kernels import MATVEC

# the order is the cells' number in generation's step kernel (cell_step's kind)
CELLS: dict[str, Cell] = {c.name: c for c in (lstm.CELL, gru.CELL, rnn.CELL, peephole.CELL,
                                                coupled.CELL, mlstm.CELL, lnlstm.CELL)}
KIND = {name: k for k, name in enumerate(CELLS)}

__all__ = ["CELLS", "KIND", "Cell", "Extra", "cell_step"]


@nb.njit(inline="always", **MATVEC)
def cell_step(kind, z, P, h, c, h_new, u0, u1):
    """The packed step of cell number kind (its place in CELLS) for units [u0, u1) of a stream.

    One compiled step kernel serves every cell, with the cell a run-time argument: a kernel
    compiled per cell would cost each cell the half minute the micro-kernel takes to compile.
    The branch is taken once per stream and part of a layer, outside the loops over units.
    """
    if kind == 0:
        lstm.lstm_step(z, P, h, c, h_new, u0, u1)
    elif kind == 1:
        gru.gru_step(z, P, h, c, h_new, u0, u1)
    elif kind == 2:
        rnn.rnn_step(z, P, h, c, h_new, u0, u1)
    elif kind == 3:
        peephole.peephole_step(z, P, h, c, h_new, u0, u1)
    elif kind == 4:
        coupled.coupled_step(z, P, h, c, h_new, u0, u1)
    elif kind == 5:
        mlstm.mlstm_step(z, P, h, c, h_new, u0, u1)
    else:
        lnlstm.lnlstm_step(z, P, h, c, h_new, u0, u1)
