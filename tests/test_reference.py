"""charlm.reference against finite differences, and the kernels against charlm.reference."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charlm import reference
from charlm.generate import Generator
from charlm.model import CELLS, CharLSTM, ModelConfig
from charlm.reference import (
    cross_entropy,
    forward,
    generate,
    loss_and_grad,
    next_distribution,
    sample_probs,
)

ITOS = list("\n !',.:;?abcdefghijklmnopqrstuvwxyz")
PROMPT = "to be or not to be"
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


# --------------------------------------------------------------------------------------------
# sampling


def make_model(cell: str, seed: int = 0) -> CharLSTM:
    """A float32 model with random weights, peakier than at init; n_hidden 20 is one full
    block of 16 units and a partial one of 4 for the packed step."""
    cfg = ModelConfig(vocab_size=len(ITOS), n_embd=8, n_hidden=20, n_layer=2, dropout=0.0,
                      cell=cell)
    model = CharLSTM(cfg, seed=seed)
    model.theta[:] = np.random.default_rng(seed).uniform(-1, 1, model.n_params) / np.sqrt(20) * 2
    for e in CELLS[cell].extras:  # a normalisation's gains about 1, as at init
        if e.init == "one":
            for layer in range(cfg.n_layer):
                model.params[f"{e.name}{layer}"] += 1
    return model


def encode(text: str) -> list[int]:
    return [ITOS.index(ch) for ch in text]


def test_sample_probs_crops_to_top_k_then_the_nucleus():
    logits = np.log([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(sample_probs(logits), [0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(sample_probs(logits, top_k=2), [0, 4 / 7, 0, 3 / 7])
    np.testing.assert_allclose(sample_probs(logits, top_p=0.5), [0, 4 / 7, 0, 3 / 7])
    np.testing.assert_allclose(sample_probs(logits, top_p=0.39), [0, 1, 0, 0])
    # of the 0.9 that top-3 keeps, 0.4 is 44% and 0.4 + 0.3 is 78%
    np.testing.assert_allclose(sample_probs(logits, top_k=3, top_p=0.5), [0, 4 / 7, 0, 3 / 7])
    np.testing.assert_allclose(sample_probs(logits, top_k=3, top_p=0.8), [0, 4 / 9, 2 / 9, 3 / 9])
    w = np.sqrt([0.1, 0.4, 0.2, 0.3])  # temperature 2 takes the square root of p
    np.testing.assert_allclose(sample_probs(logits, temperature=2.0), w / w.sum())
    np.testing.assert_array_equal(sample_probs(logits, temperature=0), [0, 1, 0, 0])
    np.testing.assert_array_equal(sample_probs([1.0, 3.0, 3.0], top_k=1), [0, 1, 0])  # ties


@pytest.mark.parametrize("cell", list(CELLS))
def test_generator_distribution_matches_the_reference(cell):
    model = make_model(cell)
    gen = Generator(model, ITOS, threads=1)
    for prompt in ("", "a", PROMPT, "the quick brown fox, " * 3):
        for temperature in (1.0, 0.5, 2.5):
            ref = next_distribution(model.params, 2, cell, encode(prompt), temperature)
            np.testing.assert_allclose(gen.distribution(prompt, temperature).probs, ref,
                                       rtol=1e-4, atol=1e-7, err_msg=(prompt, temperature))
        ref = next_distribution(model.params, 2, cell, encode(prompt), 0.0)
        np.testing.assert_array_equal(gen.distribution(prompt, 0.0).probs, ref)


@pytest.mark.parametrize("cell", list(CELLS))
def test_greedy_generation_matches_the_reference(cell):
    model = make_model(cell)
    out = Generator(model, ITOS, threads=1).complete(PROMPT, temperature=0.0, max_new_chars=30)
    ref = generate(model.params, 2, cell, encode(PROMPT), 30, temperature=0.0)
    assert out.text == "".join(ITOS[v] for v in ref[len(PROMPT):])
    # top_k=1 keeps only the most probable character: greedy at any temperature
    assert generate(model.params, 2, cell, encode(PROMPT), 30, top_k=1) == ref


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.5), (5, 0.8), (1, 1.0)])
def test_the_kernel_draws_from_the_reference_kept_set(cell, top_k, top_p):
    """First characters of many seeds: drawn only from what the reference keeps, each kept
    character that is not rare drawn, at frequencies near the reference's probabilities."""
    model = make_model(cell)
    n = 300
    ids = encode(PROMPT)
    q = next_distribution(model.params, 2, cell, ids, 1.5, top_k, top_p)
    # no near tie at the boundaries, where the kernel's float32 logits could cut elsewhere:
    # the k-th and the next further apart than the float32 tolerance (rtol 1e-4) of probs
    p = np.sort(next_distribution(model.params, 2, cell, ids, 1.5))[::-1]
    assert top_k == 0 or p[top_k - 1] > p[top_k] * (1 + 1e-3)
    for nudge in (-1e-4, 1e-4):
        near = next_distribution(model.params, 2, cell, ids, 1.5, top_k, min(top_p + nudge, 1))
        assert np.array_equal(near > 0, q > 0), "a near tie: pick another prompt or seed"
    gen = Generator(model, ITOS, threads=1)
    drawn = [ITOS.index(gen.complete(PROMPT, temperature=1.5, top_k=top_k, top_p=top_p,
                                     seed=seed, max_new_chars=1).text) for seed in range(n)]
    freq = np.bincount(drawn, minlength=len(ITOS)) / n
    assert set(drawn) <= set(np.flatnonzero(q))
    assert set(drawn) >= set(np.flatnonzero(q >= 0.03))
    assert np.all(np.abs(freq - q) <= 4 * np.sqrt(q * (1 - q) / n) + 1e-9)


def test_reference_generation_is_seeded():
    model = make_model("lstm")
    a = generate(model.params, 2, "lstm", encode(PROMPT), 40, rng=np.random.default_rng(7))
    b = generate(model.params, 2, "lstm", encode(PROMPT), 40, rng=np.random.default_rng(7))
    c = generate(model.params, 2, "lstm", encode(PROMPT), 40, rng=np.random.default_rng(8))
    assert a == b and a != c
    assert a[: len(PROMPT)] == encode(PROMPT) and len(a) == len(PROMPT) + 40
    assert len(generate(model.params, 2, "lstm", [], 5, rng=np.random.default_rng(0))) == 5


# --------------------------------------------------------------------------------------------
# the file a learner reads alone


def test_it_needs_nothing_but_numpy():
    tree = ast.parse(Path(reference.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    assert imported == {"numpy"}
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]


def test_the_demo_learns_its_line_and_samples_it():
    run = subprocess.run([sys.executable, "-m", "charlm.reference"], capture_output=True,
                         text=True, check=True, timeout=120)
    *losses, sample = run.stdout.splitlines()
    assert float(losses[0].split()[-1]) > 2 and float(losses[-1].split()[-1]) < 0.05
    assert sample.startswith("hello world, hello charlm. ")
