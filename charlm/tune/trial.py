"""One trial of `charlm tune`: a `charlm train` process in its own folder, watched as it trains.

Its validation losses go to optuna at each tenth of its budget (the best so far: what the trial
would give if it stopped there), and the pruner's verdict stops it early. A trial's process
gets its share of the cores through NUMBA_NUM_THREADS and OPENBLAS_NUM_THREADS, set before numba
and numpy load in it, and dies with the tune process (charlm.tune.child).
"""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from charlm.train import TrainConfig
from charlm.tune.config import TuneConfig
from charlm.tune.study import HEARTBEAT_S

POLL_S = 0.25  # how often a trial's metrics file is read
THREAD_VARS = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def fmt(value: Any) -> str:
    """An option's value as `charlm train` reads it back exactly (floats by repr)."""
    return repr(value) if isinstance(value, float) else str(value)


def train_options(params: dict[str, Any], cfg: TuneConfig) -> list[str]:
    """The `charlm train` options of a trial: its parameters, the study's budget and cadence."""
    args = []
    for name, value in params.items():
        args += [f"--{name.replace('_', '-')}", fmt(value)]
    if cfg.steps_per_trial:
        args += ["--max-steps", str(cfg.steps_per_trial)]
    if cfg.minutes:
        args += ["--max-minutes", f"{cfg.minutes:g}"]
    return args + ["--eval-every", str(cfg.every)]


def reproduce_command(corpus: str, params: dict[str, Any], cfg: TuneConfig,
                      out: str = "checkpoints/tuned") -> str:
    """The `charlm train` command that trains a trial's recipe again."""
    return shlex.join(["charlm", "train", corpus, *train_options(params, cfg), "--out", out])


@dataclass
class Tenths:
    """The best validation loss at each tenth of a trial's budget, reported once per tenth.

    Rows come in as (progress, val_loss), progress being the fraction of the budget used when
    the loss was measured; `due(now)` gives the tenths k/10 <= now not yet reported that have
    a loss by then, as (k, best loss up to k/10).
    """

    seen: list[tuple[float, float]] = field(default_factory=list)
    passed: int = 0  # tenths already past

    def add(self, progress: float, val_loss: float) -> None:
        if math.isfinite(val_loss):
            self.seen.append((progress, val_loss))

    def due(self, now: float) -> list[tuple[int, float]]:
        out = []
        last = min(10, math.floor(now * 10 + 1e-9))
        for k in range(self.passed + 1, last + 1):
            losses = [v for p, v in self.seen if p <= k / 10 + 1e-9]
            if losses:
                out.append((k, min(losses)))
        self.passed = max(self.passed, last)
        return out


class Metrics:
    """A trial's metrics.jsonl read as it grows: whole lines only, and the clock of its budget.

    On a time budget, a row's progress is when it was read, against the training's start; that
    start is worked out from the first train row (its 10 steps at its chars_per_s), since the
    process spends a while loading and compiling before its clock starts.
    """

    def __init__(self, path: Path, cfg: TuneConfig, chars_per_step: int) -> None:
        self.path, self.cfg, self.chars_per_step = path, cfg, chars_per_step
        self.offset, self.step, self.t0 = 0, 0, None
        self.best = math.inf

    def progress(self, step: int, now: float) -> float:
        p = step / self.cfg.steps_per_trial if self.cfg.steps_per_trial else 0.0
        if self.cfg.minutes and self.t0 is not None:
            p = max(p, (now - self.t0) / (self.cfg.minutes * 60))
        return min(p, 1.0)

    def read(self, tenths: Tenths) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        now = time.monotonic()
        end = data.rfind(b"\n") + 1  # a line being written waits for the next read
        self.offset += end
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            self.step = max(self.step, int(row.get("step", 0)))
            if "chars_per_s" in row and self.t0 is None and row["chars_per_s"] > 0:
                self.t0 = now - row["step"] * self.chars_per_step / row["chars_per_s"]
            if "val_loss" in row:
                if self.t0 is None:
                    self.t0 = now
                tenths.add(self.progress(row["step"], now), row["val_loss"])
                self.best = min(self.best, row["val_loss"])


@dataclass
class Outcome:
    state: TrialState
    value: float | None
    steps: int
    minutes: float
    error: str = ""


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in THREAD_VARS:
        env[name] = str(threads)
    env["CHARLM_TUNE_PARENT"] = str(os.getpid())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def last_error(log: Path) -> str:
    """The `error: ...` line a failed `charlm train` ended with, or its last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "the training process failed"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors[-1][len("error:"):].strip() if errors else (lines[-1] if lines else
            "the training process failed"))[:300]


def run_trial(trial: optuna.Trial, params: dict[str, Any], corpus: str, cfg: TuneConfig,
              folder: Path, threads: int, stop: threading.Event) -> Outcome:
    """Train the trial's recipe in `folder`, reporting and pruning as it goes; the outcome is
    what to tell the study (this does not tell it)."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "charlm.tune.child", "train", corpus,
           *train_options(params, cfg), "--out", str(folder)]
    (folder / "command.txt").write_text(shlex.join(cmd) + "\n", encoding="utf-8")
    storage = trial.study._storage
    chars = params.get("batch_size", TrainConfig.batch_size) * params.get(
        "seq_len", TrainConfig.seq_len)
    metrics, tenths = Metrics(folder / "metrics.jsonl", cfg, chars), Tenths()
    t_start = time.monotonic()
    beat = t_start
    with open(folder / "train.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=child_env(threads),
                                start_new_session=True)  # Ctrl-C is the tune process's to handle
    pruned = interrupted = False
    try:
        while True:
            code = proc.poll()
            metrics.read(tenths)
            now = time.monotonic()
            done = code is not None
            # the last tenth is reported when the trial ends, with its final evaluation: on a
            # time budget the clock reaches it first, and a trial judged then loses its result
            now_p = 1.0 if done else min(metrics.progress(metrics.step, now), 0.99)
            for k, best in tenths.due(now_p):
                trial.report(best, k)
                if not done and trial.should_prune():
                    pruned = True
            if done or pruned:
                break
            if stop.is_set():
                interrupted = True
                break
            if now - beat >= HEARTBEAT_S:
                storage.record_heartbeat(trial._trial_id)
                beat = now
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:  # pruned or interrupted: its last evaluation is on disk, whole
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    minutes = (time.monotonic() - t_start) / 60
    if interrupted:
        return Outcome(TrialState.FAIL, None, metrics.step, minutes, "interrupted")
    if pruned:
        return Outcome(TrialState.PRUNED, None, metrics.step, minutes)
    if proc.returncode != 0:
        return Outcome(TrialState.FAIL, None, metrics.step, minutes,
                       last_error(folder / "train.log"))
    if not math.isfinite(metrics.best):
        return Outcome(TrialState.FAIL, None, metrics.step, minutes,
                       "no validation loss (is the validation text empty?)")
    return Outcome(TrialState.COMPLETE, metrics.best, metrics.step, minutes)
