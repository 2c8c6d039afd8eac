"""`charlm serve`: the HTTP service on this machine, under gunicorn (or Flask's dev server).

It lives in the service package because it starts the service; the library (charlm/) never
imports this package, and the CLI's serve command imports this module only when it runs.
"""

import os
import sys
from pathlib import Path

from charlm.errors import CharlmError

CONF = Path(__file__).resolve().parent / "gunicorn.conf.py"


def serve_env(checkpoints: Path, max_concurrency: int | None = None,
              api_key: str | None = None, cors_origins: str | None = None,
              default_model: str | None = None) -> dict[str, str]:
    """The CHARLM_* variables that configure the app for these options."""
    env = {"CHARLM_CHECKPOINTS": str(Path(checkpoints).resolve())}
    if max_concurrency is not None:
        env["CHARLM_MAX_CONCURRENCY"] = str(max_concurrency)
    if api_key:
        env["CHARLM_API_KEY"] = api_key  # read literally, not as JSON
    if cors_origins:
        env["CHARLM_CORS_ORIGINS"] = json_string(cors_origins)
    if default_model:
        env["CHARLM_DEFAULT_MODEL"] = json_string(default_model)
    return env


def json_string(s: str) -> str:
    """s as a JSON string, so Flask's from_prefixed_env keeps "123" a string, not a number."""
    import json

    return json.dumps(s)


def gunicorn_argv(host: str, port: int, workers: int, threads: int | None = None,
                  log_level: str = "info") -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "-c", str(CONF), "--bind", f"{host}:{port}",
            "--workers", str(workers), "--log-level", log_level]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv


def run_serve(checkpoints: Path = Path("checkpoints"), host: str = "127.0.0.1", port: int = 8000,
              workers: int = 1, threads: int | None = None, max_concurrency: int | None = None,
              api_key: str | None = None, cors_origins: str | None = None,
              default_model: str | None = None, dev: bool = False,
              log_level: str = "info") -> None:
    """Serve the checkpoints (a directory of *.npz, or one file) at http://host:port.

    Replaces this process with gunicorn and service/gunicorn.conf.py (what the Procfile runs),
    or with dev=True runs Flask's single-process development server in this one.
    """
    from .models import discover

    if not CONF.is_file():
        raise CharlmError(f"{CONF} is missing: run from a charlm source checkout")
    discover(Path(checkpoints))  # a missing or empty path is a one-line error, here and now
    from .security import check_key

    check_key(api_key)
    if workers < 1:
        raise CharlmError(f"--workers must be at least 1, got {workers}")
    env = serve_env(checkpoints, max_concurrency, api_key, cors_origins, default_model)
    if dev:
        os.environ.update(env)
        os.environ["CHARLM_LOAD"] = "sync"
        from . import create_app

        app = create_app()
        if app.extensions["charlm"].models.error:
            raise CharlmError(app.extensions["charlm"].models.error)
        app.run(host=host, port=port, threaded=True)
        return
    argv = gunicorn_argv(host, port, workers, threads, log_level)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, {**os.environ, **env})
