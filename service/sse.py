"""Server-sent events: the framing, and a streaming response that ends its run when it closes."""

import functools
import json
from collections.abc import Iterator

from flask import Response

from .generation import Run

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def event(data: dict | str) -> str:
    """One `data:` event; a dict goes as compact JSON on one line."""
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


@functools.lru_cache(maxsize=4096)
def text_json(ch: str) -> str:
    """A character as a JSON string, cached: the hot path builds events from such pieces."""
    return json.dumps(ch, ensure_ascii=False)


def stream(events: Iterator[str], run: Run) -> Response:
    """A text/event-stream response of events; run is closed when the response is, so a client
    that goes away (or never reads) stops its generation."""
    resp = Response(events, mimetype="text/event-stream", headers=HEADERS)
    resp.call_on_close(run.close)
    return resp
