"""The charlm HTTP service: create_app() builds the Flask app that gunicorn serves."""

import os

from flask import Flask

from charlm.errors import CharlmError


def create_app(test_config: dict | None = None) -> Flask:
    """The app, configured from CHARLM_* environment variables (or test_config), with its
    models loading (in a background thread unless LOAD is "sync")."""
    app = Flask(__name__)
    app.json.sort_keys = False  # keep fields, and alternatives most probable first, in order
    app.config.from_mapping(
        CHECKPOINTS="checkpoints",  # a directory (each *.npz served by its stem) or one file
        DEFAULT_MODEL=None,  # None: "default" if there is one, else the first by name
        KERNEL_THREADS=None,  # numba threads per step; None lets charlm choose
        MAX_CONCURRENCY=32,  # generation requests at once per worker; past it, 429
        MAX_PROMPT_CHARS=4096,
        MAX_NEW_TOKENS=2048,  # the cap on max_new_tokens and max_tokens
        MAX_BATCH_TOKENS=16384,  # max_tokens x prompts x n of one /v1/completions request
        DEFAULT_NEW_TOKENS=100,  # TGI's max_new_tokens when not given (OpenAI's is 16)
        MAX_TOP_N=20,  # top_n_tokens and logprobs
        MAX_STOP=4,  # stop strings per request
        MAX_STOP_CHARS=64,
        UNKNOWN_CHARS="error",  # prompt characters outside the vocabulary: "error" or "drop"
        MAX_CONTENT_LENGTH=64 * 1024,  # request body bytes; past it, 413
        MAX_ACTIVATIONS=4,  # /activations at once per worker (within MAX_CONCURRENCY); 429
        MAX_ACTIVATION_VALUES=1_000_000,  # per /activations answer (about 1.4 MB of JSON)
        API_KEY=None,  # when set, every route but /health needs Authorization: Bearer <key>
        CORS_ORIGINS="",  # "*", or origins separated by commas
        LOAD="background",  # or "sync": load the models before returning
        # while streams share a batch, a stream writes at most this often (a stream alone
        # writes each character at once): 5 ms cost 10 us of CPU per character at 32 streams
        COALESCE_MS=20,
        COMPRESS_MIN_BYTES=1024,  # answers shorter than this go uncompressed
        LOG_FORMAT="text",  # gunicorn's access log: "text" or "json" (service/accesslog.py)
    )
    if test_config is None:
        app.config.from_prefixed_env("CHARLM")
        # the key is a secret, not JSON: "null" or "1e5" must not turn it off or change it
        app.config["API_KEY"] = os.environ.get("CHARLM_API_KEY")
    else:
        app.config.from_mapping(test_config)
    normalize(app.config)

    from . import (
        completions,
        compression,
        distribution,
        meta,
        metrics,
        playground,
        requestid,
        security,
        tgi,
    )
    from .errors import register_error_handlers
    from .models import Models
    from .state import Slots, State

    models = Models(app.config["CHECKPOINTS"], app.config["DEFAULT_MODEL"],
                    app.config["KERNEL_THREADS"])
    app.extensions["charlm"] = State(models, Slots(app.config["MAX_CONCURRENCY"]),
                                     Slots(app.config["MAX_ACTIVATIONS"]))
    register_error_handlers(app)
    # in this order: the id and the clock start first; compression sees the finished answer
    requestid.init_app(app)
    metrics.init_app(app)
    security.init_app(app)
    compression.init_app(app)
    for module in (tgi, completions, distribution, meta, playground):
        app.register_blueprint(module.bp)
    if app.config["LOAD"] == "sync":
        models.load()
    else:
        models.load_in_background()
    return app


def normalize(cfg: dict) -> None:
    """Types as the code expects them: the environment gives JSON when it parses, else text."""
    from .security import check_key

    cfg["API_KEY"] = check_key(cfg["API_KEY"])
    if cfg["DEFAULT_MODEL"] is not None and cfg["DEFAULT_MODEL"] != "":
        cfg["DEFAULT_MODEL"] = str(cfg["DEFAULT_MODEL"])
    else:
        cfg["DEFAULT_MODEL"] = None
    cfg["CHECKPOINTS"] = str(cfg["CHECKPOINTS"])
    origins = cfg["CORS_ORIGINS"] or []
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    cfg["CORS_ORIGINS"] = [str(o).rstrip("/") for o in origins]
    for key in ("MAX_CONCURRENCY", "MAX_PROMPT_CHARS", "MAX_NEW_TOKENS", "DEFAULT_NEW_TOKENS",
                "MAX_BATCH_TOKENS", "COMPRESS_MIN_BYTES", "MAX_TOP_N", "MAX_STOP",
                "MAX_STOP_CHARS", "MAX_CONTENT_LENGTH", "MAX_ACTIVATIONS", "MAX_ACTIVATION_VALUES"):
        if type(cfg[key]) is not int or cfg[key] < 0:
            raise CharlmError(f"CHARLM_{key} must be a whole number >= 0, got {cfg[key]!r}")
    if not isinstance(cfg["COALESCE_MS"], (int, float)) or not 0 <= cfg["COALESCE_MS"] <= 1000:
        raise CharlmError(f"CHARLM_COALESCE_MS must be a number in [0, 1000], "
                          f"got {cfg['COALESCE_MS']!r}")
    if cfg["KERNEL_THREADS"] is not None and (type(cfg["KERNEL_THREADS"]) is not int
                                              or cfg["KERNEL_THREADS"] < 1):
        raise CharlmError(f"CHARLM_KERNEL_THREADS must be a whole number >= 1, "
                          f"got {cfg['KERNEL_THREADS']!r}")
    if cfg["UNKNOWN_CHARS"] not in ("error", "drop"):
        raise CharlmError(f"CHARLM_UNKNOWN_CHARS must be error or drop, "
                          f"got {cfg['UNKNOWN_CHARS']!r}")
    if cfg["LOG_FORMAT"] not in ("text", "json"):
        raise CharlmError(f"CHARLM_LOG_FORMAT must be text or json, got {cfg['LOG_FORMAT']!r}")
    if cfg["LOAD"] not in ("background", "sync"):
        raise CharlmError(f"CHARLM_LOAD must be background or sync, got {cfg['LOAD']!r}")
    if cfg["DEFAULT_NEW_TOKENS"] > cfg["MAX_NEW_TOKENS"]:
        cfg["DEFAULT_NEW_TOKENS"] = cfg["MAX_NEW_TOKENS"]
