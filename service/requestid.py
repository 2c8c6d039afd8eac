"""Request ids: X-Request-Id on every answer (errors and streams too), for logs and support.

The client's own id is kept when it is sane: 1 to 128 characters of letters, digits and
`-_.:/+=@`; anything else (too long, spaces, control characters that could forge log lines)
is replaced by a fresh one. gunicorn's access log prints it (service/gunicorn.conf.py).
"""

import os
import random
import re

from flask import Flask, Response, g, request

HEADER = "X-Request-Id"
SANE = re.compile(r"[A-Za-z0-9\-_.:/+=@]{1,128}")


_random = (0, random.Random())  # (the pid it was seeded in, the generator)


def fresh() -> str:
    """32 random hex digits, as uuid4().hex but without a system call: uuid4 reads os.urandom,
    which lets go of the GIL, and with 32 requests arriving at once each such point let
    another thread in before the request could go on (a quarter of a millisecond a request,
    measured). Seeded from os.urandom once per process (a forked worker seeds afresh)."""
    global _random
    pid, rng = _random
    if pid != os.getpid():
        rng = random.Random(os.urandom(32))
        _random = (os.getpid(), rng)
    return f"{rng.getrandbits(128):032x}"


def request_id(given: str | None) -> str:
    """The client's id if sane, else a fresh one."""
    if given is not None and SANE.fullmatch(given):
        return given
    return fresh()


def init_app(app: Flask) -> None:
    @app.before_request
    def take_id():
        g.request_id = request_id(request.headers.get(HEADER))

    @app.after_request
    def send_id(resp: Response) -> Response:
        # g has none when the request failed before the first before_request ran
        resp.headers[HEADER] = g.get("request_id") or request_id(request.headers.get(HEADER))
        return resp
