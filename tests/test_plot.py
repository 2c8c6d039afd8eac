"""`charlm plot`: the picture read back (format, size, one line per run and panel)."""

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm.cli import app

pytest.importorskip("matplotlib")

SVG = "{http://www.w3.org/2000/svg}"
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]  # matplotlib's C0..C3


def write_run(d, n_steps: int, timed: bool = True, scale: float = 1.0):
    """A metrics.jsonl as the trainer writes it: train rows every 10 steps, val every 50."""
    d.mkdir(parents=True)
    rows = []
    for step in range(10, n_steps + 1, 10):
        row = {"step": step, "train_loss": scale * 3 / np.sqrt(step), "lr": 1e-3,
               "chars_per_s": 1000}
        if timed:
            row["time_s"] = step * 0.6
        rows.append(row)
        if step % 50 == 0:
            rows.append({"step": step, "val_loss": scale * 3.2 / np.sqrt(step),
                         **({"time_s": step * 0.6 + 0.1} if timed else {})})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def plot(*args):
    return CliRunner().invoke(app, ["plot", *map(str, args)])


def vertices(group) -> int:
    """How many points the line in an SVG group is drawn through."""
    d = group.find(f"{SVG}path").get("d")
    return len(re.findall(r"[ML]\s*-?[\d.]+\s+-?[\d.]+", d))


def test_svg_has_each_runs_lines_in_both_panels(tmp_path):
    a = write_run(tmp_path / "a", 300)
    b = write_run(tmp_path / "b", 200, scale=1.2)
    out = tmp_path / "curves.svg"
    r = plot(a, b, "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"{out}: 2 runs"
    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg"
    groups = {g.get("id"): g for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("run")}
    assert sorted(groups) == sorted(f"run{i}-{k}-{x}" for i in (0, 1) for k in ("train", "val")
                                    for x in ("steps", "minutes"))
    # one vertex per record: 30 and 20 train rows, 6 and 4 validation rows
    for i, (n_train, n_val) in enumerate(((30, 6), (20, 4))):
        for axis in ("steps", "minutes"):
            assert vertices(groups[f"run{i}-train-{axis}"]) == n_train
            assert vertices(groups[f"run{i}-val-{axis}"]) == n_val
    text = "".join(root.itertext())
    assert "a val" in text and "b train" in text and "minutes since training started" in text


def test_png_is_a_png_of_the_figure_size_with_a_colour_per_run(tmp_path):
    runs = [write_run(tmp_path / name, 200, scale=s) for name, s in (("x", 1), ("y", 1.3),
                                                                       ("z", 1.6))]
    out = tmp_path / "curves.png"
    r = plot(*runs, "-o", out, "--title", "three runs")
    assert r.exit_code == 0, r.output
    raw = out.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    assert (width, height) == (1100, 450)
    from matplotlib.image import imread

    pixels = (imread(out)[..., :3] * 255).round().astype(int)
    def count(hex_colour: str) -> int:
        rgb = [int(hex_colour[k : k + 2], 16) for k in (1, 3, 5)]
        return int((np.abs(pixels - rgb).sum(axis=-1) <= 3).sum())

    # the three runs' colours are drawn, a fourth is not
    assert all(count(c) > 200 for c in COLOURS[:3]), [count(c) for c in COLOURS]
    assert count(COLOURS[3]) == 0


def test_untimed_runs_and_checkpoints(tmp_path):
    old = write_run(tmp_path / "old", 100, timed=False)
    from charlm.checkpoint import save_checkpoint
    from charlm.model import CharLSTM, ModelConfig

    save_checkpoint(tmp_path / "m.npz", CharLSTM(ModelConfig(vocab_size=3, n_hidden=4,
                                                             n_embd=2)), list("abc"),
                    {"step": 100, "val_history": [{"step": 50, "val_loss": 2.0},
                                                  {"step": 100, "val_loss": 1.5}]})
    out = tmp_path / "c.svg"
    r = plot(old, tmp_path / "m.npz", "-o", out, "--label", "before", "--label", "model")
    assert r.exit_code == 0, r.output
    assert "old/metrics.jsonl records no times: left out of the minutes panel" in r.stderr
    ids = {g.get("id") for g in ET.parse(out).getroot().iter(f"{SVG}g")}
    assert {"run0-train-steps", "run0-val-steps", "run1-val-steps"} <= ids
    assert not any(i and i.startswith("run0-") and i.endswith("minutes") for i in ids)
    assert "before val" in "".join(ET.parse(out).getroot().itertext())


def test_two_folders_of_one_name_are_told_apart(tmp_path):
    a = write_run(tmp_path / "one" / "ck", 100)
    b = write_run(tmp_path / "two" / "ck", 100)
    out = tmp_path / "c.svg"
    assert plot(a, b, "-o", out).exit_code == 0
    text = "".join(ET.parse(out).getroot().itertext())
    assert f"{a} val" in text and f"{b} val" in text


@pytest.mark.parametrize("make, args, pattern", [
    (lambda d: write_run(d / "r", 50), ["{d}/r", "-o", "{d}/c.pdf"], r"must end in \.png or \.svg"),
    (lambda d: None, ["{d}/missing", "-o", "{d}/c.png"], r"missing does not exist"),
    (lambda d: d.joinpath("r").mkdir(), ["{d}/r", "-o", "{d}/c.png"],
     r"r/metrics.jsonl does not exist \(train with `charlm train --out DIR`"),
    (lambda d: (d / "m.jsonl").write_text('{"step": 1, "val_loss": 2}\nnot json\n'),
     ["{d}/m.jsonl", "-o", "{d}/c.png"], r"m.jsonl line 2 is not JSON"),
    (lambda d: (d / "m.jsonl").write_text('{"step": 1, "val_loss": "2"}\n'),
     ["{d}/m.jsonl", "-o", "{d}/c.png"], r"line 1: val_loss is not a number"),
    (lambda d: (d / "m.jsonl").write_text('[1, 2]\n'),
     ["{d}/m.jsonl", "-o", "{d}/c.png"], r"line 1 is not a metrics record"),
    (lambda d: (d / "m.jsonl").write_text(''),
     ["{d}/m.jsonl", "-o", "{d}/c.png"], r"m.jsonl has no losses to plot"),
    (lambda d: write_run(d / "r", 50), ["{d}/r", "-o", "{d}/c.png", "--label", "a", "--label",
                                        "b"], r"2 --label for 1 runs"),
])
def test_bad_input_is_a_one_line_error(tmp_path, make, args, pattern):
    make(tmp_path)
    r = plot(*[a.format(d=tmp_path) for a in args])
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert re.search(pattern, r.output), r.output
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "c.pdf").exists()


def test_a_real_training_run(tmp_path):
    text = "".join(f"row {i}: some words, and more words.\n" for i in range(200))
    (tmp_path / "t.txt").write_text(text)
    r = CliRunner().invoke(app, ["train", str(tmp_path / "t.txt"), "--n-hidden", "8",
                                 "--n-embd", "4", "--batch-size", "4", "--seq-len", "16",
                                 "--max-steps", "20", "--eval-every", "10",
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    times = [row["time_s"] for row in rows]
    assert times == sorted(times) and times[0] > 0  # the training clock, in order
    out = tmp_path / "c.svg"
    assert plot(tmp_path / "run", "-o", out).exit_code == 0
    groups = {g.get("id"): g for g in ET.parse(out).getroot().iter(f"{SVG}g")}
    assert vertices(groups["run0-train-minutes"]) == 2 and vertices(groups["run0-val-steps"]) == 2
