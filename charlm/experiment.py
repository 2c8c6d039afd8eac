"""`charlm experiment reber`: every cell trained on the embedded Reber grammar, same budget.

Each (cell, seed) run trains a fresh model on the same stream of strings for that seed (one
per line, read as in `charlm train`: contiguous streams, state carried, truncated BPTT),
scores it on held-out strings every eval_every steps (reber.score: the set of characters
above the threshold must be the legal set at every position), and counts it solved at the
first evaluation where every held-out string is right. At the end it is scored on a larger
fresh set. Runs are independent and deterministic, so they run in worker processes, one per
core, each with a single BLAS thread (for models this small, BLAS threads only wait).
"""

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

import numpy as np

from charlm import reber
from charlm.batches import Batcher
from charlm.errors import CharlmError
from charlm.model import CELLS, CharLSTM, ModelConfig
from charlm.optim import Adam
from charlm.train import train_step
from charlm.vocab import Vocab

VOCAB = Vocab.from_text(reber.ALPHABET + reber.NEWLINE)  # what `charlm train` builds from it


@dataclass
class ReberConfig:
    cells: tuple[str, ...] = tuple(CELLS)
    seeds: int = 5  # runs per cell, seeds 0 .. seeds-1 (data, weights and held-out strings)
    steps: int = 2000  # the budget of every run
    n_hidden: int = 8  # about the memory cells Hochreiter and Schmidhuber gave the task
    n_layer: int = 1
    n_embd: int = 8
    batch_size: int = 32
    seq_len: int = 50
    lr: float = 1e-2  # Adam, constant
    forget_bias: float = 1.0  # the forget gate starts open: the task is to remember
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between checks on the held-out strings
    eval_strings: int = 200  # held-out strings of those checks
    final_strings: int = 1000  # fresh strings scored at the end
    train_strings: int = 10000  # the training stream (about 12 characters a string)
    threshold: float = reber.THRESHOLD
    grammar: str = "embedded-reber"
    jobs: int = 0  # worker processes (0: one per core)
    save_dir: str = ""  # where each run's model is saved as <cell>-<seed>.npz ("": nowhere)

    def validate(self) -> None:
        unknown = [c for c in self.cells if c not in CELLS]
        if unknown or not self.cells:
            raise CharlmError(f"--cells must be some of {', '.join(CELLS)}, got "
                              f"{','.join(self.cells) or 'none'}")
        for name in ("seeds", "steps", "n_hidden", "n_layer", "n_embd", "batch_size", "seq_len",
                     "eval_every", "eval_strings", "final_strings", "train_strings"):
            if getattr(self, name) < 1:
                raise CharlmError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0 or self.grad_clip < 0 or not 0 < self.threshold < 1 or self.jobs < 0:
            raise CharlmError("--lr must be > 0, --grad-clip >= 0, --threshold in (0, 1), "
                              "--jobs >= 0")
        if self.grammar not in reber.GRAMMARS:
            raise CharlmError(f"--grammar must be one of {', '.join(reber.GRAMMARS)}")


@dataclass
class RunResult:
    cell: str
    seed: int
    n_params: int
    solved_at: int | None  # first step at which every held-out string was right
    accuracy: float  # final, on final_strings fresh strings
    long_range: float | None  # final mean probability of the right second-to-last symbol
    train_loss: float  # mean of the last eval_every steps, nats/char
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out accuracy)


def encode(strings: list[str]) -> np.ndarray:
    """The strings one per line, as ids of VOCAB."""
    return VOCAB.encode("\n".join(strings) + "\n")


def train_run(cfg: ReberConfig, cell: str, seed: int) -> RunResult:
    """One model of this cell, trained and scored on the data of this seed."""
    t0 = time.perf_counter()
    # distinct seeds for training, held-out and final strings
    train = encode(reber.generate(cfg.train_strings, 3 * seed, cfg.grammar))
    held_out = reber.generate(cfg.eval_strings, 3 * seed + 1, cfg.grammar)
    model = CharLSTM(ModelConfig(vocab_size=VOCAB.vocab_size, n_embd=cfg.n_embd,
                                 n_hidden=cfg.n_hidden, n_layer=cfg.n_layer, dropout=0.0,
                                 cell=cell, forget_bias=cfg.forget_bias), seed=seed)
    opt = Adam(model.n_params, model.dtype)
    batcher = Batcher(train, cfg.batch_size, cfg.seq_len)
    state = model.zero_state(cfg.batch_size)
    solved_at, curve, losses = None, [], []
    for step in range(1, cfg.steps + 1):
        x, y = batcher.next_batch()
        if batcher.wrapped:
            state.h[:] = 0
            state.c[:] = 0
        losses.append(train_step(model, opt, x, y, state, cfg.lr, cfg.grad_clip))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = reber.score_model(model, VOCAB.itos, held_out, cfg.grammar,
                                    cfg.threshold).accuracy
            curve.append((step, acc))
            if acc == 1.0 and solved_at is None:
                solved_at = step
    final = reber.score_model(model, VOCAB.itos, reber.generate(cfg.final_strings, 3 * seed + 2,
                                                          cfg.grammar),
                              cfg.grammar, cfg.threshold)
    if cfg.save_dir:  # to look inside afterwards (charlm reber units)
        from charlm.checkpoint import save_checkpoint

        save_checkpoint(os.path.join(cfg.save_dir, f"{cell}-{seed}.npz"), model, VOCAB.itos,
                        {"step": cfg.steps, "corpus": f"{cfg.grammar} strings, seed {3 * seed}"})
    return RunResult(cell, seed, model.n_params, solved_at, final.accuracy, final.long_range,
                     float(np.mean(losses[-cfg.eval_every:])), time.perf_counter() - t0, curve)


def run_experiment(cfg: ReberConfig) -> Iterator[RunResult]:
    """Every (cell, seed) run, yielded as each finishes (in any order)."""
    cfg.validate()
    tasks = [(cell, seed) for cell in cfg.cells for seed in range(cfg.seeds)]
    jobs = min(cfg.jobs or os.cpu_count() or 1, len(tasks))
    if jobs == 1:
        for cell, seed in tasks:
            yield train_run(cfg, cell, seed)
        return
    # fresh interpreters (spawn), which read these when they load BLAS: one thread each
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    try:
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        with pool:
            futures = [pool.submit(train_run, cfg, cell, seed) for cell, seed in tasks]
            for fut in as_completed(futures):
                yield fut.result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def summarize(cfg: ReberConfig, results: list[RunResult]) -> list[dict]:
    """One row per cell: parameters, solved runs and their steps, final accuracies."""
    rows = []
    for cell in cfg.cells:
        runs = sorted((r for r in results if r.cell == cell), key=lambda r: r.seed)
        if not runs:
            continue
        solved = [r.solved_at for r in runs if r.solved_at is not None]
        long = [r.long_range for r in runs if r.long_range is not None]
        rows.append({
            "cell": cell, "n_params": runs[0].n_params, "runs": len(runs),
            "solved": len(solved), "steps_to_solve": [r.solved_at for r in runs],
            "median_steps_to_solve": statistics.median(solved) if solved else None,
            "accuracy": [round(r.accuracy, 4) for r in runs],
            "mean_accuracy": round(float(np.mean([r.accuracy for r in runs])), 4),
            "long_range": [round(v, 4) for v in long],
            "mean_long_range": round(float(np.mean(long)), 4) if long else None,
            "train_loss": round(float(np.mean([r.train_loss for r in runs])), 4),
            "seconds": round(sum(r.seconds for r in runs), 1),
        })
    return rows


def table(cfg: ReberConfig, rows: list[dict]):
    """A rich Table of the summary: medians of the steps until solved, means (and worst) of
    the accuracies."""
    from rich.table import Table

    t = Table(title=f"{cfg.grammar}: {cfg.n_layer}x{cfg.n_hidden}, {cfg.steps} steps of "
                    f"{cfg.batch_size}x{cfg.seq_len}, {cfg.seeds} seeds")
    t.add_column("cell", no_wrap=True)
    for name in ("params", "solved", "steps to solve", "accuracy", "long-range p"):
        t.add_column(name, justify="right")
    for r in rows:
        solved = [s for s in r["steps_to_solve"] if s is not None]
        steps = (f"{r['median_steps_to_solve']:g}" + (f" ({min(solved)}-{max(solved)})"
                                                      if len(solved) > 1 else "")
                 if solved else "-")
        acc = f"{r['mean_accuracy']:.1%} ({min(r['accuracy']):.1%})"
        long = (f"{r['mean_long_range']:.3f} ({min(r['long_range']):.3f})"
                if r["long_range"] else "-")
        t.add_row(r["cell"], f"{r['n_params']:,}", f"{r['solved']}/{r['runs']}", steps, acc,
                  long)
    t.caption = (f"solved: all {cfg.eval_strings} held-out strings right (checked every "
                 f"{cfg.eval_every} steps); steps: median (range) of the solved runs. "
                 "accuracy: strings right at every position, of "
                 f"{cfg.final_strings} fresh ones at the end (p > {cfg.threshold:g} is "
                 "predicted); long-range p: of the right second-to-last symbol; both the "
                 "mean (worst) over the seeds.")
    return t


def run_reber_experiment(cfg: ReberConfig, json_out: bool = False,
                         progress: Callable[[RunResult], None] | None = None) -> list[dict]:
    """Run, print the table (or JSON lines), and return the summary rows."""
    import json

    from rich.console import Console

    results = []
    for r in run_experiment(cfg):
        results.append(r)
        if progress is not None:
            progress(r)
    rows = summarize(cfg, results)
    if json_out:
        for row in rows:
            print(json.dumps({"what": "experiment", "grammar": cfg.grammar, **row,
                              "config": {k: v for k, v in asdict(cfg).items() if k != "cells"}}),
                  flush=True)
    else:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: no need to fold the table into 80
            console = Console(width=120)
        console.print(table(cfg, rows))
    return rows
