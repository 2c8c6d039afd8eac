"""sample, info and eval with no checkpoint: the newest trained model, else default.npz."""

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlm.checkpoint import default_checkpoint
from charlm.cli import app
from charlm.errors import CharlmError

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "default.npz"


@pytest.fixture()
def here(tmp_path, monkeypatch):
    """A fresh working directory with checkpoints/default.npz, as a clone has."""
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(SHIPPED, tmp_path / "checkpoints" / "default.npz")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def touch(path: Path, age: float) -> Path:
    """A copy of the shipped checkpoint at path, modified `age` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED, path)
    t = path.stat().st_mtime - age
    os.utime(path, (t, t))
    return path


def test_the_order_of_choice(here):
    d = here / "checkpoints"
    assert default_checkpoint(d) == d / "default.npz"
    touch(d / "old-run" / "latest.npz", 300)
    assert default_checkpoint(d) == d / "old-run" / "latest.npz"
    touch(d / "old-run" / "best.npz", 400)  # a run's best beats its latest, however old
    assert default_checkpoint(d) == d / "old-run" / "best.npz"
    touch(d / "exported.npz", 200)  # newer than the run
    assert default_checkpoint(d) == d / "exported.npz"
    touch(d / "latest.npz", 100)  # `charlm train`'s own output, newest of all
    assert default_checkpoint(d) == d / "latest.npz"
    touch(d / "old-run" / "best.npz", 0)
    assert default_checkpoint(d) == d / "old-run" / "best.npz"
    (d / "default.npz").touch()  # the shipped model never wins over a trained one
    assert default_checkpoint(d) == d / "old-run" / "best.npz"


def test_no_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(CharlmError, match=r"no checkpoint in .*: train one with `charlm train`"):
        default_checkpoint(tmp_path)
    with pytest.raises(CharlmError, match=r"no checkpoint in"):
        default_checkpoint(tmp_path / "missing")


def test_commands_use_and_name_the_default(here):
    r = CliRunner().invoke(app, ["sample", "--length", "30", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("using checkpoints/default.npz")
    assert len(r.stdout) == 31  # 30 characters and the newline print_sample ends with
    same = CliRunner().invoke(app, ["sample", "checkpoints/default.npz", "--length", "30",
                                    "--seed", "1"])
    assert same.stdout == r.stdout
    r = CliRunner().invoke(app, ["info"])
    assert r.exit_code == 0 and "2 x 256 LSTM" in r.stdout, r.output
    (here / "t.txt").write_text("ROMEO: What say you?\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["eval", "t.txt"])  # one argument, a text: the default scores
    assert r.exit_code == 0, r.output
    assert "nats/char" in r.stdout and "of t.txt" in r.stdout
    assert "using checkpoints/default.npz" in r.stderr
    # a trained model, newer, is used instead
    touch(here / "checkpoints" / "best.npz", 0)
    r = CliRunner().invoke(app, ["info"])
    assert "using checkpoints/best.npz" in r.stderr


def test_commands_with_nothing_to_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["sample"], ["info"], ["eval", "--grammar", "reber"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1, r.output
        assert r.output.strip() == ("error: no checkpoint in checkpoints: train one with "
                                    "`charlm train` (it writes checkpoints/best.npz), or name a "
                                    "checkpoint file")
