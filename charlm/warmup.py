"""Compile (or load from the on-disk cache) every training kernel on tiny arrays, up front."""

import numpy as np

from charlm.model import CharLSTM, ModelConfig
from charlm.optim import OPTIMIZERS
from charlm.train import train_step


def warmup(dtypes: tuple[str, ...] = ("float32",)) -> None:
    """Run one tiny training step per dtype and optimizer, so no real step pays compilation."""
    for dtype in dtypes:
        model = CharLSTM(ModelConfig(vocab_size=3, n_embd=2, n_hidden=2, n_layer=2, dropout=0.5,
                                     dtype=dtype))
        x = np.zeros((1, 2), np.int64)
        state, rng = model.zero_state(1), np.random.default_rng(0)
        for make in OPTIMIZERS.values():
            train_step(model, make(model.n_params, model.dtype), x, x, state, 1e-3, 1.0, rng)
        model.loss(x, x, state)
