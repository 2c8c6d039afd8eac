"""The workers of `charlm tune` on this machine: each asks the study for a trial, trains it, tells
the study, until the study has its trials; an interruption fails and queues the running ones.

Several machines run this against one database: a trial is asked for and counted in the study
itself, so they share the count. A trial whose process died (kill -9, a lost machine) is failed
and queued again: at once when it ran on this machine (its process is gone), else when its
heartbeat has been silent for GRACE_S.
"""

import os
import threading
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from charlm.tune.config import TuneConfig
from charlm.tune.space import Param, suggest
from charlm.tune.study import counted, host_and_pid, quiet, retry_trial, threads_per_worker
from charlm.tune.trial import Outcome, run_trial


def alive(pid: int) -> bool:
    """Whether a process of this pid runs and is a charlm one (not a stranger reusing it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"charlm" in f.read()
    except OSError:
        return True  # no /proc: trust the pid


def fail_dead(study: optuna.Study) -> list[int]:
    """Fail and queue again the running trials whose process on this machine is gone, and
    those whose heartbeat went silent; returns the numbers of the first."""
    host, me = host_and_pid()
    storage = study._storage
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid in (None, me) or alive(pid):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        retry_trial(study, storage.get_trial(t._trial_id))
        dead.append(t.number)
    with quiet():
        optuna.storages.fail_stale_trials(study)
    return dead


def next_trial(study: optuna.Study, cfg: TuneConfig, out: Path) -> optuna.Trial | None:
    """A new (or queued) trial, or None when the study has its trials."""
    fail_dead(study)
    if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= cfg.trials:
        return None
    with quiet():
        trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)  # from now on, silence means it is lost
    host, pid = host_and_pid()
    trial.set_user_attr("host", host)
    trial.set_user_attr("pid", pid)
    # another machine may have asked at the same moment: the storage numbers trials in order,
    # so the trials before this one decide whether it is needed
    before = sum(counted(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
    if before >= cfg.trials:
        trial.set_user_attr("surplus", True)
        with quiet():
            study.tell(trial, state=TrialState.FAIL)
        return None
    trial.set_user_attr("folder", str(trial_folder(out, study.study_name, trial.number)))
    return trial


def trial_folder(out: Path, study_name: str, number: int) -> Path:
    return (out / study_name / f"trial-{number:04d}").resolve()


def tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    trial.set_user_attr("steps", outcome.steps)
    trial.set_user_attr("minutes", round(outcome.minutes, 3))
    if outcome.error == "interrupted":
        trial.set_user_attr("interrupted", True)
    elif outcome.error:
        trial.set_user_attr("error", outcome.error)
    with quiet():
        study.tell(trial, outcome.value, state=outcome.state)
    if outcome.error == "interrupted":
        retry_trial(study, study._storage.get_trial(trial._trial_id))


def run_workers(study: optuna.Study, space: dict[str, Param], corpus: str, cfg: TuneConfig,
                out: Path, stop: threading.Event,
                say: Callable[[str], None]) -> list[int]:
    """Run cfg.workers trials at a time until the study has cfg.trials (or `stop` is set);
    returns the numbers of the trials this process ran."""
    lock = threading.Lock()  # one ask at a time here: the count and the ask go together
    threads = threads_per_worker(cfg.workers)
    mine: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:
                    trial = next_trial(study, cfg, out)
                    if trial is None:
                        return
                    mine.append(trial.number)
                params = suggest(trial, space)
                folder = trial_folder(out, study.study_name, trial.number)
                retry = trial.user_attrs.get("retry_of")
                say(f"trial {trial.number} started" + (f" (again, for {retry})"
                                                        if retry is not None else "")
                    + ": " + describe(params))
                outcome = run_trial(trial, params, corpus, cfg, folder, threads, stop)
                tell(study, trial, outcome)
                say(f"trial {trial.number} {outcome_text(outcome)}")
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)
            stop.set()

    workers = [threading.Thread(target=work, name=f"tune-worker-{k}", daemon=True)
               for k in range(cfg.workers)]
    for w in workers:
        w.start()
    try:
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for w in workers:
            w.join()
    if errors:
        raise errors[0]
    return mine


def outcome_text(o: Outcome) -> str:
    state = o.state.name.lower()
    if o.state == TrialState.COMPLETE:
        return f"complete: best val loss {o.value:.4f} ({o.steps:,} steps, {o.minutes:.1f} min)"
    if o.error == "interrupted":
        return "interrupted: failed, queued again"
    return f"{state} at step {o.steps:,} ({o.minutes:.1f} min)" + (f": {o.error}"
                                                                    if o.error else "")


def describe(params: dict) -> str:
    """A trial's parameters, short: "2x256 lstm lr 0.0041 dropout 0.12 ..."."""
    rest = dict(params)
    head = ""
    if "n_layer" in rest and "n_hidden" in rest:
        head = f"{rest.pop('n_layer')}x{rest.pop('n_hidden')} "
    if "cell" in rest:
        head += f"{rest.pop('cell')} "
    return head + " ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in rest.items())
