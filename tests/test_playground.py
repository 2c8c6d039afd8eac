"""The playground's routes: the page and its files, POST /activations and GET /history."""

import base64

import numpy as np
import pytest

from charlm.checkpoint import load_checkpoint

TEXT = 'He said: "Go, now."\nShe ran.'


def reference_activations(path, text: str) -> list[dict]:
    """tanh(c), i, f, o per layer, (T, H), by a plain-NumPy LSTM written from the equations."""
    ck = load_checkpoint(path)
    model = ck.model()
    p = {k: v.astype(np.float64) for k, v in model.params.items()}
    stoi = {ch: k for k, ch in enumerate(ck.vocab)}
    L, H = ck.config.n_layer, ck.config.n_hidden
    h, c = np.zeros((L, H)), np.zeros((L, H))
    out = [{"tanh_c": [], "i": [], "f": [], "o": []} for _ in range(L)]
    for ch in text:
        x = p["E"][stoi[ch]]
        for layer in range(L):
            z = x @ p[f"W{layer}"] + h[layer] @ p[f"U{layer}"] + p[f"b{layer}"]
            i, f, o = (1 / (1 + np.exp(-z[k * H : (k + 1) * H])) for k in (0, 1, 3))
            g = np.tanh(z[2 * H : 3 * H])
            c[layer] = f * c[layer] + i * g
            h[layer] = o * np.tanh(c[layer])
            for name, v in (("tanh_c", np.tanh(c[layer])), ("i", i), ("f", f), ("o", o)):
                out[layer][name].append(v)
            x = h[layer]
    return [{k: np.array(v) for k, v in layer.items()} for layer in out]


def decode(out: dict, layer: int, name: str) -> np.ndarray:
    """One quantity of an /activations answer as (T, H) floats, read back with NumPy."""
    q = np.frombuffer(base64.b64decode(out["layers"][layer][name]), dtype=np.int8)
    T = out["stop"] - out["start"]
    return q.reshape(out["n_hidden"], T).T / out["scale"]


def test_activations_match_a_numpy_lstm(client, checkpoint_dir):
    r = client.post("/activations", json={"text": TEXT})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert out["model"] == "default" and out["cell"] == "lstm"
    assert out["text"] == TEXT and out["values"] == "tanh_c" and out["scale"] == 127
    assert (out["n_chars"], out["start"], out["stop"]) == (len(TEXT), 0, len(TEXT))
    assert out["gates"] == ["i", "f", "o"] and out["n_layer"] == 2 and out["n_hidden"] == 16
    ref = reference_activations(checkpoint_dir / "default.npz", TEXT)
    for k, (layer, want) in enumerate(zip(out["layers"], ref, strict=True)):
        assert set(layer) == {"tanh_c", "i", "f", "o"}
        for name in layer:
            got = decode(out, k, name)
            assert got.shape == (len(TEXT), 16)
            lo = -1.0 if name == "tanh_c" else 0.0
            assert got.min() >= lo and got.max() <= 1.0
            # rounded to 1/127: within half a step (and float32's error) of the reference
            np.testing.assert_allclose(got, want[name], atol=0.5 / 127 + 1e-5, rtol=0)
        for g in out["gates"]:  # saturation is counted on the exact values
            sat = out["saturation"][k][g]
            assert sat["below"] == (want[g] < 0.1).sum(axis=0).tolist()
            assert sat["above"] == (want[g] > 0.9).sum(axis=0).tolist()


def test_a_window_is_read_in_the_state_the_text_led_to(checkpoint_dir):
    """A window late in a long text has the values of the whole text read from its start, not
    of the window read from a zero state; the characters before it are read in chunks."""
    from service import create_app

    text = (TEXT + " ") * 5  # 145 characters
    # 2 layers x 16 cells x 4 quantities = 128 values a character: 12 characters an answer
    app = create_app({"CHECKPOINTS": str(checkpoint_dir), "LOAD": "sync", "TESTING": True,
                      "MAX_ACTIVATION_VALUES": 128 * 12 + 5})
    client = app.test_client()
    assert client.get("/history").get_json()["max_activation_chars"] == 12
    r = client.post("/activations", json={"text": text})
    assert r.status_code == 422 and "at most 12" in r.get_json()["error"]
    ref = reference_activations(checkpoint_dir / "default.npz", text)
    for start in (0, 50, len(text) - 12):
        out = client.post("/activations", json={"text": text, "start": start,
                                                 "stop": start + 12}).get_json()
        assert (out["start"], out["stop"], out["n_chars"]) == (start, start + 12, len(text))
        assert out["text"] == text[start:start + 12]
        for k in range(2):
            for name in ("tanh_c", "f"):
                np.testing.assert_allclose(decode(out, k, name),
                                           ref[k][name][start:start + 12],
                                           atol=0.5 / 127 + 1e-5, rtol=0)
    # and from a zero state the same window differs: the state is what the test is about
    alone = reference_activations(checkpoint_dir / "default.npz", text[50:62])
    assert np.abs(alone[1]["tanh_c"] - ref[1]["tanh_c"][50:62]).max() > 0.05


def test_activations_are_lean(tmp_path):
    """400 characters of a 2 x 256 LSTM: about a byte and a third a value, not 6 as floats in
    nested lists."""
    from charlm.checkpoint import save_checkpoint
    from charlm.model import CharLSTM, ModelConfig
    from service import create_app

    model = CharLSTM(ModelConfig(vocab_size=len(set(TEXT)), n_embd=8, n_hidden=256, n_layer=2),
                     seed=0)
    save_checkpoint(tmp_path / "wide.npz", model, sorted(set(TEXT)), {"step": 1})
    app = create_app({"CHECKPOINTS": str(tmp_path), "LOAD": "sync", "TESTING": True})
    r = app.test_client().post("/activations", json={"text": (TEXT * 15)[:400]})
    assert r.status_code == 200, r.get_json()
    values = 400 * 2 * 256 * 4
    print(f"/activations, 400 characters, 2 x 256: {len(r.data):,} bytes for {values:,} values")
    assert len(r.data) < 1.34 * values + 20_000


def test_activations_of_another_model(client):
    out = client.post("/activations", json={"text": "abc", "model": "small"}).get_json()
    assert out["model"] == "small"
    assert decode(out, 1, "f").shape == (3, 12)


@pytest.mark.parametrize(("body", "status", "error_type"), [
    (b"{not json", 400, "bad_request"),
    (b"[1]", 400, "bad_request"),
    (b"{}", 422, "validation"),  # no text
    (b'{"text": ""}', 422, "validation"),
    (b'{"text": 3}', 422, "validation"),
    (b'{"text": "' + b"a" * 701 + b'"}', 422, "validation"),  # over prompt + new tokens
    (b'{"text": "abc", "start": 3}', 422, "validation"),  # past the last character
    (b'{"text": "abc", "start": -1}', 422, "validation"),
    (b'{"text": "abc", "start": 1, "stop": 1}', 422, "validation"),  # an empty window
    (b'{"text": "abc", "stop": 4}', 422, "validation"),
    (b'{"text": "abc", "stop": "2"}', 422, "validation"),
    (b'{"text": "abc", "model": "nope"}', 404, "model_not_found"),
    (b'{"text": "a\\u4e2db"}', 422, "validation"),  # outside the vocabulary
])
def test_activations_errors(client, body, status, error_type):
    r = client.post("/activations", data=body, content_type="application/json")
    assert r.status_code == status
    assert r.get_json()["error_type"] == error_type
    assert r.get_json()["error"]


def test_unknown_characters_dropped_by_policy(checkpoint_dir):
    from service import create_app

    app = create_app({"CHECKPOINTS": str(checkpoint_dir / "small.npz"), "LOAD": "sync",
                      "UNKNOWN_CHARS": "drop", "TESTING": True})
    out = app.test_client().post("/activations", json={"text": "aXb"}).get_json()
    assert out["text"] == "ab" and out["n_chars"] == 2
    r = app.test_client().post("/activations", json={"text": "XYZ"})
    assert r.status_code == 422


def test_other_cells_get_their_values_and_gates(tmp_path):
    from charlm.checkpoint import save_checkpoint
    from charlm.model import CELLS, CharLSTM, ModelConfig
    from service import create_app

    gates = {"peephole": ["i", "f", "o"], "coupled": ["i", "f", "o"], "gru": ["r", "z"],
             "rnn": [], "mlstm": ["i", "f", "o"], "lnlstm": ["i", "f", "o"]}
    for cell in [c for c in CELLS if c != "lstm"]:
        model = CharLSTM(ModelConfig(vocab_size=3, n_embd=4, n_hidden=5, n_layer=1, cell=cell))
        save_checkpoint(tmp_path / f"{cell}.npz", model, list("ab\n"), {"step": 1})
        app = create_app({"CHECKPOINTS": str(tmp_path / f"{cell}.npz"), "LOAD": "sync",
                          "TESTING": True})
        r = app.test_client().post("/activations", json={"text": "abba"})
        assert r.status_code == 200, (cell, r.get_json())
        out = r.get_json()
        assert out["cell"] == cell and out["gates"] == gates[cell]
        # tanh(c) for cells with a cell state, h for the gru and the rnn: in (-1, 1) either way
        assert out["values"] == ("h" if cell in ("gru", "rnn") else "tanh_c")
        v = decode(out, 0, out["values"])
        assert v.shape == (4, 5) and np.abs(v).max() <= 1 and np.abs(v).max() > 0
        for g in out["gates"]:
            v = decode(out, 0, g)
            assert v.shape == (4, 5) and v.min() >= 0 and v.max() <= 1


def test_history(client):
    out = client.get("/history").get_json()
    assert out["model"] == "default" and out["val"] == [[100, 2.5]] and out["train"] == []
    # 1,000,000 values an answer over 2 layers x 16 cells x 4 quantities
    assert out["max_activation_chars"] == 1_000_000 // 128
    assert client.get("/history?model=nope").status_code == 404


def test_page_and_its_files(client):
    with client.get("/") as r:
        assert r.status_code == 200 and r.mimetype == "text/html"
        html = r.get_data(as_text=True)
    assert "/playground/app.js" in html and "/playground/style.css" in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    for name, mime in (("app.js", "text/javascript"), ("style.css", "text/css")):
        with client.get(f"/playground/{name}") as r:
            assert r.status_code == 200 and r.mimetype == mime
            assert "https://" not in r.get_data(as_text=True)
    assert client.post("/", json={"inputs": "ab"}).status_code == 200  # TGI's root still POSTs
