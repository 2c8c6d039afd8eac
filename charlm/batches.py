"""Batches: contiguous streams through an encoded text, for training and for evaluation."""

from collections.abc import Iterator

import numpy as np

from charlm.data import too_short_message
from charlm.errors import CharlmError


class Batcher:
    """batch_size contiguous streams through data, seq_len characters at a time (char-rnn's loader).

    The inputs data[:-1] and targets data[1:] are split into batch_size equal parts of
    stream_len = (len(data) - 1) // batch_size, one per row. Row b of each batch continues row b
    of the one before, so the caller carries the recurrent state from batch to batch. An epoch
    is n_windows = stream_len // seq_len batches (the last stream_len % seq_len characters of
    each part sit out); after it the streams wrap to their starts, epoch goes up, and `wrapped`
    is True for that batch: the caller resets its state. `position` is a small dict of ints;
    Batcher(data, batch_size, seq_len, position=p) goes on with exactly the batches that
    would have followed.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int,
                 position: dict | None = None) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError("batch_size and seq_len must be at least 1")
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.stream_len = max(len(data) - 1, 0) // batch_size
        if self.stream_len < seq_len:
            raise CharlmError(too_short_message("the training text", len(data), batch_size,
                                                seq_len))
        self.n_windows = self.stream_len // seq_len
        # offsets of the first window, (B, T)
        self._window0 = np.arange(batch_size)[:, None] * self.stream_len + np.arange(seq_len)
        self.epoch = 0  # wraps so far: the epoch of the last batch returned
        self.window = 0  # the window of the next batch, in [0, n_windows]
        self.wrapped = False  # the last batch started the streams over
        if position is not None:
            self._restore(position)

    @property
    def position(self) -> dict[str, int]:
        """Where the next batch comes from, and the shape it was for (to check on restore)."""
        return {"epoch": self.epoch, "window": self.window, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "n": len(self.data)}

    def _restore(self, p: dict) -> None:
        want = {"batch_size": self.batch_size, "seq_len": self.seq_len, "n": len(self.data)}
        try:
            epoch, window = int(p["epoch"]), int(p["window"])
            fits = all(int(p.get(k, v)) == v for k, v in want.items())
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            raise CharlmError(f"not a data position: {repr(p)[:80]}") from None
        if not fits or epoch < 0 or not 0 <= window <= self.n_windows:
            raise CharlmError(f"the saved data position {repr(p)[:120]} does not fit this "
                              f"corpus and batch shape ({want})")
        self.epoch, self.window = epoch, window

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y), both (batch_size, seq_len) int64; y[:, t] is the character after x[:, t]."""
        self.wrapped = self.window == self.n_windows
        if self.wrapped:
            self.epoch += 1
            self.window = 0
        idx = self._window0 + self.window * self.seq_len
        self.window += 1
        return self.data[idx].astype(np.int64), self.data[idx + 1].astype(np.int64)


def iter_eval(data: np.ndarray, batch_size: int,
              seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Windows (x, y) over all of data: every character but the first is a target exactly once.

    The len(data) - 1 targets are split into B = min(batch_size, (len(data) - 1) // seq_len)
    (at least 1) streams of equal length, read seq_len at a time (the last window may be
    shorter). The r < B targets an equal split leaves over come first, as one single-row window.
    Every stream starts from a zero state: reset the state whenever x.shape[0] changes, and carry
    it from window to window otherwise.
    """
    n_targets = len(data) - 1
    if n_targets < 1:
        return
    B = min(batch_size, max(1, n_targets // seq_len))
    L, r = divmod(n_targets, B)
    if r:
        yield (np.asarray(data[:r], np.int64)[None, :],
               np.asarray(data[1 : r + 1], np.int64)[None, :])
    starts = r + np.arange(B)[:, None] * L
    for t in range(0, L, seq_len):
        idx = starts + np.arange(t, min(t + seq_len, L))
        yield data[idx].astype(np.int64), data[idx + 1].astype(np.int64)
