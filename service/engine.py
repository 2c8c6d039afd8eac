"""One background thread per model that steps every active stream together, one character a step.

The thread does kernel work only: it admits new jobs and drops abandoned ones between steps,
and each step runs the model's TapedBatch, whose one extra kernel copies every stream's
character and log-probability into the stream's row of a Tape. Nothing per character is built
there. A request's own thread reads its row when it likes (drain): it turns the characters
drawn since its last read into Tokens, applies the stop strings and max_new_chars, and so pays
for its own stream's Python, many characters at a time, while the kernel runs without the GIL.
"""

import logging
import threading

from charlm.generate import PackedModel, Primed, SampleSettings, Token
from charlm.generate.stops import Stops
from charlm.generate.tape import Tape, TapedBatch

from . import metrics

log = logging.getLogger(__name__)

WAIT_SLICE_S = 1.0  # a waiting reader looks again at least this often (a safety net only)


class Job:
    """One request's stream: what it asked for, and where its characters arrive.

    prompt is best read beforehand (PackedModel.read, on the caller's thread): a str prompt is
    read by the engine's thread, and every running stream waits for it. Read the characters
    with drain(); the stop strings of settings.stop are applied there, on the reader's thread.
    """

    def __init__(self, prompt: str | Primed, settings: SampleSettings,
                 drop_unknown: bool = False) -> None:
        self.prompt, self.settings, self.drop_unknown = prompt, settings, drop_unknown
        self.engine: Engine | None = None
        self.sid: int | None = None  # the stream's id in the batch, while it runs
        self.row: int | None = None  # its tape row, from admission until released
        self.tops: list = []  # with top_n: each character's alternatives, appended by the engine
        self.cancelled = False
        self.done = False  # the engine will write no more (finished, failed or cancelled)
        self.released = False  # the row is given back (cancel()): nothing more to read
        self.error: str | None = None  # why the stream failed; raised by drain after the text
        # the reader's side: characters taken from the tape, and the text held back by stops
        self.taken = 0
        self.stops: Stops[Token] = Stops(settings.stop)
        self.finish_reason: str | None = None


class Engine:
    """A model's Batch driven by one daemon thread; submit() and cancel() from any thread."""

    def __init__(self, packed: PackedModel, name: str = "model") -> None:
        self.packed, self.name = packed, name
        self.tape = Tape()
        self.batch = TapedBatch(packed, self.tape, capacity=8)
        self._cv = threading.Condition()  # the engine's inbox: jobs joining and leaving
        self._news = threading.Condition()  # readers wait here for the next step
        self._waiting = 0  # readers in _news.wait: a step notifies only when there are some
        self._joining: list[Job] = []
        self._leaving: list[Job] = []
        self._jobs: dict[int, Job] = {}  # sid -> running job, touched only by the thread
        self.steps = 0  # batch steps taken (tests watch it stop when clients leave)
        self.chars = 0  # characters drawn
        self._thread = threading.Thread(target=self._loop, name=f"charlm-engine-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Streams waiting to join or running."""
        return len(self._jobs) + len(self._joining)

    def submit(self, job: Job) -> Job:
        job.engine = self
        with self._cv:
            self._joining.append(job)
            self._cv.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop job's stream before the next step and give back its row; once is enough, and
        every job is cancelled when its reader is done with it (Run.close)."""
        with self._cv:
            if job.released:
                return
            job.cancelled = job.released = True
            self._leaving.append(job)
            self._cv.notify()
        self._notify()  # a reader waiting on this job (another thread) sees it end

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._joining or self._leaving or self._jobs):
                    self._cv.wait()
                joining, self._joining = self._joining, []
                leaving, self._leaving = self._leaving, []
            for job in leaving:
                if job.sid is not None and self._jobs.pop(job.sid, None) is not None:
                    self.batch.remove(job.sid)
                job.done = True
                if job.row is not None:
                    self.tape.free(job.row)
            for job in joining:
                if not job.cancelled:
                    self._admit(job)
            if self._jobs:
                self._step()
            elif joining:
                self._notify()
            metrics.on_turn(self, len(self._jobs), len(self._joining), self.chars)

    def _admit(self, job: Job) -> None:
        n = job.settings.max_new_chars
        try:
            job.row = self.tape.alloc(n)
            if n == 0:  # nothing to draw: the reader sees a full row and ends with "length"
                job.done = True
                return
            prompt = job.prompt if isinstance(job.prompt, Primed) else \
                self.packed.read(job.prompt, job.drop_unknown)
            job.sid = self.batch.add_taped(prompt, job.settings, job.row, job.tops)
        except Exception as e:  # the view validated the prompt: this is not the client's fault
            log.exception("cannot start a stream on %s", self.name)
            job.error = f"cannot start generation: {e}"
            job.done = True
            return
        self._jobs[job.sid] = job

    def _step(self) -> None:
        metrics.on_step(self, len(self._jobs))
        try:
            full = self.batch.step()
        except Exception as e:
            # a bug rather than bad input: end the streams it ran with an error, start afresh
            log.exception("generation step failed on %s", self.name)
            self._fail_all(f"generation failed: {type(e).__name__}: {e}")
            return
        self.steps += 1
        self.chars += len(self._jobs)
        if full:
            count, limit = self.tape.arrays.count, self.tape.arrays.limit
            for sid, job in list(self._jobs.items()):
                if count[job.row] >= limit[job.row]:
                    job.done = True
                    del self._jobs[sid]
                    self.batch.remove(sid)
                    job.sid = None
        self._notify()

    def _notify(self) -> None:
        # read without the lock: a reader raises _waiting (holding the GIL) before it looks
        # at its row, so a step it missed is one whose count it saw
        if self._waiting:
            with self._news:
                self._news.notify_all()

    def _fail_all(self, message: str) -> None:
        for job in self._jobs.values():
            job.error = message
            job.done = True
            job.sid = None
        self._jobs.clear()
        self.batch = TapedBatch(self.packed, self.tape, capacity=8)
        self._notify()

    def _wait(self, job: Job, timeout: float) -> bool:
        """Wait until job has characters past those taken, or has ended; False on timeout."""
        if self._has_news(job):
            return True
        with self._news:
            self._waiting += 1
            try:
                remaining = timeout
                while not self._has_news(job):
                    if remaining <= 0:
                        return False
                    wait = min(WAIT_SLICE_S, remaining)
                    self._news.wait(wait)
                    remaining -= wait
                return True
            finally:
                self._waiting -= 1

    def _has_news(self, job: Job) -> bool:
        return job.done or job.released or (job.row is not None
                                            and self.tape.count(job.row) > job.taken)


class GenerationError(Exception):
    """An error inside a running stream, after the response has started."""


def ready(job: Job) -> bool:
    """True when drain(job) would answer at once: characters to take, or the stream's end."""
    return job.finish_reason is not None or job.engine._has_news(job)


def drain(job: Job, timeout: float = 60.0) -> tuple[list[Token], str | None]:
    """Block for the job's next tokens, then take every one written so far: (tokens, reason).

    Taking all there is lets a slow client catch up with one write instead of many. The
    reason is "length" or "stop" (settings.stop) once the stream has ended; a stream ended by
    a stop string is cancelled here, so the engine stops drawing for it.
    """
    if job.finish_reason is not None:
        return [], job.finish_reason
    engine = job.engine
    if not engine._wait(job, timeout):
        raise GenerationError(f"no character for {timeout:g} s: the generator stalled")
    tokens: list[Token] = []
    if job.row is not None and not job.released:
        done = job.done  # read before the row: every character of a done job is then in it
        tokens, reason = _take(job, engine)
        if reason is not None:
            job.finish_reason = reason
            engine.cancel(job)
            return tokens, reason
    else:
        done = True
    if done and job.error is not None:
        if tokens:  # send what came before it first; the next drain raises
            return tokens, None
        raise GenerationError(job.error)
    if done and not tokens and job.released:
        raise GenerationError("the stream was cancelled")
    return tokens, None


def _take(job: Job, engine: Engine) -> tuple[list[Token], str | None]:
    """The job's new characters as Tokens, through its stop strings and max_new_chars (the
    rules of Batch.step, applied a run of characters at a time)."""
    settings, itos = job.settings, engine.packed.itos
    ids, logps = engine.tape.read(job.row, job.taken)
    if settings.top_n:  # the alternatives are appended before the count is raised
        tops = job.tops[job.taken: job.taken + len(ids)]
        ids, logps = ids[: len(tops)], logps[: len(tops)]
    else:
        tops = None
    first = job.taken
    job.taken += len(ids)
    limit = settings.max_new_chars
    if tops is None:
        new = [Token(itos[v], lp) for v, lp in zip(ids, logps, strict=True)]
    else:
        new = [Token(itos[v], lp, top) for v, lp, top in zip(ids, logps, tops, strict=True)]
    if not job.stops.strings or not new:
        return new, "length" if job.taken >= limit else None
    out: list[Token] = []
    for k, tok in enumerate(new):
        released, stopped = job.stops.push(tok)
        out.extend(released)
        if stopped:
            return out, "stop"
        if first + k + 1 >= limit:
            return [*out, *job.stops.flush()], "length"
    return out, None
