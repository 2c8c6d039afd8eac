"""Dynamic evaluation: the update rule against the paper's equations in plain NumPy, lr 0 against
static evaluation, adaptation on a repeated text, the checkpoint untouched, and bad input."""

import hashlib
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import charlm
from charlm import reference
from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.dynamic import (
    DynamicConfig,
    decay_rates,
    dynamic_evaluate,
    dynamic_update,
    gradient_rms,
)
from charlm.errors import CharlmError
from charlm.model import CharLSTM, ModelConfig
from charlm.train import estimate_loss

TEXT = "".join(f"Line {i}: to be, or not to be; that is the question.\n" for i in range(200))
TINY = ["--n-hidden", "16", "--n-embd", "8", "--batch-size", "4", "--seq-len", "16"]


def tiny_model(seed: int = 0, dtype: str = "float64") -> CharLSTM:
    cfg = ModelConfig(vocab_size=7, n_embd=5, n_hidden=6, n_layer=2, dropout=0.0, dtype=dtype)
    model = CharLSTM(cfg, seed=seed)
    # peakier than at init, so gradients and adaptation are far from zero
    model.theta[:] = np.random.default_rng(seed).uniform(-0.8, 0.8, model.n_params)
    return model


# ---------------------------------------------------------------------------------------------
# the paper's equations, written again in plain NumPy over the reference model


def numpy_ms(params: dict, ids: np.ndarray, seg_len: int, B: int, n_batches: int) -> dict:
    """MS_g: the mean over n_batches of the squared gradient of each batch's mean loss, B
    streams of (len - 1) // B characters, read seg_len at a time, state carried."""
    H = params["U0"].shape[0]
    h, c = np.zeros((2, B, H)), np.zeros((2, B, H))
    stream = (len(ids) - 1) // B
    ms = {k: np.zeros_like(v) for k, v in params.items()}
    for k in range(n_batches):
        at = np.arange(B)[:, None] * stream + k * seg_len + np.arange(seg_len)
        _, g = reference.loss_and_grad(params, 2, ids[at], ids[at + 1], h, c)
        _, h, c = reference.forward(params, 2, ids[at], h, c)
        for name in ms:
            ms[name] += g[name] ** 2
    return {k: v / n_batches for k, v in ms.items()}


def numpy_dynamic(params: dict, ids: np.ndarray, ms: dict, seg_len: int, lr: float,
                  lam: float, eps: float) -> tuple[float, dict]:
    """Mean loss of one stream scored segment by segment, each segment then adapted on:
    theta <- theta - lr g / (sqrt(MS) + eps) + lam min(RMS_norm, 1/lam) (theta_g - theta)."""
    theta_g = {k: v.copy() for k, v in params.items()}
    p = {k: v.copy() for k, v in params.items()}
    rms = {k: np.sqrt(v) for k, v in ms.items()}
    mean = np.concatenate([v.ravel() for v in rms.values()]).mean()  # over every parameter
    norm = {k: np.minimum(v / mean, 1 / lam) for k, v in rms.items()}
    H = params["U0"].shape[0]
    h, c = np.zeros((2, 1, H)), np.zeros((2, 1, H))
    total, n = 0.0, len(ids) - 1
    for t in range(0, n, seg_len):
        x, y = ids[None, t : min(t + seg_len, n)], ids[None, t + 1 : min(t + seg_len, n) + 1]
        logits, h1, c1 = reference.forward(p, 2, x, h, c)
        total += reference.cross_entropy(logits, y) * y.size  # scored first
        _, g = reference.loss_and_grad(p, 2, x, y, h, c)
        for k in p:
            p[k] = p[k] - lr * g[k] / (rms[k] + eps) + lam * norm[k] * (theta_g[k] - p[k])
        h, c = h1, c1
    return total / n, p


def test_gradient_statistics_match_numpy():
    model = tiny_model()
    ids = np.random.default_rng(1).integers(0, 7, 400)
    rms, seen = gradient_rms(model, ids, seg_len=9, batch_size=3, max_chars=5 * 3 * 9)
    assert seen == 5 * 3 * 9
    ms = numpy_ms(model.params, ids, 9, 3, 5)
    want = np.concatenate([np.sqrt(ms[k]).ravel() for k in model.params])
    np.testing.assert_allclose(rms, want, rtol=1e-10, atol=1e-14)


def test_the_update_kernel_is_the_equation():
    rng = np.random.default_rng(2)
    theta, grad, theta_g, rms = (rng.standard_normal(50) for _ in range(4))
    rms = np.abs(rms)
    rate = decay_rates(rms, 0.3)
    assert rate.max() <= 1 / 0.3 and np.allclose(rate[rate < 1 / 0.3], (rms / rms.mean())[
        rate < 1 / 0.3])
    want = theta - 0.01 * grad / (rms + 1e-3) + 0.3 * rate * (theta_g - theta)
    dynamic_update(theta, grad, theta_g, rms, rate, 0.01, 0.3, 1e-3)
    np.testing.assert_allclose(theta, want, rtol=1e-13)


@pytest.mark.parametrize("seg_len", [7, 40])  # 40: the last segment is a short one
def test_dynamic_evaluation_matches_numpy(seg_len):
    model = tiny_model(seed=3)
    rng = np.random.default_rng(4)
    stats, ids = rng.integers(0, 7, 300), rng.integers(0, 7, 161)
    cfg = DynamicConfig(seg_len=seg_len, lr=3e-3, decay=0.05, eps=1e-4)
    rms, _ = gradient_rms(model, stats, seg_len, 2, 4 * 2 * seg_len)
    theta = model.theta.copy()
    r = dynamic_evaluate(model, ids, rms, cfg)
    ms = numpy_ms(model.params, stats, seg_len, 2, min(4, (299 // 2) // seg_len))
    want, _ = numpy_dynamic(model.params, ids, ms, seg_len, 3e-3, 0.05, 1e-4)
    assert r.dynamic_loss == pytest.approx(want, rel=1e-10)
    assert r.n_chars == 160
    static = reference.cross_entropy(reference.forward(model.params, 2, ids[None, :-1],
                                                       np.zeros((2, 1, 6)),
                                                       np.zeros((2, 1, 6)))[0], ids[None, 1:])
    assert r.static_loss == pytest.approx(static, rel=1e-10)
    assert abs(r.dynamic_loss - r.static_loss) > 1e-3  # the adaptation did something
    np.testing.assert_array_equal(model.theta, theta)  # the model given is not changed


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lr_zero_is_the_static_loss_exactly(dtype):
    model = tiny_model(seed=5, dtype=dtype)
    ids = np.random.default_rng(6).integers(0, 7, 500)
    rms, _ = gradient_rms(model, ids, 20, 4, 10_000)
    r = dynamic_evaluate(model, ids, rms, DynamicConfig(seg_len=20, lr=0.0, decay=0.01))
    assert r.dynamic_loss == r.static_loss == estimate_loss(model, ids, 1, 20)
    r = dynamic_evaluate(model, ids, rms, DynamicConfig(seg_len=20, lr=1e-3, decay=0.01))
    assert r.static_loss == estimate_loss(model, ids, 1, 20) != r.dynamic_loss


def test_adapting_on_a_repeated_text_lowers_its_loss():
    model = tiny_model(seed=7, dtype="float32")
    model.init_params(np.random.default_rng(7))  # as trained from scratch: near-uniform
    rng = np.random.default_rng(8)
    ids = np.tile(rng.integers(0, 7, 5), 120)  # five characters, said 120 times
    rms, _ = gradient_rms(model, rng.integers(0, 7, 2000), 30, 8, 100_000)
    r = dynamic_evaluate(model, ids, rms, DynamicConfig(seg_len=30, lr=1e-3, decay=0.0))
    # the static model gains nothing from the repeats; the adapted one learns them
    assert r.static_loss == pytest.approx(np.log(7), abs=0.05)
    assert r.dynamic_loss < r.static_loss - 0.25, r
    # a strong pull back toward the trained weights keeps it from learning as much
    held = dynamic_evaluate(model, ids, rms, DynamicConfig(seg_len=30, lr=1e-3, decay=0.5),
                            static=False)
    assert np.isnan(held.static_loss)
    assert r.dynamic_loss + 0.1 < held.dynamic_loss < r.static_loss


def test_bad_settings_are_refused():
    model = tiny_model()
    ids = np.arange(7).repeat(20)
    rms = np.ones(model.n_params)
    for kw, pattern in [({"seg_len": 0}, "--seg-len"), ({"lr": -1.0}, "--lr"),
                        ({"lr": float("nan")}, "--lr"), ({"decay": 2.0}, "--decay"),
                        ({"eps": 0.0}, "--eps"), ({"stats_chars": 0}, "--stats-chars"),
                        ({"seg_len": 2.5}, "--seg-len"), ({"lr": True}, "--lr")]:
        with pytest.raises(CharlmError, match=pattern):
            dynamic_evaluate(model, ids, rms, DynamicConfig(**kw))
    with pytest.raises(CharlmError, match="parameters"):
        dynamic_evaluate(model, ids, rms[:-1], DynamicConfig())
    with pytest.raises(CharlmError, match="diverged after"):
        dynamic_evaluate(model, ids, np.zeros(model.n_params),
                         DynamicConfig(lr=1.0, eps=1e-12, seg_len=5))
    with pytest.raises(CharlmError, match="not finite"):
        dynamic_evaluate(model, ids, np.full(model.n_params, np.nan), DynamicConfig())
    with pytest.raises(CharlmError, match="fewer than one segment"):
        gradient_rms(model, ids[:20], 50, 4, 1000)


# ---------------------------------------------------------------------------------------------
# the command line and the library


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(corpus), *TINY, "--max-steps", "12",
                                 "--eval-every", "6", "--out", str(d / "ck")])
    assert r.exit_code == 0, r.output
    return d


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def losses(output: str) -> tuple[float, float]:
    static = float(re.search(r"static\s+([\d.]+) nats/char", output).group(1))
    dynamic = float(re.search(r"dynamic\s+([\d.]+) nats/char", output).group(1))
    return static, dynamic


def test_cli_dynamic_leaves_the_checkpoint_alone(trained):
    ck = trained / "ck" / "best.npz"
    before, mtime = hashlib.sha256(ck.read_bytes()).hexdigest(), ck.stat().st_mtime_ns
    r = invoke("eval", ck, trained / "corpus.txt", "--val-frac", "0.1", "--dynamic",
               "--lr", "0.001", "--seg-len", "20")
    assert r.exit_code == 0, r.output
    static, dynamic = losses(r.output)
    assert dynamic < static  # a text of repeated lines: adapting helps
    assert "training part" in r.output  # the statistics came from the checkpoint's corpus
    assert hashlib.sha256(ck.read_bytes()).hexdigest() == before
    assert ck.stat().st_mtime_ns == mtime


def test_cli_static_column_is_charlm_eval_and_val_frac_is_the_trainers_split(trained):
    ck = trained / "ck" / "latest.npz"
    r = invoke("eval", ck, trained / "corpus.txt", "--val-frac", "0.1", "--dynamic", "--lr",
               "0", "--seg-len", "16")
    static, dynamic = losses(r.output)
    assert static == dynamic
    # one stream, windows of 16: what plain eval gives with --batch-size 1 --seq-len 16
    r = invoke("eval", ck, trained / "corpus.txt", "--val-frac", "0.1", "--batch-size", "1",
               "--seq-len", "16")
    assert float(r.output.split()[0]) == pytest.approx(static, abs=1e-4)
    # --val-frac 0.1 scores what training held out: its last evaluation, batch 4 x 16
    r = invoke("eval", ck, trained / "corpus.txt", "--val-frac", "0.1", "--batch-size", "4",
               "--seq-len", "16")
    val = load_checkpoint(ck).meta["val_history"][-1]["val_loss"]
    assert float(r.output.split()[0]) == pytest.approx(val, abs=1e-4)


@pytest.mark.parametrize("args, pattern", [
    (["--lr", "0.1"], r"error: --lr is an option of --dynamic"),
    (["--dynamic", "--seg-len", "0"], r"error: --seg-len must be in \[1, "),
    (["--dynamic", "--lr", "-0.5"], r"error: --lr must be in \[0, 1\]"),
    (["--dynamic", "--lr", "nan"], r"error: --lr must be in \[0, 1\]"),
    (["--dynamic", "--decay", "1.5"], r"error: --decay must be in \[0, 1\]"),
    (["--dynamic", "--eps", "0"], r"error: --eps must be in"),
    (["--dynamic", "--stats-chars", "0"], r"error: --stats-chars must be at least 1"),
    (["--dynamic", "--stats-batch-size", "0"], r"error: --stats-batch-size must be in"),
    (["--dynamic", "--stats", "missing.txt"], r"error: no such file"),
    (["--dynamic", "--seg-len", "20000"], r"error: .*fewer than one segment"),
    (["--dynamic", "--grammar", "reber"], r"error: --dynamic scores a FILE"),
])
def test_cli_bad_dynamic_input_is_one_line(trained, args, pattern):
    r = invoke("eval", trained / "ck", trained / "corpus.txt", *args)
    assert r.exit_code == 1
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert re.search(pattern, r.output), r.output
    assert len(r.output.strip().splitlines()) == 1


def test_cli_without_the_training_corpus_asks_for_stats(trained, tmp_path):
    moved = tmp_path / "corpus.txt"
    moved.write_text(TEXT, encoding="utf-8")
    ck = load_checkpoint(trained / "ck" / "best.npz")
    meta = {**ck.meta, "corpus_path": str(tmp_path / "gone.txt")}
    other = charlm.Model(ck.model(), ck.vocab, meta)
    other.save(tmp_path / "m.npz")
    r = invoke("eval", tmp_path / "m.npz", moved, "--dynamic")
    assert r.exit_code == 1 and "give --stats FILE" in r.output, r.output
    r = invoke("eval", tmp_path / "m.npz", moved, "--dynamic", "--stats", moved)
    assert r.exit_code == 0, r.output
    assert f"characters of {moved}" in r.output


def test_library_matches_the_cli(trained):
    model = charlm.load(trained / "ck" / "best.npz")
    text = TEXT[int(len(TEXT) * 0.9):]
    theta = model._model.theta.copy()
    r = model.evaluate_dynamic(text, lr=0.001, seg_len=20)
    np.testing.assert_array_equal(model._model.theta, theta)
    cli = invoke("eval", trained / "ck" / "best.npz", trained / "corpus.txt", "--val-frac",
                 "0.1", "--dynamic", "--lr", "0.001", "--seg-len", "20")
    assert (round(r.static_loss, 4), round(r.dynamic_loss, 4)) == losses(cli.output)
    assert r.n_chars == len(text) - 1 and r.static_bpc == pytest.approx(r.static_loss / np.log(2))
    given = model.evaluate_dynamic(text, TEXT[: int(len(TEXT) * 0.9)], lr=0.001, seg_len=20)
    assert given.dynamic_loss == r.dynamic_loss  # the same training text, given as a string
    with pytest.raises(CharlmError, match="--lr"):
        model.evaluate_dynamic(text, lr=-1.0)
    with pytest.raises(CharlmError, match="str"):
        model.evaluate_dynamic(b"bytes")
