"""What one app holds beside its config: the models and the concurrency slots."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import current_app

from . import metrics
from .errors import ApiError
from .models import Models


class Slots:
    """At most `limit` generation requests at once in this worker: past it, 429 at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()

    def take(self, k: int = 1) -> None:
        """k slots at once, or none (429)."""
        with self._lock:
            if self.in_use + k > self.limit:
                metrics.REJECTED.inc()
                raise ApiError(429, f"the server is at its limit of {self.limit} concurrent "
                               "streams; retry shortly", "overloaded", {"Retry-After": "1"})
            self.in_use += k

    def give(self, k: int = 1) -> None:
        with self._lock:
            self.in_use -= k

    @contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for the block (429 at once if there is none)."""
        self.take()
        try:
            yield
        finally:
            self.give()


class Reservation:
    """k slots taken at once for the k streams of one request (all or none, so a batch never
    holds half its slots while it waits for the rest), handed to its runs one by one.

    Each run's close gives its slot back; release() gives back those never handed out.
    """

    def __init__(self, slots: Slots, k: int) -> None:
        slots.take(k)
        self.slots, self.left = slots, k
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.left <= 0:
                raise RuntimeError("a reservation handed out more slots than it holds")
            self.left -= 1

    def give(self) -> None:
        self.slots.give()

    def release(self) -> None:
        with self._lock:
            left, self.left = self.left, 0
        if left:
            self.slots.give(left)


@dataclass
class State:
    models: Models
    slots: Slots  # every request that runs the model: generation, /next, /activations
    # /activations within those: each costs a forward pass and megabytes of JSON at once
    activations: Slots = field(default_factory=lambda: Slots(4))


def current() -> State:
    return current_app.extensions["charlm"]
