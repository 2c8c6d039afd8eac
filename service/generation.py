"""A generation request in flight: its slot, its job on the model's engine, and its one ending.

However the response ends (finished, failed, or the client left), Run.close() cancels the job
and frees the slot, once.
"""

import select
import socket
import time
from collections.abc import Callable, Iterator

from flask import current_app, request

from charlm.errors import CharlmError
from charlm.generate import SampleSettings, Stops, Token

from . import metrics
from .engine import Job, drain
from .errors import ClientGoneError, validation
from .models import Served
from .state import Slots, current

GONE_CHECK_S = 0.05  # while an answer is built, how often to look whether its client left


def client_gone(environ: dict) -> Callable[[], bool] | None:
    """A check of whether this request's client has closed its connection, where the server
    lends the view its socket (gunicorn's environ["gunicorn.socket"]); None elsewhere."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None

    def gone() -> bool:
        try:
            # poll first: a socket with a timeout (service/worker.py's writes) would wait
            # that long in recv for a byte that an open connection never sends
            if not select.select([sock], [], [], 0)[0]:
                return False
            # a closed connection reads as b"" at once
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, ValueError):  # ValueError: a TLS socket takes no recv
            return False  # flags, so there is no way to tell: keep going
        except OSError:  # reset, or closed under us
            return True

    return gone


def check_prompt(served: Served, prompt: str, where: str = "prompt") -> int:
    """Refuse a prompt over the length limit or (unless the policy drops them) with characters
    outside the vocabulary; the number of characters the model will read."""
    limit = current_app.config["MAX_PROMPT_CHARS"]
    if len(prompt) > limit:
        raise validation(f"`{where}` has {len(prompt)} characters; the limit is {limit}")
    drop = current_app.config["UNKNOWN_CHARS"] == "drop"
    try:
        return len(served.packed.encode(prompt, drop_unknown=drop))
    except CharlmError:
        unknown = "".join(dict.fromkeys(ch for ch in prompt if ch not in served.packed.stoi))
        raise validation(f"`{where}` has characters outside the vocabulary of model "
                         f"{served.name!r}: {unknown!r}") from None


class Run:
    """One stream, started at once so its first character is on the way while headers go out.

    Read it with chunks(); close() (called when the response closes, even if it never started)
    cancels the stream and frees the slot, once. stop_inclusive: strings that end the text and
    stay in it (TGI's stop sequences), checked here rather than in the batch.
    """

    def __init__(self, served: Served, slots: Slots, prompt: str, settings: SampleSettings,
                 drop_unknown: bool = False, stop_inclusive: tuple[str, ...] = (),
                 coalesce: float = 0.0, gone: Callable[[], bool] | None = None) -> None:
        self.served, self.slots = served, slots
        self.gone = gone  # whether the client has left (see client_gone), for complete()
        self.coalesce = coalesce  # seconds to wait between writes when streams share the batch
        self.stops: Stops[Token] = Stops(stop_inclusive, inclusive=True)
        self.finish_reason: str | None = None
        self.tokens: list[Token] = []
        self._closed = False
        self.started = time.monotonic()  # for metrics' time to first character
        slots.take()
        try:
            # read here, on the request's thread: the engine's thread, which steps every
            # stream, then only copies the state in, however long the prompt
            primed = served.packed.read(prompt, drop_unknown)
        except BaseException:
            slots.give()
            raise
        self.job = served.engine.submit(Job(primed, settings))

    def chunks(self) -> Iterator[list[Token]]:
        """Lists of new tokens as they come (the last may be empty: the end came without one);
        raises GenerationError if the stream fails."""
        try:
            while True:
                tokens, reason = drain(self.job)
                if self.stops.strings:
                    tokens, reason = self._stop_at(tokens, reason)
                metrics.on_tokens(self.started, len(self.tokens), len(tokens))
                self.tokens.extend(tokens)
                if reason is not None:
                    self.finish_reason = reason
                if tokens or reason is not None:
                    yield tokens
                if reason is not None:
                    return
                if self.coalesce and self.served.engine.active > 1:
                    # with others in the batch, let a few characters gather: one write and one
                    # wake-up for several, instead of a context switch per stream per step
                    time.sleep(self.coalesce)
        finally:
            self.close()

    def complete(self) -> list[Token]:
        """Every token, to the end. Raises ClientGoneError if the client leaves first: a streaming
        response notices when a write fails, a whole answer only by looking."""
        checked = time.monotonic()
        for _ in self.chunks():
            if self.gone is not None and time.monotonic() - checked > GONE_CHECK_S:
                checked = time.monotonic()
                if self.gone():
                    self.close()
                    raise ClientGoneError
        return self.tokens

    @property
    def text(self) -> str:
        return "".join(t.char for t in self.tokens)

    def _stop_at(self, tokens: list[Token], reason: str | None) -> tuple[list[Token], str | None]:
        """Cut tokens after the first character that completes a stop string."""
        for k, tok in enumerate(tokens):
            if self.stops.push(tok)[1]:
                return tokens[: k + 1], "stop_sequence"
        return tokens, reason

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.served.engine.cancel(self.job)
        self.slots.give()


def start(served: Served, prompt: str, settings: SampleSettings,
          stop_inclusive: tuple[str, ...] = ()) -> Run:
    """A Run under this app's configuration: its slots, unknown-character policy, coalescing."""
    cfg = current_app.config
    return Run(served, current().slots, prompt, settings, cfg["UNKNOWN_CHARS"] == "drop",
               stop_inclusive, cfg["COALESCE_MS"] / 1000, client_gone(request.environ))
