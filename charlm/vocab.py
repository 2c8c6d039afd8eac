"""The vocabulary: characters <-> ids, the one mapping every part of charlm uses."""

import numpy as np

from charlm.errors import CharlmError


def code_points(text: str) -> np.ndarray:
    """The code points of text as a uint32 array, without a Python object per character."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def from_code_points(codes: np.ndarray) -> str:
    return np.asarray(codes, np.uint32).tobytes().decode("utf-32-le", "surrogatepass")


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every id of a vocabulary this size."""
    if vocab_size <= 2**8:
        return np.dtype(np.uint8)
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _unknown_message(chars: str) -> str:
    shown = ", ".join(repr(c) for c in chars[:10])
    more = f" and {len(chars) - 10} more" if len(chars) > 10 else ""
    n = len(chars)
    return f"{n} character{'s' if n > 1 else ''} not in the vocabulary: {shown}{more}"


class Vocab:
    """Characters <-> ids: itos[i] is the character with id i, stoi its inverse."""

    def __init__(self, chars: list[str]) -> None:
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise CharlmError(f"a vocabulary entry must be one character, got {c!r}")
        if len(set(chars)) != len(chars):
            raise CharlmError("the vocabulary lists a character twice")
        self.itos = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self.dtype = id_dtype(self.vocab_size)
        self._code = code_points("".join(self.itos))  # id -> code point
        top = int(self._code.max()) + 1 if self.vocab_size else 0
        # code point -> id, -1 if unknown; the extra last slot stands for every code above
        self._lut = np.full(top + 1, -1, np.int32)
        self._lut[self._code] = np.arange(self.vocab_size, dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        """The sorted set of text's characters."""
        return cls(list(from_code_points(np.flatnonzero(np.bincount(code_points(text))))))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({''.join(self.itos)!r})"

    def ids(self, codes: np.ndarray) -> np.ndarray:
        """int32 ids of an array of code points, -1 for those not in the vocabulary."""
        return self._lut[np.minimum(codes, len(self._lut) - 1)]

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """text as ids; characters not in the vocabulary are an error, or dropped."""
        if unknown not in ("error", "drop"):
            raise ValueError(f"unknown must be 'error' or 'drop', got {unknown!r}")
        codes = code_points(text)
        ids = self.ids(codes)
        bad = ids < 0
        if bad.any():
            if unknown == "error":
                raise CharlmError(_unknown_message(from_code_points(np.unique(codes[bad]))))
            ids = ids[~bad]
        return ids.astype(self.dtype)

    def decode(self, ids) -> str:
        """The text of a sequence of ids."""
        a = np.asarray(ids).ravel()
        if a.size == 0:
            return ""
        if a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= self.vocab_size:
            raise ValueError(f"ids must be integers in [0, {self.vocab_size})")
        return from_code_points(self._code[a])

    def unknown_chars(self, text: str) -> list[str]:
        """The sorted distinct characters of text that are not in the vocabulary."""
        codes = code_points(text)
        return list(from_code_points(np.unique(codes[self.ids(codes) < 0])))
