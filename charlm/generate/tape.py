"""Tapes: where a server's batch writes each stream's characters, for other threads to read.

A server steps every stream in one Batch on one thread; a request's own thread turns its
stream's characters into text. Between them sits a Tape: one row per stream, holding the
index and log-probability of each character drawn so far and their count. After each step one
small kernel (record) copies the running streams' draws into their rows, so the stepping
thread does no Python per character; the reading thread takes the new part of its row when it
likes, many characters at once.

A row is as long as its stream's max_new_chars (8 + 8 bytes a character): the service caps
that (MAX_NEW_TOKENS), so 64 streams of 2048 characters take 2 MiB. Rows never move while a
reader may hold them: growing the tape copies every row into new arrays and then swaps them in
at once (Tape.arrays), so a reader that took the old ones reads a frozen, consistent copy.
"""

import threading
from typing import NamedTuple

import numba as nb
import numpy as np

from charlm.generate import kernels as GK
from charlm.generate.batch import Batch
from charlm.generate.packing import PackedModel, Primed
from charlm.generate.settings import SampleSettings
from charlm.kernels import STEP


class Rows(NamedTuple):
    """A tape's arrays: R rows of W characters."""

    ids: np.ndarray  # (R, W) int64: the characters' indices, in the order drawn
    logp: np.ndarray  # (R, W) float64: each one's log-probability under softmax(logits)
    count: np.ndarray  # (R,) int64: characters written so far (the reader's high-water mark)
    limit: np.ndarray  # (R,) int64: max_new_chars; the row takes no more


@nb.njit(**STEP)
def record(row, x, logp, t):
    """Append each running stream's draw to its row; the number of rows now full.

    Parameters
    ----------
    row : (B,) int64, the tape row of each running stream (Batch.tag[:B])
    x, logp : (B,) the step's characters and their log-probabilities (Batch.x, Batch.logp)
    t : Rows

    Every row's characters are written before any count is raised: a reader that sees a
    count finds the characters below it in place.
    """
    B = row.shape[0]
    for n in range(B):
        r = row[n]
        j = t.count[r]
        if j < t.limit[r]:
            t.ids[r, j] = x[n]
            t.logp[r, j] = logp[n]
    full = 0
    for n in range(B):
        r = row[n]
        if t.count[r] < t.limit[r]:
            t.count[r] += 1
        if t.count[r] >= t.limit[r]:
            full += 1
    return full


class Tape:
    """Rows for streams, taken by alloc() and given back by free() (on the stepping thread)."""

    def __init__(self, rows: int = 8, width: int = 256) -> None:
        self.arrays = Rows(np.zeros((rows, width), np.int64), np.zeros((rows, width)),
                           np.zeros(rows, np.int64), np.zeros(rows, np.int64))
        self._free = list(range(rows - 1, -1, -1))
        self._lock = threading.Lock()  # alloc and free may come from the engine or a reader

    def alloc(self, limit: int) -> int:
        """A fresh row for a stream of at most limit characters, growing the tape if needed."""
        with self._lock:
            t = self.arrays
            R, W = t.ids.shape
            if not self._free or limit > W:
                self._grow(2 * R if not self._free else R, max(W, limit))
                t = self.arrays
            r = self._free.pop()
            t.count[r] = 0
            t.limit[r] = limit
            return r

    def free(self, row: int) -> None:
        with self._lock:
            self._free.append(row)

    def _grow(self, rows: int, width: int) -> None:
        old = self.arrays
        R, W = old.ids.shape
        new = Rows(np.zeros((rows, width), np.int64), np.zeros((rows, width)),
                   np.zeros(rows, np.int64), np.zeros(rows, np.int64))
        new.ids[:R, :W] = old.ids
        new.logp[:R, :W] = old.logp
        new.count[:R] = old.count
        new.limit[:R] = old.limit
        self._free = [*range(rows - 1, R - 1, -1), *self._free]
        self.arrays = new  # one assignment: readers see the old arrays or the new, whole

    def read(self, row: int, start: int) -> tuple[list[int], list[float]]:
        """The characters of row from start on, as written so far: (ids, logps)."""
        t = self.arrays
        end = int(t.count[row])
        return t.ids[row, start:end].tolist(), t.logp[row, start:end].tolist()

    def count(self, row: int) -> int:
        return int(self.arrays.count[row])


class TapedBatch(Batch):
    """A Batch whose step writes the running streams' draws into a Tape and builds nothing:
    each stream is added with its tape row (its tag), and step() returns how many rows are now
    full (their streams reached max_new_chars and should be removed).

    A stream that asked for top_n alternatives also gets them appended to a list of its own
    each step: Python per character, but only for the streams that asked.
    """

    def __init__(self, packed: PackedModel, tape: Tape, capacity: int = 8) -> None:
        super().__init__(packed, capacity)
        self.tape = tape
        self._tops: dict[int, list] = {}  # sid -> its list of top_n tuples
        self._record = None  # record's compiled code (the types never change)

    def add_taped(self, primed: Primed, settings: SampleSettings, row: int,
                  tops: list | None = None) -> int:
        """Add a stream that writes to tape row `row` (and, with top_n, appends to tops)."""
        sid = self.add(primed, settings, tag=row)
        if settings.top_n and tops is not None:
            self._tops[sid] = tops
        return sid

    def remove(self, sid: int) -> None:
        super().remove(sid)
        self._tops.pop(sid, None)

    def step(self) -> int:  # type: ignore[override]  # the engine's step: see the class
        n = self.advance()
        if not n:
            return 0
        for sid, tops in self._tops.items():
            s = self._streams[sid]
            if s.slot < n:
                tops.append(self._top(s.slot, s.settings.top_n))
        args = (self.tag[:n], self.x[:n], self.logp[:n], self.tape.arrays)
        if self._record is None:
            self._record = GK.entry_point(record, args)
        return self._record(*args)
