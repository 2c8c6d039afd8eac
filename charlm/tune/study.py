"""The study of `charlm tune`: its storage (a SQLite file or a shared database), and
what it remembers (corpus, space, budget) so that a rerun resumes it and a mismatch is refused."""

import contextlib
import json
import os
import re
import socket
import warnings
from collections.abc import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from charlm.errors import CharlmError
from charlm.tune.config import TuneConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

HEARTBEAT_S = 10  # a running trial's process writes this often to the storage
GRACE_S = 60  # a trial silent this long has lost its process (another machine's, say)
IDENTITY = ("corpus_sha256", "space", "budget")  # a study's own: a rerun must match them


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna marks heartbeats, constant_liar, fail_stale_trials and PED-ANOVA experimental, and
    warns that heartbeats are meant for Study.optimize: we beat ourselves around ask and tell
    (charlm.tune.trial), on purpose, and our tests pin what we rely on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def threads_per_worker(workers: int) -> int:
    """The cores each of `workers` trials gets (NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An optuna storage with heartbeats, or a one-line CharlmError naming what is wrong."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    shown = _redacted(url)
    kwargs: dict = {}
    if url.startswith(("postgresql", "mysql")):
        kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds
    elif url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # workers wait for each other's writes
    try:
        with quiet():
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S, heartbeat_stale_trial_callback=retry_trial)
    except ArgumentError:
        raise CharlmError(f"--storage {shown}: not a database URL (e.g. sqlite:///study.db, "
                          "postgresql://user:password@host/db)") from None
    except ImportError as e:
        cause = e.__cause__ or e
        extra = " (pip install 'charlm[postgres]')" if url.startswith("postgres") else ""
        raise CharlmError(f"--storage {shown}: no driver for it: {cause}{extra}") from None
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise CharlmError(f"--storage {shown}: cannot connect: {reason}") from None
    except (ValueError, RuntimeError) as e:  # optuna's own checks (schema version, URL)
        raise CharlmError(f"--storage {shown}: {str(e).splitlines()[0]}") from None


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue an interrupted trial's parameters again (optuna calls this for a trial whose
    process stopped beating; `charlm tune` for one it stopped or found dead)."""
    if any(t.user_attrs.get("retry_of") == trial.number
           for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def identity(corpus_sha256: str, space_json: str, cfg: TuneConfig) -> dict[str, str]:
    return {"corpus_sha256": corpus_sha256, "space": space_json,
            "budget": json.dumps(cfg.budget(), sort_keys=True)}


def load_existing(storage: optuna.storages.RDBStorage, name: str) -> optuna.Study | None:
    """The study of this name in the storage, or None."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def check_identity(study: optuna.Study, mine: dict[str, str], shown_url: str) -> None:
    """A CharlmError if the study was made with another corpus, space or budget."""
    theirs = study.user_attrs
    if not any(k in theirs for k in IDENTITY):
        if study.trials:
            raise CharlmError(f"study {study.study_name!r} in {shown_url} was not made by "
                              "charlm tune: choose another --study-name")
        return
    what = {"corpus_sha256": "another corpus", "space": "another search space",
            "budget": "another budget per trial (--minutes-per-trial, --steps-per-trial, "
                      "--eval-every)"}
    for key in IDENTITY:
        if theirs.get(key) != mine[key]:
            raise CharlmError(f"study {study.study_name!r} in {shown_url} was made with "
                              f"{what[key]}: choose another --study-name or --out")


def open_study(storage: optuna.storages.RDBStorage, name: str, mine: dict[str, str],
               corpus_path: str, cfg: TuneConfig) -> tuple[optuna.Study, bool]:
    """The study, created or loaded and checked; and whether this call created it."""
    shown = _redacted(storage.url)
    existing = load_existing(storage, name)
    if existing is not None:
        check_identity(existing, mine, shown)
    created = existing is None
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                sampler=make_sampler(cfg, existing, created),
                                pruner=make_pruner(cfg), load_if_exists=True)
    if created:
        attrs = dict(study.user_attrs)
        if attrs and any(k in attrs for k in IDENTITY):  # another machine created it just now
            check_identity(study, mine, shown)
        else:
            for key, value in {**mine, "corpus": corpus_path}.items():
                study.set_user_attr(key, value)
    return study, created


def make_sampler(cfg: TuneConfig, existing: optuna.Study | None,
                 created: bool) -> optuna.samplers.BaseSampler:
    """TPE, seeded. A fresh study follows from --seed; a resumed or joined one is seeded from
    --seed, its trial count and this process, so it does not draw the first trials again."""
    seed = cfg.seed
    if not created and existing is not None:
        mix = f"{cfg.seed}/{len(existing.trials)}/{socket.gethostname()}/{os.getpid()}"
        seed = int.from_bytes(mix.encode(), "little") % (2**31)
    # random draws for the first trials, TPE after; constant_liar keeps concurrent trials
    # (workers, machines) from being proposed the same point
    startup = min(10, max(3, cfg.trials // 4))
    with quiet():
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                          multivariate=True, constant_liar=True)


def make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """Trials report their best validation loss at each tenth of their budget (steps 1..10).

    median (the default): from the third tenth on, stop a trial whose best loss so far is worse
    than the median of the finished trials' at the same tenth, once 4 trials have finished. A
    study of tens of trials with equal budgets is where the median rule works well; the warm-up
    spares the high learning rates and long windows that start slow and finish first.
    hyperband: successive halving over the ten tenths, for studies of hundreds of trials.
    """
    if cfg.pruner == "median":
        # optuna judges from step n_warmup_steps on: tenths 1 and 2 are never judged
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=10,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def counted(t: FrozenTrial) -> bool:
    """A trial that counts towards --trials: done (complete, pruned, failed on its own) or
    running. A trial failed by an interruption does not count: it is queued again."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return t.state == TrialState.FAIL and "error" in t.user_attrs  # not "surplus" either


def host_and_pid() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()
