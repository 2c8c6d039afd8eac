"""The command groups: `charlm corpus`, `charlm bench`, `charlm experiment` and `charlm reber`."""

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlm import reber
from charlm.bench import sample as sample_bench
from charlm.bench import train as train_bench
from charlm.errors import CharlmError
from charlm.experiment import ReberConfig
from charlm.model import CELLS
from charlm.terminal import CELL_NAMES, Grammar, config, friendly, service_module

corpus_app = typer.Typer(no_args_is_help=True, help="Named corpora: list, fetch, reber.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks against an optional torch peer.")
experiment_app = typer.Typer(no_args_is_help=True,
                             help="Experiments: every cell trained on the same task.")
reber_app = typer.Typer(no_args_is_help=True,
                        help="The Reber grammar: a hand-weighted LSTM, and reading units.")


# ---------------------------------------------------------------------------------------------
# corpus


@corpus_app.command("list")
@friendly
def corpus_list() -> None:
    """The named corpora, and whether each is available offline."""
    from rich.console import Console
    from rich.table import Table

    from charlm.corpora import list_corpora

    table = Table("name", "size", "here", "description", "path")
    for c in list_corpora():
        size = f"{c.size / 1e6:.1f} MB" if c.size else "?"
        table.add_row(c.name, size, "yes" if c.available else "no", c.description, str(c.path))
    Console().print(table)


@corpus_app.command("fetch")
@friendly
def corpus_fetch(
    name: Annotated[str, typer.Argument(help="A corpus name from `charlm corpus list`.")],
    out: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Directory to write to (default: the charlm cache).")] = None,
    url: Annotated[Optional[str], typer.Option(help="Download from here instead.")  # noqa: UP045
                   ] = None,
) -> None:
    """Download a named corpus (sha256 checked, written atomically)."""
    from charlm.corpora import fetch

    path = fetch(name, dest_dir=out, url=url, progress=sys.stderr.isatty())
    typer.echo(str(path))


@corpus_app.command("reber")
@friendly
def corpus_reber(
    count: Annotated[int, typer.Option(min=1, help="Strings to write.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the random choices.")] = 0,
    embedded: Annotated[bool, typer.Option(
        help="The embedded grammar: B T <reber string> T E or B P <reber string> P E.")
    ] = False,
    out: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="File to write (default: standard output).")] = None,
) -> None:
    """Strings of the Reber grammar (or the embedded one), one per line."""

    text = "".join(s + "\n" for s in reber.generate(
        count, seed, "embedded-reber" if embedded else "reber"))
    if out is None:
        sys.stdout.write(text)
        return
    from charlm.data import atomic_write

    with atomic_write(out) as f:
        f.write(text.encode("ascii"))
    typer.echo(f"{count:,} strings written to {out}", err=True)


# ---------------------------------------------------------------------------------------------
# bench


@bench_app.command("train")
@friendly
def bench_train(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    profile: Annotated[bool, typer.Option(help="Also print where charlm's time goes.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Streams per step.")] = train_bench.BATCH,
    seq_len: Annotated[int, typer.Option(min=1, help="Characters per window.")
                       ] = train_bench.SEQ_LEN,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved measurement rounds.")
                      ] = train_bench.ROUNDS,
    cells: Annotated[str, typer.Option(help="Comma-separated cells to time.")] = ",".join(CELLS),
    default_shape: Annotated[bool, typer.Option(
        help="Also time `charlm train`'s default shape (2x512, embedding 64, 32 x 100).")
                             ] = True,
) -> None:
    """chars/s of full training steps at 2x128 and 2x512 per cell and at the default training
    shape, the ratio to torch, and the fraction of this machine's sgemm peak."""
    shapes = train_bench.shapes_for(batch, seq_len, default_shape=default_shape)
    train_bench.run_train_bench(rounds=rounds, json_out=json_out, profile=profile,
                                 shapes=shapes, cells=cell_list(cells))


@bench_app.command("sample")
@friendly
def bench_sample(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved measurement rounds.")
                      ] = sample_bench.ROUNDS,
) -> None:
    """Microseconds per generated character at batch 1 (2x128, 2x512), the ratio to torch, and
    batched throughput."""
    sample_bench.run_sample_bench(json_out=json_out, rounds=rounds)


@bench_app.command("serve")
@friendly
def bench_serve(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    checkpoint: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Checkpoint to serve (default: checkpoints/default.npz).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="gunicorn worker processes.")] = 1,
) -> None:
    """Served chars/s of gunicorn on loopback at 1, 8 and 32 streams against the step kernel's
    own at the same batch sizes, measured in the same run, and the time to first character."""
    run_serve_bench = service_module("bench").run_serve_bench
    run_serve_bench(json_out=json_out, checkpoint=checkpoint, workers=workers)


# ---------------------------------------------------------------------------------------------
# experiment


def cell_list(cells: str) -> tuple[str, ...]:
    """--cells a,b,c as a tuple, checked against the known cells."""
    names = tuple(c.strip() for c in cells.split(",") if c.strip())
    unknown = [c for c in names if c not in CELLS]
    if unknown or not names:
        raise CharlmError(f"--cells takes a comma-separated list of {CELL_NAMES}, got {cells!r}")
    return names


@experiment_app.command("reber")
@friendly
def experiment_reber(
    ctx: typer.Context,
    cells: Annotated[str, typer.Option(help="Comma-separated cells to train.")
                     ] = ",".join(ReberConfig.cells),
    seeds: Annotated[int, typer.Option(min=1, help="Runs per cell (seeds 0, 1, ...).")
                     ] = ReberConfig.seeds,
    steps: Annotated[int, typer.Option(min=1, help="Training steps of every run.")
                     ] = ReberConfig.steps,
    n_hidden: Annotated[int, typer.Option(min=1, help="Units per layer.")
                        ] = ReberConfig.n_hidden,
    n_layer: Annotated[int, typer.Option(min=1, help="Stacked layers.")] = ReberConfig.n_layer,
    n_embd: Annotated[int, typer.Option(min=1, help="Size of the symbol embedding.")
                      ] = ReberConfig.n_embd,
    batch_size: Annotated[int, typer.Option(min=1, help="Parallel streams.")
                          ] = ReberConfig.batch_size,
    seq_len: Annotated[int, typer.Option(min=1, help="Characters per window.")
                       ] = ReberConfig.seq_len,
    lr: Annotated[float, typer.Option(help="Adam's learning rate, constant.")] = ReberConfig.lr,
    eval_every: Annotated[int, typer.Option(min=1, help="Steps between held-out checks.")
                          ] = ReberConfig.eval_every,
    eval_strings: Annotated[int, typer.Option(min=1, help="Held-out strings of the checks.")
                            ] = ReberConfig.eval_strings,
    final_strings: Annotated[int, typer.Option(min=1, help="Fresh strings of the final score.")
                             ] = ReberConfig.final_strings,
    threshold: Annotated[float, typer.Option(help="Predicted: probability above this.")
                         ] = ReberConfig.threshold,
    grammar: Annotated[Grammar, typer.Option(help="The grammar of the strings.")
                       ] = ReberConfig.grammar,
    jobs: Annotated[int, typer.Option(min=0, help="Worker processes (0: one per core).")
                    ] = ReberConfig.jobs,
    save_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Save each run's model here as <cell>-<seed>.npz.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per cell.")] = False,
) -> None:
    """Train every cell on the embedded Reber grammar with the same budget and seeds; print
    the parameters, the steps until solved, the final accuracy and the long-range accuracy."""
    from rich.console import Console

    from charlm.experiment import run_reber_experiment

    cfg = config(ReberConfig, {**ctx.params, "cells": cell_list(cells),
                               "save_dir": str(save_dir) if save_dir else ""})
    cfg.validate()
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    console, total, done = Console(stderr=True), len(cfg.cells) * seeds, []

    def progress(r) -> None:
        done.append(r)
        solved = f"solved at step {r.solved_at}" if r.solved_at else "not solved"
        console.print(f"[{len(done)}/{total}] {r.cell} seed {r.seed}: {solved}, final "
                      f"accuracy {r.accuracy:.1%} ({r.seconds:.0f} s)", highlight=False)

    run_reber_experiment(cfg, json_out=json_out, progress=progress)


# ---------------------------------------------------------------------------------------------
# reber


@reber_app.command("handmade")
@friendly
def reber_handmade(
    out: Annotated[Path, typer.Option(help="The checkpoint file to write (.npz).")],
    embedded: Annotated[bool, typer.Option(
        help="The embedded grammar: one more unit remembers the second letter.")] = False,
) -> None:
    """Write an LSTM checkpoint whose weights are set by hand, not trained, to predict the
    Reber grammar's next symbols exactly (charlm/handmade.py documents every weight)."""
    from charlm.handmade import write

    names = write(out, embedded)
    typer.echo(f"{out}: a 1 x {len(names)} LSTM built by hand for the "
               f"{'embedded ' if embedded else ''}Reber grammar; its units:")
    for k, name in enumerate(names):
        typer.echo(f"  {k:2d}  {name}")


@reber_app.command("units")
@friendly
def reber_units(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file or directory.")],
    grammar: Annotated[Grammar, typer.Option(help="The grammar of the strings read.")
                       ] = "embedded-reber",
    strings: Annotated[int, typer.Option(min=1, max=100_000, help="Fresh strings to read.")
                       ] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the strings.")] = 99,
) -> None:
    """Which units of an LSTM can be read as the automaton's states: for each unit, the state
    one threshold on its cell value tells best from all the others (balanced accuracy), and
    in the embedded grammar how well it holds the branch (charlm/reading.py)."""
    from charlm.checkpoint import find_checkpoint, load_checkpoint
    from charlm.reading import READABLE, read_units

    ck = load_checkpoint(find_checkpoint(checkpoint))
    g = grammar.value
    readings = read_units(ck.model(), ck.vocab, g, reber.generate(strings, seed, g))
    names = ck.unit_names
    for r in readings:
        name = f"  ({names[r.layer][r.unit]})" if names else ""
        branch = "" if r.branch is None else f"  branch is T {r.branch:.3f}"
        typer.echo(f"{r.layer + 1}.{r.unit:<3d} {r.state:<18s} {r.accuracy:.3f}"
                   f"{' (one symbol leads there)' if r.by_input else '':26s}{branch}{name}")
    readable = [r for r in readings if r.readable]
    states = {r.state for r in readable}
    typer.echo(f"{len(readable)} of {len(readings)} units read as one state (balanced accuracy "
               f">= {READABLE:g}), {sum(not r.by_input for r in readable)} of them a state more "
               f"than one symbol leads into; {len(states)} distinct states")
    if g == "embedded-reber":
        best = max(readings, key=lambda r: r.branch)
        typer.echo(f"the branch (T or P): best held by unit {best.layer + 1}.{best.unit}, "
                   f"balanced accuracy {best.branch:.3f}")
