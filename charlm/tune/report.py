"""The report of a `charlm tune` study: the ranked table of trials, the best trial's checkpoint and
the command that trains its recipe again, and two pictures (history, parameter importances)."""

import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from charlm.tune.config import TuneConfig
from charlm.tune.runner import describe
from charlm.tune.study import quiet
from charlm.tune.trial import reproduce_command

STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2,
               TrialState.FAIL: 3, TrialState.WAITING: 4}


@dataclass
class Row:
    rank: int | None  # among complete trials
    number: int
    params: str
    best_val: float | None  # the trial's best validation loss (a pruned one's last report)
    steps: int | None
    minutes: float | None
    state: str


def options(study: optuna.Study, t: FrozenTrial) -> dict:
    """All of a trial's `charlm train` options: the space's fixed values and its draws."""
    space = json.loads(study.user_attrs.get("space", "{}"))
    return {**{n: d["value"] for n, d in space.items() if "value" in d}, **t.params}


def best_val(t: FrozenTrial) -> float | None:
    if t.state == TrialState.COMPLETE:
        return t.value
    if t.intermediate_values:
        return min(t.intermediate_values.values())
    return None


def state_text(t: FrozenTrial) -> str:
    if t.state == TrialState.FAIL:
        if t.user_attrs.get("surplus"):
            return "not run: the study had its trials"
        if "error" in t.user_attrs:
            return f"failed: {t.user_attrs['error']}"
        return "interrupted (queued again)"
    if t.state == TrialState.PRUNED and t.intermediate_values:
        return f"pruned at {max(t.intermediate_values) * 10}%"
    return t.state.name.lower()


def rows(study: optuna.Study) -> list[Row]:
    """Every trial, the complete ones first by loss, then pruned, running, failed, waiting."""

    def key(t: FrozenTrial):
        v = best_val(t)
        return STATE_ORDER.get(t.state, 5), v if v is not None else math.inf, t.number

    out, rank = [], 0
    for t in sorted(study.get_trials(deepcopy=False), key=key):
        if t.state == TrialState.COMPLETE:
            rank += 1
        out.append(Row(rank if t.state == TrialState.COMPLETE else None, t.number,
                       describe(options(study, t)), best_val(t), t.user_attrs.get("steps"),
                       t.user_attrs.get("minutes"), state_text(t)))
    return out


def table(study: optuna.Study):
    """The rows as a rich Table."""
    from rich.table import Table

    tab = Table(title=f"study {study.study_name}: {len(study.trials)} trials")
    for name, justify in (("rank", "right"), ("trial", "right"), ("params", "left"),
                          ("best val", "right"), ("steps", "right"), ("min", "right"),
                          ("state", "left")):
        tab.add_column(name, justify=justify)
    for r in rows(study):
        tab.add_row("" if r.rank is None else str(r.rank), str(r.number), r.params,
                    "" if r.best_val is None else f"{r.best_val:.4f}",
                    "" if r.steps is None else f"{r.steps:,}",
                    "" if r.minutes is None else f"{r.minutes:.1f}", r.state)
    return tab


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(done, key=lambda t: t.value) if done else None


def best_lines(study: optuna.Study, cfg: TuneConfig) -> list[str]:
    """Where the best trial's checkpoint is, and the command that trains its recipe again."""
    t = best_trial(study)
    if t is None:
        return ["no trial has finished yet"]
    folder = t.user_attrs.get("folder", "?")
    where = Path(folder) / "best.npz"
    host = t.user_attrs.get("host")
    shown = f"{host}:{where}" if host and host != socket.gethostname() else str(where)
    corpus = study.user_attrs.get("corpus", "CORPUS")
    return [f"best: trial {t.number}, val loss {t.value:.4f} nats/char "
            f"({t.value / math.log(2):.3f} bits/char)",
            f"checkpoint: {shown}",
            f"train it again: {reproduce_command(corpus, options(study, t), cfg)}"]


def _save(fig, path: Path) -> None:
    """The figure as a PNG at path, whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_history(study: optuna.Study, path: Path) -> Path | None:
    """Each trial's best validation loss by trial number (pruned ones hollow), and the best so
    far; None when no trial has a loss yet."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display, no GUI toolkit
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trials = [t for t in study.get_trials(deepcopy=False) if best_val(t) is not None
              and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not trials:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    ax.scatter([t.number for t in done], [t.value for t in done], color="tab:blue",
               label="complete: best val loss", zorder=3)
    if pruned:
        ax.scatter([t.number for t in pruned], [best_val(t) for t in pruned],
                   facecolors="none", edgecolors="tab:gray", label="pruned: at its last report",
                   zorder=3)
    if done:
        xs, ys, best = [], [], math.inf
        for t in sorted(done, key=lambda t: t.number):
            best = min(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(f"{study.study_name}: optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)
    return path


def importances(study: optuna.Study) -> dict[str, float]:
    """Each searched parameter's share of the loss's variation among the complete trials
    (PED-ANOVA: no extra dependency, and meant for few trials); {} when it cannot be told."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 3:
        return {}
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    try:
        quantile = max(0.1, min(0.5, 2 / len(done)))  # at least two trials in the top group
        with quiet():
            return get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile))
    except (ValueError, RuntimeError):
        return {}


def plot_importances(study: optuna.Study, path: Path) -> Path | None:
    """A bar per searched parameter, most important on top; None when there is too little."""
    imp = importances(study)
    if not imp or not any(v > 0 for v in imp.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA, share of the total)")
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    ax.set_title(f"{study.study_name}: parameter importances ({n} complete trials)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return path


def pictures(study: optuna.Study, out: Path) -> list[Path]:
    """Write the history and importance PNGs into out; returns the ones written."""
    out.mkdir(parents=True, exist_ok=True)
    made = [plot_history(study, out / f"{study.study_name}-history.png"),
            plot_importances(study, out / f"{study.study_name}-importances.png")]
    return [p for p in made if p is not None]
