"""bench/torch_ten_minutes.py, the torch row's script: a short run, read back (skips without
torch, which charlm does not depend on)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "torch_ten_minutes.py"
TEXT = "".join(f"Line {i}: to be, or not to be; that is the question.\n" for i in range(200))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, cwd=SCRIPT.parent.parent)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_a_short_run_learns_and_reports_each_evaluation(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    r = run(str(corpus), "--n-hidden", "32", "--n-embd", "8", "--batch-size", "8", "--seq-len",
            "20", "--max-steps", "30", "--eval-every", "15", "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["steps"] == 30 and [h["step"] for h in out["history"]] == [15, 30]
    assert out["chars_per_s"] > 0
    first, last = (h["val_loss"] for h in out["history"])
    # learning from near-uniform (log 40 ~ 3.7) on a text of repeated lines
    assert last < first < np.log(len(set(TEXT)))
    assert out["options"]["n_hidden"] == 32 and out["threads"] == 1


def test_bad_options_are_one_line():
    r = run("corpus.txt", "--lr", "-1")
    assert r.returncode == 2 and "error: --lr must be a positive number" in r.stderr
    assert "Traceback" not in r.stderr
