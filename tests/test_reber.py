"""The Reber grammars: generation against an independent checker, and the scoring."""

import re

import numpy as np
import pytest

from charlm import reber
from charlm.errors import CharlmError

# the Reber grammar as a regular expression, derived by hand from the transition diagram:
# after B T: S* X, then state 3; after B P: T* V, then state 4 (see charlm/reber.py's REBER)
STATE3 = "(?:XT*VP)*(?:XT*VV|S)"  # 3 --X--> 2 --T*V--> 4 --P--> 3 ... until X T* V V or S
REBER_RE = re.compile(f"B(?:TS*X{STATE3}|PT*V(?:P{STATE3}|V))E")
EMBEDDED_RE = re.compile(f"B(?:T({REBER_RE.pattern})T|P({REBER_RE.pattern})P)E")
ITOS = ["\n", *reber.ALPHABET]


def accepts(grammar: str, s: str) -> bool:
    return (REBER_RE if grammar == "reber" else EMBEDDED_RE).fullmatch(s) is not None


def test_the_checker_knows_the_classic_strings():
    for s in ("BTSSXXTVVE", "BPVVE", "BTXSE", "BPTVPSE", "BTSXXVPSE", "BPTTVPXVVE"):
        assert accepts("reber", s), s
    for s in ("BTSSXXTVE", "BPVE", "BTXXE", "BPTVPE", "TXSE", "BTXS", ""):
        assert not accepts("reber", s), s
    assert accepts("embedded-reber", "BTBTXSETE") and accepts("embedded-reber", "BPBPVVEPE")
    assert not accepts("embedded-reber", "BTBTXSEPE")


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
def test_generated_strings_are_in_the_grammar(grammar):
    strings = reber.generate(2000, seed=1, grammar=grammar)
    assert all(accepts(grammar, s) for s in strings)
    assert len(set(strings)) > 200  # it explores the grammar
    assert reber.generate(50, seed=1, grammar=grammar) == strings[:50]
    assert reber.generate(50, seed=2, grammar=grammar) != strings[:50]
    if grammar == "embedded-reber":
        assert {s[1] for s in strings} == {"T", "P"}
        assert np.mean([len(s) for s in strings]) > 10


def in_automaton(grammar: str, s: str) -> bool:
    """Whether charlm.reber's automaton takes s as one whole string."""
    try:
        reber.legal_next("\n" + s + "\n", grammar)
    except CharlmError:
        return False
    return True


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
def test_the_checker_rejects_corrupted_strings(grammar):
    strings = reber.generate(300, seed=3, grammar=grammar)
    for s in strings:
        # certainly outside the grammar: cut short, run on, no B, the branch not repeated
        broken = [s[:-1], s + "E", "T" + s[1:], s[:-1] + "T" + s[-1]]
        if grammar == "embedded-reber":
            broken.append(s[:-2] + ("P" if s[-2] == "T" else "T") + "E")
        for b in broken:
            assert not accepts(grammar, b) and not in_automaton(grammar, b), b
    # random edits: a symbol replaced, dropped or inserted. some land on another string of
    # the grammar (an S or T loop is one symbol longer or shorter); checker and automaton agree
    rng = np.random.default_rng(0)
    rejected = 0
    for s in strings:
        k = rng.integers(len(s))
        other = rng.choice([c for c in reber.ALPHABET if c != s[k]])
        for edited in (s[:k] + other + s[k + 1 :], s[:k] + s[k + 1 :], s[:k] + other + s[k:]):
            assert accepts(grammar, edited) == in_automaton(grammar, edited), edited
            rejected += not accepts(grammar, edited)
    assert rejected >= 0.8 * 3 * len(strings)


def test_legal_next_symbols():
    legal = reber.legal_next("\nBTXSE\nBP", "reber")
    assert [sorted(s) for s in legal] == [["B"], ["P", "T"], ["S", "X"], ["S", "X"], ["E"],
                                          ["\n"], ["B"], ["P", "T"], ["T", "V"]]
    legal = reber.legal_next("\nBTBTXSETE\n", "embedded-reber")
    assert [sorted(s) for s in legal] == [["B"], ["P", "T"], ["B"], ["P", "T"], ["S", "X"],
                                          ["S", "X"], ["E"], ["T"], ["E"], ["\n"], ["B"]]
    with pytest.raises(CharlmError, match="not in the reber grammar"):
        reber.legal_next("\nBTV", "reber")
    with pytest.raises(CharlmError, match="ends before"):
        reber.legal_next("\nBTX\n", "reber")


def perfect(grammar: str):
    """The grammar's own transition table: equal probability on every legal next symbol."""

    def predict(texts):
        out = []
        for text in texts:
            p = np.zeros((len(text), len(ITOS)))
            for k, legal in enumerate(reber.legal_next(text, grammar)):
                p[k, [ITOS.index(ch) for ch in legal]] = 1 / len(legal)
            out.append(p)
        return out

    return predict


def uniform(texts):
    return [np.full((len(text), len(ITOS)), 1 / len(ITOS)) for text in texts]


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
def test_score_of_a_perfect_and_a_uniform_predictor(grammar):
    strings = reber.generate(500, seed=4, grammar=grammar)
    best = reber.score(perfect(grammar), ITOS, strings, grammar, n_streams=7)
    assert best.accuracy == 1.0 and best.position_accuracy == 1.0 and best.n_strings == 500
    worst = reber.score(uniform, ITOS, strings, grammar)
    assert worst.accuracy == 0.0 and worst.position_accuracy == 0.0
    if grammar == "embedded-reber":
        assert best.long_range == 1.0 and best.long_range_argmax == 1.0
        assert worst.long_range == pytest.approx(1 / len(ITOS)) and worst.long_range_argmax == 0
    else:
        assert best.long_range is None


def test_score_counts_single_mistakes():
    """A perfect predictor that forgets the branch is right everywhere but there."""
    grammar = "embedded-reber"
    strings = reber.generate(200, seed=5, grammar=grammar)

    def forgetful(texts):
        out = perfect(grammar)(texts)
        for text, p in zip(texts, out, strict=True):
            for k, legal in enumerate(reber.legal_next(text, grammar)):
                if legal in (frozenset("T"), frozenset("P")) and text[k] == "E":
                    p[k, ITOS.index("T")] = p[k, ITOS.index("P")] = 0.5
        return out

    s = reber.score(forgetful, ITOS, strings, grammar)
    assert s.accuracy == 0.0 and s.long_range == 0.5 and s.long_range_argmax == 0.0
    n_positions = sum(len(x) + 1 for x in strings)
    assert s.position_accuracy == pytest.approx(1 - len(strings) / n_positions)


def test_a_model_scores_and_its_vocabulary_is_checked():
    from charlm.model import CharLSTM, ModelConfig

    model = CharLSTM(ModelConfig(vocab_size=len(ITOS), n_embd=4, n_hidden=8, n_layer=1))
    strings = reber.generate(40, seed=6, grammar="embedded-reber")
    s = reber.score_model(model, ITOS, strings, "embedded-reber")
    assert 0 <= s.accuracy <= 1 and 0 < s.long_range < 1
    # the predictor reads in windows with carried state: the window length changes nothing
    texts = ["\nBTBPVVETE\nBPBTXSEPE\n", "\nBPBPVVEPE\n"]
    a = reber.model_predictor(model, ITOS, seq_len=4)(texts)
    b = reber.model_predictor(model, ITOS, seq_len=100)(texts)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    with pytest.raises(CharlmError, match="vocabulary lacks 'X'"):
        reber.score(uniform, [ch for ch in ITOS if ch != "X"], strings, "reber")
    with pytest.raises(CharlmError, match="grammar must be one of"):
        reber.generate(3, 0, "dyck")


# --------------------------------------------------------------------------------------------
# the command line and the experiment


def invoke(*args: str):
    from typer.testing import CliRunner

    from charlm.cli import app

    return CliRunner().invoke(app, list(args))


def test_corpus_reber_writes_strings_one_per_line(tmp_path):
    r = invoke("corpus", "reber", "--count", "40", "--seed", "3", "--embedded")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 40 and all(accepts("embedded-reber", s) for s in lines)
    assert invoke("corpus", "reber", "--count", "40", "--seed", "3", "--embedded").stdout == \
        r.stdout
    out = tmp_path / "reber.txt"
    r = invoke("corpus", "reber", "--count", "25", "--out", str(out))
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert len(lines) == 25 and all(accepts("reber", s) for s in lines)
    assert out.read_text().endswith("E\n")


def test_the_committed_corpus_is_what_the_command_writes():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "corpora" / "embedded-reber.txt"
    text = path.read_text()
    # charlm corpus reber --embedded --count 5000 --seed 0 --out corpora/embedded-reber.txt
    assert text == "".join(s + "\n" for s in reber.generate(5000, 0, "embedded-reber"))
    assert all(accepts("embedded-reber", s) for s in text.splitlines())


def test_eval_grammar(tmp_path):
    from charlm.checkpoint import save_checkpoint
    from charlm.model import CharLSTM, ModelConfig

    model = CharLSTM(ModelConfig(vocab_size=len(ITOS), n_embd=4, n_hidden=8, n_layer=1,
                                 cell="gru"))
    save_checkpoint(tmp_path / "m.npz", model, ITOS, {})
    ck = str(tmp_path / "m.npz")
    r = invoke("eval", ck, "--grammar", "embedded-reber", "--strings", "50")
    assert r.exit_code == 0, r.output
    assert re.search(r"embedded-reber: [\d.]+% of 50 fresh strings", r.output)
    assert "long-range: p(right second-to-last symbol)" in r.output
    text = tmp_path / "t.txt"
    text.write_text("BTXSE\nBPVVE\n")
    r = invoke("eval", ck, str(text), "--grammar", "reber", "--strings", "20")
    assert r.exit_code == 0, r.output
    assert "reber: " in r.output and "nats/char" in r.output and "long-range" not in r.output
    r = invoke("eval", ck)
    assert r.exit_code == 1 and "give a FILE to score, or --grammar" in r.output, r.output
    r = invoke("eval", ck, "--grammar", "dyck")  # a choice: typer refuses it, a usage error
    assert r.exit_code == 2 and "Invalid value for '--grammar'" in r.output, r.output


def test_experiment_runs_every_cell_alike(capsys):
    import json

    from charlm.experiment import ReberConfig, run_reber_experiment

    cfg = ReberConfig(cells=("lstm", "rnn"), seeds=2, steps=12, n_hidden=6, eval_every=6,
                      eval_strings=20, final_strings=30, train_strings=300, batch_size=4,
                      seq_len=10, jobs=2)
    rows = run_reber_experiment(cfg, json_out=True)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["cell"] for r in rows] == ["lstm", "rnn"] == [p["cell"] for p in printed]
    for row in rows:
        assert row["runs"] == 2 and len(row["accuracy"]) == 2 and len(row["long_range"]) == 2
        assert 0 <= row["mean_accuracy"] <= 1 and row["n_params"] > 0
    # runs are deterministic: in worker processes or here, the same numbers
    serial = run_reber_experiment(ReberConfig(**{**cfg.__dict__, "jobs": 1}), json_out=True)
    capsys.readouterr()
    for a, b in zip(rows, serial, strict=True):
        assert a["accuracy"] == b["accuracy"] and a["train_loss"] == b["train_loss"]


def test_the_experiment_starts_the_forget_gate_open(monkeypatch):
    from charlm import experiment

    made, real = [], experiment.CharLSTM

    def spy(cfg, **kw):
        made.append(cfg.forget_bias)
        return real(cfg, **kw)

    monkeypatch.setattr(experiment, "CharLSTM", spy)
    cfg = experiment.ReberConfig(steps=1, n_hidden=4, eval_strings=5, final_strings=5,
                                 train_strings=50, batch_size=2, seq_len=5)
    experiment.train_run(cfg, "coupled", 0)
    assert made == [1.0]  # whatever ModelConfig's default: the task is to remember


def test_experiment_command_line():
    r = invoke("experiment", "reber", "--cells", "gru,coupled", "--seeds", "1", "--steps", "8",
               "--n-hidden", "4", "--eval-every", "4", "--eval-strings", "10",
               "--final-strings", "10", "--batch-size", "4", "--seq-len", "8", "--jobs", "1")
    assert r.exit_code == 0, r.output
    assert "steps to solve" in r.stdout and "gru" in r.stdout and "coupled" in r.stdout
    r = invoke("experiment", "reber", "--cells", "lstm,transformer")
    assert r.exit_code == 1 and "--cells takes a comma-separated list" in r.output
