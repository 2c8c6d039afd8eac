"""Every cell beyond the LSTM's own tests: torch parity, activations, generation, checkpoints.

The gradient checks and the plain-NumPy reference run for every cell in test_engine.py.
"""

import importlib.util
import json
import sys

import numpy as np
import pytest

from charlm.checkpoint import load_checkpoint, save_checkpoint
from charlm.generate import Batch, Generator, PackedModel, SampleSettings
from charlm.model import CELLS, CharLSTM, ModelConfig, State, param_shapes
from charlm.reference import forward

ITOS = list("\n !',.:;?abcdefghijklmnopqrstuvwxyz")
PROMPT = "to be or not to be"


def make_model(cell: str, n_hidden: int = 20, n_layer: int = 2, scale: float = 2.0,
               dtype: str = "float32", seed: int = 0) -> CharLSTM:
    """A random model; n_hidden 20 is one full block of 16 units and a partial one of 4."""
    cfg = ModelConfig(vocab_size=len(ITOS), n_embd=8, n_hidden=n_hidden, n_layer=n_layer,
                      dropout=0.0, cell=cell, dtype=dtype)
    model = CharLSTM(cfg, seed=seed)
    # random values everywhere, biases and the extra parameters too
    rng = np.random.default_rng(seed)
    model.theta[:] = rng.uniform(-1, 1, model.n_params) / np.sqrt(n_hidden) * scale
    return model


def encode(text: str) -> np.ndarray:
    return np.array([[ITOS.index(ch) for ch in text]])


def test_shapes_and_initialisation():
    H, E, V = 20, 8, len(ITOS)
    for cell, spec in CELLS.items():
        model = CharLSTM(ModelConfig(vocab_size=V, n_embd=E, n_hidden=H, n_layer=2, cell=cell,
                                     forget_bias=1.0))
        shapes = param_shapes(model.config)
        G = spec.blocks
        assert shapes["W0"] == (E, G * H) and shapes["U1"] == (H, G * H)
        assert ("P0" in shapes) == (cell == "peephole") and ("bh0" in shapes) == (cell == "gru")
        b = model.params["b0"].reshape(G, H)
        for k in range(G):  # the forget gate's bias starts at 1, every other bias at 0
            assert np.all(b[k] == (1.0 if k == spec.forget else 0.0)), (cell, k)
        other = CharLSTM(ModelConfig(vocab_size=V, n_embd=E, n_hidden=H, cell=cell,
                                     forget_bias=-2.0))
        for k in range(G):
            assert np.all(other.params["b1"].reshape(G, H)[k] ==
                          (-2.0 if k == spec.forget else 0.0)), (cell, k)
        state = model.zero_state(3)
        assert state.h.shape == (2, 3, H) and state.c.shape == (2, 3, H if spec.has_c else 0)
    n = {cell: CharLSTM(ModelConfig(vocab_size=V, n_embd=E, n_hidden=H, cell=cell)).n_params
         for cell in CELLS}
    block = (E + H + 1) * H + (H + H + 1) * H  # W, U, b of one gate block, both layers
    assert n["lstm"] - n["coupled"] == block
    assert n["peephole"] - n["lstm"] == 2 * 3 * H
    assert n["lstm"] - n["gru"] == block - 2 * H
    assert n["gru"] - n["rnn"] == 2 * block + 2 * H
    assert n["mlstm"] - n["lstm"] == block  # m's block: W_m, U_m, b_m
    assert n["lnlstm"] - n["lstm"] == 2 * (4 * H + 4 * H + H + H)  # γ_x, γ_h, γ_c, β_c
    with pytest.raises(ValueError, match="cell must be one of lstm, gru, rnn, peephole"):
        ModelConfig(cell="transformer").validate()


@pytest.mark.parametrize("cell", ["gru", "rnn", "lstm"])
def test_matches_torch(cell):
    """gru and rnn compute what torch.nn.GRU and nn.RNN compute (what bench train compares)."""
    torch = pytest.importorskip("torch")
    model = make_model(cell, n_hidden=12, dtype="float64")
    H, L = 12, 2
    net = {"gru": torch.nn.GRU, "rnn": torch.nn.RNN, "lstm": torch.nn.LSTM}[cell](
        8, H, L, batch_first=True, dtype=torch.float64)
    p = model.params
    with torch.no_grad():
        for layer in range(L):
            getattr(net, f"weight_ih_l{layer}").copy_(torch.from_numpy(p[f"W{layer}"].T))
            getattr(net, f"weight_hh_l{layer}").copy_(torch.from_numpy(p[f"U{layer}"].T))
            getattr(net, f"bias_ih_l{layer}").copy_(torch.from_numpy(p[f"b{layer}"]))
            b_hh = np.zeros_like(p[f"b{layer}"])
            if cell == "gru":  # torch's second bias: only its n block stays inside r * (.)
                b_hh[2 * H :] = p[f"bh{layer}"]
            getattr(net, f"bias_hh_l{layer}").copy_(torch.from_numpy(b_hh))
        idx = encode(PROMPT)
        x = torch.from_numpy(p["E"][idx])
        out = net(x)[0].numpy()[0]
    acts = model.activations(idx)
    np.testing.assert_allclose(acts[-1]["h"][0], out, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", list(CELLS))
def test_activations(cell):
    model = make_model(cell, dtype="float64")
    spec = CELLS[cell]
    idx = np.concatenate([encode(PROMPT), encode(PROMPT[::-1])])
    state = model.zero_state(2)
    acts = model.activations(idx, state)
    names = set(spec.gates) | ({"i"} if cell == "coupled" else set()) | (
        {"c"} if spec.has_c else set()) | {"h"}
    assert len(acts) == 2 and all(set(a) == names for a in acts)
    assert all(a.shape == (2, len(PROMPT), 20) for layer in acts for a in layer.values())
    _, ref_h, ref_c = forward(model.params, 2, idx, np.zeros_like(state.h),
                              np.zeros_like(state.c), cell=cell)
    for layer in range(2):
        np.testing.assert_allclose(acts[layer]["h"][:, -1], ref_h[layer], rtol=1e-10)
        np.testing.assert_array_equal(acts[layer]["h"][:, -1], state.h[layer])
        if spec.has_c:
            np.testing.assert_allclose(acts[layer]["c"][:, -1], ref_c[layer], rtol=1e-10)
    for name in set(spec.gates) - {"g", "n"}:  # sigmoid gates
        assert all(((a[name] > 0) & (a[name] < 1)).all() for a in acts)
    if cell == "coupled":
        np.testing.assert_allclose(acts[0]["i"], 1 - acts[0]["f"])


def reference_probs(model: CharLSTM, text: str) -> np.ndarray:
    z = model.forward(encode(text), model.zero_state(1)).logits[-1].astype(np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("cell", list(CELLS))
def test_generation_follows_the_model(cell):
    """The packed step kernel of each cell gives CharLSTM.forward's distributions."""
    model = make_model(cell)
    gen = Generator(model, ITOS, threads=1)
    for prompt in ("a", PROMPT, "the quick brown fox, " * 3):
        np.testing.assert_allclose(gen.distribution(prompt).probs, reference_probs(model, prompt),
                                   rtol=1e-4, atol=1e-7)
    out = gen.complete(PROMPT, temperature=0.0, max_new_chars=30)
    for k, tok in enumerate(out.tokens):
        ref = reference_probs(model, PROMPT + out.text[:k])
        assert ref[ITOS.index(tok.char)] >= ref.max() - 1e-6
        assert tok.logprob == pytest.approx(np.log(ref[ITOS.index(tok.char)]), abs=1e-4)


@pytest.mark.parametrize("cell", ["gru", "rnn", "peephole", "coupled", "mlstm", "lnlstm"])
def test_batched_threaded_equals_single_stream(cell):
    model = make_model(cell, n_hidden=40)
    solo = Generator(model, ITOS, threads=1)
    streams = [(PROMPT, SampleSettings(temperature=0.9, seed=1, max_new_chars=25)),
               ("", SampleSettings(temperature=1.2, top_k=5, seed=2, max_new_chars=20)),
               ("abc", SampleSettings(temperature=0.0, max_new_chars=15))]
    expected = [solo.complete(p, s).tokens for p, s in streams]
    batch = Batch(PackedModel(model, ITOS, threads=2), capacity=1)
    ids = {batch.add(p, s): k for k, (p, s) in enumerate(streams)}
    got = {k: [] for k in range(len(streams))}
    while batch.running:
        for ev in batch.step():
            got[ids[ev.stream]] += ev.tokens
    assert [got[k] for k in range(len(streams))] == expected


@pytest.mark.parametrize("cell", ["gru", "peephole", "mlstm", "lnlstm"])
def test_checkpoint_round_trip(tmp_path, cell):
    model = make_model(cell)
    save_checkpoint(tmp_path / "m.npz", model, ITOS, {"step": 3})
    ck = load_checkpoint(tmp_path / "m.npz")
    assert ck.config.cell == cell
    np.testing.assert_array_equal(ck.model().theta, model.theta)
    assert Generator(ck.model(), ck.vocab).complete(PROMPT, seed=4, max_new_chars=20).tokens == \
        Generator(model, ITOS).complete(PROMPT, seed=4, max_new_chars=20).tokens


def test_training_resumes_exactly_without_a_cell_state(tmp_path):
    """A GRU's state has no c (width 0): it is saved, restored and reset like an LSTM's."""
    from charlm.checkpoint import load_checkpoint as load
    from charlm.data import load_corpus
    from charlm.train import TrainConfig, Trainer

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 60)
    corpus = load_corpus(text, val_frac=0.1)

    def cfgs(max_steps):
        return (ModelConfig(n_embd=8, n_hidden=16, n_layer=2, dropout=0.1, cell="gru"),
                TrainConfig(seq_len=12, batch_size=4, max_steps=max_steps, eval_every=5,
                            lr_decay="constant"))

    whole = Trainer(corpus, *cfgs(12), tmp_path / "whole")
    list(whole.run())
    first = Trainer(corpus, *cfgs(7), tmp_path / "part")
    list(first.run())
    assert first.state.c.shape == (2, 4, 0)
    resumed = Trainer(corpus, *cfgs(12), tmp_path / "part",
                      resume=load(tmp_path / "part" / "latest.npz"))
    list(resumed.run())
    np.testing.assert_array_equal(resumed.model.theta, whole.model.theta)


def test_bench_train_has_a_line_per_cell(capsys, monkeypatch):
    import charlm.bench.train as bench

    tiny = bench.Shape(1, 8, 3, 4, 5)
    # the peer of each cell torch has, stepped once here; a stand-in below (the peer runs as
    # many steps as ours, thousands for a model this small)
    if importlib.util.find_spec("torch"):
        for cell in bench.TORCH_CELLS:
            assert 0 < bench.torch_step(tiny, cell)() < 10
    # the stand-in is our own step: as fast as ours, so the ratio is a real number (about 1),
    # not 0.0, and the blocks take no longer than ours
    monkeypatch.setattr(bench, "torch_step", lambda *a: bench.charlm_step(*a)
                        if a[-1] in bench.TORCH_CELLS else None)
    rows = bench.run_train_bench(rounds=1, json_out=True, shapes=(tiny,),
                                 cells=("lstm", "peephole"))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert [r["cell"] for r in rows] == ["lstm", "peephole"] and len(lines) == 2
    assert all(r["what"] == "train" and r["chars_per_s"] > 0 and r["shape"] == "1x8/3/4x5"
               for r in rows)
    assert rows[0]["ratio"] > 0 and rows[1]["ratio"] is None
    for r in rows:  # FLOP/s is the step's FLOPs at the measured pace, a share of the peak
        assert r["flops_per_s"] == pytest.approx(r["flops_per_step"] * r["chars_per_s"] / 20,
                                                 rel=1e-3)
        assert r["peak_fraction"] == pytest.approx(r["flops_per_s"] / r["peak_flops_per_s"],
                                                   abs=1e-3)
    bench.run_train_bench(rounds=1, profile=True, shapes=(tiny,), cells=("coupled",))
    out = capsys.readouterr().out
    assert out.startswith("train coupled  1x8/3/4x5 ") and "torch has no such cell" in out
    assert "coupled_backward" in out  # the profile wraps the cells' kernels too
    assert "% of sgemm's" in out and "at NumPy pace" in out


@pytest.mark.parametrize("cell", list(CELLS))
def test_bench_train_counts_six_flops_per_weight_and_character(cell):
    """step_flops against the rule of thumb it must reduce to: a weight matrix applied to N rows
    costs 2 FLOPs per weight and row going forward and 4 going back (its gradient and its
    input's), read from the model's own parameters; the exceptions are the first layer's input
    weights, applied to the V rows of the embedding table, and U, whose gradient to h_{t-1}
    skips the window's first step."""
    import charlm.bench.train as bench

    shape = bench.Shape(3, 7, 5, 4, 6)
    N = shape.batch * shape.seq_len
    model = CharLSTM(ModelConfig(vocab_size=bench.VOCAB, n_embd=5, n_hidden=7, n_layer=3,
                                 dropout=0.0, cell=cell))
    p = model.params
    Us = sum(p[f"U{layer}"].size for layer in range(3))
    Ws = sum(p[f"W{layer}"].size for layer in (1, 2)) + p["Wy"].size
    want = 6 * N * (Us + Ws) - 2 * shape.batch * Us + 6 * bench.VOCAB * p["W0"].size
    assert bench.step_flops(shape, cell) == want


def test_the_gate_loops_are_vectorised():
    """Every recurrence kernel's fused gate pass compiles to SIMD in float32 (a slicing pattern
    once broke this silently): the only multiplications in these kernels are in that pass."""
    import re

    import numba as nb

    from charlm import kernels

    for cell in CELLS:  # compile (or load) each kernel with the types the model passes
        model = make_model(cell, n_hidden=8, n_layer=1)
        x = np.zeros((2, 3), np.int64)
        model.loss_and_grad(x, x, model.zero_state(2))
    names = [f"{cell}_{way}" for cell in CELLS for way in ("forward", "backward")]
    for name in names:
        module = sys.modules[CELLS[name.split("_")[0]].forward.__module__]
        kernel = getattr(module, name)
        sig = next(s for s in kernel.signatures if s[0].dtype == nb.float32)
        # a fresh compilation: code loaded from numba's cache cannot be inspected
        fresh = nb.njit(**{**kernels.LEAF, "cache": False})(kernel.py_func)
        fresh.compile(sig)
        ir = fresh.inspect_llvm(sig)
        # a scalar gate loop (tanhf from libm, say) leaves at most one stray vector multiply;
        # the vectorised ones have 10 to 67
        n_vector = len(re.findall(r"fmul[a-z ]*<\d+ x float>", ir))
        assert n_vector >= 4, f"{name}'s gate loop is scalar ({n_vector} vector multiplies)"


def test_the_command_line_offers_what_the_registry_holds():
    """--cell's choices and help come from charlm.cells.CELLS: a registered cell shows up."""
    from typer.testing import CliRunner

    from charlm.cli import app

    out = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["train", "--help"]).output
    assert "<" + "|".join(CELLS) + ">" in out
    for name, cell in CELLS.items():
        assert f"{name}, {cell.doc}" in " ".join(out.split())
    r = CliRunner().invoke(app, ["train", "--cell", "lstmx", "--max-steps", "1"])
    assert r.exit_code == 2 and "lstmx" in r.output


def test_mlstm_gates_see_the_state_only_through_m():
    """With x W_m + b_m = 0 for every character, m = 0 and the gates ignore h_{t-1}: the
    output of a window no longer depends on the state it starts from (and does otherwise)."""
    model = make_model("mlstm", dtype="float64")
    H, idx = 20, encode(PROMPT)
    rng = np.random.default_rng(5)
    h, c = rng.uniform(-0.9, 0.9, (2, 2, 1, H))

    def from_state(h, c):
        return model.forward(idx, State(h.copy(), c.copy())).logits.copy()

    assert not np.allclose(from_state(h, c), from_state(np.zeros_like(h), c))
    for layer in range(2):
        model.params[f"W{layer}"][:, 4 * H :] = 0
        model.params[f"b{layer}"][4 * H :] = 0
    # c still carries over (f c_{t-1}), so compare with the same c and another h
    np.testing.assert_allclose(from_state(h, c), from_state(np.zeros_like(h), c), rtol=1e-13)


def test_lnlstm_is_invariant_to_the_scale_of_its_products():
    """Layer normalisation: scaling W or U of a layer by a positive factor leaves every output
    as it was (up to epsilon's share of the variance); scaling a gain does not."""
    model = make_model("lnlstm", dtype="float64")
    idx = encode(PROMPT)

    def logits():
        return model.forward(idx, model.zero_state(1)).logits.copy()

    before = logits()
    for name in ("W0", "U0", "W1", "U1"):
        model.params[name] *= 7.0
    np.testing.assert_allclose(logits(), before, rtol=1e-3, atol=1e-4)
    model.params["gc1"] *= 0.5  # but the gains are not normalised away
    assert not np.allclose(logits(), before, rtol=1e-3, atol=1e-4)


def test_whole_layer_cells_generate_in_one_part():
    for cell in CELLS:
        packed = PackedModel(make_model(cell, n_hidden=40), ITOS, threads=2)
        assert packed.threads == (1 if CELLS[cell].whole_layer else 2), cell


@pytest.mark.parametrize("cell", [c for c in CELLS if CELLS[c].whole_layer])
@pytest.mark.parametrize("n_layer, n_hidden", [(1, 20), (3, 40), (2, 33)])
def test_whole_layer_cells_generate_at_any_depth(cell, n_layer, n_hidden):
    """One layer (no input weights above the first), three, and a width of no whole panels."""
    model = make_model(cell, n_hidden=n_hidden, n_layer=n_layer)
    gen = Generator(model, ITOS, threads=2)
    for prompt in ("a", PROMPT):
        np.testing.assert_allclose(gen.distribution(prompt).probs, reference_probs(model, prompt),
                                   rtol=1e-4, atol=1e-7)
