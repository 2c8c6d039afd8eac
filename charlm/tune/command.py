"""`charlm tune`: check everything, open the study, run the workers, print the report."""

import json
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlm.errors import CharlmError
from charlm.terminal import choices, config, friendly
from charlm.tune.config import PRUNERS, TuneConfig

Pruner = choices("Pruner", PRUNERS)


def _say(console):
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            console.print(text, highlight=False, markup=False)

    return say


def _budget_text(cfg: TuneConfig) -> str:
    parts = []
    if cfg.steps_per_trial:
        parts.append(f"{cfg.steps_per_trial:,} steps")
    if cfg.minutes:
        parts.append(f"{cfg.minutes:g} min")
    return " or ".join(parts) + f" a trial, evaluated every {cfg.every:,} steps"


def report(study, cfg: TuneConfig, out: Path, console) -> None:
    from charlm.tune import report as rep

    console.print(rep.table(study))
    for line in rep.best_lines(study, cfg):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    for path in rep.pictures(study, out):
        console.print(f"picture: {path}", highlight=False, markup=False)


def run_report(cfg: TuneConfig, out: Path, console) -> None:
    """--report: the study as it stands, without running anything."""
    from charlm.tune.study import _redacted, load_existing, open_storage

    url = cfg.storage_url(out)
    if not cfg.storage and not (out / "study.db").is_file():
        raise CharlmError(f"no study in {out} (no study.db): run charlm tune CORPUS first, or "
                          "give its --out or --storage")
    storage = open_storage(url)
    study = load_existing(storage, cfg.study_name)
    if study is None:
        raise CharlmError(f"no study {cfg.study_name!r} in {_redacted(url)}")
    budget = json.loads(study.user_attrs.get("budget", "{}"))
    cfg.minutes_per_trial = budget.get("minutes", cfg.minutes_per_trial)
    cfg.steps_per_trial = budget.get("steps", cfg.steps_per_trial)
    cfg.eval_every = budget.get("eval_every", cfg.eval_every)
    report(study, cfg, out, console)


def run_tune(corpus: str | None, space_file: Path | None, cfg: TuneConfig, out: Path,
             console) -> None:
    from charlm.corpora import resolve_corpus
    from charlm.data import load_corpus
    from charlm.tune import study as st
    from charlm.tune.runner import run_workers
    from charlm.tune.space import largest_batch, load_space, space_json

    if corpus is None:
        raise CharlmError("give a CORPUS to tune on (a text file or a corpus name), or --report")
    # everything an outsider gives is checked before anything is written
    space = load_space(space_file)
    path = resolve_corpus(corpus).resolve()
    data = load_corpus(path)
    data.require_length(*largest_batch(space))
    mine = st.identity(data.sha256, space_json(space), cfg)
    made_out = not out.exists()
    if not cfg.storage and out.exists() and not out.is_dir():
        raise CharlmError(f"--out {out} is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        storage = st.open_storage(cfg.storage_url(out))
        existing = st.load_existing(storage, cfg.study_name)
        folders = out / cfg.study_name
        if existing is None and folders.is_dir() and any(folders.iterdir()):
            raise CharlmError(f"{folders} holds trials of another study: choose another --out "
                              "or --study-name")
        study, created = st.open_study(storage, cfg.study_name, mine, str(path), cfg)
    except BaseException:
        if made_out:  # nothing half-written: the folder goes as it came
            shutil.rmtree(out, ignore_errors=True)
        raise
    say = _say(console)
    finished = sum(st.counted(t) and t.state.name != "RUNNING" for t in study.trials)
    threads = st.threads_per_worker(cfg.workers)
    say(f"study {cfg.study_name} in {st._redacted(storage.url)}: "
        + ("new" if created else f"{finished} of its trials finished")
        + f"; {cfg.trials} trials of {_budget_text(cfg)}; {cfg.workers} worker"
        + ("s" if cfg.workers > 1 else "") + f" of {threads} thread" + ("s" if threads > 1 else ""))
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_workers(study, space, str(path), cfg, out, stop, say)
    finally:
        signal.signal(signal.SIGTERM, previous)
    report(study, cfg, out, console)
    if stop.is_set():
        raise CharlmError("interrupted: the running trials are failed and queued again; run the "
                          "same command to resume")


@friendly
def tune(
    ctx: typer.Context,
    corpus: Annotated[Optional[str], typer.Argument(  # noqa: UP045 (typer needs Optional)
        help="A UTF-8 text file, or a corpus name from `charlm corpus list`.")] = None,
    trials: Annotated[int, typer.Option(help="Trials the study should have in all (a rerun "
                                             "runs the missing ones).")] = TuneConfig.trials,
    minutes_per_trial: Annotated[float, typer.Option(
        help="Each trial's wall-clock budget (2 when no budget is given).")
    ] = TuneConfig.minutes_per_trial,
    steps_per_trial: Annotated[int, typer.Option(help="Each trial's step budget.")
                               ] = TuneConfig.steps_per_trial,
    eval_every: Annotated[int, typer.Option(
        help="Steps between a trial's evaluations (0: a tenth of --steps-per-trial, or 100).")
    ] = TuneConfig.eval_every,
    workers: Annotated[int, typer.Option(help="Trials at once here; they split the cores.")
                       ] = TuneConfig.workers,
    space: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="A TOML file of search-space entries replacing the default's.")] = None,
    storage: Annotated[str, typer.Option(
        help="An optuna storage URL shared by machines (default: sqlite in --out).")
    ] = TuneConfig.storage,
    study_name: Annotated[str, typer.Option(help="The study in the storage.")
                          ] = TuneConfig.study_name,
    pruner: Annotated[Pruner, typer.Option(help="Stops hopeless trials early.")
                      ] = TuneConfig.pruner,
    seed: Annotated[int, typer.Option(help="The sampler's seed.")] = TuneConfig.seed,
    out: Annotated[Path, typer.Option(help="Trial folders, the SQLite study and the pictures.")
                   ] = Path("tune"),
    report_only: Annotated[bool, typer.Option(
        "--report", help="Print the table and write the pictures of the study; run nothing.")
    ] = False,
) -> None:
    """Search training recipes with Optuna: each trial a `charlm train` run under --out."""
    from optuna.exceptions import ExperimentalWarning
    from rich.console import Console

    cfg = config(TuneConfig, ctx.params)
    cfg.validate()
    # the warnings optuna gives about what we use on purpose (charlm.tune.study.quiet), for the
    # whole process: catch_warnings in the worker threads would race
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    console = Console(soft_wrap=True)
    if not console.is_terminal:  # a log or a pipe: the table on one line a trial, not wrapped
        console = Console(soft_wrap=True, width=200)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        if report_only:
            run_report(cfg, out, console)
        else:
            run_tune(corpus, space, cfg, out, console)
    except SQLAlchemyError as e:  # the database went away, or refused a write, mid-study
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise CharlmError(f"the study's storage failed: {reason}; run the same command again "
                          "to resume") from None
