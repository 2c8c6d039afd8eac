"""End to end: real gunicorn with the project's config on a loopback port, real HTTP clients,
abandoned streams, and a bounded load test with the workers' memory watched."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import make_checkpoint

from service.generation import client_gone
from service.launch import gunicorn_argv, serve_env

CAP = 6  # streams per worker: 16 clients against 2 workers meet deliberate 429s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """The pids whose parent is pid (gunicorn's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes, all their threads included."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):
    """gunicorn, 2 workers, serving default, small and a 2x256 "big" model on 127.0.0.1."""
    d = tmp_path_factory.mktemp("served")
    for name in ("default.npz", "small.npz"):
        shutil.copy(checkpoint_dir / name, d / name)
    make_checkpoint(d / "big.npz", list("\n abcdefghij"), seed=3, n_hidden=256)
    port = free_port()
    env = {**os.environ, **serve_env(d, max_concurrency=CAP), "CHARLM_MAX_NEW_TOKENS": "100000",
           "CHARLM_KERNEL_THREADS": "1"}
    with open(d / "gunicorn.log", "w") as log:  # a file, not a pipe that could fill up
        proc = subprocess.Popen(gunicorn_argv("127.0.0.1", port, workers=2, log_level="warning"),
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while True:
                assert proc.poll() is None, (d / "gunicorn.log").read_text()
                assert time.monotonic() - t0 < 120, "gunicorn did not become healthy"
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", "/health")
                    resp = conn.getresponse()
                    health = json.loads(resp.read())
                    assert health["status"] != "error", health["error"]
                    if resp.status == 200 and len(children(proc.pid)) == 2:
                        break
                except OSError:
                    pass
                finally:
                    conn.close()
                time.sleep(0.1)
            yield port, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def post(port: int, path: str, body: dict, timeout: float = 30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def read_events(resp) -> list:
    """Every `data:` event of a streaming response, parsed, until the server ends it."""
    events = []
    while True:
        line = resp.readline()
        if not line:
            return events
        if line.startswith(b"data: "):
            data = line[6:].strip().decode()
            events.append(data if data == "[DONE]" else json.loads(data))


def stream(port: int, path: str, body: dict) -> list:
    conn, resp = post(port, path, body)
    try:
        assert resp.status == 200, resp.read()
        assert resp.getheader("Content-Type").startswith("text/event-stream")
        assert resp.getheader("X-Accel-Buffering") == "no"
        return read_events(resp)
    finally:
        conn.close()


def test_generate_stream_end_to_end(server):
    port, _ = server
    body = {"inputs": "The ", "parameters": {"max_new_tokens": 200, "seed": 42,
                                              "do_sample": True, "top_n_tokens": 2}}
    events = stream(port, "/generate_stream", body)
    assert [e["index"] for e in events] == list(range(200))
    text = "".join(e["token"]["text"] for e in events)
    assert text == events[-1]["generated_text"]
    assert events[-1]["details"]["finish_reason"] == "length"
    assert all(len(e["top_tokens"]) == 2 for e in events)
    # seeded: the same events again, whichever worker serves it; and the same without streaming
    for _ in range(3):
        assert stream(port, "/generate", {**body, "stream": True}) == events
    conn, resp = post(port, "/generate", body)
    assert json.loads(resp.read())["generated_text"] == text
    conn.close()


def test_completions_stream_end_to_end(server):
    port, _ = server
    body = {"model": "small", "prompt": "abc", "max_tokens": 150, "seed": 7, "stream": True}
    events = stream(port, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert len(text) == 150
    again = stream(port, "/v1/completions", body)
    assert "".join(c["choices"][0]["text"] for c in again[:-1]) == text
    conn, resp = post(port, "/v1/completions", {**body, "stream": False})
    assert json.loads(resp.read())["choices"][0]["text"] == text
    conn.close()


def test_errors_end_to_end(server):
    port, _ = server
    conn, resp = post(port, "/generate_stream", {"inputs": "\u4e16"})
    assert resp.status == 422 and resp.getheader("Content-Type") == "application/json"
    assert json.loads(resp.read())["error_type"] == "validation"
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/generate", b"x" * 100_000, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error_type"] == "payload_too_large"
    conn.close()


def assert_leaving_stops_the_work(workers: list[int], conn: http.client.HTTPConnection) -> None:
    """The workers are busy while conn's request runs, and idle soon after its client leaves."""
    # while the request runs a worker is busy (a control, so the check below means something)
    c0 = cpu_seconds(workers)
    time.sleep(0.5)
    busy = cpu_seconds(workers) - c0
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    time.sleep(0.3)  # the server notices, the run is cancelled, the stream leaves the batch
    c0 = cpu_seconds(workers)
    time.sleep(1.0)
    idle = cpu_seconds(workers) - c0
    # rates, not absolute seconds: on a shared machine the busy worker gets less than a core
    busy_rate, idle_rate = busy / 0.5, idle / 1.0
    assert busy_rate > 0.1, busy
    assert idle_rate < 0.08 and idle_rate < 0.25 * busy_rate, (busy, idle)


LONG = {"inputs": "a", "model": "big", "parameters": {"max_new_tokens": 100000}}


def test_a_client_that_disconnects_costs_no_more_cpu(server):
    port, master = server
    conn, resp = post(port, "/generate_stream", LONG)
    assert resp.status == 200
    for _ in range(5):
        resp.readline()
    assert_leaving_stops_the_work(children(master), conn)  # the next write fails


def test_a_client_that_leaves_before_a_whole_answer_costs_no_more_cpu(server):
    port, master = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/generate", json.dumps(LONG), {"Content-Type": "application/json"})
    time.sleep(0.2)  # the answer takes seconds; nothing is written until it is whole
    assert_leaving_stops_the_work(children(master), conn)  # the view looks every 50 ms


def test_client_gone_tells_a_closed_connection_from_an_open_one():
    assert client_gone({}) is None  # no socket lent (the Flask test client): no check
    a, b = socket.socketpair()
    with a, b:
        gone = client_gone({"gunicorn.socket": a})
        assert not gone()
        b.sendall(b"GET /health HTTP/1.1\r\n\r\n")  # a pipelined request: still there
        assert not gone() and a.recv(100).startswith(b"GET")  # the peek consumed nothing
        b.shutdown(socket.SHUT_WR)
        assert gone()


def test_load(server):
    """200 streams, 16 at a time, against 2 workers of CAP streams each: every stream completes
    (429s are retried), nothing else fails, and the workers' memory stays flat across rounds."""
    port, master = server
    workers = children(master)
    refused = []

    def one(k: int) -> str:
        body = {"inputs": "ab", "model": "default" if k % 3 else "small",
                "parameters": {"max_new_tokens": 40 + k % 7, "seed": k, "do_sample": True}}
        while True:
            conn, resp = post(port, "/generate_stream", body)
            if resp.status == 429:
                assert json.loads(resp.read())["error_type"] == "overloaded"
                refused.append(k)
                conn.close()
                time.sleep(0.005)
                continue
            assert resp.status == 200
            events = read_events(resp)
            conn.close()
            assert len(events) == 40 + k % 7
            text = "".join(e["token"]["text"] for e in events)
            assert events[-1]["generated_text"] == text
            return text

    rss = []
    texts = {}
    with ThreadPoolExecutor(16) as pool:
        for r in range(4):
            ks = range(50 * r, 50 * (r + 1))
            for k, text in zip(ks, pool.map(one, ks), strict=True):
                texts[k] = text
            rss.append([rss_kb(pid) for pid in workers])
    assert len(texts) == 200
    assert refused  # the cap was met, and answered with 429s rather than a queue
    # seeded texts repeat under load, whichever worker and batch ran them
    for k in (0, 1, 101, 199):
        assert texts[k] == one(k)
    for before, after in zip(rss[1], rss[-1], strict=True):
        assert after - before < 4096, rss  # KiB: flat, once the first round has warmed up


# ---------------------------------------------------------------------------------------------
# deployment: the gunicorn config, the Procfile, run_serve


def read_conf(env: dict[str, str]) -> dict:
    """gunicorn.conf.py's settings, and the variables it sets, read in a process of its own
    (numba reads NUMBA_NUM_THREADS from this process's environment, which must not change)."""
    from service.launch import CONF

    code = ("import json, os, runpy, sys; c = runpy.run_path(sys.argv[1]); "
            "print(json.dumps({k: v for k, v in c.items() if isinstance(v, (str, int, list))} | "
            "{'env': {k: os.environ.get(k) for k in "
            "('CHARLM_LOAD', 'OMP_WAIT_POLICY', 'NUMBA_NUM_THREADS')}}))")
    keep = {k: v for k, v in os.environ.items()
            if k not in ("CHARLM_LOAD", "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS", "PORT",
                         "WEB_CONCURRENCY", "CHARLM_MAX_CONCURRENCY")}
    out = subprocess.run([sys.executable, "-c", code, str(CONF)], env={**keep, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_gunicorn_config_follows_the_environment():
    conf = read_conf({"PORT": "5123", "WEB_CONCURRENCY": "3", "CHARLM_MAX_CONCURRENCY": "10"})
    assert conf["bind"] == ["0.0.0.0:5123"] and conf["workers"] == 3
    # gthread with deadlines on heads, bodies and writes (service/worker.py)
    assert conf["worker_class"] == "service.worker.Worker" and conf["threads"] == 18
    assert conf["preload_app"] is False and conf["wsgi_app"] == "service:create_app()"
    assert conf["accesslog"] == "-" and conf["timeout"] >= 60
    assert conf["env"] == {"CHARLM_LOAD": "sync", "OMP_WAIT_POLICY": "PASSIVE",
                           "NUMBA_NUM_THREADS": str(max(1, os.cpu_count() // 3))}
    conf = read_conf({})
    assert conf["bind"] == ["0.0.0.0:8000"] and conf["workers"] == 1


def test_procfile_runs_gunicorn_with_the_config():
    from service.launch import CONF

    procfile = (CONF.parent.parent / "Procfile").read_text().splitlines()
    assert procfile == ["web: gunicorn -c service/gunicorn.conf.py"]


def test_run_serve_refuses_what_cannot_be_served(tmp_path):
    from charlm.errors import CharlmError
    from service.launch import run_serve

    with pytest.raises(CharlmError, match="does not exist"):
        run_serve(tmp_path / "nope")
    with pytest.raises(CharlmError, match="no \\*.npz"):
        run_serve(tmp_path)
    with pytest.raises(CharlmError, match="workers"):
        make_checkpoint(tmp_path / "m.npz", list("ab"), seed=0)
        run_serve(tmp_path, workers=0)


def test_serve_env_and_argv(tmp_path):
    env = serve_env(tmp_path, max_concurrency=9, api_key="123", cors_origins="https://a.b",
                    default_model="m")
    assert env == {"CHARLM_CHECKPOINTS": str(tmp_path.resolve()),
                   "CHARLM_MAX_CONCURRENCY": "9", "CHARLM_API_KEY": "123",
                   "CHARLM_CORS_ORIGINS": '"https://a.b"', "CHARLM_DEFAULT_MODEL": '"m"'}
    argv = gunicorn_argv("127.0.0.1", 5000, 2, threads=7)
    assert argv[1:3] == ["-m", "gunicorn"]
    assert argv[argv.index("--bind") + 1] == "127.0.0.1:5000"
    assert argv[argv.index("--workers") + 1] == "2" and argv[argv.index("--threads") + 1] == "7"


def test_the_serve_benchmark_runs(checkpoint_dir, capsys):
    import json as json_

    from service.bench import run_serve_bench

    rows = run_serve_bench(json_out=True, checkpoint=checkpoint_dir / "small.npz", chars=20,
                           rounds=1, levels=(1, 4))
    lines = [json_.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == rows and [r["streams"] for r in rows] == [1, 4]
    for r in rows:  # exactly the figures the issue asks for, one object per stream count
        assert set(r) == {"what", "workers", "streams", "served_chars_per_s",
                          "kernel_chars_per_s", "served_over_kernel", "ttfc_ms_p50",
                          "ttfc_ms_p90"}
        assert r["what"] == "serve" and r["workers"] == 1
        assert r["served_chars_per_s"] > 0 and r["kernel_chars_per_s"] > 0
        assert r["served_over_kernel"] == pytest.approx(  # rounded to 3 places, the rates to 1
            r["served_chars_per_s"] / r["kernel_chars_per_s"], rel=0.01, abs=6e-4)
        assert 0 < r["ttfc_ms_p50"] <= r["ttfc_ms_p90"]
