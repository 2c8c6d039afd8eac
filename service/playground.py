"""The browser playground: GET / (the page), POST /activations and GET /history."""

import base64

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from charlm.cells import CELLS
from charlm.errors import CharlmError

from .errors import validation
from .models import Served
from .params import get_int, get_str, json_body
from .state import current

bp = Blueprint("playground", __name__, static_folder="static",
               static_url_path="/playground")

MAX_HISTORY_POINTS = 500  # a plot needs no more; long runs are thinned evenly
# values go out as int8 q = round(SCALE * v), v in [-1, 1]: a colour ramp over [-1, 1] has at
# most 255 steps in any channel, so a finer value would not change what the page shows
SCALE = 127
SATURATED = (0.1, 0.9)  # a gate below the first or above the second counts as saturated


@bp.get("/")
def index():
    """The playground page: self-contained HTML, its script and style served beside it."""
    return bp.send_static_file("index.html")


@bp.post("/activations")
def activations():
    """Each layer's tanh(c) (or h) and sigmoid gates at the characters start..stop of "text",
    read from the model's zero state at the text's first character (so a window late in a long
    text is seen in the state the whole text led to), and "unit_names" when the checkpoint
    names its units. The values are int8, base64, one block per layer and quantity: cell u's
    values at the window's characters are bytes u*T..(u+1)*T, each value q / scale."""
    body = json_body()
    served = current().models.get(get_str(body, "model", None))
    text = get_str(body, "text")
    cfg = current_app.config
    longest = max_text(cfg)
    if not text:
        raise validation("`text` is empty")
    if len(text) > longest:  # checked before any character is read
        raise validation(f"`text` has {len(text)} characters; the limit is {longest} (a prompt "
                         "and its continuation at the server's limits)")
    idx = read(served, text, cfg["UNKNOWN_CHARS"] == "drop")
    n = int(idx.size)
    start = get_int(body, "start", 0, 0, n - 1)
    stop = get_int(body, "stop", n, start + 1, n)
    limit = max_chars(served)
    if stop - start > limit:
        raise validation(f"the window start..stop has {stop - start} characters; an answer for "
                         f"model {served.name!r} holds at most {limit} (send `start` and "
                         "`stop` to choose which)")
    cell = served.ckpt.config.cell
    state = current()
    # a slot as generation takes one (it runs the model), and one of the few for this route
    with state.slots.hold(), state.activations.hold():
        layers = window_activations(served, idx, start, stop, limit)
    values = "tanh_c" if "tanh_c" in layers[0] else "h"
    gates = list(CELLS[cell].sigmoid_gates)
    out = {"model": served.name, "cell": cell, "n_chars": n, "start": start, "stop": stop,
           "text": "".join(served.packed.itos[k] for k in idx[start:stop]),
           "values": values, "gates": gates, "n_layer": len(layers),
           "n_hidden": served.ckpt.config.n_hidden, "scale": SCALE,
           "layers": [{k: encode(v) for k, v in acts.items()} for acts in layers],
           # counted on the exact values: the int8 ones shift the thresholds by up to 1/254
           "saturation": [{g: saturation(acts[g]) for g in gates} for acts in layers]}
    if served.ckpt.unit_names is not None:  # only then: answers without names stay as they were
        out["unit_names"] = served.ckpt.unit_names
    return jsonify(out)


def max_text(cfg: dict) -> int:
    """The longest text /activations reads: the longest the playground can hold, a prompt at
    the prompt cap and a continuation at the generation cap."""
    return cfg["MAX_PROMPT_CHARS"] + cfg["MAX_NEW_TOKENS"]


def read(served: Served, text: str, drop: bool) -> np.ndarray:
    """The text as the model reads it: (T,) ids, unknown characters refused (or dropped)."""
    try:
        idx = served.packed.encode(text, drop_unknown=drop)
    except CharlmError:
        unknown = "".join(dict.fromkeys(ch for ch in text if ch not in served.packed.stoi))
        raise validation(f"`text` has characters outside the vocabulary of model "
                         f"{served.name!r}: {unknown[:20]!r}") from None
    if idx.size == 0:
        raise validation("`text` has no character in the model's vocabulary")
    return idx.astype(np.int64)


def max_chars(served: Served) -> int:
    """The most characters one /activations answer holds for this model: the values per answer
    (CHARLM_MAX_ACTIVATION_VALUES) over the values per character."""
    cfg = served.ckpt.config
    per_char = cfg.n_layer * cfg.n_hidden * (1 + len(CELLS[cfg.cell].sigmoid_gates))
    return max(1, current_app.config["MAX_ACTIVATION_VALUES"] // per_char)


def window_activations(served: Served, idx: np.ndarray, start: int, stop: int,
                       chunk: int) -> list[dict[str, np.ndarray]]:
    """Per layer, name -> (T, H) values at idx[start:stop], read from the zero state at idx[0]:
    tanh_c (or h without a cell state) and the gates that pass through a sigmoid (saturation
    is measured on these). The characters before start are read chunk by chunk, so memory
    stays that of one window however long the text."""
    # a model of its own per request: forward() reuses workspaces, so it is not shared
    model = served.ckpt.model()
    state = model.zero_state(1)
    for k in range(0, start, chunk):
        model.forward(idx[k:min(k + chunk, start)].reshape(1, -1), state)
    gates = CELLS[model.config.cell].sigmoid_gates
    out = []
    for acts in model.activations(idx[start:stop].reshape(1, -1), state):
        layer = {"tanh_c": np.tanh(acts["c"][0])} if "c" in acts else {"h": acts["h"][0]}
        layer.update({g: acts[g][0] for g in gates})
        out.append(layer)
    return out


def encode(v: np.ndarray) -> str:
    """(T, H) values in [-1, 1] as base64 of int8 round(SCALE * v), cell-major (H, T)."""
    q = np.rint(np.clip(v.astype(np.float64), -1.0, 1.0) * SCALE).astype(np.int8)
    return base64.b64encode(np.ascontiguousarray(q.T).tobytes()).decode("ascii")


def saturation(g: np.ndarray) -> dict[str, list[int]]:
    """Per cell, how many of the window's characters leave gate g (T, H) below 0.1 and above
    0.9."""
    lo, hi = SATURATED
    return {"below": (g < lo).sum(axis=0).tolist(), "above": (g > hi).sum(axis=0).tolist()}


@bp.get("/history")
def history():
    """The checkpoint's train and val loss history, as [step, loss] pairs for the plot."""
    served = current().models.get(request.args.get("model") or None)
    meta = served.ckpt.meta
    train = [[r["step"], r["train_loss"]] for r in meta.get("train_history", [])
             if r.get("train_loss") is not None]
    val = [[r["step"], r["val_loss"]] for r in meta.get("val_history", [])
           if r.get("val_loss") is not None]
    return jsonify({"model": served.name, "train": thin(train), "val": thin(val),
                    "best_val_loss": meta.get("best_val_loss"),
                    "max_activation_chars": max_chars(served)})


def thin(rows: list) -> list:
    if len(rows) <= MAX_HISTORY_POINTS:
        return rows
    n = len(rows) - 1
    return [rows[round(k * n / (MAX_HISTORY_POINTS - 1))] for k in range(MAX_HISTORY_POINTS)]
