"""Hugging Face text-generation-inference routes: POST /generate, /generate_stream and /.

A token is one character. Stop sequences end the text and stay in it, as in TGI.
"""

import functools
import json
import secrets
from dataclasses import dataclass

from flask import Blueprint, current_app, jsonify

from charlm.generate import SampleSettings, Token

from . import generation, sse
from .engine import GenerationError
from .errors import ApiError, validation
from .generation import Run, check_prompt
from .models import Served
from .params import (
    MAX_COUNT,
    get_bool,
    get_float,
    get_int,
    get_object,
    get_stop,
    get_str,
    json_body,
)
from .scoring import score
from .state import current

bp = Blueprint("tgi", __name__)

P = "parameters."
# TGI parameters this server has no use for: accepted at their neutral value only
NEUTRAL = {"repetition_penalty": (1.0,), "frequency_penalty": (0, 0.0), "typical_p": (1.0,),
           "best_of": (1,), "watermark": (False,), "grammar": (), "adapter_id": ()}
FINISH = {"length": "length", "stop": "stop_sequence", "stop_sequence": "stop_sequence"}


@dataclass
class TgiRequest:
    served: Served
    prompt: str
    input_length: int
    settings: SampleSettings
    sampling: bool
    stream: bool
    details: bool
    return_full_text: bool
    decoder_input_details: bool  # details.prefill: the prompt's characters, scored


def parse(body: dict, stream: bool | None = None) -> TgiRequest:
    """Validate a TGI request body (everything is checked before any response starts)."""
    cfg = current_app.config
    prompt = get_str(body, "inputs")
    params = get_object(body, "parameters")
    if stream is None:
        stream = get_bool(body, "stream", False)
    served = current().models.get(get_str(body, "model", None))
    for key, allowed in NEUTRAL.items():
        if params.get(key) is not None and params[key] not in allowed:
            raise validation(f"`{P}{key}` is not supported by this server")
    truncate = get_int(params, "truncate", None, 1, MAX_COUNT, where=P)
    if truncate is not None:
        prompt = prompt[-truncate:]
    n_in = check_prompt(served, prompt, "inputs")
    temperature = get_float(params, "temperature", None, 0.0, 100.0, lo_open=True, where=P)
    top_k = get_int(params, "top_k", None, 0, MAX_COUNT, where=P)
    top_p = get_float(params, "top_p", None, 0.0, 1.0, lo_open=True, where=P)
    # as TGI: greedy unless do_sample, or a setting that only matters when sampling
    sampling = (get_bool(params, "do_sample", False, where=P) or temperature not in (None, 1.0)
                or bool(top_k) or top_p not in (None, 1.0))
    seed = get_int(params, "seed", None, 0, 2**64 - 1, where=P)
    settings = SampleSettings(
        temperature=(1.0 if temperature is None else temperature) if sampling else 0.0,
        top_k=top_k or 0, top_p=1.0 if top_p is None else top_p,
        seed=(secrets.randbits(63) if seed is None else seed) if sampling else 0,
        max_new_chars=get_int(params, "max_new_tokens", cfg["DEFAULT_NEW_TOKENS"], 1,
                              cfg["MAX_NEW_TOKENS"], where=P),
        stop=get_stop(params, "stop", cfg["MAX_STOP"], cfg["MAX_STOP_CHARS"], where=P),
        top_n=get_int(params, "top_n_tokens", 0, 0, cfg["MAX_TOP_N"], where=P))
    decoder_input_details = get_bool(params, "decoder_input_details", False, where=P)
    if decoder_input_details and stream:
        # as TGI: the prefill goes in the details of a whole answer only
        raise validation(f"`{P}decoder_input_details` is not supported when streaming tokens")
    return TgiRequest(served, prompt, n_in, settings, sampling, stream,
                      get_bool(params, "details", False, where=P),
                      get_bool(params, "return_full_text", False, where=P),
                      decoder_input_details)


def start(req: TgiRequest) -> Run:
    s = req.settings
    batch_settings = SampleSettings(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                    seed=s.seed, max_new_chars=s.max_new_chars, top_n=s.top_n)
    return generation.start(req.served, req.prompt, batch_settings, stop_inclusive=s.stop)


def token(tok: Token, stoi: dict[str, int]) -> dict:
    return {"id": stoi[tok.char], "text": tok.char, "logprob": tok.logprob, "special": False}


def top_tokens(tok: Token, stoi: dict[str, int]) -> list[dict]:
    return [{"id": stoi[ch], "text": ch, "logprob": lp, "special": False} for ch, lp in tok.top]


def details(req: TgiRequest, run: Run) -> dict:
    return {"finish_reason": FINISH.get(run.finish_reason, run.finish_reason),
            "generated_tokens": len(run.tokens),
            "seed": req.settings.seed if req.sampling else None,
            "input_length": req.input_length}


def full_text(req: TgiRequest, run: Run) -> str:
    return (req.prompt if req.return_full_text else "") + run.text


@bp.post("/generate")
def generate():
    """Text for a prompt: one JSON answer, or server-sent events with "stream": true."""
    return respond(parse(json_body()))


@bp.post("/generate_stream")
def generate_stream():
    """Text for a prompt as server-sent events, one per character."""
    return respond(parse(json_body(), stream=True))


@bp.post("/")
def root():
    """TGI's compatibility route: /generate or /generate_stream as "stream" says."""
    return respond(parse(json_body()))


def respond(req: TgiRequest):
    run = start(req)
    if req.stream:
        return sse.stream(events(req, run), run)
    try:
        prefill = prefill_tokens(req) if req.details and req.decoder_input_details else []
        tokens = run.complete()
    except GenerationError as e:
        raise ApiError(500, str(e), "generation") from None
    finally:
        run.close()
    out = {"generated_text": full_text(req, run)}
    if req.details:
        stoi = req.served.packed.stoi
        out["details"] = {**details(req, run), "prefill": prefill,
                          "tokens": [token(t, stoi) for t in tokens]}
        if req.settings.top_n:
            out["details"]["top_tokens"] = [top_tokens(t, stoi) for t in tokens]
    return jsonify(out)


def prefill_tokens(req: TgiRequest) -> list[dict]:
    """The prompt's characters as TGI's prefill: id, text, and the logprob of each given those
    before it (the first has none: null). Scored on this thread while the engine generates."""
    drop = current_app.config["UNKNOWN_CHARS"] == "drop"
    s = score(req.served, req.prompt, 0, drop)
    return [{"id": i, "text": ch, "logprob": lp}
            for i, ch, lp in zip(s.ids, s.chars, s.logprob, strict=True)]


@bp.post("/tokenize")
def tokenize():
    """The prompt's tokens as TGI lists them: each character's id, text, start and stop (the
    character offsets of the token in the text; they are TGI's byte offsets for ASCII)."""
    body = json_body()
    served = current().models.get(get_str(body, "model", None))
    prompt = get_str(body, "inputs")
    check_prompt(served, prompt, "inputs")
    stoi = served.packed.stoi
    drop = current_app.config["UNKNOWN_CHARS"] == "drop"
    return jsonify([{"id": stoi[ch], "text": ch, "start": k, "stop": k + 1}
                    for k, ch in enumerate(prompt) if not drop or ch in stoi])


@functools.lru_cache(maxsize=16)
def token_heads(itos: tuple[str, ...]) -> dict[str, str]:
    """For each character of a vocabulary, its event's JSON from after the index up to the
    logprob's value: the hot path fills in only the two numbers."""
    return {ch: f',"token":{{"id":{i},"text":{sse.text_json(ch)},"logprob":'
            for i, ch in enumerate(itos)}


TOKEN_TAIL = ',"special":false},"top_tokens":'
EVENT_TAIL = ',"generated_text":null,"details":null}\n\n'


def events(req: TgiRequest, run: Run):
    """One event per character; the last one also carries generated_text and details."""
    packed, index, top_n = req.served.packed, 0, req.settings.top_n
    stoi, heads = packed.stoi, token_heads(tuple(packed.itos))
    try:
        for chunk in run.chunks():
            last = chunk[-1] if run.finish_reason is not None and chunk else None
            body = chunk[:-1] if last else chunk
            # the hot path: one event per character, built from pieces, not json.dumps, all
            # of a drain's events in one pass
            if top_n:
                out = [f'data: {{"index":{index + k}{heads[tok.char]}{tok.logprob!r}{TOKEN_TAIL}'
                       f'{json.dumps(top_tokens(tok, stoi), separators=(",", ":"))}{EVENT_TAIL}'
                       for k, tok in enumerate(body)]
            else:
                out = [f'data: {{"index":{index + k}{heads[tok.char]}{tok.logprob!r}{TOKEN_TAIL}'
                       f'[]{EVENT_TAIL}' for k, tok in enumerate(body)]
            index += len(body)
            if run.finish_reason is not None:
                # the last character's event carries the text and details, as in TGI
                out.append(sse.event({
                    "index": index, "token": token(last, stoi) if last else None,
                    "top_tokens": top_tokens(last, stoi) if last else [],
                    "generated_text": full_text(req, run), "details": details(req, run)}))
            yield "".join(out)
    except GenerationError as e:
        yield sse.event(ApiError(500, str(e), "generation").body())
