"""Compile (or load from the on-disk cache) every training kernel on tiny arrays, up front."""

import numpy as np

from charlm.model import CharLSTM, ModelConfig
from charlm.optim import Adam, RMSprop, clip_grad_norm


def warmup(dtypes: tuple[str, ...] = ("float32",)) -> None:
    """Run one tiny training step per dtype and optimizer, so no real step pays compilation."""
    for dtype in dtypes:
        model = CharLSTM(ModelConfig(vocab_size=3, n_embd=2, n_hidden=2, n_layer=2, dropout=0.5,
                                     dtype=dtype))
        x = np.zeros((1, 2), np.int64)
        state = model.zero_state(1)
        masks = model.sample_masks(model.workspace(2, 1), np.random.default_rng(0))
        model.loss_and_grad(x, x, state, masks)
        model.loss(x, x, state)
        clip_grad_norm(model.grad, 1.0)
        for opt in (Adam(model.n_params, model.dtype), RMSprop(model.n_params, model.dtype)):
            opt.update(model.theta, model.grad, 1e-3)
