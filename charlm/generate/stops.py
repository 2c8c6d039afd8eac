"""Stop strings: where a stream's text ends, and what may be released before it is known.

One policy serves both conventions: the library's and OpenAI's stops end the text and are left
out of it (exclusive), TGI's stop sequences end it and stay in it (inclusive). Exclusive stops
hold back the longest tail that may still grow into a stop string, so no character of a stop
string is ever released; inclusive ones release every character at once.
"""

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")  # a token: anything with a .char


class Stops(Generic[T]):
    """The stop strings of one run, fed one token at a time."""

    __slots__ = ("strings", "inclusive", "longest", "held", "text")

    def __init__(self, strings: Sequence[str], inclusive: bool = False) -> None:
        self.strings, self.inclusive = tuple(strings), inclusive
        self.longest = max(map(len, self.strings), default=0)
        self.held: list[T] = []  # tokens not yet released
        self.text = ""  # the held tokens' text (inclusive: the tail a stop string may end in)

    def push(self, tok: T) -> tuple[list[T], bool]:
        """Take the next token; return the tokens now safe to release, and whether a stop string
        has just been completed (the run ends: nothing after it is released)."""
        self.held.append(tok)
        self.text += tok.char
        text = self.text
        # a stop string can only have completed with this token: cut at the earliest start
        ends = [len(text) - len(s) for s in self.strings if text.endswith(s)]
        if ends:
            out = self.held if self.inclusive else self.held[: min(ends)]
            self.held, self.text = [], ""
            return out, True
        if self.inclusive:
            out, self.held = self.held, []
            self.text = text[1 - self.longest :] if self.longest > 1 else ""
            return out, False
        # hold back the longest tail that may still grow into a stop string
        keep = 0
        for s in self.strings:
            for k in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:k]):
                    keep = k
                    break
        n_out = len(self.held) - keep
        out = self.held[:n_out]
        self.held, self.text = self.held[n_out:], text[n_out:]
        return out, False

    def flush(self) -> list[T]:
        """The held tokens, at the end of a run that stopped for another reason."""
        out, self.held, self.text = self.held, [], ""
        return out
