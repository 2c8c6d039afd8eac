"""Scoring a text: the log-probability of each of its characters given those before it.

What evaluation harnesses ask for (OpenAI's echo with logprobs, TGI's decoder_input_details):
the text is read once by the training path's forward pass, from the zero state, on the
request's own thread (the engine's thread, which steps every stream, never sees it). It is the
same computation `charlm eval` makes, so the sum of a text's log-probabilities is minus the
loss `charlm eval` reports times the characters scored.
"""

from typing import NamedTuple

import numpy as np

from charlm.model import CharLSTM

from .models import Served


class Scored(NamedTuple):
    """The characters the model read, where each sits in the text, and what it thought of each.

    logprob[0] and top[0] are None: nothing comes before the first character.
    """

    chars: list[str]
    ids: list[int]
    offsets: list[int]  # index of each character in the text (unknown ones dropped are skipped)
    logprob: list[float | None]
    top: list[list[tuple[str, float]] | None]  # top_n alternatives, most probable first


def score(served: Served, text: str, top_n: int = 0, drop_unknown: bool = False,
          model: CharLSTM | None = None) -> Scored:
    """Per-character log-probabilities of text under the model (the caller bounds its length).

    model: served's model, to reuse over several texts on one thread (one is made if None).
    """
    packed = served.packed
    kept = [k for k, ch in enumerate(text) if ch in packed.stoi] if drop_unknown else None
    ids = packed.encode(text, drop_unknown)
    offsets = kept if kept is not None else list(range(len(text)))
    chars = [packed.itos[i] for i in ids]
    T = len(ids)
    if T < 2:
        return Scored(chars, ids.tolist(), offsets, [None] * T, [None] * T)
    if model is None:
        # a model of its own per request: forward() reuses workspaces, so it is not shared
        model = served.ckpt.model()
    ws = model.forward(ids[None, :-1], model.zero_state(1))
    z = ws.logits.astype(np.float64)  # (T-1, V): row t predicts character t+1
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    target = logp[np.arange(T - 1), ids[1:]]
    logprob: list[float | None] = [None, *target.tolist()]
    top: list[list[tuple[str, float]] | None] = [None] * T
    if top_n:
        order = np.argsort(-logp, axis=1, kind="stable")[:, :top_n]
        for t in range(T - 1):
            top[t + 1] = [(packed.itos[v], float(logp[t, v])) for v in order[t]]
    return Scored(chars, ids.tolist(), offsets, logprob, top)
