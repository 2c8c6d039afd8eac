"""One background thread per model that steps every active stream together, one character a step.

Requests submit a Job and read its queue; the thread admits new jobs and drops abandoned ones
between steps, steps the model's Batch (the kernel releases the GIL, so request threads keep
writing to their sockets meanwhile) and hands each stream's characters to its queue.
"""

import logging
import queue
import threading
from collections.abc import Sequence

from charlm.generate import Batch, PackedModel, Primed, SampleSettings, Token

from . import metrics

log = logging.getLogger(__name__)


class Job:
    """One request's stream: what it asked for, and the queue its characters arrive on.

    prompt is best read beforehand (PackedModel.read, on the caller's thread): a str prompt is
    read by the engine's thread, and every running stream waits for it.

    Each queue item is (tokens, finish_reason, error): tokens released by a step, the reason
    when the stream has ended, or an error message in place of both.
    """

    def __init__(self, prompt: str | Primed, settings: SampleSettings,
                 drop_unknown: bool = False) -> None:
        self.prompt, self.settings, self.drop_unknown = prompt, settings, drop_unknown
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.sid: int | None = None  # the stream's id in the batch, once admitted
        self.cancelled = False
        self.done = False
        self.error: str | None = None  # an error read from the queue, raised by the next drain


class Engine:
    """A model's Batch driven by one daemon thread; submit() and cancel() from any thread."""

    def __init__(self, packed: PackedModel, name: str = "model") -> None:
        self.packed, self.name = packed, name
        self.batch = Batch(packed, capacity=8)
        self._cv = threading.Condition()
        self._joining: list[Job] = []
        self._leaving: list[Job] = []
        self._jobs: dict[int, Job] = {}  # sid -> job, touched only by the thread
        self.steps = 0  # batch steps taken (tests watch it stop when clients leave)
        self.chars = 0  # characters handed out
        self._thread = threading.Thread(target=self._loop, name=f"charlm-engine-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Streams waiting to join or running."""
        return len(self._jobs) + len(self._joining)

    def submit(self, job: Job) -> Job:
        with self._cv:
            self._joining.append(job)
            self._cv.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop job's stream before the next step (no-op once it has finished)."""
        with self._cv:
            if job.done or job.cancelled:
                return
            job.cancelled = True
            self._leaving.append(job)
            self._cv.notify()

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
            for job in joining:
                if not job.cancelled:
                    self._admit(job)
            if self._jobs:
                self._step()
            metrics.on_turn(self, len(self._jobs), len(self._joining), self.chars)

    def _admit(self, job: Job) -> None:
        try:
            job.sid = self.batch.add(job.prompt, job.settings, job.drop_unknown)
        except Exception as e:  # the view validated the prompt: this is not the client's fault
            log.exception("cannot start a stream on %s", self.name)
            job.done = True
            job.out.put((None, None, f"cannot start generation: {e}"))
            return
        self._jobs[job.sid] = job

    def _step(self) -> None:
        metrics.on_step(self, len(self._jobs))
        try:
            events = self.batch.step()
        except Exception as e:
            # a bug rather than bad input: end the streams it ran with an error, start afresh
            log.exception("generation step failed on %s", self.name)
            self._fail_all(f"generation failed: {type(e).__name__}: {e}")
            return
        self.steps += 1
        if not events and not self.batch.running:
            # jobs the batch no longer runs would have the loop spin: never seen, but end them
            self._fail_all("generation lost track of the stream")
            return
        jobs = self._jobs
        for ev in events:
            job = jobs[ev.stream]
            self.chars += len(ev.tokens)
            job.out.put((ev.tokens, ev.finish_reason, None))
            if ev.finish_reason:
                job.done = True
                del jobs[ev.stream]
                self.batch.remove(ev.stream)

    def _fail_all(self, message: str) -> None:
        for job in self._jobs.values():
            job.done = True
            job.out.put((None, None, message))
        self._jobs.clear()
        self.batch = Batch(self.packed, capacity=8)


class GenerationError(Exception):
    """An error inside a running stream, after the response has started."""


def drain(job: Job, timeout: float = 60.0) -> tuple[list[Token], str | None]:
    """Block for the job's next tokens, then take whatever else is queued: (tokens, reason).

    Taking all that is queued lets a slow client catch up with one write instead of many.
    """
    if job.error is not None:
        raise GenerationError(job.error)
    try:
        items: Sequence = [job.out.get(timeout=timeout)]
    except queue.Empty:
        raise GenerationError(f"no character for {timeout:g} s: the generator stalled") from None
    more = []
    while True:
        try:
            more.append(job.out.get_nowait())
        except queue.Empty:
            break
    tokens: list[Token] = []
    for toks, reason, error in [*items, *more]:
        if error is not None:
            if tokens:  # send what came before it first
                job.error = error
                return tokens, None
            raise GenerationError(error)
        tokens.extend(toks)
        if reason is not None:
            return tokens, reason
    return tokens, None
