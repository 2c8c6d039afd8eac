"""Prometheus /metrics and the JSON access log under real gunicorn with two workers: every
worker's requests counted, scraped and parsed with prometheus_client's own parser."""

import http.client
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_service_gunicorn import children, free_port

from service.launch import gunicorn_argv, serve_env


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def post(port: int, path: str, body: dict) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                      "Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def samples(port: int) -> dict:
    """(name, labels as a sorted tuple) -> value, from one scrape."""
    status, body, headers = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def total(smp: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in smp.items() if n == name and want <= set(lab))


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("metrics")
    port = free_port()
    env = {**os.environ, **serve_env(checkpoint_dir, max_concurrency=4),
           "CHARLM_KERNEL_THREADS": "1", "CHARLM_LOG_FORMAT": "json",
           "PROMETHEUS_MULTIPROC_DIR": str(d / "prom")}
    log_path = d / "gunicorn.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(gunicorn_argv("127.0.0.1", port, workers=2), env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() - t0 < 120, "gunicorn did not start"
                try:
                    if get(port, "/health")[0] == 200 and len(children(proc.pid)) == 2:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            yield port, proc.pid, log_path
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def access_lines(log_path) -> list[dict]:
    out = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_metrics_count_every_workers_requests(server):
    port, pid, log_path = server
    before = samples(port)
    body = {"prompt": "The ", "max_tokens": 20, "seed": 1}
    sent, rounds, pids = 0, 0, set()
    # requests at once, so both workers take some; rounds until the log shows both did
    while len(pids) < 2 and rounds < 10:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: post(port, "/v1/completions", body), range(8)))
        assert {r[0] for r in results} <= {200, 429}
        sent += sum(r[0] == 200 for r in results)
        rounds += 1
        time.sleep(0.3)  # the access log is written after the answer
        pids = {line["pid"] for line in access_lines(log_path)
                if line["path"] == "/v1/completions" and line["status"] == 200}
    assert pids == set(children(pid)), "both workers answered"
    bad = post(port, "/v1/completions", {"prompt": "a", "n": 0})
    assert bad[0] == 400
    # the engines write their tallies, then their gauges, once their streams have ended, which
    # may be just after the last answer went out: wait for the gauges to read idle
    for _ in range(50):
        after = samples(port)
        if total(after, "charlm_streams_running") == total(after, "charlm_streams_queued") == 0:
            break
        time.sleep(0.1)
    assert total(after, "charlm_streams_running") == 0
    assert total(after, "charlm_streams_queued") == 0
    route = {"route": "/v1/completions", "method": "POST"}

    def diff(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    # every answer counted, whichever worker answered the scrape
    assert diff("charlm_requests_total", status="200", **route) == sent
    assert diff("charlm_requests_total", status="400", **route) == 1
    assert diff("charlm_requests_total", status="429", **route) == diff(
        "charlm_rejected_requests_total")
    assert diff("charlm_generated_characters_total") == 20 * sent
    assert diff("charlm_time_to_first_character_seconds_count") == sent
    assert diff("charlm_request_duration_seconds_count", route="/v1/completions") == sent + 1 + \
        diff("charlm_requests_total", status="429", **route)
    assert diff("charlm_batch_size_count") >= 20 * sent / 4  # at most 4 streams a step
    # a gauge per live worker, by pid; the streams gauges summed over them, all idle now
    workers = {dict(lab)["pid"] for (n, lab) in after if n == "charlm_worker_start_time_seconds"}
    assert workers == {str(p) for p in children(pid)}
    # a second scrape, maybe from the other worker, sees the same counts
    again = samples(port)
    assert total(again, "charlm_requests_total", status="200", **route) == total(
        after, "charlm_requests_total", status="200", **route)


def test_json_access_log_has_the_request_id(server):
    port, _, log_path = server
    status, _, headers = get(port, "/health", {"X-Request-Id": "trace-42"})
    assert status == 200 and headers["X-Request-Id"] == "trace-42"
    status, _, headers = get(port, "/nope", {"X-Request-Id": "bad id\\n{"})
    assert status == 404 and headers["X-Request-Id"] != "bad id\\n{"
    time.sleep(0.3)
    lines = access_lines(log_path)
    mine = [x for x in lines if x["request_id"] == "trace-42"]
    assert len(mine) == 1 and mine[0]["path"] == "/health" and mine[0]["status"] == 200
    assert mine[0]["duration_ms"] >= 0 and mine[0]["method"] == "GET"
    nope = [x for x in lines if x["path"] == "/nope"][-1]
    assert nope["status"] == 404 and nope["request_id"] == headers["X-Request-Id"]


def test_bad_log_format_is_one_line_at_start(tmp_path, checkpoint_dir):
    env = {**os.environ, **serve_env(checkpoint_dir), "CHARLM_LOG_FORMAT": "yaml"}
    r = subprocess.run(gunicorn_argv("127.0.0.1", free_port(), workers=1), env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip() == "error: CHARLM_LOG_FORMAT must be text or json, got 'yaml'"


def test_observe_many_is_observe_k_times():
    from prometheus_client import CollectorRegistry, Histogram

    from service.metrics import BATCH_BUCKETS, observe_many

    reg = CollectorRegistry()
    one = Histogram("one", "h", buckets=BATCH_BUCKETS, registry=reg)
    many = Histogram("many", "h", buckets=BATCH_BUCKETS, registry=reg)
    for size, k in [(1, 5), (3, 7), (8, 2), (200, 3)]:
        for _ in range(k):
            one.observe(size)
        observe_many(many, size, k)
    got = {s.name.replace("many", "x"): (s.labels, s.value) for s in many.collect()[0].samples
           if not s.name.endswith("_created")}
    want = {s.name.replace("one", "x"): (s.labels, s.value) for s in one.collect()[0].samples
            if not s.name.endswith("_created")}
    assert got == want and want["x_count"][1] == 17


def test_engine_tallies_are_written_when_streams_change():
    from service import metrics as m

    class Engine:
        name = "tally"

    def value(name, **labels):
        return m.REGISTRY.get_sample_value(name, labels) or 0.0

    e = Engine()
    steps0, chars0 = value("charlm_batch_size_count"), value("charlm_generated_characters_total")
    m.on_turn(e, 2, 0, 0)  # two streams start
    for k in range(10):
        m.on_step(e, 2)
        m.on_turn(e, 2, 0, 2 * (k + 1))
    # mid-stream the tallies wait (a write a step would cost a tenth of it)
    assert value("charlm_streams_running", model="tally") == 2
    assert value("charlm_batch_size_count") == steps0
    m.on_turn(e, 0, 0, 20)  # both finished: everything is written
    assert value("charlm_batch_size_count") == steps0 + 10
    assert value("charlm_batch_size_sum") >= 20
    assert value("charlm_generated_characters_total") == chars0 + 20
    assert value("charlm_streams_running", model="tally") == 0
