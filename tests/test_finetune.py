"""Fine-tuning (--init-from): weights mapped by character, the checkpoint's shape, a fresh run."""

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm import reference
from charlm.checkpoint import load_checkpoint, save_checkpoint
from charlm.cli import app
from charlm.errors import CharlmError
from charlm.finetune import finetune_config, init_weights
from charlm.model import CharLSTM, ModelConfig
from charlm.vocab import Vocab

TINY = ["--batch-size", "4", "--seq-len", "16"]
OLD_TEXT = "".join(f"abc {i % 9} cab bac.\n" for i in range(200))  # the model's vocabulary
NEW_TEXT = "".join(f"abc {i % 9} cab {{zz}}.\n" for i in range(200))  # '{', '}', 'z' are new


def saved(path, chars: list[str], **cfg) -> CharLSTM:
    """A model with random weights (biases too) over chars, saved after 77 steps of Adam."""
    cfg = {"n_embd": 6, "n_hidden": 10, "n_layer": 2, **cfg}
    model = CharLSTM(ModelConfig(vocab_size=len(chars), **cfg), seed=3)
    model.theta[:] = np.random.default_rng(3).standard_normal(model.n_params) * 0.3
    opt = {"m": np.ones_like(model.theta), "v": np.ones_like(model.theta),
           "step": np.array(77)}
    save_checkpoint(path, model, chars, {"step": 77, "corpus": "old.txt"}, opt)
    return model


def test_init_weights_maps_rows_by_character(tmp_path):
    old = saved(tmp_path / "m.npz", list("\nabcd"))
    ck = load_checkpoint(tmp_path / "m.npz")
    itos = list("\n .bcxy")  # keeps \n, b, c; drops a, d; new: ' ', '.', x, y
    fresh = CharLSTM(ModelConfig(vocab_size=len(itos), n_embd=6, n_hidden=10, n_layer=2), seed=9)
    before = {k: v.copy() for k, v in fresh.params.items()}
    t = init_weights(fresh, itos, ck)
    assert (t.known, t.new, t.dropped) == (3, [" ", ".", "x", "y"], ["a", "d"])
    for new_id, old_id in ((0, 0), (3, 2), (4, 3)):  # \n, b, c
        np.testing.assert_array_equal(fresh.params["E"][new_id], old.params["E"][old_id])
        np.testing.assert_array_equal(fresh.params["Wy"][:, new_id], old.params["Wy"][:, old_id])
        assert fresh.params["by"][new_id] == old.params["by"][old_id]
    for new_id in (1, 2, 5, 6):  # the new characters keep a new model's rows
        np.testing.assert_array_equal(fresh.params["E"][new_id], before["E"][new_id])
        np.testing.assert_array_equal(fresh.params["Wy"][:, new_id], before["Wy"][:, new_id])
        assert fresh.params["by"][new_id] == before["by"][new_id] == 0
    for name in fresh.params:
        if name not in ("E", "Wy", "by"):
            np.testing.assert_array_equal(fresh.params[name], old.params[name])


def test_the_shape_comes_from_the_checkpoint(tmp_path):
    saved(tmp_path / "m.npz", list("abc"), cell="gru", dropout=0.2)
    ck = load_checkpoint(tmp_path / "m.npz")
    mine = ModelConfig(n_hidden=512, cell="lstm", dropout=0.0)  # the defaults, not typed
    cfg = finetune_config(ck, mine, given=set())
    assert (cfg.n_hidden, cfg.n_embd, cfg.cell, cfg.dropout) == (10, 6, "gru", 0.2)
    assert finetune_config(ck, mine, given={"dropout"}).dropout == 0.0
    assert finetune_config(ck, ModelConfig(n_hidden=10), given={"n_hidden"}).n_hidden == 10
    with pytest.raises(CharlmError, match=r"--n-hidden 512 conflicts with --init-from.*10"):
        finetune_config(ck, mine, given={"n_hidden"})
    with pytest.raises(CharlmError, match=r"--cell lstm conflicts"):
        finetune_config(ck, mine, given={"cell"})
    with pytest.raises(CharlmError, match=r"--forget-bias sets the initial weights"):
        finetune_config(ck, ModelConfig(forget_bias=1.0), given={"forget_bias"})


def test_cli_fine_tunes_from_the_checkpoint(tmp_path):
    (tmp_path / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    old = saved(tmp_path / "m.npz", sorted(set(OLD_TEXT)))
    ck = load_checkpoint(tmp_path / "m.npz")
    # lr ~ 0: the one step leaves the weights as the checkpoint's, up to rounding
    r = CliRunner().invoke(app, ["train", str(tmp_path / "new.txt"), *TINY, "--init-from",
                                 str(tmp_path / "m.npz"), "--lr", "1e-12", "--max-steps", "1",
                                 "--out", str(tmp_path / "ft")])
    assert r.exit_code == 0, r.output
    assert "fine-tuning from" in r.output and "3 new ones start fresh" in r.output
    ft = load_checkpoint(tmp_path / "ft" / "latest.npz")
    assert ft.meta["step"] == 1 and ft.meta["init_from"]["sha256"] == ck.sha256
    assert ft.meta["init_from"]["step"] == 77
    assert (ft.config.n_hidden, ft.config.n_embd) == (10, 6)
    assert set(ft.vocab) == set(NEW_TEXT[: int(len(NEW_TEXT) * 0.9)])
    # the new model's logits for the characters it kept are the old model's: run both through
    # the plain-NumPy forward pass on the same characters
    tail = "abc 3 cab bac.\nabc 4 "
    h0 = np.zeros((2, 1, 10))
    z_old, _, _ = reference.forward(old.params, 2, Vocab(ck.vocab).encode(tail)[None], h0, h0)
    z_new, _, _ = reference.forward(ft.model().params, 2, Vocab(ft.vocab).encode(tail)[None],
                                    h0, h0)
    kept = [ch for ch in ft.vocab if ch in ck.vocab]
    assert len(kept) == len(ck.vocab) and len(ft.vocab) == len(ck.vocab) + 3
    np.testing.assert_allclose(z_new[..., [ft.vocab.index(ch) for ch in kept]],
                               z_old[..., [ck.vocab.index(ch) for ch in kept]], atol=1e-6)
    # and it trains: a real step count of its own, from step 0, with a fresh optimizer
    r = CliRunner().invoke(app, ["train", str(tmp_path / "new.txt"), *TINY, "--init-from",
                                 str(tmp_path / "m.npz"), "--max-steps", "30", "--lr", "1e-2",
                                 "--eval-every", "30", "--out", str(tmp_path / "ft2")])
    assert r.exit_code == 0, r.output
    ft2 = load_checkpoint(tmp_path / "ft2" / "latest.npz")
    # the optimizer and the schedule start afresh: 30 steps of Adam, the peak lr at first
    assert ft2.meta["step"] == 30 and int(ft2.opt_state["step"]) == 30
    first, last = ft2.meta["train_history"][0], ft2.meta["train_history"][-1]
    # (the first record is step 10's, whose lr is the cosine's at step 9 of 30, from 1e-2)
    assert first["lr"] == pytest.approx(1e-3 + 0.5 * 9e-3 * (1 + np.cos(np.pi * 9 / 30)))
    assert last["train_loss"] < first["train_loss"]
    # a fine-tuned run resumes like any other
    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "ft2" / "latest.npz"),
                                 "--max-steps", "32", "--out", str(tmp_path / "ft2")])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "ft2" / "latest.npz").meta["init_from"]["step"] == 77


@pytest.mark.parametrize("args, pattern", [
    (["--n-hidden", "32"], r"error: --n-hidden 32 conflicts with --init-from"),
    (["--cell", "gru"], r"error: --cell gru conflicts with --init-from"),
    (["--resume", "{ck}"], r"error: --resume continues a run and --init-from starts one"),
])
def test_cli_refuses_what_contradicts_the_checkpoint(tmp_path, args, pattern):
    (tmp_path / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    saved(tmp_path / "m.npz", sorted(set(OLD_TEXT)))
    args = [a.format(ck=tmp_path / "m.npz") for a in args]
    r = CliRunner().invoke(app, ["train", str(tmp_path / "new.txt"), *TINY, "--init-from",
                                 str(tmp_path / "m.npz"), *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert re.search(pattern, r.output), r.output
    assert not (tmp_path / "o" / "latest.npz").exists()


def test_cli_init_from_a_missing_checkpoint(tmp_path):
    (tmp_path / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "new.txt"), "--init-from",
                                 str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "nope.npz does not exist" in r.output, r.output


@pytest.mark.parametrize("key, value, pattern", [
    ("elapsed_s", "soon", r"bad metadata \(elapsed_s is 'soon'\)"),
    ("elapsed_s", -1, r"bad metadata \(elapsed_s is -1\)"),
    ("init_from", [1], r"bad metadata \(init_from is not an object\)"),
])
def test_resume_refuses_bad_run_metadata(tmp_path, key, value, pattern):
    (tmp_path / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "new.txt"), *TINY, "--n-hidden", "8",
                                 "--max-steps", "2", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(tmp_path / "a" / "latest.npz")
    save_checkpoint(tmp_path / "bad.npz", ck.model(), ck.vocab, {**ck.meta, key: value},
                    ck.opt_state)
    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "bad.npz"), "--max-steps",
                                 "3", "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and re.search(pattern, r.output), r.output
    assert "Traceback" not in r.output
