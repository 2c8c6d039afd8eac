"""The playground's routes: the page and its files, POST /activations and GET /history."""

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


def test_activations_match_a_numpy_lstm(client, checkpoint_dir):
    r = client.post("/activations", json={"text": TEXT})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert out["model"] == "default" and out["cell"] == "lstm"
    assert out["chars"] == list(TEXT) and out["values"] == "tanh_c"
    assert out["gates"] == ["i", "f", "o"] and out["n_layer"] == 2 and out["n_hidden"] == 16
    ref = reference_activations(checkpoint_dir / "default.npz", TEXT)
    for layer, want in zip(out["layers"], ref, strict=True):
        assert set(layer) == {"tanh_c", "i", "f", "o"}
        for name, v in layer.items():
            got = np.array(v)
            assert got.shape == (len(TEXT), 16)
            lo = -1.0 if name == "tanh_c" else 0.0
            assert got.min() >= lo and got.max() <= 1.0
            np.testing.assert_allclose(got, want[name], atol=1e-3)


def test_activations_of_another_model(client):
    out = client.post("/activations", json={"text": "abc", "model": "small"}).get_json()
    assert out["model"] == "small"
    assert np.array(out["layers"][1]["f"]).shape == (3, 12)


@pytest.mark.parametrize(("body", "status", "error_type"), [
    (b"{not json", 400, "bad_request"),
    (b"[1]", 400, "bad_request"),
    (b"{}", 422, "validation"),  # no text
    (b'{"text": ""}', 422, "validation"),
    (b'{"text": 3}', 422, "validation"),
    (b'{"text": "' + b"a" * 201 + b'"}', 422, "validation"),  # over MAX_PROMPT_CHARS
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
    assert out["chars"] == ["a", "b"]
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
        v = np.array(out["layers"][0][out["values"]])
        assert v.shape == (4, 5) and np.abs(v).max() < 1 and np.abs(v).max() > 0
        for g in out["gates"]:
            v = np.array(out["layers"][0][g])
            assert v.shape == (4, 5) and v.min() >= 0 and v.max() <= 1


def test_history(client):
    out = client.get("/history").get_json()
    assert out["model"] == "default" and out["val"] == [[100, 2.5]] and out["train"] == []
    assert out["max_activation_chars"] == 200  # the prompt cap: this model is narrow
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
