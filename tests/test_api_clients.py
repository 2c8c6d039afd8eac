"""The API as real clients use it: the official openai client's errors and batches, LangChain's
batch(), lm-evaluation-harness's loglikelihood request, TGI's prefill and /tokenize, scoring
checked against `charlm eval`, request ids and gzip."""

import gzip
import http.client
import json
import math
import zlib
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import CHARS, serve_in_thread
from typer.testing import CliRunner

from charlm.checkpoint import load_checkpoint
from charlm.cli import app as cli
from charlm.train import estimate_loss
from charlm.vocab import Vocab
from service.metrics import REGISTRY

openai = pytest.importorskip("openai")

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


@pytest.fixture(scope="module")
def base_url(app):
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def oa(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


# -- errors ---------------------------------------------------------------------------------


def test_openai_client_raises_bad_request_with_our_message(oa):
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="default", prompt="a", temperature=2.5)
    assert e.value.status_code == 400
    err = e.value.body
    assert err["message"] == "`temperature` must be in [0.0, 2.0], got 2.5"
    assert err["param"] == "temperature" and err["code"] == "validation"
    assert err["type"] == "invalid_request_error"
    assert "`temperature` must be in [0.0, 2.0]" in str(e.value)


def test_openai_client_not_found_and_stream_errors(oa):
    with pytest.raises(openai.NotFoundError) as e:
        oa.completions.create(model="nope", prompt="a")
    assert "unknown model 'nope'" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="default", prompt="a", max_tokens=10**6, stream=True)
    assert "`max_tokens` must be in" in e.value.body["message"]


def test_tgi_routes_keep_tgis_shape(client):
    r = client.post("/generate", json={"inputs": "a", "parameters": {"temperature": -1}})
    assert r.status_code == 422 and set(r.json) == {"error", "error_type"}


# -- batches --------------------------------------------------------------------------------


def test_a_list_of_prompts_and_n_are_one_batch_indexed_as_openai(oa):
    prompts = ["The ", "a b", "First"]
    out = oa.completions.create(model="default", prompt=prompts, n=2, max_tokens=12, seed=5,
                                temperature=0.8)
    assert [c.index for c in out.choices] == list(range(6))
    # each choice is what that prompt alone gives with that copy's seed (seed + j)
    for c in out.choices:
        i, j = divmod(c.index, 2)
        alone = oa.completions.create(model="default", prompt=prompts[i], max_tokens=12,
                                      seed=5 + j, temperature=0.8)
        assert c.text == alone.choices[0].text and len(c.text) == 12
    assert out.choices[0].text != out.choices[1].text  # the copies differ
    assert out.usage.prompt_tokens == sum(map(len, prompts))
    assert out.usage.completion_tokens == 6 * 12


def test_a_streamed_batch_adds_up_to_the_whole_one(oa):
    body = dict(model="default", prompt=["ab", "The "], n=2, max_tokens=9, seed=3)
    whole = oa.completions.create(**body)
    texts, finish = [""] * 4, [None] * 4
    chunks = list(oa.completions.create(**body, stream=True,
                                        stream_options={"include_usage": True}))
    for ch in chunks[:-1]:
        (c,) = ch.choices
        texts[c.index] += c.text
        if c.finish_reason:
            finish[c.index] = c.finish_reason
    assert texts == [c.text for c in whole.choices] and finish == ["length"] * 4
    assert chunks[-1].usage.completion_tokens == 36


def test_batch_bounds_are_checked_before_any_work(checkpoint_dir):
    from service import create_app

    app = create_app({"CHECKPOINTS": str(checkpoint_dir), "LOAD": "sync", "MAX_CONCURRENCY": 4,
                      "MAX_BATCH_TOKENS": 100})
    c = app.test_client()
    r = c.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 26})
    assert r.status_code == 400 and "over this server's limit of 100" in r.json["error"]["message"]
    assert c.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2,
                                           "max_tokens": 25}).status_code == 200
    # 3 free slots of 4: a batch of 4 is refused whole (429), not started in part
    held = c.post("/generate_stream", json={"inputs": "a", "parameters": {"max_new_tokens": 500}},
                  buffered=False)
    try:
        r = c.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 5})
        assert r.status_code == 429 and r.json["error"]["code"] == "overloaded"
        assert app.extensions["charlm"].slots.in_use == 1
        assert c.post("/v1/completions", json={"prompt": ["a", "b", "c"],
                                               "max_tokens": 5}).status_code == 200
    finally:
        held.close()
    assert app.extensions["charlm"].slots.in_use == 0


def test_langchain_batch(base_url):
    """LangChain's OpenAI LLM batch(): one /v1/completions request with a list of prompts."""
    lc = pytest.importorskip("langchain_openai")
    # tiktoken would download an encoding only to count tokens for max_tokens=-1: fixed here
    llm = lc.OpenAI(base_url=base_url + "/v1", api_key="unused", model="default",
                    max_tokens=8, temperature=0, max_retries=0, batch_size=20)
    prompts = ["The ", "First ", "a"]
    labels = {"route": "/v1/completions", "method": "POST", "status": "200"}
    before = REGISTRY.get_sample_value("charlm_requests_total", labels) or 0
    out = llm.batch(prompts)
    assert len(out) == 3 and all(len(t) == 8 for t in out)
    # one request carried the three prompts
    assert REGISTRY.get_sample_value("charlm_requests_total", labels) == before + 1
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused")
    for p, text in zip(prompts, out, strict=True):
        alone = client.completions.create(model="default", prompt=p, max_tokens=8,
                                          temperature=0)
        assert text == alone.choices[0].text


# -- scoring --------------------------------------------------------------------------------


def eval_sum(checkpoint, text: str) -> float:
    """Sum of log p over text[1:], from the loss `charlm eval --batch-size 1 --seq-len 25`
    computes (mean nats/char): one stream, its state carried from window to window."""
    ck = load_checkpoint(checkpoint)
    ids = Vocab(ck.vocab).encode(text, unknown="drop")
    return -estimate_loss(ck.model(), ids, 1, 25) * (len(ids) - 1)


def test_echo_scores_the_prompt_as_charlm_eval_does(oa, checkpoint_dir, tmp_path):
    out = oa.completions.create(model="default", prompt=TEXT, max_tokens=0, echo=True,
                                logprobs=0, temperature=0)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == TEXT and lp.tokens == list(TEXT)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    total = sum(lp.token_logprobs[1:])
    assert total == pytest.approx(eval_sum(checkpoint_dir / "default.npz", TEXT), abs=1e-4)
    # and what the command prints (4 decimals of the mean)
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    # one stream (the default, 32, splits the text into 32 pieces, each from the zero state),
    # in windows shorter than the text, so state is carried across them as the server's is
    res = CliRunner().invoke(cli, ["eval", str(checkpoint_dir / "default.npz"), str(f),
                                   "--batch-size", "1", "--seq-len", "25"])
    assert res.exit_code == 0, res.output
    mean = float(res.output.split()[0])
    assert -total / (len(TEXT) - 1) == pytest.approx(mean, abs=5e-5)


def test_scores_match_a_numpy_reference(client, checkpoint_dir):
    """Each character's logprob against the plain-NumPy model in charlm/reference.py."""
    from charlm import reference

    ck = load_checkpoint(checkpoint_dir / "default.npz")
    stoi = {ch: k for k, ch in enumerate(ck.vocab)}
    ids = np.array([stoi[ch] for ch in TEXT])
    model = ck.model()
    h0 = np.zeros((2, 1, model.config.n_hidden))
    logits = reference.forward(model.params, 2, ids[None, :-1], h0, h0)[0][0]
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    want = logp[np.arange(len(ids) - 1), ids[1:]]
    r = client.post("/v1/completions", json={"prompt": TEXT, "max_tokens": 0, "echo": True,
                                             "logprobs": 3})
    got = r.json["choices"][0]["logprobs"]
    np.testing.assert_allclose(got["token_logprobs"][1:], want, atol=1e-6)
    for t, top in enumerate(got["top_logprobs"][1:]):
        best = np.argsort(-logp[t], kind="stable")[:3]
        assert set(top) == {ck.vocab[v] for v in best} | {TEXT[t + 1]}


def test_lm_eval_harness_loglikelihood_request(base_url):
    """lm-evaluation-harness's local-completions loglikelihood: LocalCompletionsAPI's
    _create_payload (generate=False) sends {"model", "prompt": [context + continuation, ...],
    "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed", "echo": true} (older releases
    sent max_tokens 0), and parse_logprobs reads, per choice sorted by "index",
    choice["logprobs"]["token_logprobs"][ctxlen:-1] (their sum is the continuation's
    loglikelihood) and choice["logprobs"]["top_logprobs"][ctxlen:-1] (greedy when each
    token's logprob equals max(top.values()))."""
    pairs = [("First Citizen:\n", "Before we proceed"), ("The ", "king"), ("a", " b")]
    for max_tokens in (1, 0):
        body = {"model": "default", "prompt": [c + x for c, x in pairs], "temperature": 0,
                "max_tokens": max_tokens, "logprobs": 1, "seed": 1234, "echo": True}
        out = post(base_url, "/v1/completions", body)
        choices = sorted(out["choices"], key=lambda c: c["index"])
        assert len(choices) == 3
        for (ctx, cont), choice in zip(pairs, choices, strict=True):
            ctxlen = len(ctx)
            lps = choice["logprobs"]["token_logprobs"]
            tops = choice["logprobs"]["top_logprobs"]
            assert len(lps) == len(ctx) + len(cont) + max_tokens
            end = len(lps) - max_tokens  # [ctxlen:-1] when max_tokens is 1
            ll = sum(lps[ctxlen:end])
            greedy = all(t == max(top.values()) for t, top in
                         zip(lps[ctxlen:end], tops[ctxlen:end], strict=True))
            alone = post(base_url, "/v1/completions", {"prompt": ctx + cont, "max_tokens": 0,
                                                       "echo": True, "logprobs": 5})
            want = alone["choices"][0]["logprobs"]
            assert ll == pytest.approx(sum(want["token_logprobs"][ctxlen:]), abs=1e-9)
            expect_greedy = all(max(top.values()) == t for t, top in zip(
                want["token_logprobs"][ctxlen:], want["top_logprobs"][ctxlen:], strict=True))
            assert greedy == expect_greedy


def test_top_logprobs_always_hold_the_sampled_character(client, sse):
    body = {"prompt": "The ", "max_tokens": 60, "seed": 11, "temperature": 1.5, "logprobs": 1}
    whole = client.post("/v1/completions", json=body).json["choices"][0]["logprobs"]
    outside = 0
    for ch, x, top in zip(whole["tokens"], whole["token_logprobs"], whole["top_logprobs"],
                          strict=True):
        assert top[ch] == x
        outside += len(top) == 2
    assert outside > 0  # at temperature 1.5, some draws are not the most probable
    events = sse(client.post("/v1/completions", json={**body, "stream": True}).get_data(
        as_text=True))
    streamed = [e["choices"][0]["logprobs"] for e in events[:-2]]
    assert [s["top_logprobs"][0] for s in streamed] == whole["top_logprobs"]


def test_tgi_decoder_input_details_prefill(client):
    r = client.post("/generate", json={"inputs": TEXT, "parameters": {
        "details": True, "decoder_input_details": True, "max_new_tokens": 3}})
    prefill = r.json["details"]["prefill"]
    ids = {ch: k for k, ch in enumerate(CHARS)}
    assert [p["text"] for p in prefill] == list(TEXT)
    assert [p["id"] for p in prefill] == [ids[ch] for ch in TEXT]
    assert prefill[0]["logprob"] is None
    echo = client.post("/v1/completions", json={"prompt": TEXT, "max_tokens": 0, "echo": True,
                                                "logprobs": 0}).json
    assert [p["logprob"] for p in prefill] == echo["choices"][0]["logprobs"]["token_logprobs"]
    r = client.post("/generate_stream", json={"inputs": "a", "parameters": {
        "decoder_input_details": True}})
    assert r.status_code == 422 and "streaming" in r.json["error"]


def test_tokenize(client):
    r = client.post("/tokenize", json={"inputs": "Thé a"})
    ids = {ch: k for k, ch in enumerate(CHARS)}
    assert r.json == [{"id": ids[ch], "text": ch, "start": k, "stop": k + 1}
                      for k, ch in enumerate("Thé a")]
    assert client.post("/tokenize", json={"inputs": "a" * 201}).status_code == 422
    assert client.post("/tokenize", json={"inputs": "ab\u4e16"}).status_code == 422
    assert client.post("/tokenize", json={"inputs": 3}).status_code == 422


# -- request ids and compression ---------------------------------------------------------------


def post(base_url: str, path: str, body: dict, headers: dict | None = None) -> dict:
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                      **(headers or {})})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("given, kept", [("abc-123_x.y:z", True), ("a" * 128, True),
                                         ("a" * 129, False), ("has space", False),
                                         ("new\u2028line", False), ("", False)])
def test_request_id_is_the_clients_when_sane(client, given, kept):
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1},
                    headers={"X-Request-Id": given})
    rid = r.headers["X-Request-Id"]
    assert (rid == given) is kept and 1 <= len(rid) <= 128


def test_request_id_on_errors_and_streams(client):
    for r in (client.get("/nope"), client.post("/generate", json={"inputs": 3}),
              client.post("/v1/completions", json={"prompt": "a", "n": 0}),
              client.post("/generate_stream", json={"inputs": "a"}),
              client.post("/v1/completions", json={"prompt": "a", "stream": True},
                          headers={"X-Request-Id": "mine"})):
        assert r.headers["X-Request-Id"]
    assert r.headers["X-Request-Id"] == "mine"
    a = client.get("/health").headers["X-Request-Id"]
    assert a != client.get("/health").headers["X-Request-Id"]


def test_gzip_whole_answers(client):
    body = {"prompt": TEXT, "max_tokens": 0, "echo": True, "logprobs": 5}
    plain = client.post("/v1/completions", json=body)
    assert "Content-Encoding" not in plain.headers
    for accept in ("gzip", "br;q=1.0, gzip;q=0.5", "*"):
        r = client.post("/v1/completions", json=body, headers={"Accept-Encoding": accept})
        assert r.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in r.headers["Vary"]
        data = json.loads(gzip.decompress(r.data))
        assert data["choices"] == plain.json["choices"]
        assert int(r.headers["Content-Length"]) == len(r.data) < len(plain.data)
    for accept in ("gzip;q=0", "identity", "br"):
        r = client.post("/v1/completions", json=body, headers={"Accept-Encoding": accept})
        assert "Content-Encoding" not in r.headers
    small = client.get("/health", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers  # under COMPRESS_MIN_BYTES


def test_gzip_streams_flush_each_event(base_url):
    """Every chunk the server writes decodes to whole events at once: nothing waits in the
    compressor for the next one."""
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/generate_stream", json.dumps(
        {"inputs": "The ", "parameters": {"max_new_tokens": 40, "do_sample": True,
                                          "seed": 4}}),
        {"Content-Type": "application/json", "Accept-Encoding": "gzip"})
    resp = conn.getresponse()
    assert resp.getheader("Content-Encoding") == "gzip"
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    events = []
    while True:
        chunk = resp.read1(65536)  # what one write of the server brought
        if not chunk:
            break
        text = d.decompress(chunk).decode()
        # each write's bytes decode by themselves into whole events
        assert text == "" or text.endswith("\n\n"), text
        events += [json.loads(e[6:]) for e in text.split("\n\n") if e]
    conn.close()
    assert len(events) == 40 and events[-1]["details"]["generated_tokens"] == 40
    assert "".join(e["token"]["text"] for e in events) == events[-1]["generated_text"]
    assert not math.isnan(events[0]["token"]["logprob"])


def test_gzip_leaves_ranges_alone_and_weakens_etags(client):
    def get(path, **headers):
        with client.get(path, headers=headers) as r:
            return r.status_code, r.data, r.headers

    path = "/playground/app.js"
    _, plain, plain_headers = get(path)
    assert len(plain) >= 1024
    status, data, headers = get(path, **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(data) == plain
    assert headers["ETag"] == "W/" + plain_headers["ETag"]
    assert get(path, **{"Accept-Encoding": "gzip", "If-None-Match": headers["ETag"]})[0] == 304
    status, data, headers = get(path, **{"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
    assert status == 206 and data == plain[:10] and "Content-Encoding" not in headers


def test_bad_log_format_is_refused_by_the_app(checkpoint_dir):
    from charlm.errors import CharlmError
    from service import create_app

    with pytest.raises(CharlmError, match="CHARLM_LOG_FORMAT must be text or json"):
        create_app({"CHECKPOINTS": str(checkpoint_dir), "LOG_FORMAT": "xml"})


def test_dropped_characters_are_not_scored(checkpoint_dir):
    from service import create_app

    app = create_app({"CHECKPOINTS": str(checkpoint_dir), "LOAD": "sync",
                      "UNKNOWN_CHARS": "drop"})
    c = app.test_client()
    lp = c.post("/v1/completions", json={"prompt": "ab\u4e16c", "max_tokens": 0, "echo": True,
                                         "logprobs": 0}).json["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "b", "c"] and lp["text_offset"] == [0, 1, 3]
    plain = c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 0, "echo": True,
                                            "logprobs": 0}).json["choices"][0]["logprobs"]
    assert lp["token_logprobs"] == plain["token_logprobs"]
    toks = c.post("/tokenize", json={"inputs": "ab\u4e16c"}).json
    assert [(t["text"], t["start"]) for t in toks] == [("a", 0), ("b", 1), ("c", 3)]
