"""The training job: exact resume (also across a real Ctrl-C), NaN handling, checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charlm.checkpoint import load_checkpoint
from charlm.data import load_corpus
from charlm.errors import CharlmError
from charlm.model import CharLSTM, ModelConfig
from charlm.optim import Adam
from charlm.train import (
    NonFiniteLossError,
    StopFlag,
    TrainConfig,
    Trainer,
    get_lr,
    resume_options,
    train_step,
)

TEXT = "".join(f"line {i}: the quick brown fox jumps over {i % 7} lazy dogs.\n"
               for i in range(400))


def small_model() -> ModelConfig:
    return ModelConfig(n_embd=8, n_hidden=16, n_layer=2, dropout=0.1)


def small_train(**kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 4, "seq_len": 16, "eval_every": 5, "log_every": 2,
                          "lr_decay": "cosine", **kw})


@pytest.fixture
def corpus_path(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def losses(history: list[dict]) -> list[dict]:
    """The history without its timings."""
    return [{k: v for k, v in row.items() if k not in ("chars_per_s", "time_s")}
            for row in history]


def run(trainer: Trainer, stop_after: int | None = None) -> None:
    stop = StopFlag()
    for ev in trainer.run(stop):
        if stop_after is not None and ev.kind == "step" and ev.step == stop_after:
            stop.requested = True


@pytest.mark.parametrize("decay", ["cosine", "constant"])
def test_resume_is_bit_exact(corpus_path, tmp_path, decay):
    corpus = load_corpus(corpus_path)
    whole = Trainer(corpus, small_model(), small_train(max_steps=23, lr_decay=decay),
                    tmp_path / "a")
    run(whole)
    # stopped at step 9 (as Ctrl-C would), then resumed from latest.npz to the same budget
    part = Trainer(corpus, small_model(), small_train(max_steps=23, lr_decay=decay),
                   tmp_path / "b")
    run(part, stop_after=9)
    assert part.step == 9
    resumed = Trainer(corpus, small_model(), small_train(max_steps=23, lr_decay=decay),
                      tmp_path / "b", resume=load_checkpoint(tmp_path / "b" / "latest.npz"))
    assert resumed.step == 9
    run(resumed)
    np.testing.assert_array_equal(resumed.model.theta, whole.model.theta)
    assert losses(resumed.train_history) == losses(whole.train_history)
    assert [r["val_loss"] for r in resumed.val_history if r["step"] != 9] == \
           [r["val_loss"] for r in whole.val_history]
    # and the metrics file mirrors the checkpoint's history after the resume
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text()
            .splitlines()]
    assert losses([r for r in rows if "train_loss" in r]) == losses(whole.train_history)


def test_resume_extends_a_finished_run(corpus_path, tmp_path):
    """max-steps N, then --resume with max-steps N+M, equals N+M at once (constant lr)."""
    corpus = load_corpus(corpus_path)
    whole = Trainer(corpus, small_model(), small_train(max_steps=12, lr_decay="constant"),
                    tmp_path / "a")
    run(whole)
    first = Trainer(corpus, small_model(), small_train(max_steps=7, lr_decay="constant"),
                    tmp_path / "b")
    run(first)
    more = Trainer(corpus, small_model(), small_train(max_steps=12, lr_decay="constant"),
                   tmp_path / "b", resume=load_checkpoint(tmp_path / "b" / "latest.npz"))
    run(more)
    np.testing.assert_array_equal(more.model.theta, whole.model.theta)


def test_resume_refuses_a_different_corpus_or_shape(corpus_path, tmp_path):
    corpus = load_corpus(corpus_path)
    t = Trainer(corpus, small_model(), small_train(max_steps=3), tmp_path / "a")
    run(t)
    ck = load_checkpoint(tmp_path / "a" / "latest.npz")
    with pytest.raises(CharlmError, match="cannot change on resume"):
        Trainer(corpus, small_model(), small_train(max_steps=3, seq_len=8), tmp_path / "a",
                resume=ck)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    with pytest.raises(CharlmError, match="not the corpus"):
        Trainer(load_corpus(other), small_model(), small_train(), tmp_path / "a", resume=ck)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus_path, tmp_path, monkeypatch):
    corpus = load_corpus(corpus_path)
    t = Trainer(corpus, small_model(), small_train(max_steps=30), tmp_path / "a")
    real = CharLSTM.loss_and_grad

    def poisoned(self, *args, **kw):
        loss = real(self, *args, **kw)
        return float("nan") if t.step == 7 else loss

    monkeypatch.setattr(CharLSTM, "loss_and_grad", poisoned)
    with pytest.raises(CharlmError, match="loss became nan at step 8"):
        run(t)
    ck = load_checkpoint(tmp_path / "a" / "latest.npz")
    assert ck.meta["step"] == 5
    assert np.isfinite(ck.theta).all()


def test_train_step_refuses_a_non_finite_loss_before_any_update(monkeypatch):
    model = CharLSTM(ModelConfig(vocab_size=5, n_embd=4, n_hidden=8, n_layer=1, dropout=0.0))
    opt, x = Adam(model.n_params, model.dtype), np.zeros((2, 3), np.int64)
    assert np.isfinite(train_step(model, opt, x, x, model.zero_state(2), 0.1, 1.0))
    before = model.theta.copy()
    monkeypatch.setattr(CharLSTM, "loss_and_grad", lambda *args: float("inf"))
    with pytest.raises(NonFiniteLossError, match="the loss became inf"):
        train_step(model, opt, x, x, model.zero_state(2), 0.1, 1.0)
    assert np.array_equal(model.theta, before) and opt.step == 1


def test_the_trainer_leaves_the_callers_configs_alone(corpus_path, tmp_path):
    model_cfg, cfg = small_model(), small_train(max_steps=2)
    t = Trainer(load_corpus(corpus_path), model_cfg, cfg, tmp_path / "a")
    run(t)
    assert model_cfg == small_model() and cfg == small_train(max_steps=2)
    assert t.model.config.vocab_size == t.vocab.vocab_size != model_cfg.vocab_size


def test_resume_options_are_the_given_ones_else_the_checkpoints(corpus_path, tmp_path):
    run(Trainer(load_corpus(corpus_path), small_model(), small_train(max_steps=3, lr=1e-3),
                tmp_path / "a"))
    ck = load_checkpoint(tmp_path / "a" / "latest.npz")
    typed = TrainConfig(max_steps=9, lr=5e-3, warmup_steps=7)  # else the defaults
    cfg, corpus = resume_options(typed, {"max_steps"}, ck)
    assert cfg == small_train(max_steps=9, lr=1e-3) and corpus == str(corpus_path.resolve())
    cfg, corpus = resume_options(typed, {"max_steps", "lr"}, ck, "other.txt")
    assert cfg == small_train(max_steps=9, lr=5e-3) and corpus == "other.txt"
    del ck.meta["train_config"]["warmup_steps"]  # as in a checkpoint from before the option
    assert resume_options(typed, (), ck)[0] == small_train(max_steps=3, lr=1e-3, warmup_steps=7)


def test_best_and_latest(corpus_path, tmp_path):
    t = Trainer(load_corpus(corpus_path), small_model(), small_train(max_steps=15),
                tmp_path / "a")
    run(t)
    best = load_checkpoint(tmp_path / "a" / "best.npz")
    latest = load_checkpoint(tmp_path / "a" / "latest.npz")
    assert latest.meta["step"] == 15
    vals = {r["step"]: r["val_loss"] for r in latest.meta["val_history"]}
    assert best.meta["best_val_loss"] == min(vals.values())
    assert vals[best.meta["step"]] == min(vals.values())


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, min_lr_frac=0.1, warmup_steps=10, lr_decay="cosine")
    assert get_lr(0, 0.0, cfg) == pytest.approx(0.1)
    assert get_lr(9, 0.01, cfg) == pytest.approx(1.0)
    assert get_lr(10, 0.0, cfg) == pytest.approx(1.0)
    assert get_lr(60, 0.5, cfg) == pytest.approx(0.55)
    assert get_lr(110, 1.0, cfg) == pytest.approx(0.1)
    assert get_lr(120, 1.5, cfg) == pytest.approx(0.1)
    lin = TrainConfig(lr=1.0, min_lr_frac=0.0, lr_decay="linear")
    assert get_lr(25, 0.25, lin) == pytest.approx(0.75)
    assert get_lr(50, 0.5, TrainConfig(lr=0.5, lr_decay="constant")) == 0.5


def test_time_budget_schedule_follows_the_clock(corpus_path, tmp_path):
    t = Trainer(load_corpus(corpus_path), small_model(),
                small_train(max_minutes=0.05, eval_every=10**6), tmp_path / "a")
    run(t)
    lrs = [r["lr"] for r in t.train_history]
    assert t.progress > 0.9 and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] < 0.35 * t.cfg.lr


CLI_TRAIN = [sys.executable, "-m", "charlm.cli", "train", "--n-hidden", "16", "--n-embd", "8",
             "--batch-size", "4", "--seq-len", "16", "--eval-every", "5"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_and_resume_is_bit_exact(corpus_path, tmp_path):
    """A real SIGINT mid-run writes a checkpoint and exits 0; resuming reaches the same weights
    as an uninterrupted run."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    steps = "400"
    subprocess.run([*CLI_TRAIN, str(corpus_path), "--max-steps", steps, "--out",
                    str(tmp_path / "a")], check=True, env=env, capture_output=True)
    out_b = tmp_path / "b"
    proc = subprocess.Popen([*CLI_TRAIN, str(corpus_path), "--max-steps", steps, "--out",
                             str(out_b)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out_b / "latest.npz").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"stopped by signal" in err
    stopped = load_checkpoint(out_b / "latest.npz").meta["step"]
    assert 0 < stopped < int(steps)
    subprocess.run([*CLI_TRAIN, str(corpus_path), "--max-steps", steps, "--out", str(out_b),
                    "--resume", str(out_b / "latest.npz")], check=True, env=env,
                   capture_output=True)
    a = load_checkpoint(tmp_path / "a" / "latest.npz")
    b = load_checkpoint(out_b / "latest.npz")
    assert b.meta["step"] == int(steps)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert losses(a.meta["train_history"]) == losses(b.meta["train_history"])
