"""charlm.reference against finite differences, and the kernels against charlm.reference."""

import numpy as np
import pytest

from charlm.model import CharLSTM, ModelConfig
from charlm.reference import cross_entropy, forward, loss_and_grad

B, T = 3, 5


def window(cfg: ModelConfig, nonzero_state: bool, dropout: bool, seed: int = 0):
    """A float64 model with random weights (biases too), a window, a state and dropout masks."""
    model = CharLSTM(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    model.theta[:] = rng.uniform(-0.8, 0.8, model.n_params)
    idx, targets = rng.integers(0, cfg.vocab_size, (2, B, T))
    state = model.zero_state(B)
    if nonzero_state:
        state.h[:] = rng.uniform(-0.9, 0.9, state.h.shape)
        state.c[:] = rng.standard_normal(state.c.shape)
    masks = None
    if dropout:
        masks = [m.copy() for m in model.sample_masks(model.workspace(T, B), rng)]
        assert any((m == 0).any() for m in masks)
    return model, idx, targets, state, masks


# --------------------------------------------------------------------------------------------
# backpropagation through time


@pytest.mark.parametrize("nonzero_state", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_lstm_gradients_match_finite_differences(nonzero_state, dropout):
    """Every entry of every tensor of a tiny LSTM, by central differences of forward's loss."""
    cfg = ModelConfig(vocab_size=5, n_embd=3, n_hidden=4, n_layer=2, dropout=0.3,
                      dtype="float64")
    model, idx, targets, state, masks = window(cfg, nonzero_state, dropout)
    params = {name: p.copy() for name, p in model.params.items()}

    def loss():
        return cross_entropy(forward(params, 2, idx, state.h, state.c, masks)[0], targets)

    ref_loss, grads = loss_and_grad(params, 2, idx, targets, state.h, state.c, masks)
    assert ref_loss == pytest.approx(loss(), rel=1e-14)
    assert set(grads) == set(params)
    eps = 1e-5
    for name, p in params.items():
        assert grads[name].shape == p.shape
        numeric = np.empty_like(p)
        for k in np.ndindex(p.shape):
            old = p[k]
            p[k] = old + eps
            up = loss()
            p[k] = old - eps
            down = loss()
            p[k] = old
            numeric[k] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("nonzero_state", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_lstm_kernels_match_the_reference_gradients(nonzero_state, dropout):
    cfg = ModelConfig(vocab_size=7, n_embd=5, n_hidden=6, n_layer=2, dropout=0.3,
                      dtype="float64")
    model, idx, targets, state, masks = window(cfg, nonzero_state, dropout, seed=3)
    ref_loss, grads = loss_and_grad(model.params, 2, idx, targets, state.h, state.c, masks)
    _, ref_h, ref_c = forward(model.params, 2, idx, state.h, state.c, masks)
    loss = model.loss_and_grad(idx, targets, state, masks)  # advances state
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name, g in model.grads.items():
        np.testing.assert_allclose(g, grads[name], rtol=1e-10, atol=1e-13, err_msg=name)
    np.testing.assert_allclose(state.h, ref_h, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(state.c, ref_c, rtol=1e-10, atol=1e-13)
