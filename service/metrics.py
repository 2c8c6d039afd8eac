"""Prometheus metrics: what the service counts, and GET /metrics in Prometheus' text format.

Under gunicorn every worker is a process of its own; prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, which service/gunicorn.conf.py makes when it is unset) has each
write its samples to files there, and /metrics, in whichever worker answers, sums them all.
Without it (Flask's dev server, tests), the samples are this process's.

The hooks elsewhere are one line each (on_tokens in generation.py, on_step and on_turn in
engine.py, REJECTED in state.py); everything else is counted here, per request.
"""

import os
import time
import weakref

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

bp = Blueprint("metrics", __name__)
METHODS = {"GET", "HEAD", "POST", "OPTIONS"}

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# the service's own registry, not prometheus_client's global one: this package can be imported
# twice in a process (as `service` from a checkout and as `charlm_service` installed), and the
# second would find its names taken. Under gunicorn the files are what /metrics reads anyway.
REGISTRY = CollectorRegistry()
# seconds: a first character comes in milliseconds; a whole answer can take a minute
TTFC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REQUESTS = Counter("charlm_requests", "HTTP requests answered, by route and status",
                   ["route", "method", "status"], registry=REGISTRY)
DURATION = Histogram("charlm_request_duration_seconds",
                     "Time from a request's arrival to its answer's last byte (streams too)",
                     ["route"], buckets=DURATION_BUCKETS, registry=REGISTRY)
TTFC = Histogram("charlm_time_to_first_character_seconds",
                 "Time from a stream's start to its first generated character",
                 buckets=TTFC_BUCKETS, registry=REGISTRY)
CHARS = Counter("charlm_generated_characters", "Characters the engines have generated",
                registry=REGISTRY)
REJECTED = Counter("charlm_rejected_requests",
                   "Requests answered 429: no free stream slot in the worker",
                   registry=REGISTRY)
BATCH = Histogram("charlm_batch_size", "Streams advanced together in each engine step",
                  buckets=BATCH_BUCKETS, registry=REGISTRY)
# livesum: the workers' values added up, those of workers that have exited left out
RUNNING = Gauge("charlm_streams_running", "Streams the model's engines are stepping",
                ["model"], multiprocess_mode="livesum", registry=REGISTRY)
QUEUED = Gauge("charlm_streams_queued", "Streams submitted and not yet admitted to a batch",
               ["model"], multiprocess_mode="livesum", registry=REGISTRY)
WORKER = Gauge("charlm_worker_start_time_seconds", "When each worker process started, by pid",
               multiprocess_mode="all", registry=REGISTRY)


FLUSH_STEPS = 1024  # engine steps counted in-process between writes to the shared files


class _Engine:
    """What one engine has reported and not yet written: a write to the multiprocess files
    takes a lock and costs microseconds, as much as a tenth of a step, so steps are tallied
    here and written together when the streams change, when the engine goes idle, or every
    FLUSH_STEPS steps. At rest every count is exact."""

    def __init__(self) -> None:
        self.steps: dict[int, int] = {}  # batch size -> steps taken at that size
        self.n_steps = 0
        self.chars = 0  # the engine's cumulative count when last written
        self.streams = (-1, -1)  # running and queued when last written


_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> _Engine


def observe_many(hist: Histogram, amount: float, k: int) -> None:
    """hist.observe(amount) k times, in two writes (prometheus_client has no bulk form: this
    is its observe with inc(k), tested against it)."""
    hist._sum.inc(amount * k)
    for i, bound in enumerate(hist._upper_bounds):
        if amount <= bound:
            hist._buckets[i].inc(k)
            break


def on_tokens(started: float, before: int, n: int) -> None:
    """A stream released n characters, before of them having come already (generation.py)."""
    if before == 0 and n:
        TTFC.observe(time.monotonic() - started)


def _tally(engine: object) -> _Engine:
    e = _engines.get(engine)
    if e is None:
        e = _engines[engine] = _Engine()
    return e


def on_step(engine: object, batch_size: int) -> None:
    """An engine is about to step batch_size streams (engine.py, on the engine's thread)."""
    e = _tally(engine)
    e.steps[batch_size] = e.steps.get(batch_size, 0) + 1
    e.n_steps += 1


def on_turn(engine: object, running: int, queued: int, chars: int) -> None:
    """An engine's loop has turned: its streams, and the characters it has handed out in all
    (engine.py, on the engine's thread). The gauges are labelled with the engine's name."""
    e = _tally(engine)
    if (running, queued) == e.streams and e.n_steps < FLUSH_STEPS:
        return
    for size, k in e.steps.items():
        observe_many(BATCH, size, k)
    e.steps.clear()
    e.n_steps = 0
    if chars > e.chars:
        CHARS.inc(chars - e.chars)
        e.chars = chars
    # the gauges last: once they read idle, the counts above are written
    if (running, queued) != e.streams:
        name = getattr(engine, "name", "model")
        RUNNING.labels(name).set(running)
        QUEUED.labels(name).set(queued)
        e.streams = (running, queued)


def init_app(app: Flask) -> None:
    """Count every answer (errors included); time each until its last byte is out."""
    WORKER.set(time.time())

    @app.before_request
    def start_clock():
        g.metrics_t0 = time.perf_counter()

    @app.after_request
    def count(resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "other"
        method = request.method if request.method in METHODS else "other"  # bounded labels
        REQUESTS.labels(route, method, str(resp.status_code)).inc()
        t0 = g.get("metrics_t0")
        if t0 is not None:
            # a stream's answer is whole when the server closes it
            resp.call_on_close(lambda: DURATION.labels(route).observe(time.perf_counter() - t0))
        return resp

    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics():
    """Every worker's counters, histograms and gauges in Prometheus' text format."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})
