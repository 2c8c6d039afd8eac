"""A training job in the terminal: find the corpus, train with a rich progress bar, summarise."""

import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from charlm import checkpoint as ckpt
from charlm.corpora import resolve_corpus
from charlm.data import load_corpus
from charlm.errors import CharlmError
from charlm.model import ModelConfig
from charlm.train import (
    LN2,
    StopFlag,
    TrainConfig,
    Trainer,
    check_resume_model,
    resume_options,
)


def run_training(corpus: str | None, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
                 resume: Path | None, encoding_errors: str = "strict",
                 console: Console | None = None, given: set[str] | None = None,
                 init_from: Path | None = None) -> Trainer:
    """Train from the command line's arguments; returns the finished trainer.

    When resuming, the training options not in `given` (the ones the user typed) and the
    corpus, if none is named, come from the checkpoint (train.resume_options). With
    init_from, the model's shape and weights come from that checkpoint (finetune.py).
    """
    console = console or Console(stderr=True)
    if resume is not None and init_from is not None:
        raise CharlmError("--resume continues a run and --init-from starts one: give one")
    previous = ckpt.load_checkpoint(resume) if resume is not None else None
    if previous is not None:
        check_resume_model(model_cfg, given or (), previous)
        cfg, corpus = resume_options(cfg, given or (), previous, corpus)
    base = None
    if init_from is not None:
        from charlm.finetune import finetune_config

        base = ckpt.load_checkpoint(ckpt.find_checkpoint(init_from))
        model_cfg = finetune_config(base, model_cfg, given or ())
    path = resolve_corpus(corpus)
    data = load_corpus(path, val_frac=cfg.val_frac, encoding_errors=encoding_errors)
    if data.val_dropped:
        console.print(f"note: {data.val_dropped:,} validation characters are not in the "
                      "training text's vocabulary and are left out of the validation loss")
    trainer = Trainer(data, model_cfg, cfg, out, resume=previous, init_from=base)
    m = trainer.model.config
    console.print(f"corpus {path} ({len(data.train):,} train / {len(data.val):,} val chars, "
                  f"{data.vocab.vocab_size} symbols)\n"
                  f"model {m.n_layer}x{m.n_hidden} {m.cell.upper()}, "
                  f"embedding {m.n_embd}, dropout {m.dropout}: {trainer.model.n_params:,} "
                  f"parameters" + (f"\nresuming at step {trainer.step}" if previous else ""),
                  highlight=False)
    if trainer.transplant is not None:
        t = trainer.transplant
        console.print(f"fine-tuning from {base.path} (step {base.meta['step']:,}"
                      f"{', ' + base.meta['corpus'] if base.meta.get('corpus') else ''}): "
                      f"{t.known} characters keep their weights, {len(t.new)} new ones start "
                      f"fresh" + (f", {len(t.dropped)} the text lacks are dropped"
                                  if t.dropped else ""), highlight=False, markup=False)
    from charlm.warmup import warmup

    warmup((m.cell,), (m.dtype,))
    t0 = time.perf_counter()
    last_val = float("nan")
    columns = (TextColumn("step {task.fields[steps]}"), BarColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  val {task.fields[val]:.3f}  "
                          "{task.fields[speed]:,.0f} chars/s"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with StopFlag() as stop, Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=None, loss=math.nan, val=math.nan, speed=0, steps="")
        for ev in trainer.run(stop):
            steps = f"{ev.step:,}" + (f"/{ev.total_steps:,}" if ev.total_steps else "")
            bar.update(task, completed=ev.step, total=ev.total_steps or None, steps=steps)
            if ev.kind == "step":
                bar.update(task, loss=ev.train_loss, speed=ev.chars_per_s)
            elif ev.kind in ("eval", "done"):
                last_val = ev.val_loss
                bar.update(task, val=ev.val_loss)
                bar.console.print(f"[bold]step {ev.step:,}[/]: val loss {ev.val_loss:.4f} nats/char"
                                  f" ({ev.val_loss / LN2:.3f} bits/char)", highlight=False)
                bar.console.print(ev.sample, markup=False, highlight=False, style="dim")
        interrupted = stop.requested
    wall = time.perf_counter() - t0
    best = trainer.best_val_loss
    console.print(
        ("stopped by signal; " if interrupted else "")
        + f"trained {trainer.step:,} steps in {wall / 60:.1f} min. final val loss "
        f"{last_val:.4f} nats/char ({last_val / LN2:.3f} bits/char); best {best:.4f}\n"
        f"checkpoints: {out / 'latest.npz'}"
        + (f", {out / 'best.npz'}" if math.isfinite(best) else "")
        + f"; metrics: {out / 'metrics.jsonl'}", highlight=False)
    return trainer
