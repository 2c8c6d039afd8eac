"""The hand-weighted Reber LSTMs: exact predictions against the grammars' automata, units that
are the automaton's states, the command, the shipped checkpoints, and unit names."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm import handmade, reber, reference
from charlm.checkpoint import load_checkpoint, save_checkpoint
from charlm.cli import app
from charlm.errors import CharlmError
from charlm.model import CharLSTM, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"reber": ROOT / "checkpoints" / "handmade-reber.npz",
           "embedded-reber": ROOT / "checkpoints" / "handmade-embedded-reber.npz"}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
@pytest.mark.parametrize("threshold", [0.1, 0.01])
def test_it_predicts_exactly_the_legal_symbols(grammar, threshold):
    """1,000 fresh strings: at every position the symbols above the threshold are the legal
    ones (the float32 forward pass, as `charlm eval` reads it)."""
    model, _ = handmade.build(grammar == "embedded-reber")
    assert model.config.dtype == "float32"
    strings = reber.generate(1000, seed=2024, grammar=grammar)
    s = reber.score_model(model, handmade.VOCAB.itos, strings, grammar, threshold)
    assert s.accuracy == 1.0 and s.position_accuracy == 1.0
    if grammar == "embedded-reber":
        assert s.long_range > 0.999 and s.long_range_argmax == 1.0


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
def test_the_reference_lstm_agrees_and_its_margins_are_wide(grammar):
    """The same weights in charlm.reference's float64 LSTM: the legal symbols' probabilities
    are at least 0.49, the illegal ones' at most 1e-3, on a stream of 200 strings."""
    model, _ = handmade.build(grammar == "embedded-reber")
    strings = reber.generate(200, seed=7, grammar=grammar)
    text = "\n" + "\n".join(strings) + "\n"
    ids = np.array([handmade.VOCAB.encode(text)], np.int64)
    h0 = np.zeros((1, 1, model.config.n_hidden))
    logits, _, _ = reference.forward(model.params, 1, ids, h0, h0)
    p = reference.softmax(logits[0])
    for k, legal in enumerate(reber.legal_next(text, grammar)[:-1]):
        want = np.isin(handmade.VOCAB.itos, list(legal))
        assert p[k][want].min() > 0.49 and p[k][~want].max() < 1e-3, (k, text[: k + 1])


def walk(text: str, grammar: str) -> list:
    """The automaton's state after each character, as the handmade units name them."""
    auto, start, accept = reber.AUTOMATA[grammar]
    state, out = None, []
    for ch in text:
        state = start if ch == "\n" else auto[state][ch]
        out.append(state)
    if grammar == "reber":
        return out
    # the embedded automaton's inner states carry the branch: the units share them
    return [f"inner {s[1]}" if isinstance(s, tuple) else {"branch": "branch", "end": "end",
            "accept": "accept", "start": "start"}[s] for s in out]


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
def test_each_state_unit_remembers_its_state_and_the_memory_the_branch(grammar):
    embedded = grammar == "embedded-reber"
    model, names = handmade.build(embedded)
    strings = reber.generate(50, seed=3, grammar=grammar)
    text = "\n" + "\n".join(strings) + "\n"
    acts = model.activations(np.array([handmade.VOCAB.encode(text)], np.int64))[0]
    c = acts["c"][0]  # (T, H)
    states = handmade.embedded_machine().states if embedded else list(reber.REBER)
    for t, state in enumerate(walk(text, grammar)):
        onehot = np.array([s == state for s in states], float)
        np.testing.assert_allclose(c[t, : len(states)], onehot, atol=1e-3,
                                   err_msg=f"{t} {text[: t + 1]!r}")
    # the unit names say which state each unit is
    assert names[: len(states)] == [handmade.unit_name(handmade.embedded_machine()
                                    if embedded else handmade.reber_machine(), s)
                                    for s in states]
    if embedded:
        assert names[-1].startswith("memory") and len(names) == len(states) + 1
        pos = 0
        for s in strings:  # from the second letter to the end: +1 for T, -1 for P
            held = c[pos + 2 : pos + len(s) + 1, -1]
            np.testing.assert_allclose(held, 1.0 if s[1] == "T" else -1.0, atol=0.01)
            pos += len(s) + 1
        # the read filter opens exactly after each inner E
        o = acts["o"][0, :, -1]
        opened = [t for t in range(len(text)) if o[t] > 0.5]
        assert opened == [t for t, state in enumerate(walk(text, grammar)) if state == "inner 7"]
    else:
        # the eraser of state 3 fires on every symbol but its loop's T
        f3 = acts["f"][0, :, 3]
        for t, ch in enumerate(text):
            assert (f3[t] > 0.99) if ch == "T" else (f3[t] < 0.01), (t, ch)


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
def test_generation_writes_the_grammar(grammar):
    """The packed float32 kernels of generation, sampling from "\\n": every line is a string
    of the grammar, and both ways out of a state are taken."""
    from charlm.generate import Generator

    model, _ = handmade.build(grammar == "embedded-reber")
    gen = Generator(model, handmade.VOCAB.itos)
    # temperature 0.5 squares the illegal symbols' tiny probabilities: none is drawn
    text = gen.complete("\n", temperature=0.5, seed=11, max_new_chars=600).text
    lines = text.split("\n")[:-1]
    assert len(lines) > 20
    for line in lines:
        assert reber.legal_next("\n" + line + "\n", grammar), line
    assert len(set(lines)) > 10


def test_the_command_writes_a_checkpoint_that_scores_perfectly(tmp_path):
    out = tmp_path / "emb.npz"
    r = invoke("reber", "handmade", "--embedded", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "a 1 x 13 LSTM built by hand for the embedded Reber grammar" in r.output
    assert "12  memory: the second letter, +1 T, -1 P" in r.output
    ck = load_checkpoint(out)
    assert ck.config.cell == "lstm" and ck.config.n_layer == 1 and ck.vocab == list("\nBEPSTVX")
    assert len(ck.unit_names[0]) == 13
    for threshold in ("0.1", "0.01"):
        r = invoke("eval", str(out), "--grammar", "embedded-reber", "--threshold", threshold)
        assert r.exit_code == 0, r.output
        assert f"embedded-reber: 100.0% of 1,000 fresh strings predicted right at every " \
               f"position (100.00% of positions; p > {threshold} is predicted)" in r.output
        assert re.search(r"the more probable of T and P in 100.0%", r.output)
    r = invoke("info", str(out))
    assert r.exit_code == 0, r.output
    assert "units       layer 1:" in r.output and "     5  inner 3: T/V next" in r.output
    r = invoke("reber", "handmade", "--out", str(tmp_path / "reber.npz"))
    assert r.exit_code == 0 and "1 x 8 LSTM" in r.output and "3  state 3: T/V next" in r.output
    r = invoke("eval", str(tmp_path / "reber.npz"), "--grammar", "reber")
    assert "reber: 100.0% of 1,000 fresh strings" in r.output, r.output


def test_the_command_fails_in_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    for out in (tmp_path, tmp_path / "file" / "m.npz"):
        r = invoke("reber", "handmade", "--out", str(out))
        assert r.exit_code == 1 and r.output.startswith(f"error: cannot write {out}: ")
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing half-written
    r = invoke("reber", "handmade")
    assert r.exit_code == 2 and "--out" in r.output


@pytest.mark.parametrize("grammar", reber.GRAMMARS)
def test_the_shipped_checkpoints_are_what_the_command_builds(grammar):
    ck = load_checkpoint(SHIPPED[grammar])
    model, names = handmade.build(grammar == "embedded-reber")
    np.testing.assert_array_equal(ck.theta, model.theta)
    assert ck.unit_names == [names] and ck.config == model.config


# --------------------------------------------------------------------------------------------
# unit names in any checkpoint


def small(tmp_path, names, name: str = "m.npz"):
    model = CharLSTM(ModelConfig(vocab_size=3, n_embd=2, n_hidden=2, n_layer=2))
    path = tmp_path / name
    save_checkpoint(path, model, list("ab\n"), {"unit_names": names})
    return path


def test_unit_names_round_trip_and_survive_export(tmp_path):
    names = [["quote", "depth"], ["line end", "ünït ✓"]]
    path = small(tmp_path, names)
    assert load_checkpoint(path).unit_names == names
    out = tmp_path / "exported.npz"
    assert invoke("export", str(path), str(out)).exit_code == 0
    assert load_checkpoint(out).unit_names == names
    assert load_checkpoint(small(tmp_path, None, "unnamed.npz")).unit_names is None
    r = invoke("info", str(path))
    assert "units       layer 2:" in r.output and "     1  ünït ✓" in r.output


@pytest.mark.parametrize("names, fragment", [
    ("quote", "bad unit_names (not 2 lists (one per layer) of 2 names)"),
    ([["a", "b"]], "1 lists of 2 names where its config needs 2 lists"),
    ([["a", "b"], ["c"]], "2 lists of 2, 1 names"),
    ([["a", "b"], ["c", 3]], "3 is not 1 to 80 printable characters"),
    ([["a", "b"], ["c", ""]], "'' is not 1 to 80"),
    ([["a", "b"], ["c", "x" * 81]], "is not 1 to 80 printable"),
    ([["a", "b"], ["c", "two\nlines"]], "'two\\nlines' is not 1 to 80 printable"),
    ([["a", "b"], [None, "d"]], "None is not"),
])
def test_bad_unit_names_are_one_line_errors(tmp_path, names, fragment):
    with pytest.raises(CharlmError) as info:  # save refuses what load would
        small(tmp_path, names)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)
    path = small(tmp_path, None)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    meta["unit_names"] = names
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    r = invoke("info", str(path))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.startswith(f"error: {path} has bad unit_names") and fragment in r.output


def test_activations_return_the_unit_names(tmp_path):
    from service import create_app

    served = tmp_path / "served"
    served.mkdir()
    for path in SHIPPED.values():
        (served / path.name).write_bytes(path.read_bytes())
    small(served, None)
    app_ = create_app({"CHECKPOINTS": str(served), "LOAD": "sync", "TESTING": True})
    client = app_.test_client()
    out = client.post("/activations", json={"text": "\nBTSXSE\n",
                                            "model": "handmade-reber"}).get_json()
    assert out["unit_names"] == [handmade.build()[1]]
    # tanh(c) as int8, cell-major: (n_hidden, T) -> a row per character
    q = np.frombuffer(base64.b64decode(out["layers"][0]["tanh_c"]), np.int8)
    tanh_c = q.reshape(out["n_hidden"], -1).T / out["scale"]
    assert [int(np.argmax(row)) for row in tanh_c] == [0, 1, 2, 2, 4, 6, 7, 0]  # states walked
    out = client.post("/activations", json={"text": "ab", "model": "m"}).get_json()
    assert "unit_names" not in out
    assert "handmade-embedded-reber" in [m["id"] for m in
                                         client.get("/v1/models").get_json()["data"]]
