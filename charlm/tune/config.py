"""The options of `charlm tune` (the command line reads its defaults from TuneConfig)."""

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from charlm.errors import CharlmError

DEFAULT_MINUTES = 2.0  # the budget of a trial when neither --minutes- nor --steps-per-trial
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # also a folder name under --out
PRUNERS = ("median", "hyperband", "none")
MAX_TRIALS = 100_000


@dataclass
class TuneConfig:
    trials: int = 20  # finished trials the study should have (complete, pruned or failed)
    minutes_per_trial: float = 0.0  # each trial's wall-clock budget (0: none)
    steps_per_trial: int = 0  # each trial's step budget (0: none); neither: 2 minutes
    eval_every: int = 0  # steps between a trial's evaluations (0: a tenth of the steps, or 100)
    workers: int = 1  # trials at once on this machine; the cores are split between them
    seed: int = 0  # the sampler's: a fresh study's trials follow from it
    study_name: str = "charlm"
    storage: str = ""  # an optuna storage URL ("": a SQLite file in --out)
    pruner: str = "median"  # median | hyperband | none

    def validate(self) -> None:
        if not 1 <= self.trials <= MAX_TRIALS:
            raise CharlmError(f"--trials must be in [1, {MAX_TRIALS:,}]")
        if not (math.isfinite(self.minutes_per_trial) and 0 <= self.minutes_per_trial <= 7 * 1440):
            raise CharlmError("--minutes-per-trial must be in [0, 10080] (a week)")
        if not 0 <= self.steps_per_trial <= 10**9 or not 0 <= self.eval_every <= 10**9:
            raise CharlmError("--steps-per-trial and --eval-every must be in [0, 10^9]")
        cores = os.cpu_count() or 1
        if not 1 <= self.workers <= cores:
            raise CharlmError(f"--workers must be in [1, {cores}] (the cores of this machine)")
        if not STUDY_NAME.fullmatch(self.study_name):
            raise CharlmError("--study-name must be 1-64 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit")
        if self.pruner not in PRUNERS:
            raise CharlmError(f"--pruner must be one of {', '.join(PRUNERS)}")

    @property
    def minutes(self) -> float:
        """The time budget of a trial (the default one when no budget is given)."""
        if not self.minutes_per_trial and not self.steps_per_trial:
            return DEFAULT_MINUTES
        return self.minutes_per_trial

    @property
    def every(self) -> int:
        """Steps between evaluations: ten per trial on a step budget, else every 100 steps."""
        if self.eval_every:
            return self.eval_every
        return max(1, self.steps_per_trial // 10) if self.steps_per_trial else 100

    def budget(self) -> dict:
        """What makes two trials' losses comparable: their budget and evaluation cadence."""
        return {"minutes": self.minutes, "steps": self.steps_per_trial, "eval_every": self.every}

    def storage_url(self, out: Path) -> str:
        return self.storage or f"sqlite:///{(out / 'study.db').resolve()}"
