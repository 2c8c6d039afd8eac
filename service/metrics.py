"""Prometheus metrics: what the service counts, and GET /metrics in Prometheus' text format.

Under gunicorn every worker is a process of its own; prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, which service/gunicorn.conf.py makes when it is unset) has each
write its samples to files there, and /metrics, in whichever worker answers, sums them all.
Without it (Flask's dev server, tests), the samples are this process's.

The hooks elsewhere are one line each (on_tokens in generation.py, on_step and on_streams in
engine.py, REJECTED in state.py); everything else is counted here, per request.
"""

import os
import time

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
CHARS = Counter("charlm_generated_characters", "Characters generated and sent",
                registry=REGISTRY)
REJECTED = Counter("charlm_rejected_requests",
                   "Requests answered 429: no free stream slot in the worker",
                   registry=REGISTRY)
BATCH = Histogram("charlm_batch_size", "Streams advanced together in each engine step",
                  buckets=BATCH_BUCKETS, registry=REGISTRY)
# livesum: the workers' values added up, those of workers that have exited left out
RUNNING = Gauge("charlm_streams_running", "Streams the engines are stepping",
                multiprocess_mode="livesum", registry=REGISTRY)
QUEUED = Gauge("charlm_streams_queued", "Streams submitted and not yet admitted to a batch",
               multiprocess_mode="livesum", registry=REGISTRY)
WORKER = Gauge("charlm_worker_start_time_seconds", "When each worker process started, by pid",
               multiprocess_mode="all", registry=REGISTRY)


def on_tokens(started: float, before: int, n: int) -> None:
    """A stream released n characters, before of them having come already (generation.py)."""
    if n:
        CHARS.inc(n)
        if before == 0:
            TTFC.observe(time.monotonic() - started)


def on_step(batch_size: int) -> None:
    """An engine stepped batch_size streams (engine.py)."""
    BATCH.observe(batch_size)


def on_streams(running: int, queued: int) -> None:
    """An engine's streams after its loop's turn (engine.py). With several models the last
    engine to report wins; the service runs one model per worker in practice."""
    RUNNING.set(running)
    QUEUED.set(queued)


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
