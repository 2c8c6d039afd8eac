"""What one app holds beside its config: the models and the concurrency slots."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import current_app

from .errors import ApiError
from .models import Models


class Slots:
    """At most `limit` generation requests at once in this worker: past it, 429 at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.in_use >= self.limit:
                raise ApiError(429, f"the server is at its limit of {self.limit} concurrent "
                               "requests; retry shortly", "overloaded", {"Retry-After": "1"})
            self.in_use += 1

    def give(self) -> None:
        with self._lock:
            self.in_use -= 1

    @contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for the block (429 at once if there is none)."""
        self.take()
        try:
            yield
        finally:
            self.give()


@dataclass
class State:
    models: Models
    slots: Slots  # every request that runs the model: generation, /next, /activations
    # /activations within those: each costs a forward pass and megabytes of JSON at once
    activations: Slots = field(default_factory=lambda: Slots(4))


def current() -> State:
    return current_app.extensions["charlm"]
