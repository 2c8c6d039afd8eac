"""POST /next: the distribution of the character after a prompt, and its entropy."""

import math

import numpy as np
from flask import Blueprint, jsonify

from charlm.generate import SampleSettings, entropy, log_softmax

from .engine import GenerationError
from .errors import ApiError
from .generation import check_prompt, start
from .params import MAX_COUNT, get_float, get_int, get_str, json_body
from .state import current

bp = Blueprint("distribution", __name__)
# below it, log-probabilities of the likely characters divided by T leave float64 (-inf is
# not JSON); the distribution is one-hot long before
MIN_TEMPERATURE = 1e-3


@bp.post("/next")
def next_char():
    """The next-character distribution after "prompt", most probable first, with its entropy."""
    body = json_body()
    served = current().models.get(get_str(body, "model", None))
    prompt = get_str(body, "prompt")
    n_in = check_prompt(served, prompt)
    temperature = get_float(body, "temperature", 1.0, MIN_TEMPERATURE, 100.0)
    V = served.packed.vocab_size
    top_n = min(get_int(body, "top_n", V, 1, MAX_COUNT), V)
    # one step of a stream in the model's batch: its token reports every character's logprob
    run = start(served, prompt, SampleSettings(temperature=0.0, seed=0, max_new_chars=1,
                                               top_n=V))
    try:
        (tok,) = run.complete()
    except GenerationError as e:
        raise ApiError(500, str(e), "generation") from None
    chars = [ch for ch, _ in tok.top]
    # softmax(z / T) = softmax(logp / T): logp is z less a constant
    logp = log_softmax(np.array([lp for _, lp in tok.top], np.float64) / temperature)
    p = np.exp(logp)
    h = entropy(p, logp)
    stoi = served.packed.stoi
    dist = [{"char": ch, "id": stoi[ch], "prob": float(p[k]), "logprob": float(logp[k])}
            for k, ch in enumerate(chars[:top_n])]
    return jsonify({"model": served.name, "prompt_length": n_in, "temperature": temperature,
                    "entropy": h, "entropy_bits": h / math.log(2),
                    "distribution": dist})
