"""OpenAI-compatible routes: POST /v1/completions and GET /v1/models, for the openai client.

A token is one character. Stop strings end the text and are left out of it, as OpenAI does.
"""

import secrets
import time
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
from .state import current

bp = Blueprint("completions", __name__, url_prefix="/v1")

# OpenAI parameters this server has no use for: accepted at their neutral value only
NEUTRAL = {"n": (1,), "best_of": (1,), "presence_penalty": (0, 0.0),
           "frequency_penalty": (0, 0.0), "logit_bias": ({},), "suffix": ("",)}


@dataclass
class CompletionRequest:
    served: Served
    prompt: str
    input_length: int
    settings: SampleSettings
    logprobs: bool  # report logprobs (settings.top_n alternatives each)
    echo: bool
    stream: bool
    include_usage: bool


def parse(body: dict) -> CompletionRequest:
    """Validate an OpenAI completions body (everything is checked before a response starts)."""
    cfg = current_app.config
    served = current().models.get(get_str(body, "model", None))
    prompt = body.get("prompt")
    # the client may send a list of prompts; one is all a request here generates for
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    elif isinstance(prompt, list):
        raise validation("`prompt` must be a string (or a list of exactly one string)")
    prompt = get_str({"prompt": prompt}, "prompt")
    for key, allowed in NEUTRAL.items():
        if body.get(key) is not None and body[key] not in allowed:
            raise validation(f"`{key}` is not supported by this server")
    n_in = check_prompt(served, prompt)
    logprobs = get_int(body, "logprobs", None, 0, cfg["MAX_TOP_N"])
    seed = get_int(body, "seed", None, 0, 2**64 - 1)
    settings = SampleSettings(
        temperature=get_float(body, "temperature", 1.0, 0.0, 2.0),
        top_k=get_int(body, "top_k", 0, 0, MAX_COUNT),  # not OpenAI's, but vLLM's and llama.cpp's
        top_p=get_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        seed=secrets.randbits(63) if seed is None else seed,
        max_new_chars=get_int(body, "max_tokens", 16, 0, cfg["MAX_NEW_TOKENS"]),
        stop=get_stop(body, "stop", cfg["MAX_STOP"], cfg["MAX_STOP_CHARS"]),
        top_n=logprobs or 0)
    options = get_object(body, "stream_options")
    return CompletionRequest(served, prompt, n_in, settings, logprobs is not None,
                             get_bool(body, "echo", False), get_bool(body, "stream", False),
                             get_bool(options, "include_usage", False, where="stream_options."))


def logprobs(tokens: list[Token], offset: int) -> dict:
    """OpenAI's legacy logprobs object for tokens whose text starts at offset."""
    return {"tokens": [t.char for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [dict(t.top) for t in tokens],
            "text_offset": list(range(offset, offset + len(tokens)))}


def usage(req: CompletionRequest, run: Run) -> dict:
    return {"prompt_tokens": req.input_length, "completion_tokens": len(run.tokens),
            "total_tokens": req.input_length + len(run.tokens)}


@bp.post("/completions")
def completions():
    """A completion of a prompt: one JSON answer, or events ending in `data: [DONE]`."""
    req = parse(json_body())
    run = generation.start(req.served, req.prompt, req.settings)
    head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion",
            "created": int(time.time()), "model": req.served.name}
    if req.stream:
        return sse.stream(events(req, run, head), run)
    try:
        tokens = run.complete()
    except GenerationError as e:
        raise ApiError(500, str(e), "generation") from None
    prefix = req.prompt if req.echo else ""
    choice = {"text": prefix + run.text, "index": 0,
              "logprobs": logprobs(tokens, len(prefix)) if req.logprobs else None,
              "finish_reason": run.finish_reason}
    return jsonify({**head, "choices": [choice], "usage": usage(req, run)})


def events(req: CompletionRequest, run: Run, head: dict):
    """A chunk per character, a last one with the finish reason, usage if asked, [DONE]."""

    def chunk(text: str, finish: str | None = None, lp: dict | None = None) -> str:
        return sse.event({**head, "choices": [{"text": text, "index": 0, "logprobs": lp,
                                               "finish_reason": finish}]})

    # the hot path: a character's chunk is two fixed pieces around its text
    before = sse.event({**head, "choices": [{"text": "\0"}]}).split('"\\u0000"')[0]
    after = ',"index":0,"logprobs":null,"finish_reason":null}]}\n\n'

    offset = 0
    try:
        if req.echo:
            yield chunk(req.prompt)
            offset = len(req.prompt)
        for tokens in run.chunks():
            out = []
            for tok in tokens:
                if req.logprobs:
                    out.append(chunk(tok.char, None, logprobs([tok], offset)))
                else:
                    out.append(f"{before}{sse.text_json(tok.char)}{after}")
                offset += 1
            if run.finish_reason is not None:
                out.append(chunk("", run.finish_reason))
                if req.include_usage:
                    out.append(sse.event({**head, "choices": [], "usage": usage(req, run)}))
                out.append(sse.event("[DONE]"))
            yield "".join(out)
    except GenerationError as e:
        yield sse.event({"error": str(e), "error_type": "generation"})


@bp.get("/models")
def models():
    """The served models, as OpenAI lists them."""
    return jsonify({"object": "list",
                    "data": [model_object(s) for s in current().models.ready_models()]})


@bp.get("/models/<name>")
def model(name: str):
    """One served model, as OpenAI describes it."""
    return jsonify(model_object(current().models.get(name)))


def model_object(served: Served) -> dict:
    return {"id": served.name, "object": "model", "created": served.created,
            "owned_by": "charlm"}
