"""OpenAI-compatible routes: POST /v1/completions and GET /v1/models, for the openai client.

A token is one character. Stop strings end the text and are left out of it, as OpenAI does.
A list of prompts and n copies of each are one batch on the model's engine; echo with
logprobs scores the prompt (service/scoring.py), as evaluation harnesses ask.
"""

import secrets
import time
from dataclasses import dataclass, replace

from flask import Blueprint, current_app, jsonify, request

from charlm.generate import SampleSettings, Token

from . import metrics, sse
from .engine import GenerationError, drain, ready
from .errors import ApiError, validation
from .generation import Run, check_prompt, client_gone
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
from .scoring import Scored, score
from .state import Reservation, current

bp = Blueprint("completions", __name__, url_prefix="/v1")
STALL_S = 60.0  # a batch of streams with no character for this long has failed
POLL_S = 0.002  # seconds between looks at a batch's streams when none has news

# OpenAI parameters this server has no use for: accepted at their neutral value only
NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},),
           "suffix": ("",)}


@dataclass
class CompletionRequest:
    served: Served
    prompts: list[str]
    input_lengths: list[int]
    n: int  # completions per prompt: choice prompt_i * n + j
    settings: SampleSettings
    logprobs: bool  # report logprobs (settings.top_n alternatives each)
    echo: bool
    stream: bool
    include_usage: bool

    @property
    def streams(self) -> int:
        return len(self.prompts) * self.n


def get_prompts(body: dict) -> list[str]:
    """`prompt`: a string or a list of strings (each one a batch's prompt)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, list):
        return [get_str(body, "prompt")]  # the checks, and messages, of every string field
    if not prompt:
        raise validation("`prompt` is an empty list; send a string or a list of strings")
    if not all(isinstance(p, str) for p in prompt):
        raise validation("`prompt` must be a string or a list of strings (token ids are not "
                         "taken: a character is a token, send the text)")
    return [get_str({"prompt": p}, "prompt") for p in prompt]


def parse(body: dict) -> CompletionRequest:
    """Validate an OpenAI completions body (everything is checked before a response starts).

    The bounds: each prompt under MAX_PROMPT_CHARS and max_tokens under MAX_NEW_TOKENS; the
    streams (prompts x n) at most MAX_CONCURRENCY, and max_tokens x streams at most
    MAX_BATCH_TOKENS (400 past either: the request could never be served); then a slot per
    stream, all at once or a 429 when the worker has too few free.
    """
    cfg = current_app.config
    served = current().models.get(get_str(body, "model", None))
    prompts = get_prompts(body)
    for key, allowed in NEUTRAL.items():
        if body.get(key) is not None and body[key] not in allowed:
            raise validation(f"`{key}` is not supported by this server")
    n = get_int(body, "n", 1, 1, MAX_COUNT)
    best_of = get_int(body, "best_of", None, 1, MAX_COUNT)
    if best_of is not None and best_of != n:
        raise validation(f"`best_of` must equal `n` here ({n}): completions are not ranked")
    streams = len(prompts) * n
    if streams > cfg["MAX_CONCURRENCY"]:
        raise validation(f"`prompt` x `n` asks for {streams} completions; this server runs "
                         f"at most {cfg['MAX_CONCURRENCY']} at once")
    n_in = [check_prompt(served, p, f"prompt[{k}]" if len(prompts) > 1 else "prompt")
            for k, p in enumerate(prompts)]
    logprobs = get_int(body, "logprobs", None, 0, cfg["MAX_TOP_N"])
    seed = get_int(body, "seed", None, 0, 2**64 - 1)
    max_tokens = get_int(body, "max_tokens", 16, 0, cfg["MAX_NEW_TOKENS"])
    if max_tokens * streams > cfg["MAX_BATCH_TOKENS"]:
        raise validation(f"`max_tokens` x completions = {max_tokens} x {streams} is over this "
                         f"server's limit of {cfg['MAX_BATCH_TOKENS']} characters a request")
    settings = SampleSettings(
        temperature=get_float(body, "temperature", 1.0, 0.0, 2.0),
        top_k=get_int(body, "top_k", 0, 0, MAX_COUNT),  # not OpenAI's, but vLLM's and llama.cpp's
        top_p=get_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        seed=secrets.randbits(63) if seed is None else seed,
        max_new_chars=max_tokens,
        stop=get_stop(body, "stop", cfg["MAX_STOP"], cfg["MAX_STOP_CHARS"]),
        top_n=logprobs or 0)
    options = get_object(body, "stream_options")
    return CompletionRequest(served, prompts, n_in, n, settings, logprobs is not None,
                             get_bool(body, "echo", False), get_bool(body, "stream", False),
                             get_bool(options, "include_usage", False, where="stream_options."))


def top_dict(tok: Token) -> dict[str, float]:
    """The alternatives, and the sampled character whether or not it is among them (OpenAI)."""
    top = dict(tok.top)
    # the step's own figure: the alternatives' are recomputed, and may differ in the last bit
    top[tok.char] = tok.logprob
    return top


def logprobs(tokens: list[Token], offset: int) -> dict:
    """OpenAI's legacy logprobs object for tokens whose text starts at offset."""
    return {"tokens": [t.char for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [top_dict(t) for t in tokens],
            "text_offset": list(range(offset, offset + len(tokens)))}


def prompt_logprobs(s: Scored) -> dict:
    """The logprobs object of an echoed prompt: the first character's logprob is null."""
    tops: list[dict | None] = []
    for ch, lp, top in zip(s.chars, s.logprob, s.top, strict=True):
        if lp is None:
            tops.append(None)
        else:
            d = dict(top or ())
            d.setdefault(ch, lp)
            tops.append(d)
    return {"tokens": list(s.chars), "token_logprobs": list(s.logprob), "top_logprobs": tops,
            "text_offset": list(s.offsets)}


def joined(a: dict | None, b: dict) -> dict:
    return b if a is None else {k: a[k] + b[k] for k in b}


class Streams:
    """A request's completions: a Run per prompt and copy (choice prompt_i * n + j), started
    together on the model's engine, each with a slot of one reservation."""

    def __init__(self, req: CompletionRequest) -> None:
        cfg = current_app.config
        self.req = req
        self.reservation = Reservation(current().slots, req.streams)
        self.runs: list[Run | None] = []
        try:
            for prompt in req.prompts:
                for j in range(req.n):
                    if req.settings.max_new_chars == 0:
                        self.runs.append(None)  # nothing to generate: no stream
                        continue
                    # copies of a prompt differ by seed, as OpenAI's n samples differ
                    settings = replace(req.settings, seed=(req.settings.seed + j) % 2**64)
                    self.runs.append(Run(req.served, self.reservation, prompt, settings,
                                         cfg["UNKNOWN_CHARS"] == "drop", (),
                                         cfg["COALESCE_MS"] / 1000, client_gone(request.environ)))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for run in self.runs:
            if run is not None:
                run.close()
        self.reservation.release()


def choice_prompt(req: CompletionRequest, i: int) -> str:
    return req.prompts[i // req.n]


@bp.post("/completions")
def completions():
    """Completions of one prompt or a list: one JSON answer, or events ending in [DONE]."""
    req = parse(json_body())
    batch = Streams(req)
    try:
        scored = score_prompts(req)
    except BaseException:
        batch.close()
        raise
    head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion",
            "created": int(time.time()), "model": req.served.name}
    if req.stream:
        return sse.stream(events(req, batch, scored, head), batch)
    try:
        choices = [choice(req, i, run, scored) for i, run in enumerate(batch.runs)]
    except GenerationError as e:
        raise ApiError(500, str(e), "generation") from None
    finally:
        batch.close()
    return jsonify({**head, "choices": choices, "usage": usage(req, batch)})


def score_prompts(req: CompletionRequest) -> list[Scored] | None:
    """With echo and logprobs, each prompt's own log-probabilities (on this thread)."""
    if not (req.echo and req.logprobs):
        return None
    drop = current_app.config["UNKNOWN_CHARS"] == "drop"
    model = req.served.ckpt.model()  # one for the request's prompts, on this thread only
    return [score(req.served, p, req.settings.top_n, drop, model) for p in req.prompts]


def choice(req: CompletionRequest, i: int, run: Run | None, scored: list[Scored] | None) -> dict:
    tokens = run.complete() if run is not None else []
    prompt = choice_prompt(req, i)
    prefix = prompt if req.echo else ""
    lp = None
    if req.logprobs:
        lp = logprobs(tokens, len(prefix))
        if scored is not None:
            lp = joined(prompt_logprobs(scored[i // req.n]), lp)
    return {"text": prefix + "".join(t.char for t in tokens), "index": i, "logprobs": lp,
            "finish_reason": run.finish_reason if run is not None else "length"}


def usage(req: CompletionRequest, batch: Streams) -> dict:
    # each prompt is read once, as OpenAI counts it, however many copies share it
    n_in = sum(req.input_lengths)
    n_out = sum(len(run.tokens) for run in batch.runs if run is not None)
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def error_event(message: str) -> str:
    return sse.event(ApiError(500, message, "generation").openai_body())


def events(req: CompletionRequest, batch: Streams, scored: list[Scored] | None, head: dict):
    """Chunks of characters as they come, each naming its choice; a last chunk per choice with
    its finish reason; usage if asked; [DONE]."""
    if len(batch.runs) == 1 and batch.runs[0] is not None:
        yield from single_events(req, batch.runs[0], scored, head)
        return

    def chunk(i: int, text: str, finish: str | None = None, lp: dict | None = None) -> str:
        return sse.event({**head, "choices": [{"text": text, "index": i, "logprobs": lp,
                                               "finish_reason": finish}]})

    offsets = [0] * len(batch.runs)
    try:
        if req.echo:
            out = []
            for i in range(len(batch.runs)):
                prompt = choice_prompt(req, i)
                lp = prompt_logprobs(scored[i // req.n]) if scored is not None else None
                out.append(chunk(i, prompt, None, lp))
                offsets[i] = len(prompt)
            yield "".join(out)
        pending = [i for i, run in enumerate(batch.runs) if run is not None]
        done = [chunk(i, "", "length") for i, run in enumerate(batch.runs) if run is None]
        if done:
            yield "".join(done)
        last = time.monotonic()
        while pending:
            out = []
            for i in list(pending):
                run = batch.runs[i]
                if not ready(run.job):
                    continue
                tokens, reason = drain(run.job)
                metrics.on_tokens(run.started, len(run.tokens), len(tokens))
                run.tokens.extend(tokens)
                for tok in tokens:
                    lp = logprobs([tok], offsets[i]) if req.logprobs else None
                    out.append(chunk(i, tok.char, None, lp))
                    offsets[i] += 1
                if reason is not None:
                    run.finish_reason = reason
                    out.append(chunk(i, "", reason))
                    pending.remove(i)
                    run.close()
            if out:
                last = time.monotonic()
                yield "".join(out)
            elif time.monotonic() - last > STALL_S:
                raise GenerationError(f"no character for {STALL_S:g} s: the generator stalled")
            else:
                # streams share the batch: let a few characters gather between writes
                time.sleep(max(batch.runs[pending[0]].coalesce, POLL_S) if pending else 0)
        tail = []
        if req.include_usage:
            tail.append(sse.event({**head, "choices": [], "usage": usage(req, batch)}))
        tail.append(sse.event("[DONE]"))
        yield "".join(tail)
    except GenerationError as e:
        yield error_event(str(e))
    finally:
        batch.close()


def single_events(req: CompletionRequest, run: Run, scored: list[Scored] | None, head: dict):
    """One completion's chunks: a chunk per character, built from fixed pieces (the hot path)."""

    def chunk(text: str, finish: str | None = None, lp: dict | None = None) -> str:
        return sse.event({**head, "choices": [{"text": text, "index": 0, "logprobs": lp,
                                               "finish_reason": finish}]})

    before = sse.event({**head, "choices": [{"text": "\0"}]}).split('"\\u0000"')[0]
    after = ',"index":0,"logprobs":null,"finish_reason":null}]}\n\n'

    offset = 0
    try:
        if req.echo:
            yield chunk(req.prompts[0], None,
                        prompt_logprobs(scored[0]) if scored is not None else None)
            offset = len(req.prompts[0])
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
                    out.append(sse.event({**head, "choices": [], "usage": {
                        "prompt_tokens": req.input_lengths[0],
                        "completion_tokens": len(run.tokens),
                        "total_tokens": req.input_lengths[0] + len(run.tokens)}}))
                out.append(sse.event("[DONE]"))
            yield "".join(out)
    except GenerationError as e:
        yield error_event(str(e))


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
