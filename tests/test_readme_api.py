"""The README's Python examples run as written, in order, in a fresh folder: on a small text
(Python's own json package source) and with step budgets where they give minutes."""

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("## Python API"):README.index("\n## ", README.index("## Python API")
                                                            + 3)]
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.S)
# a minute of training is the README's; a test takes a few steps of a small batch
QUICK = "max_steps=6, batch_size=4, seq_len=32, eval_every=3, progress=False"


def test_the_section_has_the_examples():
    assert len(BLOCKS) == 3
    code = "".join(BLOCKS)
    for name in ("charlm.train(", "charlm.load(", ".sample(", ".stream(", ".distribution(",
                 ".evaluate(", ".save(", ".info", "init_from="):
        assert name in code, name


def test_the_examples_run(tmp_path, monkeypatch, capsys):
    text = "".join(p.read_text(encoding="utf-8")
                   for p in sorted(Path(json.__file__).parent.glob("*.py")))
    assert set("ROMEO:") <= set(text) and len(text) > 20_000
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(ROOT / "checkpoints" / "default.npz", tmp_path / "checkpoints")
    monkeypatch.chdir(tmp_path)
    for block in BLOCKS:
        code, n = re.subn(r"max_minutes=\d+", QUICK, block)
        assert n <= 1
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102
    out = capsys.readouterr().out
    assert re.search(r"\d\.\d{3} nats/char \(\d\.\d{3} bits/char\)", out)
    assert (tmp_path / "runs" / "first" / "best.npz").is_file()
    assert (tmp_path / "mine.npz").is_file()
    from charlm.checkpoint import load_checkpoint

    poet = load_checkpoint(tmp_path / "runs" / "finetuned" / "best.npz")
    assert poet.meta["init_from"]["path"] == str(tmp_path / "checkpoints" / "default.npz")
    assert poet.config.n_hidden == 256


@pytest.mark.parametrize("block", range(3))
def test_each_example_is_valid_python(block):
    compile(BLOCKS[block], "README.md", "exec")
