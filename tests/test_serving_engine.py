"""The service's engine: its tape against a plain-Python reference, and its streams against the
library's own (Generator, through Batch.step), bit for bit, however they are read."""

import threading
import time

import numpy as np
import pytest

from charlm.generate import Generator, PackedModel, SampleSettings
from charlm.generate.tape import Tape, record
from service.engine import Engine, GenerationError, Job, drain
from tests.test_generate import ITOS, PROMPT, make_model

STREAMS = [
    (PROMPT, SampleSettings(temperature=0.8, seed=1, max_new_chars=30)),
    ("", SampleSettings(temperature=1.2, top_k=5, seed=2, max_new_chars=25)),
    ("abc", SampleSettings(temperature=0.0, max_new_chars=12, top_n=2)),
    ("hello, world", SampleSettings(top_p=0.7, seed=3, max_new_chars=40, stop=("e ", "s"))),
    ("x", SampleSettings(temperature=1.0, seed=4, max_new_chars=35, stop=("zzz",))),
    ("what is it?", SampleSettings(temperature=2.0, top_k=10, seed=5, max_new_chars=1)),
    ("o", SampleSettings(seed=6, max_new_chars=0, stop=("a",))),
    ("to be", SampleSettings(seed=7, max_new_chars=300, top_n=3, stop=("q",))),
]


@pytest.fixture(scope="module")
def packed() -> PackedModel:
    return PackedModel(make_model(), ITOS, threads=2)


def wait_for(cond, timeout=5.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.002)


def read_all(job: Job, pause: float = 0.0) -> tuple[list, str]:
    tokens = []
    while True:
        toks, reason = drain(job)
        tokens.extend(toks)
        if reason is not None:
            return tokens, reason
        time.sleep(pause)  # a reader that comes back now and then takes many at once


def test_record_matches_a_plain_reference():
    rng = np.random.default_rng(0)
    tape = Tape(rows=6, width=5)
    rows = [tape.alloc(limit) for limit in (5, 3, 0, 4, 5, 1)]
    ids = {r: [] for r in rows}
    lps = {r: [] for r in rows}
    limits = dict(zip(rows, (5, 3, 0, 4, 5, 1), strict=True))
    for _ in range(7):
        running = rng.permutation(rows)[: rng.integers(1, len(rows) + 1)]
        x, lp = rng.integers(0, 50, len(running)), rng.normal(size=len(running))
        full = record(np.asarray(running, np.int64), x, lp, tape.arrays)
        for r, v, p in zip(running, x, lp, strict=True):
            if len(ids[r]) < limits[r]:
                ids[r].append(int(v))
                lps[r].append(float(p))
        assert full == sum(len(ids[r]) >= limits[r] for r in running)
    for r in rows:
        assert tape.read(r, 0) == (ids[r], lps[r])
        assert tape.read(r, 1) == (ids[r][1:], lps[r][1:])


def test_a_growing_tape_keeps_its_rows_and_leaves_old_readers_a_consistent_copy():
    tape = Tape(rows=2, width=3)
    a = tape.alloc(3)
    record(np.array([a]), np.array([7]), np.array([-0.5]), tape.arrays)
    old = tape.arrays
    b, c = tape.alloc(10), tape.alloc(2)  # wider and more rows: the arrays are replaced
    assert tape.arrays is not old and len({a, b, c}) == 3
    assert tape.read(a, 0) == ([7], [-0.5])
    record(np.array([a, b]), np.array([8, 9]), np.array([-1.0, -2.0]), tape.arrays)
    assert tape.read(a, 0) == ([7, 8], [-0.5, -1.0]) and tape.read(b, 0) == ([9], [-2.0])
    assert old.count[a] == 1 and old.ids[a, 0] == 7  # what a reader holding them saw stays
    tape.free(a)
    assert tape.alloc(1) == a and tape.count(a) == 0  # a freed row comes back empty


@pytest.mark.parametrize("pause", [0.0, 0.01])
def test_streams_equal_the_library_bit_for_bit(packed, pause):
    solo = [Generator.from_packed(packed).complete(p, s) for p, s in STREAMS]
    engine = Engine(packed, "test")
    jobs = [engine.submit(Job(packed.read(p), s)) for p, s in STREAMS]
    results: dict[int, tuple] = {}

    def reader(k):
        results[k] = read_all(jobs[k], pause)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for k, out in enumerate(solo):
        tokens, reason = results[k]
        assert tokens == out.tokens, k  # characters, log-probabilities and top-n alike
        assert reason == out.finish_reason, k
    assert results[2][0][0].top and results[4][1] == "length" and results[3][1] == "stop"
    assert results[6] == ([], "length")
    for job in jobs:
        engine.cancel(job)  # what Run.close does
    wait_for(lambda: engine.active == 0 and len(engine.tape._free) == len(engine.tape.arrays.count))


def test_a_stop_string_ends_the_engines_work_for_the_stream(packed):
    full = Generator.from_packed(packed).complete(PROMPT, SampleSettings(seed=9,
                                                                        max_new_chars=2000))
    stop = full.text[5:8]
    engine = Engine(packed, "test")
    job = engine.submit(Job(packed.read(PROMPT), SampleSettings(seed=9, max_new_chars=2000,
                                                                stop=(stop,))))
    tokens, reason = read_all(job)
    assert reason == "stop" and "".join(t.char for t in tokens) == full.text[: full.text.find(stop)]
    wait_for(lambda: engine.active == 0)  # cancelled by the read that found the stop
    steps = engine.steps
    time.sleep(0.05)
    assert engine.steps == steps < 1000  # it did not run on to 2000 characters


def test_a_failed_step_ends_each_stream_after_its_text_with_an_error(packed, monkeypatch):
    engine = Engine(packed, "test")
    step, calls = engine.batch.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("kernel exploded")
        return step()

    job = Job(packed.read(PROMPT), SampleSettings(seed=1, max_new_chars=50))
    monkeypatch.setattr(engine.batch, "step", failing_step)
    engine.submit(job)
    wait_for(lambda: job.done)
    tokens, reason = drain(job)
    assert len(tokens) == 3 and reason is None
    with pytest.raises(GenerationError, match="kernel exploded"):
        drain(job)
    # a fresh batch serves the next stream
    out = Job(packed.read(PROMPT), SampleSettings(seed=1, max_new_chars=5))
    assert len(read_all(engine.submit(out))[0]) == 5


def test_a_reader_of_a_stream_that_never_starts_is_told_so(packed):
    engine = Engine(packed, "test")
    job = engine.submit(Job("#not in the vocabulary#", SampleSettings(max_new_chars=5)))
    with pytest.raises(GenerationError, match="cannot start generation"):
        drain(job, timeout=5)
    engine.cancel(job)
    wait_for(lambda: engine.active == 0)
