"""The command line through typer's CliRunner: success paths read back, and every bad input."""

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm.checkpoint import load_checkpoint
from charlm.cli import app

TEXT = "".join(f"Line {i}: a small corpus, élan & naïveté.\n" for i in range(300))
TINY = ["--n-hidden", "16", "--n-embd", "8", "--batch-size", "4", "--seq-len", "16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained once through the CLI, shared by the read-only tests."""
    d = tmp_path_factory.mktemp("trained")
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(corpus), *TINY, "--max-steps", "12",
                                      "--eval-every", "6", "--out", str(d / "ck")])
    assert result.exit_code == 0, result.output
    return d


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, pattern: str) -> None:
    """Exit code non-zero, no traceback, and an error line that matches pattern."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert re.search(pattern, result.output), result.output


def test_train_writes_checkpoints_and_metrics(trained):
    ck = load_checkpoint(trained / "ck" / "latest.npz")
    assert ck.meta["step"] == 12
    assert ck.config.n_hidden == 16
    assert set(ck.vocab) == set(TEXT[: int(len(TEXT) * 0.9)])
    rows = (trained / "ck" / "metrics.jsonl").read_text().splitlines()
    assert any('"val_loss"' in r for r in rows) and any('"train_loss"' in r for r in rows)
    assert (trained / "ck" / "best.npz").is_file()


def test_info_and_eval(trained):
    r = invoke("info", str(trained / "ck"))
    assert r.exit_code == 0, r.output
    assert "2 x 16 LSTM" in r.output and "12 steps" in r.output
    r = invoke("eval", str(trained / "ck" / "latest.npz"), str(trained / "corpus.txt"))
    assert r.exit_code == 0, r.output
    nats, bits = map(float, re.findall(r"([\d.]+) (?:nats|bits)/char", r.output))
    assert bits == pytest.approx(nats / np.log(2), rel=1e-3)
    assert 0 < nats < np.log(40)


def test_info_prints_the_options_train_takes(trained, tmp_path):
    r = invoke("info", str(trained / "ck"))
    options = next(line for line in r.output.splitlines() if line.startswith("options")).split()[1:]
    assert "--log-every" not in options and options[options.index("--seq-len") + 1] == "16"
    r = invoke("train", str(trained / "corpus.txt"), *options, "--n-hidden", "16", "--n-embd", "8",
               "--max-steps", "1", "--out", str(tmp_path / "again"))
    assert r.exit_code == 0, r.output


def test_eval_skips_unknown_characters(trained, tmp_path):
    f = tmp_path / "other.txt"
    f.write_text("Line 1: a small corpus. ZZZ\n" * 5, encoding="utf-8")
    r = invoke("eval", str(trained / "ck"), str(f))
    assert r.exit_code == 0, r.output
    assert "not in the vocabulary, skipped" in r.output


@pytest.mark.parametrize("make, pattern", [
    (lambda d: d / "missing.txt", r"error: no such file or corpus: .*missing\.txt"),
    (lambda d: d, r"error: .*director"),
    (lambda d: (d / "empty.txt", (d / "empty.txt").write_text(""))[0], r"error: .*empty"),
    (lambda d: (d / "short.txt", (d / "short.txt").write_text("abc" * 10))[0],
     r"error: .*one batch needs at least"),
    (lambda d: (d / "bad.txt", (d / "bad.txt").write_bytes(b"ok " * 500 + b"\xff\xfe"))[0],
     r"error: .*not valid UTF-8.*offset 1500"),
])
def test_train_rejects_bad_corpora(tmp_path, make, pattern):
    one_line_error(invoke("train", str(make(tmp_path)), *TINY, "--max-steps", "1", "--out",
                          str(tmp_path / "ck")), pattern)


def test_encoding_errors_replace_goes_on(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(TEXT.encode() + b"\xff" + TEXT.encode())
    r = invoke("train", str(bad), *TINY, "--max-steps", "2", "--out", str(tmp_path / "ck"),
               "--encoding-errors", "replace")
    assert r.exit_code == 0, r.output
    assert "\ufffd" in load_checkpoint(tmp_path / "ck" / "latest.npz").vocab


# exit 1: a one-line error from charlm; exit 2: a usage error from typer, which knows each
# option's type and range, and each choice (--optimizer, --lr-decay, --encoding-errors, --dtype)
@pytest.mark.parametrize("option, value, code, pattern", [
    ("--lr", "-1", 1, r"error: --lr must be a positive number"),
    ("--lr", "abc", 2, r"Invalid value for '--lr'"),
    ("--optimizer", "sgd", 2, r"Invalid value for '--optimizer'"),
    ("--lr-decay", "wobbly", 2, r"Invalid value for '--lr-decay'"),
    ("--val-frac", "0.9", 2, r"Invalid value for '--val-frac'"),
    ("--n-layer", "0", 2, r"Invalid value for '--n-layer'"),
    ("--dropout", "1.5", 2, r"Invalid value for '--dropout'"),
    ("--batch-size", "0", 2, r"Invalid value for '--batch-size'"),
    ("--encoding-errors", "ignore", 2, r"Invalid value for '--encoding-errors'"),
    ("--dtype", "float16", 2, r"Invalid value for '--dtype'"),
    ("--cell", "transformer", 2, r"Invalid value for '--cell'"),
    ("--forget-bias", "nan", 1, r"error: forget_bias must be a finite number"),
])
def test_train_rejects_bad_options(tmp_path, option, value, code, pattern):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    r = invoke("train", str(corpus), *TINY, option, value, "--out", str(tmp_path / "ck"))
    one_line_error(r, pattern)
    assert r.exit_code == code, r.output


def test_help_lists_the_choices_of_the_registries():
    from charlm.data import ENCODING_ERRORS
    from charlm.model import CELLS, ModelConfig
    from charlm.optim import OPTIMIZERS
    from charlm.reber import GRAMMARS
    from charlm.train import LR_DECAYS

    def listed(*command: str) -> dict[str, list[str]]:
        """option -> the choices --help lists for it (a wide terminal: no wrapping)."""
        r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        return {m[0]: m[1].split("|") for m in re.findall(r"(--[\w-]+) +<([\w|-]+\|[\w|-]+)>",
                                                           r.output)}

    train = listed("train")
    assert train == {"--cell": list(CELLS), "--optimizer": list(OPTIMIZERS),
                     "--lr-decay": list(LR_DECAYS), "--encoding-errors": list(ENCODING_ERRORS),
                     "--dtype": ["float32", "float64"]}
    for dtype in train["--dtype"]:  # the model takes every one
        ModelConfig(dtype=dtype).validate()
    assert listed("eval") == {"--encoding-errors": list(ENCODING_ERRORS),
                              "--grammar": list(GRAMMARS)}
    assert listed("experiment", "reber") == {"--grammar": list(GRAMMARS)}


def test_train_starts_the_forget_bias_at_0_the_one_default(trained):
    from charlm.model import ModelConfig

    # ModelConfig's default is the one for language models; what needs 1 (the Reber
    # experiment, checkpoints from before the field) says so itself
    assert ModelConfig().forget_bias == 0.0
    assert load_checkpoint(trained / "ck" / "latest.npz").config.forget_bias == 0.0


def test_forget_bias_option_sets_the_initial_forget_gate(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    r = invoke("train", str(corpus), *TINY, "--forget-bias", "-0.5", "--max-steps", "1",
               "--out", str(tmp_path / "ck"))
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(tmp_path / "ck" / "latest.npz")
    assert ck.config.forget_bias == -0.5  # recorded, so the run can be told apart
    H = ck.config.n_hidden
    b = ck.model().params["b0"]
    # one Adam step moves each bias by about lr at most: f's block is near -0.5, i's near 0
    assert np.allclose(b[H : 2 * H], -0.5, atol=0.05) and np.allclose(b[:H], 0, atol=0.05)


@pytest.mark.parametrize("corrupt", ["truncate", "text", "flip"])
def test_bad_checkpoints_are_one_line_errors(trained, tmp_path, corrupt):
    good = (trained / "ck" / "latest.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    if corrupt == "truncate":
        bad.write_bytes(good[: len(good) // 2])
    elif corrupt == "text":
        bad.write_text("hello")
    else:
        mid = len(good) // 2
        bad.write_bytes(good[:mid] + bytes([good[mid] ^ 0xFF]) + good[mid + 1 :])
    for args in (["info", str(bad)], ["eval", str(bad), str(trained / "corpus.txt")],
                 ["train", str(trained / "corpus.txt"), *TINY, "--resume", str(bad), "--out",
                  str(tmp_path / "ck")]):
        one_line_error(invoke(*args), r"error: .*bad\.npz")


def test_missing_checkpoint(tmp_path):
    one_line_error(invoke("info", str(tmp_path / "nope")), r"error: .*nope")
    one_line_error(invoke("info", str(tmp_path)), r"error: no checkpoint in")


def test_resume_takes_options_and_corpus_from_the_checkpoint(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "ck", tmp_path / "ck")
    r = invoke("train", "--resume", str(tmp_path / "ck" / "latest.npz"), "--max-steps", "15",
               "--out", str(tmp_path / "ck"))
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(tmp_path / "ck" / "latest.npz")
    assert ck.meta["step"] == 15
    assert ck.meta["train_config"]["seq_len"] == 16  # not the default 100


def test_export_is_small_and_cannot_be_resumed(trained, tmp_path):
    out = tmp_path / "serve.npz"
    r = invoke("export", str(trained / "ck" / "latest.npz"), str(out))
    assert r.exit_code == 0, r.output
    full = load_checkpoint(trained / "ck" / "latest.npz")
    small = load_checkpoint(out)
    np.testing.assert_array_equal(small.theta, full.theta)
    assert small.opt_state == {} and out.stat().st_size < 0.5 * (trained / "ck" /
                                                                 "latest.npz").stat().st_size
    one_line_error(invoke("train", "--resume", str(out), "--out", str(tmp_path / "x")),
                   r"error: .*no training state")


def test_sample_and_distribution(trained):
    r = invoke("sample", str(trained / "ck"), "--prompt", "Line", "--length", "40", "--seed",
               "3")
    assert r.exit_code == 0, r.output
    again = invoke("sample", str(trained / "ck"), "--prompt", "Line", "--length", "40", "--seed",
                   "3")
    assert r.output == again.output and r.output.startswith("Line")
    r = invoke("sample", str(trained / "ck"), "--prompt", "Line", "--distribution")
    assert r.exit_code == 0 and "entropy" in r.output
    one_line_error(invoke("sample", str(trained / "ck"), "--temperature", "-1"),
                   r"error: temperature")
    one_line_error(invoke("sample", str(trained / "ck"), "--top-p", "0"), r"error: top_p")
    one_line_error(invoke("sample", str(trained / "ck"), "--prompt", "ZZZ"), r"error: .*Z")


def test_serve_refuses_a_missing_checkpoint_directory(tmp_path):
    one_line_error(invoke("serve", str(tmp_path / "nope")), r"error: .*nope.* does not exist")
