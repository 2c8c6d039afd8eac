"""What one app holds beside its config: the models and the concurrency slots."""

import threading
from dataclasses import dataclass

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


@dataclass
class State:
    models: Models
    slots: Slots


def current() -> State:
    return current_app.extensions["charlm"]
