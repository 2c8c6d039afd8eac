"""Generation: a streaming sampler, batches of streams for a server, next-character distributions.

    gen = Generator(model, itos)
    gen.prime("ROMEO:")
    for tok in gen.generate(temperature=0.8, seed=1, max_new_chars=200, stop=["\\n\\n"]):
        print(tok.char, end="", flush=True)
    gen.finish_reason  # "length" or "stop"

A stream starts from the zero state, reads its prompt, and then draws one character per step.
An empty prompt starts from the zero state itself: the first character is drawn from
softmax(b_y / temperature), what the head says about a zero hidden state.

Every stream, alone (Generator) or among others (Batch), runs through the same kernel, whose
per-stream arithmetic does not depend on the batch, and draws its random numbers from its own
counter-based generator: the same model, prompt, settings and seed give the same text whether
the stream runs alone or in a batch, in this process or another on a machine of the same kind.
"""

import dataclasses
import importlib
import math
import numbers
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TextIO

import numba as nb
import numpy as np

from charlm import sampling as S
from charlm.errors import CharlmError
from charlm.model import CELLS, CharLSTM

# about one core's L2: weights beyond it stream from L3, which two cores read faster than one
PART_BYTES = 1 << 20
# a batch with threads > 1 times its steps, and every PROBE_EVERY steps (or up to 16 times
# as many while the probes keep losing by far) tries the other kernel
PROBE_EVERY = 64


@dataclass(frozen=True)
class SampleSettings:
    """How a stream draws its characters; invalid values raise CharlmError on construction."""

    temperature: float = 1.0  # divides the logits; 0 is greedy (argmax)
    top_k: int = 0  # keep only the k most probable characters; 0 keeps all
    top_p: float = 1.0  # nucleus: keep the fewest most probable characters with mass >= top_p
    seed: int | None = None  # None draws a fresh one (reported back, so a run can be repeated)
    max_new_chars: int = 500  # characters to draw at most
    stop: tuple[str, ...] = ()  # end at the first of these, which is left out of the text
    top_n: int = 0  # report each character's n most probable alternatives too

    def __post_init__(self) -> None:
        # a single string is one stop string, not a set of one-character ones
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        t = self.temperature
        if not _is_real(t) or not math.isfinite(t) or t < 0:
            raise CharlmError(f"temperature must be a finite number >= 0, got {t!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise CharlmError(f"top_k must be an integer >= 0 (0 keeps all), got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise CharlmError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            raise CharlmError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if not _is_int(self.max_new_chars) or self.max_new_chars < 0:
            raise CharlmError(f"max_new_chars must be an integer >= 0, got {self.max_new_chars!r}")
        if not all(isinstance(s, str) and s for s in stop):
            raise CharlmError(f"stop strings must be non-empty strings, got {stop!r}")
        if not _is_int(self.top_n) or self.top_n < 0:
            raise CharlmError(f"top_n must be an integer >= 0, got {self.top_n!r}")


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class Token(NamedTuple):
    """One generated character and what the model thought of it.

    logprob and top are under the model's own distribution softmax(logits): temperature 1,
    before top-k and top-p, so they measure the model whatever the sampling settings.
    """

    char: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # top_n (char, logprob), most probable first


class Event(NamedTuple):
    """What one stream of a Batch produced in a step."""

    stream: int
    tokens: tuple[Token, ...]  # released text (a possible stop string's start is held back)
    finish_reason: str | None  # "length" or "stop" when the stream just finished


class Completion(NamedTuple):
    text: str
    tokens: list[Token]
    finish_reason: str
    seed: int


class Primed(NamedTuple):
    """A stream's state after reading a prompt, away from any batch (PackedModel.read)."""

    x: int  # the prompt's last character, which the first step feeds (-1: empty prompt)
    h: np.ndarray  # (L, H)
    c: np.ndarray  # (L, H), or (L, 0) for cells without a cell state


@dataclass
class Distribution:
    """The next-character distribution after a prompt."""

    probs: np.ndarray  # (V,) float64 softmax(logits / temperature); one-hot at temperature 0
    itos: list[str]
    temperature: float

    @property
    def entropy(self) -> float:
        """H = -sum_v p_v log p_v, in nats."""
        p = self.probs[self.probs > 0]
        return float(-(p * np.log(p)).sum())

    def top(self, n: int | None = None) -> list[tuple[str, float]]:
        """The n most probable (char, prob), most probable first (all of them for None)."""
        order = np.argsort(-self.probs, kind="stable")[:n]
        return [(self.itos[v], float(self.probs[v])) for v in order]


# --------------------------------------------------------------------------------------------
# the packed model


def threadsafe_pool() -> bool:
    """Whether numba's thread pool will be tbb or omp (workqueue is not thread-safe, and slow).

    Decided from the configuration, without starting the pool, which is not fork-safe.
    """
    layer = str(nb.config.THREADING_LAYER).lower()
    if layer in ("tbb", "omp", "safe", "threadsafe", "forksafe"):
        return True  # numba refuses to run rather than fall back
    if layer == "workqueue":
        return False
    for name in nb.config.THREADING_LAYER_PRIORITY:
        if name == "workqueue":
            return False
        try:
            importlib.import_module(f"numba.np.ufunc.{name}pool")
            return True
        except ImportError:
            continue
    return False


def default_threads(weight_bytes: int) -> int:
    """One part per PART_BYTES of weights, at most one per numba thread, if the pool is safe."""
    if not threadsafe_pool():
        return 1
    return max(1, min(nb.config.NUMBA_NUM_THREADS, weight_bytes // PART_BYTES))


class PackedModel:
    """A model's weights laid out for the step kernel (float32), built once, shared read-only.

    threads: parts each layer is split into, run one per thread; None gives one part per
    PART_BYTES of weights (what outgrows a core's L2), at most one per numba thread: 1 for
    2x128, 2 for 2x512 on two cores. Results do not depend on it, nor on whether the parts
    run on one thread or several, so each Batch picks, as it goes, whichever of the threaded
    and the serial kernel has been faster lately: on a busy machine a fork-join step waits for
    a descheduled thread and can be many times slower than one core alone. A server either
    runs all its streams in one Batch driven by one Python thread (which then gets every core
    from threads), or drives streams from several Python threads with threads=1 (the kernels
    release the GIL).
    """

    def __init__(self, model: CharLSTM, itos: Sequence[str], threads: int | None = None) -> None:
        cfg = model.config
        L, H, V = cfg.n_layer, cfg.n_hidden, cfg.vocab_size
        G = CELLS[cfg.cell].blocks  # gate blocks: 4 for an LSTM
        if len(itos) != V:
            raise CharlmError(f"itos has {len(itos)} characters but the model's vocabulary {V}")
        if any(len(ch) != 1 for ch in itos):
            raise CharlmError("every entry of itos must be a single character")
        self.itos = list(itos)
        self.stoi = {ch: v for v, ch in enumerate(self.itos)}
        self.config = cfg
        if threads is None:
            # what one step reads: U, W, the head, and a row of E W0 + b0
            nbytes = 4 * ((2 * L - 1) * H * G * H + (H + 1) * V + G * H)
            threads = default_threads(nbytes)
        if not isinstance(threads, numbers.Integral) or threads < 1:
            raise CharlmError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = int(threads)
        self.bounds = S.unit_bounds(H, self.threads)
        p = {name: w.astype(np.float32) for name, w in model.params.items()}
        perm = S.block_columns(H, G)
        # x_t = E[idx], so layer 0's input part x_t W0 + b0 is a row of E W0 + b0
        self.EW = np.ascontiguousarray((p["E"] @ p["W0"] + p["b0"])[:, perm])
        self.U = np.stack([S.pack_panels(p[f"U{l}"][:, perm], self.bounds, G) for l in range(L)])
        # layers above the first: input weights and biases (none for a single layer)
        self.W = np.zeros((L - 1, *self.U.shape[1:]), np.float32)
        self.b = np.zeros((L - 1, G * H), np.float32)
        for l in range(1, L):
            self.W[l - 1] = S.pack_panels(p[f"W{l}"][:, perm], self.bounds, G)
            self.b[l - 1] = p[f"b{l}"][perm]
        # the cell's parameters per unit: peepholes, or the GRU's b_hn (none for the others)
        self.P = np.zeros((L, 3, H if cfg.cell in ("peephole", "gru") else 0), np.float32)
        for l in range(L):
            if cfg.cell == "peephole":
                self.P[l] = p[f"P{l}"]
            if cfg.cell == "gru":
                self.P[l, 0] = p[f"bh{l}"]
        self.Wy = S.as_panels(p["Wy"])
        self.by = np.ascontiguousarray(p["by"])
        self.kind = S.KINDS[cfg.cell]
        # per stream: cell-state units (gru and rnn keep none), and the step's accumulators z
        # (the GRU keeps x W + b and h U apart, twice the gate columns)
        self.c_units = H if CELLS[cfg.cell].has_c else 0
        self.z_width = (2 if cfg.cell == "gru" else 1) * G * H
        self.weights = (self.kind, self.EW, self.U, self.W, self.b, self.P)
        self.head = (self.Wy, self.by)
        self._step = S.step_threads if self.threads > 1 else S.step
        self._prime = S.prime_threads if self.threads > 1 else S.prime

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, drop_unknown: bool = False) -> np.ndarray:
        """Character indices of text.

        Characters outside the vocabulary raise CharlmError listing them, or are dropped with
        drop_unknown.
        """
        unknown = [ch for ch in dict.fromkeys(text) if ch not in self.stoi]
        if unknown and not drop_unknown:
            listed = ", ".join(repr(ch) for ch in unknown)
            raise CharlmError(f"the prompt has characters that are not in the vocabulary: "
                              f"{listed} (drop them with drop_unknown)")
        return np.array([self.stoi[ch] for ch in text if ch in self.stoi], np.int64)

    def read(self, prompt: str, drop_unknown: bool = False, threaded: bool = False) -> Primed:
        """Read prompt on the calling thread, with the serial kernel (which releases the GIL),
        or the threaded one.

        A server reads each request's prompt on the request's own thread and hands the
        result to Batch.add, so a long prompt never holds up the streams already running.
        The state is the one either kernel reaches, bit for bit.
        """
        idx = self.encode(prompt, drop_unknown)
        L, H = self.config.n_layer, self.config.n_hidden
        f32 = np.float32
        x = np.zeros(1, np.int64)
        h, h_new = np.zeros((1, L, H), f32), np.zeros((1, L, H), f32)
        c = np.zeros((1, L, self.c_units), f32)
        z = np.zeros((1, self.z_width), f32)
        prime = S.prime_threads if threaded and self.threads > 1 else S.prime
        prime(*self.weights, self.bounds, idx, x, h, c, h_new, z)
        return Primed(int(x[0]), h[0], c[0])


# --------------------------------------------------------------------------------------------
# streams and batches


class _Stream:
    """The Python side of one stream: its run's settings, count, and held-back text."""

    __slots__ = ("id", "slot", "settings", "seed", "n_new", "held", "held_text", "done")

    def __init__(self, sid: int, slot: int) -> None:
        self.id, self.slot = sid, slot
        self.settings: SampleSettings | None = None
        self.seed = 0
        self.n_new = 0
        self.held: list[Token] = []
        self.held_text = ""
        self.done = True

    def push(self, tok: Token) -> tuple[tuple[Token, ...], str | None]:
        """Take a drawn character; return the text now safe to release and a finish reason."""
        self.n_new += 1
        settings = self.settings
        full = self.n_new >= settings.max_new_chars
        if not settings.stop:
            return (tok,), "length" if full else None
        self.held.append(tok)
        self.held_text += tok.char
        text = self.held_text
        # a stop string can only have completed with this character: cut at the earliest start
        cut = min((len(text) - len(s) for s in settings.stop if text.endswith(s)), default=None)
        if cut is not None:
            out = tuple(self.held[:cut])
            self.held, self.held_text = [], ""
            return out, "stop"
        if full:
            out = tuple(self.held)
            self.held, self.held_text = [], ""
            return out, "length"
        # hold back the longest tail that may still grow into a stop string
        keep = 0
        for s in settings.stop:
            for k in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:k]):
                    keep = k
                    break
        n_out = len(self.held) - keep
        out = tuple(self.held[:n_out])
        self.held, self.held_text = self.held[n_out:], text[n_out:]
        return out, None


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
        # which kernel has been the faster, per range of batch sizes (see _Choice)
        self._choices: dict[int, _Choice] = {}
        self._threaded = packed.threads > 1  # the last choice, for reading prompts
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        """(Re)allocate every per-slot array for capacity streams, keeping the streams' state."""
        cfg = self.packed.config
        L, H, V = cfg.n_layer, cfg.n_hidden, self.packed.vocab_size
        f32 = np.float32
        # per-stream state, which moves with its stream when slots are reordered
        state = {"x": ((), np.int64), "h": ((L, H), f32), "c": ((L, self.packed.c_units), f32),
                 "temperature": ((), np.float64), "top_k": ((), np.int64),
                 "top_p": ((), np.float64), "key": ((), np.uint64), "counter": ((), np.uint64)}
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
        """The step kernel's arguments over the running slots, rebuilt when they change."""
        if self._args is None:
            n, pk = self._n_running, self.packed
            self._args = (*pk.weights, *pk.head, pk.bounds, self.x[:n], self.h[:n], self.c[:n],
                          self.h_new[:n], self.z[:n], self.temperature[:n], self.top_k[:n],
                          self.top_p[:n], self.key[:n], self.counter[:n], self.logits[:n],
                          self.p[:n], self.order[:n], self.logp[:n])
            self._drawn = (self.x[:n], self.logp[:n])
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
            drop_unknown: bool = False) -> int:
        """Add a stream that has read prompt; start it with settings (or later with start()).

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
        if settings is not None:
            self.start(s.id, settings)
        return s.id

    def start(self, sid: int, settings: SampleSettings) -> int:
        """Start a new run of stream sid from its current state; returns the run's seed."""
        s = self._streams[sid]
        seed = secrets.randbits(63) if settings.seed is None else settings.seed
        s.settings, s.seed, s.n_new, s.held, s.held_text = settings, seed, 0, [], ""
        slot = s.slot
        self.temperature[slot] = settings.temperature
        self.top_k[slot] = settings.top_k
        self.top_p[slot] = settings.top_p
        self.key[slot] = S.stream_key(seed)
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

    def step(self) -> list[Event]:
        """Advance every running stream by one character; one event per stream with news."""
        events, self._finished = self._finished, []
        if self._n_running == 0:
            return events
        args = self._kernel_args()
        self._run_step(args)
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
        if self.packed.threads == 1:
            S.step(*args)
            return
        B = self._n_running
        # a step takes longer with more streams: only like is compared with like
        choice = self._choices.setdefault(B.bit_length(), _Choice(self._threaded))
        threaded, probe = choice.next()
        t0 = time.perf_counter()
        (S.step_threads if threaded else S.step)(*args)
        self._threaded = choice.record(threaded, probe, (time.perf_counter() - t0) / B)

    def _top(self, slot: int, n: int) -> tuple[tuple[str, float], ...]:
        lp = log_softmax(self.logits[slot])
        order = np.argsort(-lp, kind="stable")[:n]
        return tuple((self.packed.itos[v], float(lp[v])) for v in order)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax in float64."""
    z = z.astype(np.float64)
    z -= z.max()
    return z - np.log(np.exp(z).sum())


# --------------------------------------------------------------------------------------------
# one stream


class Generator:
    """One stream over a model: prime it with a prompt, then iterate over what it draws.

    The generator holds the recurrent state: a second generate() continues from where the
    first left off (after the last character drawn, stop string included), with new settings.
    """

    def __init__(self, model: CharLSTM, itos: Sequence[str], threads: int | None = None) -> None:
        self.packed = PackedModel(model, itos, threads)
        self._batch = Batch(self.packed, capacity=1)
        self._sid: int | None = None
        self.finish_reason: str | None = None
        self.seed: int | None = None

    @classmethod
    def from_packed(cls, packed: PackedModel) -> "Generator":
        """A generator sharing an already packed model (packing is done once per model)."""
        gen = cls.__new__(cls)
        gen.packed = packed
        gen._batch = Batch(packed, capacity=1)
        gen._sid, gen.finish_reason, gen.seed = None, None, None
        return gen

    def prime(self, prompt: str = "", drop_unknown: bool = False) -> None:
        """Reset to the zero state and read prompt (see Batch.add for unknown characters)."""
        sid = self._batch.add(prompt, None, drop_unknown)  # validates before we drop the old
        if self._sid is not None:
            self._batch.remove(self._sid)
        self._sid = sid
        self.finish_reason = None

    def generate(self, settings: SampleSettings | None = None, **overrides) -> Iterator[Token]:
        """Draw characters one at a time; overrides are SampleSettings fields.

        Settings are checked here, before the first character. When the iterator is
        exhausted, finish_reason is "length" or "stop" and seed the seed that was used.
        """
        settings = dataclasses.replace(settings or SampleSettings(), **overrides)
        if self._sid is None:
            self.prime("")
        self.finish_reason = None
        self.seed = self._batch.start(self._sid, settings)
        return self._run()

    def _run(self) -> Iterator[Token]:
        step = self._batch.step
        while True:
            for ev in step():
                yield from ev.tokens
                if ev.finish_reason:
                    self.finish_reason = ev.finish_reason
                    return

    def complete(self, prompt: str = "", settings: SampleSettings | None = None,
                 drop_unknown: bool = False, **overrides) -> Completion:
        """Prime with prompt and generate to the end, without streaming."""
        self.prime(prompt, drop_unknown)
        tokens = list(self.generate(settings, **overrides))
        return Completion("".join(t.char for t in tokens), tokens, self.finish_reason, self.seed)

    def distribution(self, prompt: str = "", temperature: float = 1.0,
                     drop_unknown: bool = False) -> Distribution:
        """The distribution of the character after prompt (leaves this generator's state be)."""
        return next_distribution(self.packed, prompt, temperature, drop_unknown)


def next_distribution(packed: PackedModel, prompt: str = "", temperature: float = 1.0,
                      drop_unknown: bool = False) -> Distribution:
    """softmax(logits / temperature) of the character after prompt; one-hot at temperature 0."""
    SampleSettings(temperature=temperature)  # validates
    batch = Batch(packed, capacity=1)
    batch.add(prompt, SampleSettings(temperature=0.0, seed=0, max_new_chars=1), drop_unknown)
    batch.step()
    z = batch.logits[0].astype(np.float64)
    if temperature == 0:
        probs = np.zeros_like(z)
        probs[np.argmax(z)] = 1.0
    else:
        probs = np.exp(log_softmax(z / temperature))
    return Distribution(probs, packed.itos, float(temperature))


# --------------------------------------------------------------------------------------------
# for the command line


def visible(ch: str) -> str:
    """A character as it can be seen in a table: repr without quotes, and space as a quoted ' '."""
    if ch == " ":
        return "' '"
    return repr(ch)[1:-1]


def distribution_table(dist: Distribution, top_n: int | None = None):
    """A rich Table of the distribution: character, probability, most probable first."""
    from rich.table import Table

    table = Table(title=f"next character  (temperature {dist.temperature:g}, "
                        f"entropy {dist.entropy:.3f} nats)")
    table.add_column("char")
    table.add_column("prob", justify="right")
    for ch, prob in dist.top(top_n):
        table.add_row(visible(ch), f"{prob:.4f}")
    return table


def print_sample(gen: Generator, prompt: str, settings: SampleSettings,
                 file: TextIO | None = None, drop_unknown: bool = False) -> Completion:
    """Print prompt, then each character as it is drawn; return the completion."""
    file = file or sys.stdout
    gen.prime(prompt, drop_unknown)
    file.write(prompt)
    tokens = []
    for tok in gen.generate(settings):
        file.write(tok.char)
        file.flush()
        tokens.append(tok)
    if tokens and tokens[-1].char != "\n":
        file.write("\n")
    file.flush()
    return Completion("".join(t.char for t in tokens), tokens, gen.finish_reason, gen.seed)
