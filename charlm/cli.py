"""The `charlm` command line: train, eval, info, export, plot, sample, serve, tune, and the
groups of cli_groups (corpus, bench, experiment, reber)."""

import inspect
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlm import reber
from charlm.cli_groups import bench_app, corpus_app, experiment_app, reber_app
from charlm.dynamic import DynamicConfig
from charlm.errors import CharlmError
from charlm.generate import SampleSettings
from charlm.model import ModelConfig
from charlm.terminal import (
    CELL_HELP,
    Cell,
    Dtype,
    EncodingErrors,
    Grammar,
    LrDecay,
    Optimizer,
    checkpoint_for,
    config,
    distribution_table,
    friendly,
    is_checkpoint,
    print_sample,
    service_module,
)
from charlm.train import TrainConfig
from charlm.tune.command import tune

# rich_markup_mode=None: click's plain help, whose text reflows to the terminal's width in one
# wide column (rich's tables squeeze it beside the option names at 80 columns)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="A character-level LSTM language model: train, sample, serve.")
app.add_typer(corpus_app, name="corpus")
app.add_typer(bench_app, name="bench")
app.add_typer(experiment_app, name="experiment")
app.add_typer(reber_app, name="reber")
app.command("tune")(tune)  # charlm/tune/command.py


# ---------------------------------------------------------------------------------------------
# train


@app.command()
@friendly
def train(
    ctx: typer.Context,
    corpus: Annotated[Optional[str], typer.Argument(  # noqa: UP045 (typer needs Optional)
        help="A UTF-8 text file, or a corpus name from `charlm corpus list`. "
             "Default: the offline corpus built from Python's standard library.")] = None,
    n_layer: Annotated[int, typer.Option(min=1, help="Stacked LSTM layers.")
                       ] = ModelConfig.n_layer,
    n_hidden: Annotated[int, typer.Option(min=1, help="Units per LSTM layer.")
                        ] = ModelConfig.n_hidden,
    n_embd: Annotated[int, typer.Option(min=1, help="Size of the character embedding.")
                      ] = ModelConfig.n_embd,
    cell: Annotated[Cell, typer.Option(help=CELL_HELP)] = ModelConfig.cell,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.95,
                                           help="Dropout between layers and before the head.")
                       ] = ModelConfig.dropout,
    forget_bias: Annotated[float, typer.Option(
        help="The forget gate's bias at init (the LSTMs: all cells but gru and rnn): 0 learns "
             "faster in runs of minutes; 1 remembers from the start.")] = ModelConfig.forget_bias,
    seq_len: Annotated[int, typer.Option(min=1, help="Characters per window (BPTT length).")
                       ] = TrainConfig.seq_len,
    batch_size: Annotated[int, typer.Option(min=1, help="Parallel streams through the text.")
                          ] = TrainConfig.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (> 0).")] = TrainConfig.lr,
    optimizer: Annotated[Optimizer, typer.Option(help="The optimizer.")
                         ] = TrainConfig.optimizer,
    lr_decay: Annotated[LrDecay, typer.Option(help="The learning-rate schedule.")
                        ] = TrainConfig.lr_decay,
    min_lr_frac: Annotated[float, typer.Option(min=0.0, max=1.0,
                                               help="The schedule ends at lr x this.")
                           ] = TrainConfig.min_lr_frac,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Linear warm-up steps.")
                            ] = TrainConfig.warmup_steps,
    grad_clip: Annotated[float, typer.Option(min=0.0, help="Global-norm clip (0: off).")
                         ] = TrainConfig.grad_clip,
    val_frac: Annotated[float, typer.Option(min=0.0, max=0.5,
                                            help="Tail of the corpus held out.")
                        ] = TrainConfig.val_frac,
    eval_every: Annotated[int, typer.Option(min=1, help="Steps between evaluations.")
                          ] = TrainConfig.eval_every,
    max_steps: Annotated[int, typer.Option(
        min=0, show_default="no limit", help="Stop after this many steps (0: no limit).")
    ] = TrainConfig.max_steps,
    max_epochs: Annotated[float, typer.Option(
        min=0.0, show_default="no limit",
        help="Stop after this many passes over the text (0: no limit).")
    ] = TrainConfig.max_epochs,
    max_minutes: Annotated[float, typer.Option(
        min=0.0, show_default="no limit",
        help="Stop after this many minutes (0: no limit). With no --max-* at all, 10.")
    ] = TrainConfig.max_minutes,
    seed: Annotated[int, typer.Option(help="Seed for weights, dropout and sampling.")
                    ] = TrainConfig.seed,
    out: Annotated[Path, typer.Option(help="Directory for checkpoints and metrics.")
                   ] = Path("checkpoints"),
    resume: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Continue from this checkpoint (weights, optimizer, data position, RNG).")] = None,
    init_from: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Fine-tune: start from this trained model's weights and shape, with a fresh "
             "optimizer and schedule (a file, or a directory's best.npz).")] = None,
    encoding_errors: Annotated[EncodingErrors, typer.Option(
        help="strict: invalid UTF-8 is an error; replace: use U+FFFD and go on.")
    ] = "strict",
    dtype: Annotated[Dtype, typer.Option(help="float64 for exact-arithmetic experiments.")
                     ] = ModelConfig.dtype,
) -> None:
    """Train a character-level LSTM on a text file; write checkpoints to --out."""
    # the options are named as the configs' fields: each config takes its own from them
    cfg = config(TrainConfig, ctx.params)
    cfg.validate()
    model_cfg = config(ModelConfig, ctx.params)
    if resume is None:  # sizes are refused here, before a corpus is read
        from charlm.train import check_trainable

        check_trainable(model_cfg, cfg)
    from charlm.run import run_training

    # on --resume, options left at their defaults take the checkpoint's values
    given = {name for name in ctx.params
             if getattr(ctx.get_parameter_source(name), "name", "") != "DEFAULT"}
    run_training(corpus, model_cfg, cfg, out, resume, encoding_errors.value, given=given,
                 init_from=init_from)


@app.command("eval")
@friendly
def eval_(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="A checkpoint file or directory; left out: the newest model in checkpoints/, "
             "else checkpoints/default.npz.", show_default=False)] = None,
    file: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="A UTF-8 text file to score (optional with --grammar).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Parallel streams.")
                          ] = TrainConfig.batch_size,
    seq_len: Annotated[int, typer.Option(min=1, help="Characters per window.")
                       ] = TrainConfig.seq_len,
    encoding_errors: Annotated[EncodingErrors, typer.Option(
        help="strict: invalid UTF-8 is an error; replace: use U+FFFD and go on.")
    ] = "strict",
    grammar: Annotated[Optional[Grammar], typer.Option(  # noqa: UP045
        help="Score next-symbol predictions on fresh strings of this grammar.")] = None,
    strings: Annotated[int, typer.Option(min=1, help="Fresh strings for --grammar.")] = 1000,
    threshold: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="--grammar: a character is predicted when its probability is "
                               "above this.")] = reber.THRESHOLD,
    seed: Annotated[int, typer.Option(help="Seed of the --grammar strings.")] = 12345,
    val_frac: Annotated[float, typer.Option(
        min=0.0, max=0.5, help="Score only the last VAL_FRAC of FILE, split as `charlm train "
                               "--val-frac` holds it out (0: all of FILE).")] = 0.0,
    dynamic: Annotated[bool, typer.Option(
        "--dynamic", help="Dynamic evaluation (Krause et al. 2018): read FILE as one stream in "
                          "segments of --seg-len; score each segment, then adapt the weights "
                          "on it: theta += -lr g / (sqrt(MS_g) + eps) + decay min(RMS_norm, "
                          "1/decay) (theta_trained - theta), where g is the segment's gradient, "
                          "MS_g the mean squared gradient on training text (--stats) and "
                          "RMS_norm = sqrt(MS_g) / its mean. Prints the static and dynamic "
                          "loss side by side. The checkpoint is not changed.")] = False,
    seg_len: Annotated[int, typer.Option(help="--dynamic: characters per segment (n).")
                       ] = DynamicConfig.seg_len,
    lr: Annotated[float, typer.Option(help="--dynamic: learning rate eta, in [0, 1] (0: the "
                                           "static loss).")] = DynamicConfig.lr,
    decay: Annotated[float, typer.Option(help="--dynamic: decay lambda toward the trained "
                                              "weights per segment, in [0, 1].")
                     ] = DynamicConfig.decay,
    eps: Annotated[float, typer.Option(help="--dynamic: epsilon added to sqrt(MS_g).")
                   ] = DynamicConfig.eps,
    stats: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="--dynamic: the text the gradient statistics MS_g are collected on (training "
             "text). Default: the checkpoint's training corpus, its training part, if the file "
             "is still there unchanged.")] = None,
    stats_chars: Annotated[int, typer.Option(
        help="--dynamic: collect MS_g over at most this many characters of --stats.")
    ] = DynamicConfig.stats_chars,
    stats_batch_size: Annotated[int, typer.Option(
        help="--dynamic: parallel streams while collecting MS_g.")
    ] = DynamicConfig.stats_batch_size,
) -> None:
    """Loss of a model on a text, in nats/char and bits/char (unknown characters are skipped);
    with --grammar, how well it predicts a Reber grammar; with --dynamic, the loss of the model
    adapting to the text as it reads it, beside the static loss.

    `charlm eval FILE` scores FILE with the default model.
    """
    from charlm.checkpoint import load_checkpoint

    dyn_options = {"seg_len", "lr", "decay", "eps", "stats", "stats_chars", "stats_batch_size"}
    typed = sorted(n for n in dyn_options
                   if getattr(ctx.get_parameter_source(n), "name", "") != "DEFAULT")
    if typed and not dynamic:
        raise CharlmError(f"--{typed[0].replace('_', '-')} is an option of --dynamic")
    if dynamic:
        config(DynamicConfig, ctx.params).validate()  # before anything is read
        if grammar is not None:
            raise CharlmError("--dynamic scores a FILE, not a --grammar")
    if file is None and checkpoint is not None and not is_checkpoint(checkpoint):
        checkpoint, file = None, checkpoint  # one argument, a text: score it
    ck = load_checkpoint(checkpoint_for(checkpoint))
    if file is None and grammar is None:
        raise CharlmError("give a FILE to score, or --grammar")
    if grammar is not None:
        grammar = grammar.value
        s = reber.score_model(ck.model(), ck.vocab, reber.generate(strings, seed, grammar),
                              grammar, threshold, batch_size, seq_len)
        typer.echo(f"{grammar}: {s.accuracy:.1%} of {s.n_strings:,} fresh strings predicted "
                   f"right at every position ({s.position_accuracy:.2%} of positions; "
                   f"p > {threshold:g} is predicted)")
        if s.long_range is not None:
            typer.echo(f"long-range: p(right second-to-last symbol) {s.long_range:.4f} on "
                       f"average; the more probable of T and P in {s.long_range_argmax:.1%}")
        if file is None:
            return
    from charlm.data import read_text
    from charlm.train import LN2, estimate_loss
    from charlm.vocab import Vocab

    text = read_text(file, encoding_errors=encoding_errors.value)
    if val_frac:  # the characters `charlm train --val-frac` holds out
        text = text[int(len(text) * (1 - val_frac)):]
    vocab = Vocab(ck.vocab)
    ids = vocab.encode(text, unknown="drop")
    skipped = len(text) - len(ids)
    if len(ids) < 2:
        raise CharlmError(f"{file} has fewer than 2 characters the model knows")
    if dynamic:
        _eval_dynamic(ck, ids, file, skipped, config(DynamicConfig, ctx.params), stats,
                      encoding_errors.value)
        return
    loss = estimate_loss(ck.model(), ids, batch_size, seq_len)
    typer.echo(f"{loss:.4f} nats/char  {loss / LN2:.4f} bits/char  over {len(ids) - 1:,} "
               f"characters of {file}" + (f" ({skipped:,} not in the vocabulary, skipped)"
                                           if skipped else ""))


def _eval_dynamic(ck, ids, file: Path, skipped: int, cfg: DynamicConfig, stats: Path | None,
                  encoding_errors: str) -> None:
    """`charlm eval --dynamic`: gradient statistics, then the static and dynamic passes."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from charlm.dynamic import dynamic_evaluate, gradient_rms, statistics_ids

    stats_ids, source = statistics_ids(ck.meta, list(ck.vocab),
                                       None if stats is None else str(stats), encoding_errors)
    model = ck.model()
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("gradient statistics", total=None)
        rms, n_stats = gradient_rms(model, stats_ids, cfg.seg_len, cfg.stats_batch_size,
                                    cfg.stats_chars)
        bar.update(task, description="dynamic evaluation", total=len(ids) - 1, completed=0)
        r = dynamic_evaluate(model, ids, rms, cfg, n_stats,
                             progress=lambda done, total: bar.update(task, completed=done))
    typer.echo(f"static   {r.static_loss:.4f} nats/char  {r.static_bpc:.4f} bits/char\n"
               f"dynamic  {r.dynamic_loss:.4f} nats/char  {r.dynamic_bpc:.4f} bits/char\n"
               f"over {r.n_chars:,} characters of {file}, one stream in segments of "
               f"{cfg.seg_len}" + (f" ({skipped:,} not in the vocabulary, skipped)"
                                   if skipped else "")
               + f"; lr {cfg.lr:g}, decay {cfg.decay:g}, eps {cfg.eps:g}; gradient statistics "
               f"from {n_stats:,} characters of {source}")


@app.command()
@friendly
def info(
    checkpoint: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="A checkpoint file or directory; left out: the newest model in checkpoints/, "
             "else checkpoints/default.npz.", show_default=False)] = None,
) -> None:
    """Config, parameter count, vocabulary, steps, best val loss and loss history of a model."""
    from charlm.checkpoint import load_checkpoint
    from charlm.train import LN2

    path = checkpoint_for(checkpoint)
    ck = load_checkpoint(path)
    meta, cfg = ck.meta, ck.config
    best = meta.get("best_val_loss")
    lines = [
        f"checkpoint  {path}  (sha256 {ck.sha256[:16]}, charlm {meta.get('charlm_version')})",
        f"model       {cfg.n_layer} x {cfg.n_hidden} {cfg.cell.upper()}, embedding {cfg.n_embd}, "
        f"dropout {cfg.dropout}, {cfg.dtype}: {ck.theta.size:,} parameters",
        f"vocabulary  {cfg.vocab_size} symbols: {''.join(ck.vocab)!r}",
        f"training    {meta['step']:,} steps, epoch {meta['epoch']}, corpus "
        f"{meta.get('corpus') or '?'} (sha256 {str(meta.get('corpus_sha256'))[:16]})",
        "best val    " + (f"{best:.4f} nats/char ({best / LN2:.3f} bits/char)"
                          if best is not None else "none"),
    ]
    # rows without the loss (a checkpoint may hold such) are left out
    train_h = [r for r in meta["train_history"] if "train_loss" in r]
    val_h = [r for r in meta["val_history"] if "val_loss" in r]
    if train_h:
        lines.append(f"train loss  {train_h[0]['train_loss']:.3f} at step {train_h[0]['step']} "
                     f"-> {train_h[-1]['train_loss']:.3f} at step {train_h[-1]['step']}")
    if val_h:
        pts = val_h if len(val_h) <= 8 else [val_h[round(k * (len(val_h) - 1) / 7)]
                                              for k in range(8)]
        lines.append("val loss    " + ", ".join(f"{r['val_loss']:.3f}@{r['step']}" for r in pts))
    # the training options as `charlm train` takes them (it has no --log-every, for one)
    accepted = inspect.signature(train).parameters
    tcfg = {k: v for k, v in (meta.get("train_config") or {}).items() if k in accepted}
    if tcfg:
        lines.append("options     " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                for k, v in tcfg.items()))
    for layer, names in enumerate(ck.unit_names or []):
        lines.append(f"units       layer {layer + 1}:")
        lines += [f"  {k:4d}  {name}" for k, name in enumerate(names)]
    typer.echo("\n".join(lines))


@app.command()
@friendly
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file or directory.")],
    out: Annotated[Path, typer.Argument(help="The file to write (.npz).")],
) -> None:
    """A serving copy of a checkpoint: weights, config, vocabulary and history, without the
    optimizer and data state (a third of the size; it cannot be resumed)."""
    from charlm.checkpoint import (
        MODEL_META,
        TRAIN_META,
        find_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    ck = load_checkpoint(find_checkpoint(checkpoint))
    keep = {k: v for k, v in ck.meta.items()
            if k in TRAIN_META or k in MODEL_META or k.startswith("corpus")}
    keep["rng_state"] = None
    save_checkpoint(out, ck.model(), ck.vocab, keep)
    typer.echo(f"{out}: {out.stat().st_size / 1e6:.1f} MB")


@app.command()
@friendly
def plot(
    runs: Annotated[list[Path], typer.Argument(
        help="Training runs: an --out directory (its metrics.jsonl), a metrics.jsonl, or a "
             "checkpoint (its recorded history).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The picture: .png or .svg.")
                   ] = Path("curves.png"),
    label: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="A run's name in the legend, one per run in order (default: its folder's).")
    ] = None,
    title: Annotated[Optional[str], typer.Option(help="A title above the plots.")  # noqa: UP045
                     ] = None,
) -> None:
    """Plot train and validation loss against steps and minutes, one colour per run."""
    from charlm.plot import plot_runs, read_run

    if label and len(label) != len(runs):
        raise CharlmError(f"{len(label)} --label for {len(runs)} runs: give one per run")
    read = [read_run(r, label[i] if label else None) for i, r in enumerate(runs)]
    names = [r.label for r in read]
    for r, given in zip(read, runs, strict=True):
        if not label and names.count(r.label) > 1:  # two folders of one name: their paths
            r.label = str(given)
    for note in plot_runs(read, out, title):
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"{out}: {len(read)} run{'s' if len(read) > 1 else ''}")


# ---------------------------------------------------------------------------------------------
# sample and serve


@app.command()
@friendly
def sample(
    checkpoint: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="A checkpoint file, or a directory (its best.npz, else latest.npz); left out: "
             "the newest model in checkpoints/, else checkpoints/default.npz.",
        show_default=False)] = None,
    prompt: Annotated[str, typer.Option(help="Text to start from (empty: the zero state).")
                      ] = "",
    length: Annotated[int, typer.Option(min=0, help="Characters to generate at most.")
                      ] = SampleSettings.max_new_chars,
    # the command's own default, on purpose cooler than SampleSettings' 1.0
    temperature: Annotated[float, typer.Option(help="0 is greedy; higher is more random.")
                           ] = 0.8,
    top_k: Annotated[int, typer.Option(help="Keep the k most probable characters (0: all).")
                     ] = SampleSettings.top_k,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass, in (0, 1].")
                     ] = SampleSettings.top_p,
    seed: Annotated[Optional[int], typer.Option(help="Seed, for repeatable text.")  # noqa: UP045
                    ] = None,
    stop: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="Stop at this string (repeatable); it is left out.")] = None,
    drop_unknown: Annotated[bool, typer.Option(
        help="Drop prompt characters the model does not know instead of failing.")] = False,
    distribution: Annotated[bool, typer.Option(
        help="Print the next-character distribution after the prompt instead.")] = False,
    top_n: Annotated[int, typer.Option(min=1, help="Rows of --distribution.")] = 20,
) -> None:
    """Generate text from a trained model, printed as it is drawn."""
    from charlm.checkpoint import load_checkpoint
    from charlm.generate import Generator

    settings = SampleSettings(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                              max_new_chars=length, stop=tuple(stop or ()))
    ck = load_checkpoint(checkpoint_for(checkpoint))
    from charlm.warmup import warmup

    warmup(train=False, forward=False)  # before the first character, not in its middle
    gen = Generator(ck.model(), ck.vocab)
    if distribution:
        from rich.console import Console

        dist = gen.distribution(prompt, temperature, drop_unknown)
        Console().print(distribution_table(dist, top_n))
        return
    print_sample(gen, prompt, settings, drop_unknown=drop_unknown)


@app.command()
@friendly
def serve(
    checkpoints: Annotated[Path, typer.Argument(
        help="A directory of .npz checkpoints, or one checkpoint file.")] = Path("checkpoints"),
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="gunicorn worker processes.")] = 1,
    api_key: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Require 'Authorization: Bearer KEY' on generation routes.")] = None,
    cors_origins: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Comma-separated origins allowed by CORS.")] = None,
    dev: Annotated[bool, typer.Option(help="Flask's development server instead of gunicorn.")
                   ] = False,
) -> None:
    """Serve checkpoints over HTTP (gunicorn with service/gunicorn.conf.py)."""
    run_serve = service_module("launch").run_serve

    run_serve(checkpoints, host=host, port=port, workers=workers, api_key=api_key,
              cors_origins=cors_origins, dev=dev)


def main() -> None:  # pragma: no cover - the console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

