"""charlm.reading: the balanced accuracy against a brute force, the handmade units read as the
states they are named for, and `charlm reber units` / `charlm experiment reber --save-dir`."""

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm import handmade, reber
from charlm.checkpoint import load_checkpoint, save_checkpoint
from charlm.cli import app
from charlm.model import CharLSTM, ModelConfig
from charlm.reading import balanced_accuracy, read_units


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def brute_force(v: np.ndarray, holds: np.ndarray) -> float:
    """Every threshold (between distinct values and beyond them), either side taken as yes."""
    best = 0.0
    for t in [-np.inf, *np.unique(v)]:
        said = v > t
        for guess in (said, ~said):
            best = max(best, (guess[holds].mean() + (~guess[~holds]).mean()) / 2)
    return best


def test_balanced_accuracy_is_the_best_threshold():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 30))
        v = rng.integers(0, 6, n).astype(float)  # with ties
        holds = rng.random(n) < rng.random()
        if holds.all() or not holds.any():
            assert balanced_accuracy(v, holds) == 0.5
            continue
        assert balanced_accuracy(v, holds) == pytest.approx(brute_force(v, holds), abs=1e-12)
    assert balanced_accuracy(np.array([0.0, 1, 1, 0]), np.array([False, True, True, False])) == 1
    assert balanced_accuracy(np.array([5.0, 1, 1, 5]), np.array([False, True, True, False])) == 1


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
def test_the_handmade_units_are_the_states_they_are_named_for(grammar):
    embedded = grammar == "embedded-reber"
    model, names = handmade.build(embedded)
    readings = read_units(model, handmade.VOCAB.itos, grammar, reber.generate(300, 5, grammar))
    n_states = len(names) - embedded
    for r, name in zip(readings[:n_states], names, strict=False):
        assert r.accuracy == 1.0 and name.startswith(f"{r.state}:"), (r, name)
    if embedded:
        memory = readings[-1]
        assert memory.branch == 1.0 and not memory.readable
        assert max(r.branch for r in readings[:-1]) < 0.6
        assert [r.state for r in readings if r.by_input] == ["start"]
    else:
        assert [r.state for r in readings if r.by_input] == ["state 0", "state 1", "state 7"]


def test_an_untrained_lstm_holds_no_branch_and_few_states():
    """The experiment's 1x8 LSTM as initialised (seed 0, forget bias 1): a unit or two pick out
    a state by the last symbols alone, none holds the branch."""
    model = CharLSTM(ModelConfig(vocab_size=8, n_embd=8, n_hidden=8, n_layer=1, dropout=0.0,
                                 forget_bias=1.0), seed=0)
    readings = read_units(model, handmade.VOCAB.itos, "embedded-reber",
                          reber.generate(300, 5, "embedded-reber"))
    assert max(r.branch for r in readings) < 0.8
    assert len([r for r in readings if r.readable]) <= 2


def test_units_command(tmp_path):
    r = invoke("reber", "units", "checkpoints/handmade-embedded-reber.npz", "--strings", "200")
    assert r.exit_code == 0, r.output
    assert "12 of 13 units read as one state (balanced accuracy >= 0.95), 11 of them" in r.output
    assert "best held by unit 1.12, balanced accuracy 1.000" in r.output
    assert "(memory: the second letter, +1 T, -1 P)" in r.output
    gru = tmp_path / "gru.npz"
    save_checkpoint(gru, CharLSTM(ModelConfig(vocab_size=8, n_embd=2, n_hidden=3, n_layer=1,
                                              cell="gru")), handmade.VOCAB.itos, {})
    r = invoke("reber", "units", str(gru))
    assert r.exit_code == 1 and r.output == "error: a gru has no cell state c to read\n"
    other = tmp_path / "other.npz"
    save_checkpoint(other, CharLSTM(ModelConfig(vocab_size=3, n_embd=2, n_hidden=3,
                                                n_layer=1)), list("ab\n"), {})
    r = invoke("reber", "units", str(other))
    assert r.exit_code == 1 and "vocabulary lacks 'B'" in r.output
    r = invoke("reber", "units", str(other), "--strings", "100001")
    assert r.exit_code == 2


def test_experiment_saves_its_models(tmp_path):
    out = tmp_path / "models"
    r = invoke("experiment", "reber", "--cells", "lstm", "--seeds", "2", "--steps", "4",
               "--n-hidden", "4", "--eval-every", "2", "--eval-strings", "5",
               "--final-strings", "5", "--batch-size", "2", "--seq-len", "8", "--jobs", "1",
               "--save-dir", str(out))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["lstm-0.npz", "lstm-1.npz"]
    ck = load_checkpoint(out / "lstm-1.npz")
    assert ck.config.n_hidden == 4 and ck.meta["step"] == 4 and ck.vocab == handmade.VOCAB.itos
    (tmp_path / "file").write_text("")
    r = invoke("experiment", "reber", "--cells", "lstm", "--save-dir", str(tmp_path / "file"))
    assert r.exit_code == 1 and r.output.startswith("error: ") and "Traceback" not in r.output
