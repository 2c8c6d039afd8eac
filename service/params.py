"""Reading a JSON request body: typed, range-checked fields, each failure a 400 or 422."""

import json
import math
from typing import Any

from flask import current_app, request

from .errors import ApiError, ClientGoneError, validation

MISSING: Any = object()


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


# the largest integer a count field takes (top_k, top_n, truncate): any count past the
# vocabulary means "all of them", and past int64 it would overflow in a kernel
MAX_COUNT = 2**31 - 1
BODY_CHUNK = 16384


def json_body() -> dict:
    """The request body as a JSON object: a body of another Content-Type is a 415, one over
    MAX_CONTENT_LENGTH a 413 (chunked ones too), malformed chunks or JSON a 400."""
    if request.mimetype != "application/json":
        raise ApiError(415, "send the request body as JSON, with Content-Type: "
                       f"application/json (got {request.mimetype or 'none'!r:.60})",
                       "unsupported_media_type")
    raw = read_body()
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", "bad_request")
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # bad UTF-8 and bad JSON are both ValueErrors
        raise ApiError(400, f"the request body is not valid JSON ({e})", "bad_request") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {_kind(body)}",
                       "bad_request")
    return body


def read_body() -> bytes:
    """The request body, read from the server's stream up to MAX_CONTENT_LENGTH.

    Read here rather than by werkzeug, which cuts a chunked body at the limit without a word.
    """
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if request.content_length is None and not chunked:
        return b""
    stream = request.environ["wsgi.input"]
    want = limit + 1 if chunked else request.content_length
    parts, size = [], 0
    try:
        while size < want:
            part = stream.read(min(BODY_CHUNK, want - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
    except TimeoutError:  # the server's read deadline (service/worker.py)
        raise ApiError(408, "the request body did not arrive in time", "request_timeout",
                       {"Connection": "close"}) from None
    except OSError:
        raise ClientGoneError from None
    except Exception as e:  # the server's parser: a malformed chunk size or terminator
        raise ApiError(400, f"the request body is malformed ({type(e).__name__})",
                       "bad_request", {"Connection": "close"}) from None
    if size > limit:
        raise _too_large(limit)
    return b"".join(parts)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over the limit of {limit} bytes",
                    "payload_too_large", {"Connection": "close"})


def _kind(v: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(v), "a value")


def _default(default: Any, key: str, where: str) -> Any:
    """What a missing (or null) field means: its default, or a 422 if it has none."""
    if default is MISSING:
        raise validation(f"`{where}{key}` is required")
    return default


def get_str(d: dict, key: str, default: Any = MISSING, where: str = "") -> str:
    value = d.get(key)
    if value is None:
        return _default(default, key, where)
    if not isinstance(value, str):
        raise validation(f"`{where}{key}` must be a string, not {_kind(value)}")
    check_unicode(value, f"{where}{key}")
    return value


def check_unicode(text: str, name: str) -> None:
    """A 422 for a string holding a lone surrogate (JSON's "\\ud800"): it has no UTF-8, so no
    answer could carry it back."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise validation(f"`{name}` has a lone surrogate (U+{ord(text[e.start]):04X}) at "
                         f"index {e.start}: not a character") from None


def get_bool(d: dict, key: str, default: Any = MISSING, where: str = "") -> bool:
    value = d.get(key)
    if value is None:
        return _default(default, key, where)
    if not isinstance(value, bool):
        raise validation(f"`{where}{key}` must be true or false, not {_kind(value)}")
    return value


def get_int(d: dict, key: str, default: Any = MISSING, lo: int | None = None,
            hi: int | None = None, where: str = "") -> int:
    value = d.get(key)
    if value is None:
        return _default(default, key, where)
    # 3.0 is an integer to JSON, and clients written in JavaScript send it
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise validation(f"`{where}{key}` must be an integer, not {_kind(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise validation(f"`{where}{key}` must be in [{lo}, {hi}], got {value}")
    return value


def get_float(d: dict, key: str, default: Any = MISSING, lo: float | None = None,
              hi: float | None = None, lo_open: bool = False, where: str = "") -> float:
    value = d.get(key)
    if value is None:
        return _default(default, key, where)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise validation(f"`{where}{key}` must be a number, not {_kind(value)}")
    value = float(value)
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    if not math.isfinite(value) or low_bad or (hi is not None and value > hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise validation(f"`{where}{key}` must be in {interval}, got {value:g}")
    return value


def get_object(d: dict, key: str, where: str = "") -> dict:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise validation(f"`{where}{key}` must be an object, not {_kind(value)}")
    return value


def get_stop(d: dict, key: str, max_n: int, max_chars: int, where: str = "") -> tuple[str, ...]:
    """Stop strings: one string or a list of them (as OpenAI takes it), each non-empty."""
    value = d.get(key)
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise validation(f"`{where}{key}` must be a string or a list of strings")
    if len(stops) > max_n:
        raise validation(f"`{where}{key}` has {len(stops)} stop strings; the limit is {max_n}")
    for s in stops:
        if not s or len(s) > max_chars:
            raise validation(f"`{where}{key}` strings must be 1 to {max_chars} characters long")
        check_unicode(s, f"{where}{key}")
    return tuple(stops)
