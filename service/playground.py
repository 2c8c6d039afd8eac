"""The browser playground: GET / (the page), POST /activations and GET /history."""

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from charlm.cells import CELLS

from .errors import validation
from .generation import check_prompt
from .models import Served
from .params import get_str, json_body
from .state import current

bp = Blueprint("playground", __name__, static_folder="static",
               static_url_path="/playground")

MAX_HISTORY_POINTS = 500  # a plot needs no more; long runs are thinned evenly
DIGITS = 3  # values go out rounded: the page colours and ranks, it does not need float32


@bp.get("/")
def index():
    """The playground page: self-contained HTML, its script and style served beside it."""
    return bp.send_static_file("index.html")


@bp.post("/activations")
def activations():
    """Each layer's tanh(c) and sigmoid gates at every character of "text", for the cell view,
    and "unit_names" when the checkpoint names its units."""
    body = json_body()
    served = current().models.get(get_str(body, "model", None))
    text = get_str(body, "text")
    if not text:
        raise validation("`text` is empty")
    check_prompt(served, text, "text")  # the prompt's length cap and unknown-character policy
    limit = max_chars(served)
    if len(text) > limit:
        raise validation(f"`text` has {len(text)} characters; the limit for model "
                         f"{served.name!r} is {limit}")
    drop = current_app.config["UNKNOWN_CHARS"] == "drop"
    idx = served.packed.encode(text, drop_unknown=drop)
    if idx.size == 0:
        raise validation("`text` has no character in the model's vocabulary")
    cell = served.ckpt.config.cell
    state = current()
    # a slot as generation takes one (it runs the model), and one of the few for this route
    with state.slots.hold(), state.activations.hold():
        layers = layer_activations(served, idx.reshape(1, -1).astype(np.int64))
    values = "tanh_c" if "tanh_c" in layers[0] else "h"
    out = {"model": served.name, "cell": cell, "chars": [served.packed.itos[k] for k in idx],
           "values": values, "gates": list(CELLS[cell].sigmoid_gates),
           "n_layer": len(layers), "n_hidden": served.ckpt.config.n_hidden,
           "layers": [{k: rounded(v) for k, v in acts.items()} for acts in layers]}
    if served.ckpt.unit_names is not None:  # only then: answers without names stay as they were
        out["unit_names"] = served.ckpt.unit_names
    return jsonify(out)


def max_chars(served: Served) -> int:
    """The longest text /activations takes for this model: the prompt cap, or less for a
    model so wide that its answer would be too large."""
    cfg = served.ckpt.config
    per_char = cfg.n_layer * cfg.n_hidden * 4
    return min(current_app.config["MAX_PROMPT_CHARS"],
               current_app.config["MAX_ACTIVATION_VALUES"] // per_char)


def layer_activations(served: Served, idx: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per layer, name -> (T, H) values: tanh_c (or h without a cell state) and the gates that
    pass through a sigmoid (saturation is measured on these)."""
    # a model of its own per request: forward() reuses workspaces, so it is not shared
    model = served.ckpt.model()
    gates = CELLS[model.config.cell].sigmoid_gates
    out = []
    for acts in model.activations(idx):
        layer = {"tanh_c": np.tanh(acts["c"][0])} if "c" in acts else {"h": acts["h"][0]}
        layer.update({g: acts[g][0] for g in gates})
        out.append(layer)
    return out


def rounded(a: np.ndarray) -> list:
    return np.round(a.astype(np.float64), DIGITS).tolist()


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
