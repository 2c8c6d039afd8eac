"""Fixtures for the service tests: two small random-weight checkpoints, the app and its client;
and for the browser tests: Chromium (skipped where missing, unless CI requires it) and an app
served on a loopback port."""

import contextlib
import json
import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from charlm.checkpoint import save_checkpoint
from charlm.model import CharLSTM, ModelConfig

CHARS = sorted(set("\n !\"',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyzé"))


def make_checkpoint(path, chars: list[str], seed: int, n_hidden: int = 16) -> None:
    """A small model with random weights (biases too), saved where a trainer would put it."""
    model = CharLSTM(ModelConfig(vocab_size=len(chars), n_embd=8, n_hidden=n_hidden, n_layer=2),
                     seed=seed)
    model.theta[:] = np.random.default_rng(seed).standard_normal(model.n_params) * 0.5
    save_checkpoint(path, model, chars, {"step": 100 + seed, "best_val_loss": 2.5,
                                         "val_history": [{"step": 100, "val_loss": 2.5}]})


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """A directory with two models: "default" and "small" (a smaller vocabulary)."""
    d = tmp_path_factory.mktemp("checkpoints")
    make_checkpoint(d / "default.npz", CHARS, seed=1)
    make_checkpoint(d / "small.npz", list("\n abcdefgh"), seed=2, n_hidden=12)
    return d


@pytest.fixture(scope="session")
def app(checkpoint_dir):
    """One app for the session (loading warms numba's kernels once): tests only read it."""
    from service import create_app

    return create_app({"CHECKPOINTS": str(checkpoint_dir), "LOAD": "sync",
                       "MAX_CONCURRENCY": 8, "MAX_NEW_TOKENS": 500, "MAX_PROMPT_CHARS": 200,
                       "MAX_CONTENT_LENGTH": 4096, "TESTING": True})


@pytest.fixture()
def client(app):
    return app.test_client()


def parse_sse(text: str) -> list:
    """The data of each server-sent event: parsed JSON, or the raw string (as "[DONE]")."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture()
def sse():
    return parse_sse


CHROMIUM = os.environ.get("CHARLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing() -> str | None:
    """Why the browser test cannot run here, as one line naming what to install; or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the browser test needs playwright: pip install -e '.[test]'"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (f"the browser test needs Chromium at {CHROMIUM}: apt-get install chromium "
                "(or set CHARLM_CHROMIUM to a Chromium binary)")
    return None


@pytest.fixture()
def chromium() -> str:
    """The browser binary; a skip where there is none, a failure where CI requires one."""
    reason = missing()
    if reason is not None:
        if os.environ.get("CHARLM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHARLM_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return CHROMIUM


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """app on a free loopback port, in a thread, for the block; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
