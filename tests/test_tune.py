"""charlm tune end to end: a small study of tiny models, its report and pictures read back, the
same study resumed after kill -9, and every kind of bad input refused in one line."""

import json
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from charlm.tune.study import quiet

TINY = """
n_layer = { value = 1 }
n_hidden = { choices = [8, 12] }
n_embd = { value = 8 }
cell = { choices = ["lstm", "gru"] }
seq_len = { choices = [16, 24] }
batch_size = { choices = [4, 8] }
lr = { low = 0.002, high = 0.03, log = true }
dropout = { value = 0.0 }
"""


def words_text(n_words: int, seed: int = 0) -> str:
    """A small corpus of our own: lines of words drawn from a short list."""
    rng = np.random.default_rng(seed)
    words = ["the", "king", "queen", "shall", "not", "go", "to", "rome", "and", "come", "back"]
    out = []
    for _ in range(n_words // 8):
        out.append(" ".join(rng.choice(words, 8)) + ".\n")
    return "".join(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    path = d / "words.txt"
    path.write_text(words_text(3000), encoding="utf-8")
    (d / "space.toml").write_text(TINY, encoding="utf-8")
    return path


def tune(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charlm.cli", "tune", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def load(out, name="charlm") -> optuna.Study:
    with quiet():
        return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking its signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def val_rows(folder) -> list[dict]:
    with open(folder / "metrics.jsonl", encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if "val_loss" in r]


@pytest.fixture(scope="module")
def study_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    r = tune(corpus, "--space", corpus.parent / "space.toml", "--trials", 4, "--workers", 2,
             "--steps-per-trial", 20, "--eval-every", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r


def test_a_small_study_finishes_and_ranks_its_trials(study_run, corpus):
    out, r = study_run
    study = load(out)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert done
    for t in trials:
        folder = out / "charlm" / f"trial-{t.number:04d}"
        rows = val_rows(folder)
        assert rows and (folder / "latest.npz").is_file()
        # each report k is the best loss of the evaluations up to step 2k (20 steps, 10 tenths)
        for k, v in t.intermediate_values.items():
            assert v == min(row["val_loss"] for row in rows if row["step"] <= 2 * k)
        if t.state == TrialState.COMPLETE:
            assert t.value == min(row["val_loss"] for row in rows)
            assert t.user_attrs["steps"] == 20 and sorted(t.intermediate_values) == list(
                range(1, 11))
    # the table: rank 1 is the best trial, ranked rows in order of loss
    ranked = re.findall(r"│\s+(\d+) │\s+(\d+) │.*?│\s+([\d.]+) │", r.stdout)
    assert [int(n) for _, n, _ in ranked] == [t.number for t in done]
    assert [float(v) for _, _, v in ranked] == [round(t.value, 4) for t in done]
    assert f"best: trial {done[0].number}, val loss {done[0].value:.4f}" in r.stdout
    folder = out / "charlm" / f"trial-{done[0].number:04d}"
    assert f"checkpoint: {folder / 'best.npz'}" in r.stdout
    assert (folder / "best.npz").is_file()


def test_the_pictures_are_pngs(study_run):
    out, r = study_run
    for name in ("charlm-history.png", "charlm-importances.png"):
        path = out / name
        assert f"picture: {path}" in r.stdout
        w, h = png_size(path)
        assert 300 <= w <= 2000 and 200 <= h <= 2000
        assert path.stat().st_size > 5000  # axes, points and labels, not an empty canvas
    assert not list(out.glob(".*.tmp"))


def test_the_printed_command_trains_the_best_trial_again(study_run, tmp_path):
    out, r = study_run
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("train it again: "))
    argv = shlex.split(line[len("train it again: "):])
    assert argv[:2] == ["charlm", "train"]
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    done = subprocess.run([sys.executable, "-m", "charlm.cli", *argv[1:]], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    best = min(load(out).get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    assert min(row["val_loss"] for row in val_rows(tmp_path / "again")) == best.value


def test_report_prints_the_same_table_and_runs_nothing(study_run):
    out, r = study_run
    before = {p: p.stat().st_mtime_ns for p in (out / "charlm").rglob("*")}
    again = tune("--report", "--out", out)
    assert again.returncode == 0, again.stderr
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("│")]
    assert table and table == [ln for ln in again.stdout.splitlines() if ln.startswith("│")]
    assert {p: p.stat().st_mtime_ns for p in (out / "charlm").rglob("*")} == before
    assert len(load(out).trials) == 4


def test_a_rerun_of_a_finished_study_runs_nothing_more(study_run, corpus):
    out, _ = study_run
    r = tune(corpus, "--space", corpus.parent / "space.toml", "--trials", 4, "--workers", 2,
             "--steps-per-trial", 20, "--eval-every", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "started" not in r.stdout and len(load(out).trials) == 4


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_is_one_line_and_writes_nothing(study_run, corpus, tmp_path):
    out, _ = study_run
    fresh = tmp_path / "fresh"
    bad_utf8 = tmp_path / "bad.txt"
    bad_utf8.write_bytes(b"abc \xff\xfe def" * 100)
    one_line_error(tune(tmp_path / "missing.txt", "--out", fresh), "missing.txt")
    one_line_error(tune(bad_utf8, "--out", fresh), "UTF-8")
    one_line_error(tune(corpus, "--out", fresh), "one batch needs", "batch 128 x seq_len 200")
    space = ("--space", corpus.parent / "space.toml")
    one_line_error(tune(corpus, *space, "--storage", "not a url", "--out", fresh),
                   "not a database URL")
    one_line_error(tune(corpus, *space, "--storage", "postgresql://charlm:secret@127.0.0.1:1/no",
                        "--out", fresh), "cannot connect", "charlm:***@")
    (tmp_path / "bad.toml").write_text("lr = { low = 0.1, high = 0.01 }\n")
    one_line_error(tune(corpus, "--space", tmp_path / "bad.toml", "--out", fresh), "low (0.1)")
    one_line_error(tune("--out", fresh), "CORPUS")
    one_line_error(tune("--report", "--out", fresh), "no study")
    assert not fresh.exists()
    # a study that exists with another corpus, or another space
    other = tmp_path / "other.txt"
    other.write_text(words_text(3000, seed=1), encoding="utf-8")
    db = (out / "study.db").read_bytes()
    args = ("--trials", 5, "--steps-per-trial", 20, "--eval-every", 2, "--out", out)
    one_line_error(tune(other, "--space", corpus.parent / "space.toml", *args),
                   "another corpus", "--study-name")
    (tmp_path / "narrow.toml").write_text(TINY.replace("[8, 12]", "[8]"), encoding="utf-8")
    one_line_error(tune(corpus, "--space", tmp_path / "narrow.toml", *args),
                   "another search space")
    one_line_error(tune(corpus, "--space", corpus.parent / "space.toml", "--trials", 5,
                        "--steps-per-trial", 30, "--out", out), "another budget")
    assert (out / "study.db").read_bytes() == db


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill -9 and /proc: Linux")
def test_kill_9_mid_trial_then_rerun_resumes(corpus, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "charlm.cli", "tune", str(corpus), "--space",
            str(corpus.parent / "space.toml"), "--trials", "2", "--minutes-per-trial", "0.12",
            "--eval-every", "20", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "charlm" / "trial-0001" / "metrics.jsonl"
    try:
        wait_for(second.exists, 120, "the second trial to train")
        first = out / "charlm" / "trial-0000"
        snapshot = {p.name: p.read_bytes() for p in first.iterdir()}
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the trial's trainer dies with it, so it cannot go on writing under a finished study
    wait_for(lambda: not processes_mentioning(str(out / "charlm" / "trial-0001")), 10,
             "the orphaned trainer to die")
    study = load(out)
    states = {t.number: t.state for t in study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.RUNNING}
    done_before = study.trials[0]

    r = tune(corpus, "--space", corpus.parent / "space.toml", "--trials", 2,
             "--minutes-per-trial", 0.12, "--eval-every", 20, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "trial 2 started (again, for 1)" in r.stdout and "trial 0 started" not in r.stdout
    study = load(out)
    trials = {t.number: t for t in study.trials}
    assert sorted(trials) == [0, 1, 2]
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["interrupted"] is True
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params
    assert trials[2].state in (TrialState.COMPLETE, TrialState.PRUNED)
    # the finished trial is the same record, and its folder was not touched
    assert trials[0].value == done_before.value
    assert trials[0].datetime_complete == done_before.datetime_complete
    assert {p.name: p.read_bytes() for p in first.iterdir()} == snapshot
    assert "interrupted (queued again)" in r.stdout


def test_ctrl_c_fails_the_running_trial_and_queues_it_again(corpus, tmp_path):
    out = tmp_path / "out"
    args = [str(corpus), "--space", str(corpus.parent / "space.toml"), "--trials", "1",
            "--minutes-per-trial", "0.4", "--eval-every", "20", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "charlm.cli", "tune", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for((out / "charlm" / "trial-0000" / "metrics.jsonl").exists, 120, "training")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
                   "interrupted", "run the same command")
    assert "trial 0 interrupted: failed, queued again" in stdout
    assert not processes_mentioning(str(out / "charlm" / "trial-0000"))
    trials = load(out).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[0].user_attrs["interrupted"]
    r = tune(*args)
    assert r.returncode == 0, r.stderr
    assert "trial 1 started (again, for 0)" in r.stdout
    trials = load(out).trials
    assert trials[1].state == TrialState.COMPLETE and trials[1].params == trials[0].params
    assert len(trials) == 2
