"""Training curves: train and validation loss of one or more runs against steps and minutes."""

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from charlm.errors import CharlmError

FORMATS = ("png", "svg")  # by the output's suffix
MAX_RUNS = 20  # more lines than that cannot be told apart
MAX_METRICS_BYTES = 256 * 2**20  # a metrics.jsonl of 10 million steps is about 100 MB


@dataclass
class Run:
    """One run's curves, read from its metrics.jsonl (or a checkpoint's history)."""

    label: str
    source: Path
    train: list[tuple[int, float, float | None]] = field(default_factory=list)  # step, loss, s
    val: list[tuple[int, float, float | None]] = field(default_factory=list)

    @property
    def timed(self) -> bool:
        """Whether every row says when it was recorded (runs before charlm 0.1's timings not)."""
        rows = self.train + self.val
        return bool(rows) and all(t is not None for _, _, t in rows)


def _row(row: object, where: str) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise CharlmError(f"{where} is not a metrics record (an object with a step)")
    for key in ("train_loss", "val_loss", "time_s"):
        v = row.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise CharlmError(f"{where}: {key} is not a number")
    return row


def _add(run: Run, row: dict) -> None:
    t = row.get("time_s")
    if row.get("train_loss") is not None:
        run.train.append((row["step"], float(row["train_loss"]), t))
    if row.get("val_loss") is not None:
        run.val.append((row["step"], float(row["val_loss"]), t))


def read_run(path: Path, label: str | None = None) -> Run:
    """A run from a training directory (its metrics.jsonl), a metrics.jsonl, or a checkpoint
    (.npz: the loss history it records)."""
    path = Path(path)
    source = path / "metrics.jsonl" if path.is_dir() else path
    if label is None:
        label = (path if path.is_dir() else path.parent if source.name == "metrics.jsonl"
                 else Path(path.stem)).name or str(path)
    run = Run(label, source)
    if source.suffix == ".npz":
        from charlm.checkpoint import load_checkpoint

        meta = load_checkpoint(source).meta
        for i, row in enumerate(meta["train_history"] + meta["val_history"]):
            _add(run, _row(row, f"{source} history row {i + 1}"))
    else:
        if not source.is_file():
            raise CharlmError(f"{source} does not exist" + (
                " (train with `charlm train --out DIR` to get one)" if path.is_dir() else ""))
        if source.stat().st_size > MAX_METRICS_BYTES:
            raise CharlmError(f"{source} is larger than {MAX_METRICS_BYTES >> 20} MB")
        with open(source, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise CharlmError(f"{source} line {n} is not JSON") from None
                _add(run, _row(row, f"{source} line {n}"))
    if not run.train and not run.val:
        raise CharlmError(f"{source} has no losses to plot")
    run.train.sort(key=lambda r: r[0])
    run.val.sort(key=lambda r: r[0])
    return run


def plot_runs(runs: list[Run], out: Path, title: str | None = None) -> list[str]:
    """Draw the runs' losses against steps (left) and minutes (right) into out (.png or .svg),
    written atomically; returns notes on what could not be drawn.

    Each run has one colour: its validation loss a solid line with dots, its train loss a thin
    one. Every line's SVG id is run<i>-<train|val>-<steps|minutes>.
    """
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise CharlmError(f"{out}: the plot's name must end in .png or .svg")
    if not runs:
        raise CharlmError("no runs to plot")
    if len(runs) > MAX_RUNS:
        raise CharlmError(f"{len(runs)} runs: at most {MAX_RUNS} fit in one plot")
    try:
        import matplotlib
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        raise CharlmError("plotting needs matplotlib, which charlm depends on: "
                          "pip install matplotlib") from None

    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    notes = []
    # matplotlib's ten default colours, or tab20's twenty when there are more runs
    colours = ([f"C{i}" for i in range(len(runs))] if len(runs) <= 10
               else [matplotlib.colormaps["tab20"](i) for i in range(len(runs))])
    for i, (run, colour) in enumerate(zip(runs, colours, strict=True)):
        for ax, axis in ((by_step, "steps"), (by_time, "minutes")):
            if axis == "minutes" and not run.timed:
                continue
            for kind, rows in (("train", run.train), ("val", run.val)):
                if not rows:
                    continue
                xs = [r[0] if axis == "steps" else r[2] / 60 for r in rows]
                ys = [r[1] for r in rows]
                style = (dict(lw=2, marker="o", ms=3) if kind == "val"
                         else dict(lw=0.8, alpha=0.45))
                (line,) = ax.plot(xs, ys, color=colour, label=f"{run.label} {kind}", **style)
                line.set_gid(f"run{i}-{kind}-{axis}")
        if not run.timed:
            notes.append(f"{run.source} records no times: left out of the minutes panel")
    by_step.set_xlabel("step")
    by_time.set_xlabel("minutes since training started")
    by_step.set_ylabel("loss (nats/char)")
    for ax in (by_step, by_time):
        ax.grid(True, alpha=0.3)
    by_step.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    # an SVG's text stays text (searchable, and the file smaller), not glyphs drawn as paths
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    from charlm.data import atomic_write

    try:
        with atomic_write(out) as f:
            f.write(buf.getvalue())
    except OSError as e:
        raise CharlmError(f"cannot write {out}: {e.strerror or e}") from None
    return notes
