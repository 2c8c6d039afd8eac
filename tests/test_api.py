"""The Python API (charlm.train, charlm.load, Model) against the CLI and a plain-NumPy model."""

import subprocess
import sys

import numpy as np
import pytest

import charlm
from charlm import reference
from charlm.checkpoint import load_checkpoint
from charlm.vocab import Vocab

TEXT = "".join(f"line {i}: the quick brown fox jumps over {i % 7} lazy dogs.\n"
               for i in range(300))
TINY = {"n_hidden": 16, "n_embd": 8, "batch_size": 4, "seq_len": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained once through the API: (the model, its folder, the corpus)."""
    d = tmp_path_factory.mktemp("api")
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    model = charlm.train(corpus, **TINY, max_steps=12, eval_every=6, out=d / "ck",
                         progress=False)
    return model, d, corpus


def test_import_is_lazy():
    # `import charlm` is instant: numba, numpy and the kernels load on first use
    loaded = "print(sorted(m for m in ('numba', 'numpy', 'charlm.model') if m in sys.modules))"
    for code, want in (("import sys, charlm; ", "[]"), ("import sys, charlm; charlm.train; ",
                                                        "['charlm.model', 'numba', 'numpy']")):
        out = subprocess.run([sys.executable, "-c", code + loaded], capture_output=True,
                             text=True, check=True).stdout
        assert out.strip() == want
    assert {"train", "load", "Model"} <= set(dir(charlm))
    # the submodule charlm/train.py, imported first, does not take the function's name
    code = ("from charlm.train import Trainer; import charlm, sys; import charlm.train; "
            "print(charlm.train.__module__, sys.modules['charlm.train'].Trainer is Trainer)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["charlm.api", "True"]
    with pytest.raises(AttributeError):
        charlm.no_such_thing  # noqa: B018


def test_train_writes_what_the_cli_writes(trained):
    model, d, corpus = trained
    assert isinstance(model, charlm.Model)
    info = model.info
    assert info.step == 12 and info.config.n_hidden == 16 and info.corpus == "corpus.txt"
    assert info.path == d / "ck" / "best.npz"
    assert set(info.vocab) == set(TEXT[: int(len(TEXT) * 0.9)])
    # the model is its best checkpoint's
    ck = load_checkpoint(d / "ck" / "best.npz")
    assert info.best_val_loss == ck.meta["best_val_loss"]
    assert (d / "ck" / "latest.npz").is_file() and (d / "ck" / "metrics.jsonl").is_file()
    # the same options as the CLI: the defaults are its (TrainConfig's, ModelConfig's)
    assert ck.meta["train_config"]["lr"] == 4e-3 and ck.config.dropout == 0.1


def test_sample_and_stream_agree_and_repeat(trained):
    model = trained[0]
    text = model.sample("line", length=50, seed=3)
    assert len(text) == 50 and set(text) <= set(model.info.vocab)
    assert model.sample("line", length=50, seed=3) == text
    assert "".join(model.stream("line", length=50, seed=3)) == text
    assert model.sample("line", length=50, seed=4) != text
    # a stop string ends the text before it
    assert "o" not in model.sample("line", length=200, seed=3, stop="o")
    # the loaded checkpoint samples the same text
    assert charlm.load(model.info.path).sample("line", length=50, seed=3) == text


def test_distribution_is_the_reference_models(trained):
    model, d, _ = trained
    ck = load_checkpoint(model.info.path)
    prompt = "line 4: the"
    ids = list(Vocab(ck.vocab).encode(prompt))
    want = reference.next_distribution(ck.model().params, 2, "lstm", ids, temperature=0.7)
    got = model.distribution(prompt, temperature=0.7)
    np.testing.assert_allclose(got.probs, want, atol=1e-5)
    top = got.top(3)
    assert [ch for ch, _ in top] == [ck.vocab[i] for i in np.argsort(-want)[:3]]


def test_evaluate_is_the_reference_loss(trained):
    model, d, _ = trained
    ck = load_checkpoint(model.info.path)
    text = "line 12: the quick brown fox.\n§"  # § is not in the vocabulary: skipped
    ids = Vocab(ck.vocab).encode(text[:-1])
    H = ck.config.n_hidden
    h0 = np.zeros((2, 1, H))
    logits, _, _ = reference.forward(ck.model().params, 2, ids[None, :-1], h0, h0)
    want = reference.cross_entropy(logits, ids[None, 1:].astype(np.int64))
    got = model.evaluate(text, batch_size=1, seq_len=len(ids))
    assert got.loss == pytest.approx(want, rel=1e-5)
    assert got.bits_per_char == pytest.approx(want / np.log(2), rel=1e-5)
    assert (got.n_chars, got.skipped) == (len(ids) - 1, 1)


def test_save_and_load_round_trip(trained, tmp_path):
    model = trained[0]
    path = model.save(tmp_path / "mine.npz")
    again = charlm.load(path)
    np.testing.assert_array_equal(load_checkpoint(path).theta,
                                  load_checkpoint(trained[1] / "ck" / "best.npz").theta)
    assert again.info.step == model.info.step and again.info.corpus == "corpus.txt"
    assert load_checkpoint(path).opt_state == {}  # a serving copy
    assert charlm.load(trained[1] / "ck").info.path == trained[1] / "ck" / "best.npz"
    with pytest.raises(charlm.CharlmError, match=r"ends in \.npz"):
        model.save(tmp_path / "mine.txt")


def test_load_with_no_path_falls_back_to_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(charlm.CharlmError, match=r"no checkpoint in checkpoints: train one"):
        charlm.load()
    (tmp_path / "checkpoints").mkdir()
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "default.npz"
    (tmp_path / "checkpoints" / "default.npz").write_bytes(shipped.read_bytes())
    assert charlm.load().info.path.name == "default.npz"


def test_fine_tune_through_the_api(trained, tmp_path):
    model, d, corpus = trained
    ft = charlm.train(corpus, init_from=model.info.path, max_steps=3, batch_size=4,
                      seq_len=16, out=tmp_path / "ft", progress=False)
    assert ft.info.step == 3 and ft.info.config.n_hidden == 16
    assert ft.info.meta["init_from"]["step"] == 12
    with pytest.raises(charlm.CharlmError, match=r"--n-hidden 32 conflicts with --init-from"):
        charlm.train(corpus, init_from=model.info.path, n_hidden=32, out=tmp_path / "x",
                     progress=False)


@pytest.mark.parametrize("options, error, pattern", [
    ({"n_hiden": 16}, TypeError, r"unexpected option 'n_hiden'; did you mean 'n_hidden'"),
    ({"n_hidden": "16"}, charlm.CharlmError, r"n_hidden must be int, got '16'"),
    ({"lr": True}, charlm.CharlmError, r"lr must be float"),
    ({"lr": -1.0}, charlm.CharlmError, r"--lr must be a positive number"),
    ({"optimizer": "sgd"}, charlm.CharlmError, r"--optimizer must be one of"),
    ({"cell": "transformer"}, charlm.CharlmError, r"cell must be one of"),
])
def test_bad_options_are_clear_errors(trained, tmp_path, options, error, pattern):
    with pytest.raises(error, match=pattern):
        charlm.train(trained[2], **{**TINY, "max_steps": 1, **options}, out=tmp_path / "o",
                     progress=False)
    assert not (tmp_path / "o" / "latest.npz").exists()


def test_bad_sampling_settings_fail_before_any_text(trained):
    model = trained[0]
    with pytest.raises(charlm.CharlmError, match="temperature"):
        model.stream("line", temperature=-1)
    with pytest.raises(charlm.CharlmError, match="not in the vocabulary"):
        model.sample("line \u2603")
    assert model.sample("line \u2603", length=5, seed=1, drop_unknown=True) == \
        model.sample("line ", length=5, seed=1)
    with pytest.raises(charlm.CharlmError, match="fewer than 2 characters"):
        model.evaluate("\u2603\u2603")


class ZMQInteractiveShell:
    """What get_ipython() returns in a Jupyter kernel: rich takes the process for a notebook."""


def test_progress_in_a_notebook_without_ipywidgets(trained, tmp_path, monkeypatch, capsys):
    import builtins
    import importlib.util

    from rich.console import Console

    monkeypatch.setattr(builtins, "get_ipython", ZMQInteractiveShell, raising=False)
    assert Console().is_jupyter
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    from charlm.api import progress_console

    assert not progress_console().is_jupyter and progress_console(False).quiet
    # training reports in plain lines, with no warning (warnings are errors in this suite)
    charlm.train(trained[2], **TINY, max_steps=4, eval_every=2, out=tmp_path / "nb")
    err = capsys.readouterr().err
    assert "step 2: val loss" in err and "trained 4 steps" in err


def test_an_interrupt_returns_the_model_trained_so_far(trained, tmp_path):
    import signal
    import time

    code = ("import charlm, sys\n"
            "m = charlm.train(sys.argv[1], n_hidden=16, n_embd=8, batch_size=4, seq_len=16, "
            "max_minutes=5, eval_every=1000000, out=sys.argv[2], progress=False)\n"
            "print('returned', m.info.step, m.info.path.name)\n")
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", code, str(trained[2]), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file():  # the first train record: it is training
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()
            time.sleep(0.1)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, stderr
    word, step, name = stdout.split()
    assert word == "returned" and 10 <= int(step) < 100_000 and name == "best.npz"
    assert load_checkpoint(out / "latest.npz").meta["step"] == int(step)
