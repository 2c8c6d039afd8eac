"""The HTTP service through Flask's test client: every route and parameter, on two small models."""

import hashlib
import math
import threading

import pytest
from conftest import CHARS

SMALL = "\n abcdefgh"


def generate(client, prompt="The ", **params):
    body = {"inputs": prompt, "parameters": params}
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.json
    return r.json


def stream_events(client, sse, route="/generate_stream", **body):
    r = client.post(route, json=body)
    assert r.status_code == 200, r.data
    assert r.mimetype == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Accel-Buffering"] == "no"
    return sse(r.get_data(as_text=True))


# ---------------------------------------------------------------------------------------------
# TGI: /generate, /generate_stream, /


def test_generate_greedy_by_default_with_details(client):
    a = generate(client, max_new_tokens=30, details=True)
    b = generate(client, max_new_tokens=30, details=True)
    assert a == b  # no sampling settings: greedy, as TGI
    d = a["details"]
    assert d["finish_reason"] == "length"
    assert d["generated_tokens"] == 30 == len(a["generated_text"])
    assert d["seed"] is None and d["prefill"] == [] and d["input_length"] == 4
    assert "".join(t["text"] for t in d["tokens"]) == a["generated_text"]
    for t in d["tokens"]:
        assert t["id"] == CHARS.index(t["text"]) and t["special"] is False
        assert t["logprob"] <= 0
    assert "top_tokens" not in d


def test_generate_without_details_has_text_only(client):
    out = generate(client, max_new_tokens=5)
    assert list(out) == ["generated_text"] and len(out["generated_text"]) == 5


def test_seeded_sampling_repeats_and_seeds_differ(client):
    p = dict(max_new_tokens=40, do_sample=True, temperature=1.2, details=True)
    a, b = generate(client, seed=7, **p), generate(client, seed=7, **p)
    c = generate(client, seed=8, **p)
    assert a["generated_text"] == b["generated_text"] != c["generated_text"]
    assert a["details"]["seed"] == 7
    # without a seed one is drawn, reported, and repeats the text when sent back
    d = generate(client, **p)
    e = generate(client, seed=d["details"]["seed"], **p)
    assert d["generated_text"] == e["generated_text"]


def test_sampling_settings_are_applied(client):
    greedy = generate(client, max_new_tokens=20)["generated_text"]
    # top_k=1 keeps only the most probable character: greedy whatever the temperature or seed
    assert generate(client, max_new_tokens=20, top_k=1, temperature=3.0, seed=1
                    )["generated_text"] == greedy
    assert generate(client, max_new_tokens=20, top_p=1e-6, seed=2)["generated_text"] == greedy


def test_stream_events_add_up_to_the_final_text(client, sse):
    events = stream_events(client, sse, inputs="To be", parameters={
        "max_new_tokens": 25, "seed": 3, "do_sample": True})
    assert [e["index"] for e in events] == list(range(25))
    for e in events[:-1]:
        assert e["generated_text"] is None and e["details"] is None
        assert e["top_tokens"] == []
        assert set(e["token"]) == {"id", "text", "logprob", "special"}
    last = events[-1]
    assert "".join(e["token"]["text"] for e in events) == last["generated_text"]
    assert last["details"] == {"finish_reason": "length", "generated_tokens": 25, "seed": 3,
                               "input_length": 5}
    # the same request without streaming gives the same text
    assert generate(client, "To be", max_new_tokens=25, seed=3, do_sample=True
                    )["generated_text"] == last["generated_text"]


@pytest.mark.parametrize("top_n", [0, 3])
def test_stream_events_are_the_json_of_the_whole_answers_tokens(client, top_n):
    """The hot path builds each event from pieces; its bytes are those json.dumps gives for the
    tokens of the same request answered whole (CHARS has a newline and a quote to escape)."""
    import json

    body = {"inputs": "To be", "parameters": {"max_new_tokens": 40, "seed": 4, "do_sample": True,
                                              "temperature": 3.0, "top_n_tokens": top_n}}
    raw = client.post("/generate_stream", json=body).get_data(as_text=True)
    whole = client.post("/generate", json={**body, "parameters": {
        **body["parameters"], "details": True}}).json["details"]
    blocks = raw.split("\n\n")[:-1]
    assert len(blocks) == 40
    for k, block in enumerate(blocks[:-1]):
        want = {"index": k, "token": whole["tokens"][k],
                "top_tokens": whole["top_tokens"][k] if top_n else [],
                "generated_text": None, "details": None}
        assert block == "data: " + json.dumps(want, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("route", ["/generate", "/"])
def test_stream_true_on_generate_and_root(client, sse, route):
    body = {"inputs": "ab", "parameters": {"max_new_tokens": 6, "seed": 5, "do_sample": True}}
    a = stream_events(client, sse, route, stream=True, **body)
    b = stream_events(client, sse, "/generate_stream", **body)
    assert a == b and len(a) == 6
    assert client.post(route, json=body).json["generated_text"] == a[-1]["generated_text"]


def test_top_n_tokens(client, sse):
    out = generate(client, max_new_tokens=10, top_n_tokens=3, details=True, seed=1,
                   do_sample=True)
    tops = out["details"]["top_tokens"]
    assert len(tops) == 10
    for tok, top in zip(out["details"]["tokens"], tops, strict=True):
        assert len(top) == 3
        lps = [t["logprob"] for t in top]
        assert lps == sorted(lps, reverse=True)
        # the drawn character is either among the top 3 with the same logprob, or less probable
        same = [t for t in top if t["id"] == tok["id"]]
        assert (same and same[0]["logprob"] == pytest.approx(tok["logprob"])) or \
            tok["logprob"] <= lps[-1] + 1e-9
    events = stream_events(client, sse, inputs="The ", parameters={
        "max_new_tokens": 10, "top_n_tokens": 3, "seed": 1, "do_sample": True})
    assert [e["top_tokens"] for e in events] == tops


def test_tgi_stop_sequence_ends_the_text_and_stays_in_it(client, sse):
    params = dict(max_new_tokens=80, seed=11, do_sample=True)
    full = generate(client, **params)["generated_text"]
    stop = full[20:22]
    end = full.index(stop) + len(stop)
    out = generate(client, stop=[stop, "never seen"], details=True, **params)
    assert out["generated_text"] == full[:end]
    assert out["details"]["finish_reason"] == "stop_sequence"
    events = stream_events(client, sse, inputs="The ", parameters={**params, "stop": [stop]})
    assert events[-1]["generated_text"] == full[:end]
    assert events[-1]["details"]["finish_reason"] == "stop_sequence"


def test_return_full_text_and_truncate(client):
    a = generate(client, "abc", max_new_tokens=5, return_full_text=True)["generated_text"]
    assert a.startswith("abc") and len(a) == 8
    # truncate keeps the last characters of the input, as TGI does
    assert generate(client, "zzzzabc", max_new_tokens=5, truncate=3,
                    details=True)["generated_text"] == a[3:]


def test_neutral_tgi_parameters_are_accepted(client):
    # what huggingface_hub's InferenceClient sends when the caller leaves them alone
    out = generate(client, max_new_tokens=3, best_of=None, decoder_input_details=False,
                   frequency_penalty=None, grammar=None, repetition_penalty=None,
                   typical_p=None, watermark=False, adapter_id=None, top_k=None, top_p=None,
                   temperature=None, seed=None, stop=[], top_n_tokens=None, truncate=None)
    assert len(out["generated_text"]) == 3


# ---------------------------------------------------------------------------------------------
# several models


def test_model_selection(client):
    out = client.post("/generate", json={"inputs": "abc", "model": "small", "parameters": {
        "max_new_tokens": 50, "seed": 1, "do_sample": True}}).json
    assert set(out["generated_text"]) <= set(SMALL)
    default = client.post("/generate", json={"inputs": "abc", "model": "default",
                                             "parameters": {"max_new_tokens": 5}}).json
    assert default == client.post("/generate", json={"inputs": "abc", "parameters": {
        "max_new_tokens": 5}}).json


def test_v1_models(client):
    data = client.get("/v1/models").json
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["default", "small"]
    assert all(m["object"] == "model" and m["owned_by"] == "charlm" for m in data["data"])
    assert client.get("/v1/models/small").json["id"] == "small"
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json["error"]["code"] == "model_not_found"


# ---------------------------------------------------------------------------------------------
# OpenAI: /v1/completions


def complete(client, **body):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.json
    return r.json


def test_completions(client):
    out = complete(client, model="default", prompt="The ", max_tokens=12, seed=4)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert out["model"] == "default" and isinstance(out["created"], int)
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert len(choice["text"]) == 12 and choice["logprobs"] is None
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
    again = complete(client, model="default", prompt=["The "], max_tokens=12, seed=4)
    assert again["choices"][0]["text"] == choice["text"]
    # default sampling is at temperature 1; temperature 0 is greedy
    greedy = generate(client, max_new_tokens=12)["generated_text"]
    assert complete(client, prompt="The ", max_tokens=12, temperature=0)["choices"][0][
        "text"] == greedy


def test_completions_logprobs_and_echo(client):
    out = complete(client, prompt="ab", max_tokens=6, seed=2, logprobs=2, echo=True)
    choice = out["choices"][0]
    lp = choice["logprobs"]
    text = choice["text"]
    # echo with logprobs: the prompt's characters are scored too, the first with null
    assert text.startswith("ab") and "".join(lp["tokens"]) == text
    assert lp["text_offset"] == list(range(8))
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(x <= 0 for x in lp["token_logprobs"][1:])
    # the top 2, and the character itself when it is not among them (OpenAI's behaviour)
    for ch, x, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:],
                          strict=True):
        assert top[ch] == x and len(top) == (2 if sorted(top.values())[-2] <= x else 3)


def test_completions_stop_is_left_out(client, sse):
    body = dict(prompt="The ", max_tokens=80, seed=9)
    full = complete(client, **body)["choices"][0]["text"]
    stop = full[30:33]
    cut = full.index(stop)
    out = complete(client, stop=stop, **body)["choices"][0]
    assert out["text"] == full[:cut] and out["finish_reason"] == "stop"
    events = stream_events(client, sse, "/v1/completions", stream=True, stop=[stop], **body)
    for e in events[:-1]:
        assert list(e) == ["id", "object", "created", "model", "choices"]
        assert list(e["choices"][0]) == ["text", "index", "logprobs", "finish_reason"]
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == full[:cut]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_completions_stream(client, sse):
    body = dict(model="small", prompt="abc", max_tokens=15, seed=6, logprobs=1)
    events = stream_events(client, sse, "/v1/completions", stream=True,
                           stream_options={"include_usage": True}, **body)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 15
    chunks = events[:-2]
    assert all(c["object"] == "text_completion" and c["model"] == "small" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 15 + ["length"]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == complete(client, **body)["choices"][0]["text"]
    assert [c["choices"][0]["logprobs"]["text_offset"] for c in chunks[:-1]] == [
        [k] for k in range(15)]


def test_completions_echo_stream_and_zero_tokens(client, sse):
    events = stream_events(client, sse, "/v1/completions", prompt="ab", max_tokens=0,
                           echo=True, stream=True)
    assert events[0]["choices"][0]["text"] == "ab"
    assert events[-2]["choices"][0]["finish_reason"] == "length" and events[-1] == "[DONE]"


# ---------------------------------------------------------------------------------------------
# /next


def test_next_distribution(client):
    out = client.post("/next", json={"prompt": "The "}).json
    dist = out["distribution"]
    assert len(dist) == len(CHARS) and out["model"] == "default"
    probs = [d["prob"] for d in dist]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0)
    for d in dist:
        assert d["logprob"] == pytest.approx(math.log(d["prob"]))
        assert CHARS[d["id"]] == d["char"]
    assert out["entropy"] == pytest.approx(-sum(p * math.log(p) for p in probs))
    assert out["entropy_bits"] == pytest.approx(out["entropy"] / math.log(2))
    # the most probable character is what greedy generation writes
    assert dist[0]["char"] == generate(client, max_new_tokens=1)["generated_text"]


def test_next_temperature_and_top_n(client):
    base = client.post("/next", json={"prompt": "ab"}).json
    cold = client.post("/next", json={"prompt": "ab", "temperature": 0.5, "top_n": 3}).json
    hot = client.post("/next", json={"prompt": "ab", "temperature": 2.0}).json
    assert len(cold["distribution"]) == 3
    assert cold["entropy"] < base["entropy"] < hot["entropy"]
    assert [d["char"] for d in cold["distribution"]] == [d["char"]
                                                         for d in base["distribution"][:3]]
    # softmax(z / T): the logprob ratios scale by 1/T
    b, c = base["distribution"], cold["distribution"]
    assert c[0]["logprob"] - c[1]["logprob"] == pytest.approx(
        2 * (b[0]["logprob"] - b[1]["logprob"]))
    big = client.post("/next", json={"prompt": "ab", "top_n": 1000, "model": "small"}).json
    assert len(big["distribution"]) == len(SMALL)


# ---------------------------------------------------------------------------------------------
# /health and /info


def test_health(client):
    r = client.get("/health")
    # public: the status alone; the models' names are on /info (behind the key, when set)
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert [m["name"] for m in client.get("/info").json["models"]] == ["default", "small"]


def test_info(client, checkpoint_dir):
    info = client.get("/info").json
    assert info["default_model"] == "default" == info["model_id"]
    cards = {m["name"]: m for m in info["models"]}
    assert set(cards) == {"default", "small"}
    card = cards["default"]
    sha = hashlib.sha256((checkpoint_dir / "default.npz").read_bytes()).hexdigest()
    assert card["sha256"] == sha == info["model_sha"]
    assert card["vocab"] == "".join(CHARS) and card["vocab_size"] == len(CHARS)
    assert card["config"]["n_hidden"] == 16 and card["n_params"] > 0
    assert card["step"] == 101 and card["best_val_loss"] == 2.5 and card["last_val_loss"] == 2.5
    assert cards["small"]["vocab"] == SMALL
    limits = info["limits"]
    assert limits["max_concurrency"] == 8 and limits["max_new_tokens"] == 500
    assert limits["max_prompt_chars"] == 200 and limits["max_content_length"] == 4096
    assert limits["max_batch_tokens"] == 16384
    assert info["load"]["requests"] == 0


# ---------------------------------------------------------------------------------------------
# sharing the batch


def test_concurrent_requests_repeat_what_they_do_alone(app):
    """Streams batched together give what each gives alone: seeds make them repeat exactly."""
    bodies = [{"inputs": "ab" * k, "model": "default" if k % 2 else "small",
               "parameters": {"max_new_tokens": 60 + k, "seed": k, "do_sample": True,
                              "temperature": 0.9}} for k in range(8)]
    alone = [app.test_client().post("/generate", json=b).json for b in bodies]
    together = [None] * len(bodies)

    def run(k):
        together[k] = app.test_client().post("/generate", json=bodies[k]).json

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_prompts_are_read_on_the_request_thread_not_the_engines(app, monkeypatch):
    """The engine's thread steps every stream: reading a long prompt there would stall them."""
    import charlm.generate.kernels as GK

    readers = []
    for name in ("prime", "prime_threads"):
        kernel = getattr(GK, name)
        monkeypatch.setattr(GK, name, lambda *a, k=kernel: (
            readers.append((threading.current_thread().name, len(a[1]))), k(*a))[1])
    prompt = "abcdefgh " * 20
    out = app.test_client().post("/generate", json={
        "inputs": prompt, "parameters": {"max_new_tokens": 5}}).json
    assert len(out["generated_text"]) == 5
    assert [n for _, n in readers] == [len(prompt)]
    assert not readers[0][0].startswith("charlm-engine")


def test_unknown_characters_can_be_dropped(checkpoint_dir):
    from service import create_app

    app = create_app({"CHECKPOINTS": str(checkpoint_dir / "small.npz"), "LOAD": "sync",
                      "UNKNOWN_CHARS": "drop"})
    c = app.test_client()
    a = c.post("/generate", json={"inputs": "aXbY", "parameters": {"max_new_tokens": 5}}).json
    b = c.post("/generate", json={"inputs": "ab", "parameters": {"max_new_tokens": 5}}).json
    assert a == b
    assert c.get("/v1/models").json["data"][0]["id"] == "small"
