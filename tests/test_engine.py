"""The engine, every cell, against central finite differences and a plain-NumPy reference."""

import numpy as np
import pytest

from charlm.model import CELLS, CharLSTM, ModelConfig, State
from charlm.optim import Adam, RMSprop, clip_grad_norm
from charlm.reference import cross_entropy, forward

CFG = ModelConfig(vocab_size=7, n_embd=5, n_hidden=6, n_layer=2, dropout=0.3, dtype="float64")
B, T = 3, 5


def setup(nonzero_state: bool, dropout: bool, seed: int = 0, cell: str = "lstm"):
    rng = np.random.default_rng(seed)
    model = CharLSTM(ModelConfig(**{**CFG.to_dict(), "cell": cell}), seed=seed)
    idx = rng.integers(0, CFG.vocab_size, (B, T))
    targets = rng.integers(0, CFG.vocab_size, (B, T))
    state = model.zero_state(B)
    if nonzero_state:
        state.h[:] = rng.uniform(-0.9, 0.9, state.h.shape)
        state.c[:] = rng.standard_normal(state.c.shape)
    # the extra parameters start at 0, 1 or small, and b at 0: stir them
    extras = {f"{e.name}{layer}" for e in CELLS[cell].extras for layer in range(CFG.n_layer)}
    for name, p in model.params.items():
        if name in extras:
            p[:] += rng.uniform(-0.5, 0.5, p.shape)
        elif cell in ("mlstm", "lnlstm") and name[0] == "b" and name != "by":
            p[:] = rng.uniform(-0.5, 0.5, p.shape)  # b_m, and b added after normalisation
    masks = None
    if dropout:
        masks = [m.copy() for m in model.sample_masks(model.workspace(T, B), rng)]
        assert any((m == 0).any() for m in masks)
    return model, idx, targets, state, masks


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("nonzero_state", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_gradients_match_finite_differences(nonzero_state, dropout, cell):
    model, idx, targets, state0, masks = setup(nonzero_state, dropout, cell=cell)

    def loss():
        state = State(state0.h.copy(), state0.c.copy())
        return model.loss_and_grad(idx, targets, state, masks)

    loss()
    analytic = model.grad.copy()
    rng = np.random.default_rng(1)
    offset = 0
    for name, p in model.params.items():
        flat = p.reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, 12), replace=False)
        for k in picks:
            # fourth-order central difference: truncation O(eps^4), so roundoff dominates
            eps, old, fs = 1e-4, flat[k], []
            for step in (-2, -1, 1, 2):
                flat[k] = old + step * eps
                fs.append(loss())
            flat[k] = old
            numeric = (fs[0] - 8 * fs[1] + 8 * fs[2] - fs[3]) / (12 * eps)
            a = analytic[offset + k]
            if abs(numeric) < 1e-4:  # relative error is meaningless near zero
                assert abs(a - numeric) < 1e-10, (name, k, a, numeric)
            else:
                rel = abs(a - numeric) / max(abs(a), abs(numeric))
                assert rel <= 1e-6, (name, k, a, numeric, rel)
        offset += flat.size
    assert offset == model.theta.size


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dropout", [False, True])
def test_forward_matches_numpy_reference(dropout, cell):
    model, idx, targets, state, masks = setup(True, dropout, seed=3, cell=cell)
    ref_logits, ref_h, ref_c = forward(model.params, CFG.n_layer, idx, state.h, state.c, masks,
                                       cell=cell)
    ref = cross_entropy(ref_logits, targets)
    ws = model.forward(idx, state, masks)
    logits = ws.logits.reshape(T, B, -1).transpose(1, 0, 2)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(state.h, ref_h, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(state.c, ref_c, rtol=1e-6, atol=1e-12)
    model2, idx, targets, state, masks = setup(True, dropout, seed=3, cell=cell)
    loss = model2.loss_and_grad(idx, targets, state, masks)
    assert abs(loss - ref) / ref <= 1e-6


@pytest.mark.parametrize("cell", list(CELLS))
def test_float32_forward_close_to_float64(cell):
    """The float32 kernels (with the vectorised tanh) agree with float64 to float32 precision."""
    cfg32 = ModelConfig(vocab_size=11, n_embd=16, n_hidden=32, n_layer=2, dropout=0.0, cell=cell)
    cfg64 = ModelConfig(**{**cfg32.to_dict(), "dtype": "float64"})
    m64 = CharLSTM(cfg64, seed=2)
    m32 = CharLSTM(cfg32, theta=m64.theta.astype(np.float32))
    idx = np.random.default_rng(0).integers(0, 11, (4, 20))
    l32 = m32.forward(idx, m32.zero_state(4)).logits
    l64 = m64.forward(idx, m64.zero_state(4)).logits
    assert l32.dtype == np.float32
    np.testing.assert_allclose(l32, l64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_hidden", [6, 32])
@pytest.mark.parametrize("cell", list(CELLS))
def test_float32_gradients_close_to_float64(cell, n_hidden):
    """The float32 backward pass (its recurrent products on the panel micro-kernel) agrees with
    float64's BLAS. At 6 units mlstm's U_m starts inside a panel (4H = 24), so it is packed apart;
    at 32 it is the panels after U_g's."""
    cfg32 = ModelConfig(vocab_size=11, n_embd=5, n_hidden=n_hidden, n_layer=2, dropout=0.0,
                        cell=cell)
    cfg64 = ModelConfig(**{**cfg32.to_dict(), "dtype": "float64"})
    m64 = CharLSTM(cfg64, seed=2)
    rng = np.random.default_rng(3)
    m64.theta[:] = rng.uniform(-2, 2, m64.n_params) / np.sqrt(n_hidden)
    m32 = CharLSTM(cfg32, theta=m64.theta.astype(np.float32))
    idx, targets = rng.integers(0, 11, (5, 9)), rng.integers(0, 11, (5, 9))
    s64 = m64.zero_state(5)
    s64.h[:] = rng.uniform(-0.5, 0.5, s64.h.shape)
    s64.c[:] = rng.uniform(-0.5, 0.5, s64.c.shape)
    s32 = State(s64.h.astype(np.float32), s64.c.astype(np.float32))
    l64 = m64.loss_and_grad(idx, targets, s64)
    l32 = m32.loss_and_grad(idx, targets, s32)
    assert m32.grad.dtype == np.float32
    assert abs(l32 - l64) <= 1e-6 * l64
    np.testing.assert_allclose(m32.grad, m64.grad, rtol=1e-3, atol=1e-5 * np.abs(m64.grad).max())
    np.testing.assert_allclose(s32.h, s64.h, atol=1e-6)


@pytest.mark.parametrize("cell", list(CELLS))
def test_state_carries_across_windows(cell):
    """Two windows of T with carried state equal one window of 2T."""
    model, idx, _, state, _ = setup(True, False, cell=cell)
    idx2 = np.concatenate([idx, idx[:, ::-1]], axis=1)
    s_once = State(state.h.copy(), state.c.copy())
    whole = model.forward(idx2, s_once).logits.reshape(2 * T, B, -1).copy()
    first = model.forward(idx, state).logits.reshape(T, B, -1).copy()
    second = model.forward(idx[:, ::-1].copy(), state).logits.reshape(T, B, -1)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-12)
    np.testing.assert_allclose(state.h, s_once.h, rtol=1e-12)
    np.testing.assert_allclose(state.c, s_once.c, rtol=1e-12)


def test_adam_and_rmsprop_match_formulas():
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(50)
    ref = theta.copy()
    m = v = np.zeros(50)
    opt = Adam(50, np.float64)
    for step in range(1, 4):
        g = rng.standard_normal(50)
        opt.update(theta, g.copy(), 1e-2)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        mhat, vhat = m / (1 - 0.9**step), v / (1 - 0.999**step)
        ref -= 1e-2 * mhat / (np.sqrt(vhat) + 1e-8 / np.sqrt(1 - 0.999**step))
    np.testing.assert_allclose(theta, ref, rtol=1e-10)

    theta = rng.standard_normal(50)
    ref, cache = theta.copy(), np.zeros(50)
    opt = RMSprop(50, np.float64)
    for _ in range(3):
        g = rng.standard_normal(50)
        opt.update(theta, g.copy(), 1e-2)
        cache = 0.95 * cache + 0.05 * g * g
        ref -= 1e-2 * g / (np.sqrt(cache) + 1e-8)
    np.testing.assert_allclose(theta, ref, rtol=1e-10)


def test_clip_grad_norm():
    g = np.array([3.0, 4.0], np.float32)
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-5)
    g = np.array([0.3, 0.4])
    clip_grad_norm(g, 1.0)
    np.testing.assert_array_equal(g, [0.3, 0.4])


def test_it_learns_a_repetitive_text():
    text = "hello world, this is charlm. " * 40
    chars = sorted(set(text))
    data = np.array([chars.index(ch) for ch in text])
    cfg = ModelConfig(vocab_size=len(chars), n_embd=16, n_hidden=64, n_layer=2, dropout=0.0)
    model = CharLSTM(cfg, seed=0)
    opt = Adam(model.n_params, model.dtype)
    Bn, Tn = 8, 29
    starts = np.arange(Bn) * (len(data) // Bn)
    state = model.zero_state(Bn)
    first = None
    for step in range(300):
        pos = starts[:, None] + (step * Tn) % (len(data) // Bn - Tn - 1) + np.arange(Tn)
        loss = model.loss_and_grad(data[pos], data[pos + 1], state)
        first = first or loss
        clip_grad_norm(model.grad, 5.0)
        opt.update(model.theta, model.grad, 1e-2)
    assert first > 2.5
    assert loss < 0.05
