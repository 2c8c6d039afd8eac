"""Independent streams advanced together by one thread: slots, stop strings, kernel choice.

The batch keeps each stream's state and settings in per-slot arrays, running streams first,
so a step hands the kernel contiguous rows; it releases each stream's characters as Events,
holding back what may become a stop string, and picks the serial or the threaded kernel by
how fast each has been lately.
"""

import secrets
import time
from typing import NamedTuple

import numpy as np

from charlm.generate import kernels as GK
from charlm.generate.draw import log_softmax, stream_key
from charlm.generate.packing import PackedModel, Primed
from charlm.generate.settings import SampleSettings, Token
from charlm.generate.stops import Stops

# a batch with threads > 1 times its steps, and every PROBE_EVERY steps (or up to 16 times
# as many while the probes keep losing by far) tries the other kernel
PROBE_EVERY = 64


class Event(NamedTuple):
    """What one stream of a Batch produced in a step."""

    stream: int
    tokens: tuple[Token, ...]  # released text (a possible stop string's start is held back)
    finish_reason: str | None  # "length" or "stop" when the stream just finished


class _Stream:
    """The Python side of one stream: its run's settings, count, and held-back text."""

    __slots__ = ("id", "slot", "settings", "seed", "n_new", "stops", "done")

    def __init__(self, sid: int, slot: int) -> None:
        self.id, self.slot = sid, slot
        self.settings: SampleSettings | None = None
        self.seed = 0
        self.n_new = 0
        self.stops: Stops[Token] = Stops(())
        self.done = True

    def push(self, tok: Token) -> tuple[tuple[Token, ...], str | None]:
        """Take a drawn character; return the text now safe to release and a finish reason."""
        self.n_new += 1
        full = self.n_new >= self.settings.max_new_chars
        if not self.stops.strings:
            return (tok,), "length" if full else None
        out, stopped = self.stops.push(tok)
        if stopped:
            return tuple(out), "stop"
        if full:
            return (*out, *self.stops.flush()), "length"
        return tuple(out), None


class _Choice:
    """Serial or threaded step kernel, for one range of batch sizes: the faster lately.

    Each step times the kernel it ran; every `every` steps the other one is run instead (a
    probe), so a change in the machine's load is noticed.
    """

    __slots__ = ("seconds", "threaded", "every", "since")

    def __init__(self, threaded: bool) -> None:
        # seconds per stream-step of the serial and the threaded kernel (moving averages;
        # 0: unknown)
        self.seconds = [0.0, 0.0]
        self.threaded = threaded
        self.every = PROBE_EVERY
        self.since = 0

    def next(self) -> tuple[bool, bool]:
        """Whether to run the threaded kernel next, and whether that is a probe."""
        self.since += 1
        if self.since >= self.every or not self.seconds[not self.threaded]:
            self.since = 0
            return not self.threaded, True
        return self.threaded, False

    def record(self, threaded: bool, probe: bool, dt: float) -> bool:
        """Take a step's seconds per stream; whether the threaded kernel is now the choice."""
        # a fast step shows what the kernel can do at once; slow ones count in gradually
        avg = self.seconds[threaded]
        self.seconds[threaded] = min(dt, 0.75 * avg + 0.25 * dt) if avg else dt
        was, self.threaded = self.threaded, self.seconds[True] <= self.seconds[False]
        if probe:
            # a probe that loses by far is tried again later and later: on a busy machine a
            # threaded probe can cost a hundred serial steps. One that only just lost (to a
            # moment's noise, or the server's own request threads) is tried at the usual pace.
            lost_by_far = self.threaded == was and 0 < 2 * self.seconds[was] < dt
            self.every = min(16 * PROBE_EVERY, 2 * self.every) if lost_by_far else PROBE_EVERY
        return self.threaded


class Batch:
    """Independent streams advanced together: each step reads the weights once for all of them.

    A server adds a stream per request, steps the batch in a loop, sends each event's tokens to
    its client, and removes a stream when it finishes or the client goes away:

        sid = batch.add(prompt, SampleSettings(temperature=0.8, seed=7, max_new_chars=300))
        while len(batch.running):
            for ev in batch.step():
                send(ev.stream, "".join(t.char for t in ev.tokens))
                if ev.finish_reason:
                    batch.remove(ev.stream)

    Streams may be added and removed between any two steps. A finished stream keeps its state
    (start() continues it with new settings) until it is removed. Not thread-safe: one thread
    drives a batch.
    """

    def __init__(self, packed: PackedModel, capacity: int = 4) -> None:
        self.packed = packed
        self._capacity = 0
        self._streams: dict[int, _Stream] = {}
        self._at: list[_Stream] = []  # slot -> stream: running streams first, then finished
        self._n_running = 0
        self._next_id = 0
        self._finished: list[Event] = []  # streams that finished before their first step
        self._args: tuple | None = None
        self._kernels: tuple | None = None  # the compiled serial and threaded step
        # which kernel has been the faster, per range of batch sizes (see _Choice)
        self._choices: dict[int, _Choice] = {}
        self._threaded = packed.threads > 1  # the last choice, for reading prompts
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        """(Re)allocate every per-slot array for capacity streams, keeping the streams' state."""
        cfg = self.packed.config
        L, H, V = cfg.n_layer, cfg.n_hidden, self.packed.vocab_size
        f32 = np.float32
        # per-stream state and settings (the kernels' State and Draw), which move with their
        # stream when slots are reordered
        state = {"x": ((), np.int64), "h": ((L, H), f32), "c": ((L, self.packed.c_units), f32),
                 "temperature": ((), np.float64), "top_k": ((), np.int64),
                 "top_p": ((), np.float64), "key": ((), np.uint64), "counter": ((), np.uint64),
                 "tag": ((), np.int64)}  # the caller's number for the stream (a tape row)
        for name, (shape, dtype) in state.items():
            new = np.zeros((capacity, *shape), dtype)
            if self._capacity:
                new[: len(self._at)] = getattr(self, name)[: len(self._at)]
            setattr(self, name, new)
        self._state_names = tuple(state)
        # per-step outputs and workspaces
        self.h_new = np.zeros((capacity, L, H), f32)
        self.z = np.zeros((capacity, self.packed.z_width), f32)
        self.logits = np.zeros((capacity, V), f32)
        self.p = np.zeros((capacity, V), np.float64)
        self.order = np.zeros((capacity, V), np.int64)
        self.logp = np.zeros(capacity, np.float64)
        self._capacity = capacity
        self._args = None

    def _swap(self, i: int, j: int) -> None:
        if i == j:
            return
        for name in self._state_names:
            a = getattr(self, name)
            a[[i, j]] = a[[j, i]]
        self._at[i], self._at[j] = self._at[j], self._at[i]
        self._at[i].slot, self._at[j].slot = i, j

    def _kernel_args(self) -> tuple:
        """The step kernel's arguments over the running slots, rebuilt when they change, and
        the serial and threaded kernels' compiled code for them."""
        if self._args is None:
            n = self._n_running
            self._args = (self.packed.weights,
                          GK.State(self.x[:n], self.h[:n], self.c[:n]),
                          GK.Draw(self.temperature[:n], self.top_k[:n], self.top_p[:n],
                                  self.key[:n], self.counter[:n]),
                          GK.Work(self.h_new[:n], self.z[:n], self.logits[:n], self.p[:n],
                                  self.order[:n], self.logp[:n]))
            self._drawn = (self.x[:n], self.logp[:n])
            if self._kernels is None:  # the types stay: the same dtypes, contiguous rows
                self._kernels = (GK.entry_point(GK.step, self._args),
                                 GK.entry_point(GK.step_threads, self._args)
                                 if self.packed.threads > 1 else None)
        return self._args

    @property
    def running(self) -> list[int]:
        """Ids of the streams that the next step advances."""
        return [s.id for s in self._at[: self._n_running]]

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, sid: int) -> bool:
        return sid in self._streams

    def add(self, prompt: str | Primed = "", settings: SampleSettings | None = None,
            drop_unknown: bool = False, tag: int = -1) -> int:
        """Add a stream that has read prompt; start it with settings (or later with start()).
        tag is the caller's own number for it, kept beside its state (see advance()).

        Raises CharlmError for characters outside the vocabulary (unless drop_unknown) before
        anything changes. The prompt is read now (PackedModel.read), unless it was read
        already (a Primed from PackedModel.read); then its state is copied in.
        """
        primed = prompt if isinstance(prompt, Primed) else \
            self.packed.read(prompt, drop_unknown, threaded=self._threaded)
        if len(self._at) == self._capacity:
            self._grow(2 * self._capacity)
        slot = len(self._at)
        s = _Stream(self._next_id, slot)
        self._next_id += 1
        self._streams[s.id] = s
        self._at.append(s)
        self.x[slot], self.h[slot], self.c[slot] = primed
        self.tag[slot] = tag
        if settings is not None:
            self.start(s.id, settings)
        return s.id

    def start(self, sid: int, settings: SampleSettings) -> int:
        """Start a new run of stream sid from its current state; returns the run's seed."""
        s = self._streams[sid]
        seed = secrets.randbits(63) if settings.seed is None else settings.seed
        s.settings, s.seed, s.n_new, s.stops = settings, seed, 0, Stops(settings.stop)
        slot = s.slot
        self.temperature[slot] = settings.temperature
        self.top_k[slot] = settings.top_k
        self.top_p[slot] = settings.top_p
        self.key[slot] = stream_key(seed)
        self.counter[slot] = 0
        if settings.max_new_chars == 0:
            self._finish(s)
            self._finished.append(Event(sid, (), "length"))
        elif s.done:
            s.done = False
            self._swap(slot, self._n_running)
            self._n_running += 1
            self._args = None
        return seed

    def seed(self, sid: int) -> int:
        """The seed of stream sid's current run (drawn at random when its settings had none)."""
        return self._streams[sid].seed

    def _finish(self, s: _Stream) -> None:
        if not s.done:
            s.done = True
            self._n_running -= 1
            self._swap(s.slot, self._n_running)
            self._args = None

    def remove(self, sid: int) -> None:
        """Forget stream sid (finished or not); its slot is reused."""
        s = self._streams.pop(sid)
        self._finish(s)
        last = len(self._at) - 1
        self._swap(s.slot, last)
        self._at.pop()
        self._finished = [ev for ev in self._finished if ev.stream != sid]

    def advance(self) -> int:
        """Run the step kernel over the running streams and nothing else; how many ran.

        Their characters and log-probabilities are then in x[:n] and logp[:n], slot by slot,
        and tag[:n] says whose they are (slots move as streams come and go). Stop strings and
        max_new_chars are the caller's to apply (step() does that).
        """
        if self._n_running == 0:
            return 0
        self._run_step(self._kernel_args())
        return self._n_running

    def step(self) -> list[Event]:
        """Advance every running stream by one character; one event per stream with news."""
        events, self._finished = self._finished, []
        if not self.advance():
            return events
        itos, at, done = self.packed.itos, self._at, []
        x, logp = self._drawn  # the running slots' characters and their log-probabilities
        for slot, (v, lp) in enumerate(zip(x.tolist(), logp.tolist(), strict=True)):
            s = at[slot]
            top_n = s.settings.top_n
            tokens, reason = s.push(Token(itos[v], lp, self._top(slot, top_n) if top_n else ()))
            if tokens or reason:
                events.append(Event(s.id, tokens, reason))
                if reason:
                    done.append(s)
        for s in done:
            self._finish(s)
        return events

    def _run_step(self, args: tuple) -> None:
        """The step kernel: serial, or threaded when that has been the faster lately."""
        serial, threaded_kernel = self._kernels
        if threaded_kernel is None:
            serial(*args)
            return
        B = self._n_running
        # a step takes longer with more streams: only like is compared with like
        choice = self._choices.setdefault(B.bit_length(), _Choice(self._threaded))
        threaded, probe = choice.next()
        t0 = time.perf_counter()
        (threaded_kernel if threaded else serial)(*args)
        self._threaded = choice.record(threaded, probe, (time.perf_counter() - t0) / B)

    def _top(self, slot: int, n: int) -> tuple[tuple[str, float], ...]:
        lp = log_softmax(self.logits[slot])
        order = np.argsort(-lp, kind="stable")[:n]
        return tuple((self.packed.itos[v], float(lp[v])) for v in order)
