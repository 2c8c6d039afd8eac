"""Golden outputs: seeded text, next-character distributions and short training runs, per cell.

`python -m tests.golden.record` writes golden.json beside this file from the code as it is;
test_golden.py recomputes everything with the code as it is now and asks for equality, character
for character and bit for bit. First recorded before the cell registry and generation package
restructure, which left every figure as it was (but /next's last bits, renormalised by the
library's log_softmax, and the peephole and coupled LSTM's, which then varied with numba's
cache); recorded again when the cells' packed steps stopped contracting sums of products, which
changed generation on purpose; the multiplicative and layer-normalised LSTM's entries were
added later, every earlier entry as it was, and recorded again (their training runs and
/activations, nothing else) when their recurrent products moved onto the panel micro-kernel and
/activations took its lean form. Record again only for a change meant to alter output.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"
CELL_NAMES = ("lstm", "gru", "rnn", "peephole", "coupled", "mlstm", "lnlstm")
CHARS = list("\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 12
# (prompt, settings) of the seeded runs: sampling, top-k, top-p, greedy, stops, top_n
RUNS = [
    ("", dict(temperature=1.0, seed=1, max_new_chars=60)),
    ("First Citizen:\n", dict(temperature=0.8, top_k=5, seed=7, max_new_chars=80, top_n=3)),
    ("All:", dict(temperature=1.3, top_p=0.9, seed=11, max_new_chars=70, stop=("e ", "\n\n"))),
    ("Speak", dict(temperature=0.0, seed=0, max_new_chars=40)),
    ("You are", dict(temperature=0.7, top_k=9, top_p=0.8, seed=2**63 + 5, max_new_chars=90)),
]


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def model_for(cell: str, n_hidden: int = 40):
    """A 2-layer model of this cell with random weights (biases and extra tensors too)."""
    from charlm.model import CharLSTM, ModelConfig

    cfg = ModelConfig(vocab_size=len(CHARS), n_embd=12, n_hidden=n_hidden, n_layer=2,
                      dropout=0.0, cell=cell, forget_bias=1.0)
    model = CharLSTM(cfg, seed=3)
    model.theta[:] = np.random.default_rng(17).standard_normal(model.n_params) * 0.4
    return model


def tokens_of(toks) -> list:
    return [[t.char, float(t.logprob), [[c, float(lp)] for c, lp in t.top]] for t in toks]


def generation(cell: str) -> dict:
    """Seeded runs alone (serial and threaded kernels), all together in one Batch, and the
    next-character distribution after each prompt."""
    from charlm.generate import Batch, Generator, SampleSettings

    out: dict = {}
    model = model_for(cell)
    for threads in (1, 2):
        gen = Generator(model, CHARS, threads=threads)
        runs = []
        for prompt, settings in RUNS:
            c = gen.complete(prompt, SampleSettings(**settings))
            runs.append({"text": c.text, "finish": c.finish_reason, "seed": c.seed,
                         "tokens": tokens_of(c.tokens)})
        out[f"threads{threads}"] = runs
        out[f"distribution{threads}"] = [
            [float(p) for p in gen.distribution(prompt, 0.9).probs] for prompt, _ in RUNS]
    batch = Batch(Generator(model, CHARS, threads=2).packed, capacity=2)
    sids = [batch.add(prompt, SampleSettings(**settings)) for prompt, settings in RUNS]
    texts = {sid: "" for sid in sids}
    while batch.running:
        for ev in batch.step():
            texts[ev.stream] += "".join(t.char for t in ev.tokens)
            if ev.finish_reason:
                batch.remove(ev.stream)
    out["batch"] = [texts[sid] for sid in sids]
    return out


def training(cell: str, tmp: Path) -> dict:
    """A short run of the real trainer: every tensor's bytes, and the loss history."""
    from charlm.data import load_corpus
    from charlm.model import ModelConfig
    from charlm.train import TrainConfig, Trainer

    path = tmp / f"{cell}.txt"
    path.write_text(TEXT, encoding="utf-8")
    corpus = load_corpus(path, val_frac=0.1)
    mcfg = ModelConfig(n_embd=8, n_hidden=24, n_layer=2, dropout=0.1, cell=cell,
                       forget_bias=0.0)
    tcfg = TrainConfig(seq_len=20, batch_size=4, lr=1e-2, max_steps=12, eval_every=6, seed=5)
    trainer = Trainer(corpus, mcfg, tcfg, tmp / cell)
    for _ in trainer.run():
        pass
    return {"params": {k: sha(v) for k, v in trainer.model.params.items()},
            "train": [[r["step"], float(r["train_loss"])] for r in trainer.train_history],
            "val": [[r["step"], float(r["val_loss"])] for r in trainer.val_history]}


def service_next(tmp: Path) -> dict:
    """POST /next through the app, on one checkpoint per cell."""
    from charlm.checkpoint import save_checkpoint

    d = tmp / "served"
    d.mkdir()
    for cell in CELL_NAMES:
        save_checkpoint(d / f"{cell}.npz", model_for(cell, 24), CHARS, {"step": 1})
    from service import create_app

    app = create_app({"CHECKPOINTS": str(d), "LOAD": "sync", "TESTING": True})
    client = app.test_client()
    out = {}
    for cell in CELL_NAMES:
        for prompt, t in (("First", 1.0), ("", 0.5), ("hear me", 2.0)):
            r = client.post("/next", json={"model": cell, "prompt": prompt, "temperature": t})
            assert r.status_code == 200, r.get_data(as_text=True)
            out[f"{cell}/{prompt}/{t}"] = r.get_json()
        r = client.post("/activations", json={"model": cell, "text": "First Citizen"})
        assert r.status_code == 200, r.get_data(as_text=True)
        out[f"{cell}/activations"] = r.get_json()
    return out


def cli_sample() -> dict:
    """`charlm sample` on the shipped checkpoint, seeded."""
    from typer.testing import CliRunner

    from charlm.cli import app

    ck = str(HERE.parent.parent / "checkpoints" / "default.npz")
    out = {}
    for args in (["--seed", "42", "--length", "300"],
                 ["--seed", "3", "--prompt", "ROMEO:", "--temperature", "0.5", "--top-k", "10"],
                 ["--prompt", "KING", "--distribution", "--top-n", "8"]):
        r = CliRunner().invoke(app, ["sample", ck, *args])
        assert r.exit_code == 0, r.output
        out[" ".join(args)] = r.stdout
    return out


def compute(tmp: Path) -> dict:
    return {"generation": {cell: generation(cell) for cell in CELL_NAMES},
            "training": {cell: training(cell, tmp) for cell in CELL_NAMES},
            "service": service_next(tmp),
            "cli": cli_sample()}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = compute(Path(tmp))
    GOLDEN.write_text(json.dumps(result, sort_keys=True, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size:,} bytes)", file=sys.stderr)
