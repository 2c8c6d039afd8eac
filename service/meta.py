"""GET /health (for load balancers) and GET /info (the model cards and the server's limits)."""

from flask import Blueprint, current_app, jsonify

from charlm import __version__

from .state import current

bp = Blueprint("meta", __name__)

LIMITS = ("MAX_CONCURRENCY", "MAX_PROMPT_CHARS", "MAX_NEW_TOKENS", "MAX_BATCH_TOKENS",
          "DEFAULT_NEW_TOKENS", "MAX_TOP_N", "MAX_STOP", "MAX_STOP_CHARS", "MAX_CONTENT_LENGTH",
          "UNKNOWN_CHARS", "MAX_ACTIVATIONS", "MAX_ACTIVATION_VALUES")


@bp.get("/health")
def health():
    """{"status": "ok"} (200) once every model is loaded and warmed; "loading" or "failed"
    (503) before. It is public: names and errors are on /info, behind the key."""
    models = current().models
    if models.ready.is_set():
        return jsonify({"status": "ok"})
    return jsonify({"status": "failed" if models.error else "loading"}), 503


@bp.get("/info")
def info():
    """The served models' cards, the default model, the limits, and what runs right now."""
    state = current()
    models = state.models.ready_models()
    cfg = current_app.config
    default = state.models.models[state.models.default]
    return jsonify({
        "version": __version__,
        "default_model": state.models.default,
        # the keys TGI clients read, for the default model
        "model_id": default.name, "model_sha": default.ckpt.sha256,
        "max_concurrent_requests": cfg["MAX_CONCURRENCY"],
        "max_input_tokens": cfg["MAX_PROMPT_CHARS"],
        "max_new_tokens": cfg["MAX_NEW_TOKENS"],
        "models": [s.card() for s in models],
        "skipped": state.models.skipped,
        "limits": {key.lower(): cfg[key] for key in LIMITS},
        "auth": bool(cfg["API_KEY"]),
        "load": {"requests": state.slots.in_use,
                 "streams": {s.name: s.engine.active for s in models},
                 "steps": {s.name: s.engine.steps for s in models}},
    })
