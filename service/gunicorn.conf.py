# ruff: noqa: N999 (gunicorn looks for a file named gunicorn.conf.py)
"""gunicorn settings for the charlm service: `gunicorn -c service/gunicorn.conf.py`.

Everything can be overridden on the command line (which wins over this file) or through the
environment: PORT, WEB_CONCURRENCY (workers), CHARLM_HTTP_THREADS, and the app's CHARLM_*.
"""

import os
from pathlib import Path

# the app's package is this file's folder, imported by the folder's name from its parent:
# `service` in a checkout (the Procfile, `charlm serve`), `charlm_service` where it is installed
_package = Path(__file__).resolve().parent
pythonpath = str(_package.parent)
wsgi_app = f"{_package.name}:create_app()"
bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))

# long streams: a thread per connection, and more threads than the app admits requests, so a
# request past the cap is answered 429 at once instead of waiting in the accept queue
# worker_class: gthread, with deadlines (see the last settings)
_cap = int(os.environ.get("CHARLM_MAX_CONCURRENCY", "32"))
threads = int(os.environ.get("CHARLM_HTTP_THREADS", str(_cap + 8)))

# each worker imports the app itself: numba's thread pool does not survive a fork
preload_app = False
# numba's OpenMP threads sleep rather than spin while they wait: request threads, other
# workers and other models share these cores, and a spinning team that has lost a core to
# them waits a whole scheduler slice at every step (measured: 100x slower on a busy machine)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# and the workers share the cores rather than each taking all of them
os.environ.setdefault("NUMBA_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
# the app loads its models before a worker accepts connections, so no request meets a
# worker that is still warming; a cold numba compile can take half a minute, hence the timeout
os.environ.setdefault("CHARLM_LOAD", "sync")
timeout = 120  # gthread's main loop reports in every second, however long a stream runs
graceful_timeout = 30
keepalive = 5

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("CHARLM_LOG_LEVEL", "info")
# %(M)s: request time in ms, so streams show how long they lasted (the format is set below)

# gunicorn 24+ opens a control socket at one fixed path per user: two servers would collide
control_socket_disable = True

# -- hostile clients (service/worker.py) ------------------------------------------------------
# gthread, but request heads are read whole by the main loop (slowloris cannot hold a thread),
# bodies have a deadline, writes a timeout (a client that stops reading frees its slot), and
# gunicorn's own errors are JSON. Its module is the app's package's: it follows wsgi_app.
worker_class = wsgi_app.split(":")[0] + ".worker.Worker"
limit_request_line = 4094  # bytes of the request line; past it, 414
limit_request_fields = 50  # headers; past it, 431
limit_request_field_size = 8190  # bytes of one header; past it, 431

# -- observability (service/metrics.py, service/requestid.py) ------------------------------------
# the access log: one line of text with the request id, or one JSON object a line
_log_format = os.environ.get("CHARLM_LOG_FORMAT", "text")
if _log_format not in ("text", "json"):
    raise SystemExit(f"error: CHARLM_LOG_FORMAT must be text or json, got {_log_format!r:.80}")
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s" id=%({x-request-id}o)s'
if _log_format == "json":
    logger_class = wsgi_app.split(":")[0] + ".accesslog.JsonLogger"

# prometheus_client's multiprocess mode: each worker writes its samples to files in this
# folder and /metrics, in any worker, adds them all up. Made fresh here when not given; a given
# one is emptied at start (stale files would add a past run's counts).
_made_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    _made_metrics_dir = tempfile.mkdtemp(prefix="charlm-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _made_metrics_dir


def on_starting(server) -> None:
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob("*.db"):
        f.unlink()


def on_exit(server) -> None:
    if _made_metrics_dir is not None:  # ours, so not left behind in /tmp
        import shutil

        shutil.rmtree(_made_metrics_dir, ignore_errors=True)


def child_exit(server, worker) -> None:
    # a worker that has gone: its gauges leave the live sums
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

