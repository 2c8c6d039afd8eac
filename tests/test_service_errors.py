"""The service under bad input and load: JSON errors with the right status before any stream,
the concurrency cap, abandoned streams, errors inside a stream, the API key, CORS, loading."""

import json
import os
import time

import pytest

from service import create_app

P = {"max_new_tokens": 5}


def tgi(inputs="ab", **params):
    return {"inputs": inputs, "parameters": {**P, **params}}


BAD = [
    # route, body, status, error_type, words in the message
    ("/generate", b"{not json", 400, "bad_request", "not valid JSON"),
    ("/generate", b"", 400, "bad_request", "empty"),
    ("/generate", b"[1, 2]", 400, "bad_request", "must be a JSON object"),
    ("/generate", b'{"inputs": NaN}', 400, "bad_request", "not valid JSON"),
    ("/generate", b"\xff\xfe", 400, "bad_request", "not valid JSON"),
    ("/generate", {"parameters": P}, 422, "validation", "`inputs` is required"),
    ("/generate", {"inputs": 3}, 422, "validation", "`inputs` must be a string"),
    ("/generate", {"inputs": "a", "parameters": []}, 422, "validation", "must be an object"),
    ("/generate", tgi(max_new_tokens="5"), 422, "validation", "must be an integer"),
    ("/generate", tgi(max_new_tokens=2.5), 422, "validation", "must be an integer"),
    ("/generate", tgi(max_new_tokens=True), 422, "validation", "must be an integer"),
    ("/generate", tgi(max_new_tokens=0), 422, "validation", "[1, 500]"),
    ("/generate", tgi(max_new_tokens=501), 422, "validation", "[1, 500]"),
    ("/generate", tgi(temperature=0), 422, "validation", "temperature"),
    ("/generate", tgi(temperature=-1.0), 422, "validation", "temperature"),
    ("/generate", tgi(temperature="hot"), 422, "validation", "must be a number"),
    ("/generate", tgi(top_p=1.5), 422, "validation", "top_p"),
    ("/generate", tgi(top_p=0), 422, "validation", "top_p"),
    ("/generate", tgi(top_k=-1), 422, "validation", "top_k"),
    ("/generate", tgi(seed=-1), 422, "validation", "seed"),
    ("/generate", tgi(seed=2**64), 422, "validation", "seed"),
    ("/generate", tgi(top_n_tokens=21), 422, "validation", "top_n_tokens"),
    ("/generate", tgi(stop="x" * 65), 422, "validation", "stop"),
    ("/generate", tgi(stop=["a", "b", "c", "d", "e"]), 422, "validation", "limit is 4"),
    ("/generate", tgi(stop=[""]), 422, "validation", "stop"),
    ("/generate", tgi(stop=[1]), 422, "validation", "stop"),
    ("/generate", tgi(details="yes"), 422, "validation", "true or false"),
    ("/generate", tgi(repetition_penalty=1.3), 422, "validation", "not supported"),
    ("/generate", {**tgi(), "stream": "yes"}, 422, "validation", "true or false"),
    ("/generate", tgi("a" * 201), 422, "validation", "limit is 200"),
    ("/generate", tgi("ab\u4e16"), 422, "validation", "outside the vocabulary"),
    ("/generate", {**tgi(), "model": "nope"}, 404, "model_not_found", "unknown model"),
    ("/generate", {**tgi(), "model": 3}, 422, "validation", "must be a string"),
    ("/generate_stream", tgi(max_new_tokens=10**6), 422, "validation", "max_new_tokens"),
    ("/generate_stream", {**tgi(), "model": "../default"}, 404, "model_not_found", "unknown"),
    # /v1 answers in OpenAI's shape, with 400 for what TGI's routes answer 422
    ("/v1/completions", {"max_tokens": 5}, 400, "validation", "`prompt` is required"),
    ("/v1/completions", {"prompt": []}, 400, "validation", "empty list"),
    ("/v1/completions", {"prompt": [[1, 2]]}, 400, "validation", "token ids"),
    ("/v1/completions", {"prompt": ["a", "ab\u4e16"]}, 400, "validation", "`prompt[1]`"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 501}, 400, "validation", "max_tokens"),
    ("/v1/completions", {"prompt": "a", "temperature": 2.5}, 400, "validation", "[0.0, 2.0]"),
    ("/v1/completions", {"prompt": "a", "logprobs": 50}, 400, "validation", "logprobs"),
    ("/v1/completions", {"prompt": "a", "n": 0}, 400, "validation", "`n`"),
    ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 3}, 400, "validation", "at most 8"),
    ("/v1/completions", {"prompt": "a", "n": 2, "best_of": 3}, 400, "validation", "best_of"),
    ("/v1/completions", {"prompt": "a", "presence_penalty": 1}, 400, "validation",
     "not supported"),
    ("/v1/completions", {"prompt": "a", "model": "default.npz"}, 404, "model_not_found", ""),
    ("/v1/completions", {"prompt": "a", "stream": True, "model": "/etc/passwd"}, 404,
     "model_not_found", ""),
    ("/v1/completions", {"prompt": "a", "stream_options": {"include_usage": 1}}, 400,
     "validation", "include_usage"),
    ("/next", {"temperature": 1.0}, 422, "validation", "`prompt` is required"),
    ("/next", {"prompt": "a", "temperature": 0}, 422, "validation", "temperature"),
    ("/next", {"prompt": "a", "top_n": 0}, 422, "validation", "top_n"),
    ("/next", {"prompt": "a", "model": "small", "top_n": 2.0}, 200, None, ""),
    ("/next", {"prompt": "Z", "model": "small"}, 422, "validation", "outside the vocabulary"),
]


@pytest.mark.parametrize("route, body, status, error_type, words", BAD)
def test_bad_requests_get_json_errors_before_any_stream(client, route, body, status,
                                                        error_type, words):
    if isinstance(body, bytes):
        r = client.post(route, data=body, content_type="application/json")
    else:
        r = client.post(route, json=body)
    assert r.status_code == status, r.data
    if error_type is None:
        return
    assert r.mimetype == "application/json"  # not an event stream that started
    assert r.headers["X-Request-Id"]
    if route.startswith("/v1/"):
        err = r.json["error"]
        assert set(r.json) == {"error"} and set(err) == {"message", "type", "param", "code"}
        assert err["code"] == error_type and words in err["message"]
        assert err["type"] == "invalid_request_error"
        return
    assert set(r.json) == {"error", "error_type"}
    assert r.json["error_type"] == error_type
    assert words in r.json["error"]


def test_body_over_the_limit_is_413(client):
    r = client.post("/generate", json=tgi("a" * 5000))
    assert r.status_code == 413
    assert r.json["error_type"] == "payload_too_large" and "4096 bytes" in r.json["error"]


def test_unknown_route_and_method_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json["error_type"] == "not_found"
    r = client.get("/generate")
    assert r.status_code == 405 and r.json["error_type"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


def test_the_concurrency_cap_answers_429_at_once(app, client):
    """Eight streams hold the eight slots; the ninth request is refused at once, not queued."""
    body = {"inputs": "ab", "parameters": {"max_new_tokens": 500}}
    open_streams = [client.post("/generate_stream", json=body, buffered=False) for _ in range(8)]
    try:
        assert all(r.status_code == 200 for r in open_streams)
        t0 = time.perf_counter()
        for route, b in [("/generate", body), ("/v1/completions", {"prompt": "a"}),
                         ("/next", {"prompt": "a"})]:
            r = client.post(route, json=b)
            assert r.status_code == 429, r.data
            kind = r.json["error"]["code"] if route.startswith("/v1/") else r.json["error_type"]
            assert kind == "overloaded" and r.headers["Retry-After"] == "1"
        assert time.perf_counter() - t0 < 1.0
        assert client.get("/health").status_code == 200  # health is not a generation
    finally:
        for r in open_streams:
            r.close()
    assert app.extensions["charlm"].slots.in_use == 0
    assert client.post("/generate", json=body).status_code == 200


def wait_for(cond, timeout=5.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("route, body", [
    ("/generate_stream", {"inputs": "ab", "parameters": {"max_new_tokens": 500}}),
    ("/v1/completions", {"prompt": "ab", "max_tokens": 500, "stream": True}),
])
def test_a_client_that_leaves_stops_its_generation(app, client, route, body):
    engine = app.extensions["charlm"].models.models["default"].engine
    wait_for(lambda: engine.active == 0)
    r = client.post(route, json=body, buffered=False)
    chunks = iter(r.response)
    assert next(chunks).startswith(b"data: ")
    r.close()  # what the server does when a write to the gone client fails
    wait_for(lambda: engine.active == 0)
    steps = engine.steps
    time.sleep(0.1)
    assert engine.steps == steps  # nothing more is spent on it
    assert engine.chars < 10**6 and app.extensions["charlm"].slots.in_use == 0


def test_a_stream_never_read_is_stopped_when_the_response_closes(app, client):
    engine = app.extensions["charlm"].models.models["default"].engine
    r = client.post("/generate_stream", json={"inputs": "ab", "parameters": {
        "max_new_tokens": 500}}, buffered=False)
    r.close()
    wait_for(lambda: engine.active == 0)
    assert app.extensions["charlm"].slots.in_use == 0


def test_an_error_inside_a_running_stream_is_an_event(app, client, sse, monkeypatch):
    engine = app.extensions["charlm"].models.models["small"].engine
    step, calls = engine.batch.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("kernel exploded")
        return step()

    monkeypatch.setattr(engine.batch, "step", failing_step)
    r = client.post("/generate_stream", json={"inputs": "ab", "model": "small",
                                              "parameters": {"max_new_tokens": 50}})
    assert r.status_code == 200
    events = sse(r.get_data(as_text=True))
    assert len(events) == 4 and all("token" in e for e in events[:3])
    assert events[-1]["error_type"] == "generation"
    assert "kernel exploded" in events[-1]["error"]
    # the engine starts afresh: the next request is served
    out = client.post("/generate", json={"inputs": "ab", "model": "small", "parameters": P})
    assert out.status_code == 200 and len(out.json["generated_text"]) == 5


def test_an_error_in_a_whole_request_is_a_500(app, client, monkeypatch):
    engine = app.extensions["charlm"].models.models["small"].engine

    def failing_step():
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(engine.batch, "step", failing_step)
    r = client.post("/v1/completions", json={"prompt": "ab", "model": "small"})
    assert r.status_code == 500 and r.json["error"]["code"] == "generation"


# ---------------------------------------------------------------------------------------------
# API key and CORS


@pytest.fixture(scope="module")
def guarded(checkpoint_dir):
    return create_app({"CHECKPOINTS": str(checkpoint_dir), "LOAD": "sync",
                       "API_KEY": "s3cret", "CORS_ORIGINS": "https://a.example, https://b.example"})


def test_api_key(guarded):
    c = guarded.test_client()
    assert c.get("/health").status_code == 200  # open to load balancers
    # the playground page loads without a key and asks for one on its first 401
    with c.get("/") as page:
        assert page.status_code == 200
    assert c.post("/activations", json={"text": "a"}).status_code == 401
    for method, route, body in [("post", "/generate", tgi()), ("post", "/generate_stream", tgi()),
                                ("post", "/v1/completions", {"prompt": "a"}),
                                ("post", "/next", {"prompt": "a"}), ("get", "/v1/models", None),
                                ("get", "/info", None)]:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}]:
            r = getattr(c, method)(route, json=body, headers=headers)
            assert r.status_code == 401, (route, headers)
            err = r.json["error"]
            assert (err["code"] if route.startswith("/v1/") else r.json["error_type"]) == \
                "unauthorized"
            assert r.headers["WWW-Authenticate"] == "Bearer"
        r = getattr(c, method)(route, json=body, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, (route, r.data)


def test_cors(guarded):
    c = guarded.test_client()
    ok = {"Origin": "https://a.example", "Authorization": "Bearer s3cret"}
    r = c.post("/generate", json=tgi(), headers=ok)
    assert r.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert "Origin" in r.headers["Vary"]
    r = c.post("/generate", json=tgi(), headers={**ok, "Origin": "https://evil.example"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    # a 401 is readable by an allowed origin, so the page can tell the user why
    r = c.post("/generate", json=tgi(), headers={"Origin": "https://b.example"})
    assert r.status_code == 401
    assert r.headers["Access-Control-Allow-Origin"] == "https://b.example"
    # the preflight carries no key and must pass
    r = c.options("/v1/completions", headers={
        "Origin": "https://b.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://b.example"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    r = c.options("/v1/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_any_origin_and_none(checkpoint_dir, client):
    app = create_app({"CHECKPOINTS": str(checkpoint_dir / "small.npz"), "LOAD": "sync",
                      "CORS_ORIGINS": ["*"]})
    r = app.test_client().get("/health", headers={"Origin": "https://x.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    r = client.get("/health", headers={"Origin": "https://x.example"})  # no CORS configured
    assert "Access-Control-Allow-Origin" not in r.headers


# ---------------------------------------------------------------------------------------------
# loading, configuration, and what a model name can reach


def test_health_is_503_until_loaded(checkpoint_dir, monkeypatch):
    from service.models import Models

    monkeypatch.setattr(Models, "load_in_background", lambda self: None)
    app = create_app({"CHECKPOINTS": str(checkpoint_dir)})  # background loading, held back
    c = app.test_client()
    r = c.get("/health")
    assert r.status_code == 503 and r.json["status"] == "loading"
    r = c.post("/generate", json=tgi())
    assert r.status_code == 503 and r.json["error_type"] == "unavailable"
    assert c.get("/info").status_code == 503 and c.get("/v1/models").status_code == 503
    app.extensions["charlm"].models.load()
    assert c.get("/health").status_code == 200
    assert c.post("/generate", json=tgi()).status_code == 200


def test_health_is_503_when_nothing_loads(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    c = create_app({"CHECKPOINTS": str(tmp_path), "LOAD": "sync"}).test_client()
    r = c.get("/health")  # public: no file names, no paths, no error text
    assert r.status_code == 503 and r.json == {"status": "failed"}
    r = c.get("/info")  # the details, behind the key when there is one
    assert r.status_code == 503 and "broken.npz" in r.json["error"]
    c = create_app({"CHECKPOINTS": str(tmp_path / "none"), "LOAD": "sync"}).test_client()
    assert c.get("/health").json == {"status": "failed"}
    r = c.get("/info")
    assert r.status_code == 503 and "does not exist" in r.json["error"]


def test_only_checkpoints_inside_the_directory_are_served(checkpoint_dir, tmp_path):
    d = tmp_path / "served"
    d.mkdir()
    os.symlink(checkpoint_dir / "small.npz", d / "outside.npz")  # leads out of the directory
    (d / "inside.npz").write_bytes((checkpoint_dir / "small.npz").read_bytes())
    (d / "broken.npz").write_bytes(b"garbage")
    (d / "notes.txt").write_text("not a checkpoint")
    app = create_app({"CHECKPOINTS": str(d), "LOAD": "sync"})
    c = app.test_client()
    assert [m["id"] for m in c.get("/v1/models").json["data"]] == ["inside"]
    assert c.get("/info").json["default_model"] == "inside"
    assert "broken.npz" in c.get("/info").json["skipped"]
    for name in ["outside", "broken", "notes", "../served/inside", str(d / "inside.npz")]:
        r = c.post("/generate", json={**tgi(), "model": name})
        assert r.status_code == 404, name


def test_default_model_and_config_from_the_environment(checkpoint_dir, monkeypatch):
    monkeypatch.setenv("CHARLM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("CHARLM_DEFAULT_MODEL", "small")
    monkeypatch.setenv("CHARLM_MAX_NEW_TOKENS", "7")
    monkeypatch.setenv("CHARLM_API_KEY", "123")  # JSON would make it a number
    monkeypatch.setenv("CHARLM_LOAD", "sync")
    app = create_app()
    c = app.test_client()
    auth = {"Authorization": "Bearer 123"}
    info = c.get("/info", headers=auth).json
    assert info["default_model"] == "small" and info["limits"]["max_new_tokens"] == 7
    r = c.post("/generate", json=tgi(max_new_tokens=8), headers=auth)
    assert r.status_code == 422


def test_bad_configuration_is_refused(checkpoint_dir):
    from charlm.errors import CharlmError

    for bad in [{"UNKNOWN_CHARS": "ignore"}, {"MAX_CONCURRENCY": "many"},
                {"KERNEL_THREADS": 0}, {"LOAD": "lazy"}]:
        with pytest.raises(CharlmError):
            create_app({"CHECKPOINTS": str(checkpoint_dir), "LOAD": "sync", **bad})
    for coalesce in ["fast", -1, 5000, None]:
        with pytest.raises(CharlmError, match=r"CHARLM_COALESCE_MS must be a number in \[0, "):
            create_app({"CHECKPOINTS": str(checkpoint_dir), "LOAD": "sync",
                        "COALESCE_MS": coalesce})


def test_error_bodies_are_json_objects(client):
    r = client.post("/generate", data="{", content_type="application/json")
    assert json.loads(r.data) == r.json and r.status_code == 400
