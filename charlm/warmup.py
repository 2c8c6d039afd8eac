"""One warm-up: compile (or load from numba's cache) the kernels a job will run, before it starts.

The trainer, `charlm sample` and the service all call warmup(), each for what it runs, so no
real step, first character or first request pays a compilation.
"""

from collections.abc import Iterable

import numba as nb
import numpy as np

from charlm.cells import KIND
from charlm.gemm import PANEL, as_panels
from charlm.generate import kernels as GK
from charlm.generate.tape import Tape, record
from charlm.model import CharLSTM, ModelConfig
from charlm.optim import OPTIMIZERS
from charlm.train import train_step


def warmup(cells: Iterable[str] = ("lstm",), dtypes: Iterable[str] = ("float32",), *,
           train: bool = True, forward: bool = True, generate: bool = True) -> None:
    """Compile every kernel that these cells, in these dtypes, run on tiny arrays.

    forward: the evaluation pass (eval, the service's /activations); train: one training step
    per optimizer, dropout on (forward and backward); generate: the step and prompt kernels of
    generation, which serve every cell (float32).
    """
    for cell in cells:
        for dtype in dtypes:
            if train or forward:
                _model_kernels(cell, dtype, train)
    if generate:
        _generation_kernels()


def _model_kernels(cell: str, dtype: str, train: bool) -> None:
    model = CharLSTM(ModelConfig(vocab_size=3, n_embd=2, n_hidden=2, n_layer=2, dropout=0.5,
                                 dtype=dtype, cell=cell))
    x = np.zeros((1, 2), np.int64)
    state, rng = model.zero_state(1), np.random.default_rng(0)
    if train:
        for make in OPTIMIZERS.values():
            train_step(model, make(model.n_params, model.dtype), x, x, state, 1e-3, 1.0, rng)
    model.loss(x, x, state)


def _generation_kernels() -> None:
    """The step and prompt kernels, with the types a Batch passes. The threaded kernels are
    compiled without being run: a server that forks after warming up (a preloading gunicorn)
    does not start numba's thread pool, which is not fork-safe."""
    L, H, V, B = 2, 4, 3, 1
    f32 = np.float32
    # one compiled kernel serves every cell (the cell is an argument): warm it with the LSTM
    w = GK.Weights(KIND["lstm"], np.zeros((V, 4 * H), f32), np.zeros((L, 1, 1, H, PANEL), f32),
                   np.zeros((L - 1, 1, 1, H, PANEL), f32), np.zeros((L - 1, 4 * H), f32),
                   np.zeros((L, 0, 0), f32), as_panels(np.zeros((H, V), f32)),
                   np.zeros(V, f32), np.array([0, H], np.int64),
                   np.zeros((L, 0, 0, PANEL), f32))
    s = GK.State(np.zeros(B, np.int64), np.zeros((B, L, H), f32), np.zeros((B, L, H), f32))
    d = GK.Draw(np.ones(B), np.zeros(B, np.int64), np.ones(B), np.zeros(B, np.uint64),
                np.zeros(B, np.uint64))
    k = GK.Work(np.zeros((B, L, H), f32), np.zeros((B, 4 * H), f32), np.zeros((B, V), f32),
                np.zeros((B, V)), np.zeros((B, V), np.int64), np.zeros(B))
    idx = np.zeros(2, np.int64)
    GK.step(w, s, d, k)
    tape = Tape(rows=1, width=1)  # the server's copy of each step into the streams' rows
    record(np.zeros(B, np.int64), s.x, k.logp, tape.arrays)
    GK.prime(w, idx, s, k.h_new, k.z)
    GK.step_threads.compile(tuple(nb.typeof(a) for a in (w, s, d, k)))
    GK.prime_threads.compile(tuple(nb.typeof(a) for a in (w, idx, s, k.h_new, k.z)))
