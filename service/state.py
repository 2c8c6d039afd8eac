"""What one app holds beside its config: the models and the concurrency slots."""

from dataclasses import dataclass

from flask import current_app

from service.generation import Slots
from service.models import Models


@dataclass
class State:
    models: Models
    slots: Slots


def current() -> State:
    return current_app.extensions["charlm"]
