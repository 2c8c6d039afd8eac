"""Attacks, each bounded in time: real gunicorn on loopback (slow heads, clients that never read,
/activations floods, malformed requests), checkpoints from strangers built here, and the CLI."""

import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import CHARS, make_checkpoint
from test_service_gunicorn import children, free_port, rss_kb
from typer.testing import CliRunner

from charlm.checkpoint import META, load_checkpoint, save_checkpoint
from charlm.cli import app as cli
from charlm.errors import CharlmError
from service.launch import gunicorn_argv

CAP = 4  # generation slots per worker; two workers
KEY = "null"  # JSON's null, as a key: it must be a key like any other
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADER_TIMEOUT, WRITE_TIMEOUT, BODY_TIMEOUT = 5, 2, 3


def strict_json(data: bytes):
    """JSON as the standard has it: NaN and Infinity are not JSON."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------
# checkpoints from strangers


def rewrite(src, dst, meta=None, drop=(), add=None) -> None:
    """dst: src's arrays and metadata, changed, written as np.savez would (no validation)."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    m = json.loads(arrays[META].tobytes())
    if meta is not None:
        meta(m)
    arrays[META] = np.frombuffer(json.dumps(m).encode(), np.uint8)
    for key in drop:
        del arrays[key]
    arrays.update(add or {})
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def zip_bomb(src, dst, gib: float = 0.25) -> None:
    """src with an optimizer member of zeros that deflates to `gib` GiB in a file of ~1 MB."""
    rewrite(src, dst)
    n = int(gib * 2**30) // 4
    with zipfile.ZipFile(dst, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open("opt/m.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (n,)})
        zeros = bytes(2**22)
        for _ in range(n * 4 // len(zeros)):
            f.write(zeros)


def set_config(**kw):
    return lambda m: m["config"].update(kw)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A good checkpoint and one of each bad class, name -> path."""
    d = tmp_path_factory.mktemp("hostile")
    good = d / "good.npz"
    make_checkpoint(good, CHARS, seed=5)
    files = {"good": good}

    def make(name, **kw):
        files[name] = d / f"{name}.npz"
        rewrite(good, files[name], **kw)

    make("layers_10m", meta=set_config(n_layer=10_000_000))
    make("layers_100k", meta=set_config(n_layer=100_000))
    make("units_1e12", meta=set_config(n_hidden=10**12))
    make("surrogate", meta=lambda m: m["vocab"].__setitem__(-1, "\ud800"))
    make("no_train_loss", meta=lambda m: m.update(
        train_history=[{"step": 10, "lr": 0.1}, {"step": 20, "train_loss": 2.0}],
        val_history=[{"step": 20}, {"step": 30, "val_loss": 1.9}]))
    make("text_val_loss", meta=lambda m: m.update(val_history=[{"step": 1, "val_loss": "x"}]))
    files["bomb"] = d / "bomb.npz"
    zip_bomb(good, files["bomb"])
    return files


def test_checkpoint_sizes_are_refused_before_anything_is_read(hostile):
    for name, words in [("layers_10m", r"10000000x16 lstm has [\d,]+ parameters, over the "
                                       r"limit .*: training it needs [\d,.]+ GiB"),
                        ("layers_100k", r"n_layer must be at most 64, got 100,000"),
                        ("units_1e12", r"2x1000000000000 lstm has .* parameters")]:
        t0 = time.monotonic()
        with pytest.raises(CharlmError) as e:
            load_checkpoint(hostile[name])
        took = time.monotonic() - t0
        msg = str(e.value)
        assert re.search(words, msg) and "\n" not in msg and len(msg) <= 300, msg
        print(f"{name}: refused in {took * 1000:.0f} ms: {msg[-90:]}")


def test_a_zip_bomb_is_refused_from_its_header(hostile):
    size = hostile["bomb"].stat().st_size
    assert size < 2**21  # a small file ...
    with zipfile.ZipFile(hostile["bomb"]) as zf:  # ... that holds a quarter of a GiB
        assert zf.getinfo("opt/m.npy").file_size > 2**28
    t0 = time.monotonic()
    with pytest.raises(CharlmError, match=r"opt/m of shape \(67108864,\), larger than its "
                                          r"config allows"):
        load_checkpoint(hostile["bomb"])
    print(f"bomb ({size:,} bytes): refused in {(time.monotonic() - t0) * 1000:.0f} ms")


def test_a_vocabulary_with_a_lone_surrogate_is_refused(hostile):
    with pytest.raises(CharlmError, match=r"lone surrogate \('\\ud800'\)"):
        load_checkpoint(hostile["surrogate"])


def test_history_rows_without_losses_are_read_and_bad_ones_refused(hostile):
    r = CliRunner().invoke(cli, ["info", str(hostile["no_train_loss"])])
    assert r.exit_code == 0, r.output
    assert "train loss  2.000 at step 20" in r.output and "val loss    1.900@30" in r.output
    r = CliRunner().invoke(cli, ["info", str(hostile["text_val_loss"])])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "val_history has a row whose val_loss is 'x'" in r.output


def test_the_cli_reports_bad_checkpoints_in_one_line(hostile):
    for name in ("layers_10m", "layers_100k", "units_1e12", "surrogate", "bomb"):
        for command in (["info"], ["sample", "--length", "5"]):
            r = CliRunner().invoke(cli, [*command, str(hostile[name])])
            assert r.exit_code == 1, (name, r.output)
            lines = r.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 320


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI: what a resume reads."""
    d = tmp_path_factory.mktemp("resume")
    (d / "corpus.txt").write_text("".join(f"line {i}: some text.\n" for i in range(200)))
    r = CliRunner().invoke(cli, ["train", str(d / "corpus.txt"), "--n-hidden", "16",
                                 "--n-embd", "8", "--batch-size", "4", "--seq-len", "16",
                                 "--max-steps", "4", "--eval-every", "4", "--out", str(d / "ck")])
    assert r.exit_code == 0, r.output
    return d


def resume(path, *options):
    return CliRunner().invoke(cli, ["train", "--resume", str(path), "--max-steps", "6",
                                    "--out", str(path.parent / "out"), *options])


def test_resume_validates_what_it_reads(trained, tmp_path):
    latest = trained / "ck" / "latest.npz"
    ck = load_checkpoint(latest)
    L, B, H = 2, 4, 16
    cases = [
        ({"meta": lambda m: m["train_config"].update(lr="fast")},
         r"train_config is invalid: lr must be a number, got 'fast'"),
        ({"meta": lambda m: m["train_config"].update(batch_size=[4])},
         r"train_config is invalid: batch-size must be int"),
        ({"meta": lambda m: m.update(data_position={"epoch": "x", "window": 0})},
         r"not a data position"),
        ({"meta": lambda m: m.update(data_position={"epoch": 0, "window": 10**9,
                                                    "batch_size": 4, "seq_len": 16})},
         r"does not fit this corpus"),
        ({"add": {"opt/state_h": np.zeros((L, B + 1, H), np.float32)}},
         r"state_h is float32 \(2, 5, 16\) where resuming needs float32 \(2, 4, 16\)"),
        ({"add": {"opt/m": np.zeros(ck.theta.size - 1, np.float32)}},
         r"m is float32 \(\d+,\) where resuming needs float32"),
        ({"add": {"opt/v": np.zeros(ck.theta.size, np.float64)}}, r"v is float64"),
        ({"drop": ["opt/step"]}, r"no optimizer array 'step'"),
    ]
    for k, (change, words) in enumerate(cases):
        bad = tmp_path / f"bad{k}.npz"
        rewrite(latest, bad, **change)
        r = resume(bad)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1, (words, r.output)
        assert re.search(words, lines[0]), (words, lines[0])
    assert resume(latest).exit_code == 0  # the control: the untouched checkpoint resumes


def test_resume_refuses_every_model_option_it_cannot_change(trained):
    latest = trained / "ck" / "latest.npz"
    for option, value in [("--n-hidden", "64"), ("--n-layer", "3"), ("--n-embd", "4"),
                          ("--cell", "gru"), ("--dropout", "0.3"), ("--forget-bias", "1"),
                          ("--dtype", "float64"), ("--seq-len", "8"), ("--batch-size", "2"),
                          ("--optimizer", "rmsprop"), ("--seed", "1"), ("--val-frac", "0.2")]:
        r = resume(latest, option, value)
        assert r.exit_code == 1, (option, r.output)
        assert re.search(rf"{option} cannot change on resume \(checkpoint: ", r.output), r.output


def test_a_killed_write_leaves_temp_files_the_next_write_removes(tmp_path):
    target = tmp_path / "latest.npz"
    code = ("import sys, time; from pathlib import Path; from charlm.data import atomic_write\n"
            "with atomic_write(Path(sys.argv[1])) as f:\n"
            "    f.write(b'x' * 2**20); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(target)],
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == "writing"
        os.kill(writers[0].pid, signal.SIGKILL)  # killed mid-write; the other goes on
        writers[0].wait()
        temps = sorted(tmp_path.glob(".latest.npz.*.tmp"))
        assert len(temps) == 2
        model_path = tmp_path / "m.npz"
        make_checkpoint(model_path, list("ab"), seed=0)
        ck = load_checkpoint(model_path)
        save_checkpoint(target, ck.model(), ck.vocab, {})  # the next successful write
        left = sorted(tmp_path.glob(".latest.npz.*.tmp"))
        assert left == [t for t in temps if f".{writers[1].pid}." in t.name]  # a live writer's
        assert load_checkpoint(target).vocab == ["a", "b"]
    finally:
        for w in writers:
            w.kill()
            w.wait()
            w.stdout.close()


# ---------------------------------------------------------------------------------------------
# the command line


def one_line(r, pattern: str) -> str:
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize(("options", "pattern"), [
    (["--n-hidden", "100000"], r"a 2x100000 lstm has [\d,]+ parameters, over the limit of "
                               r"2,147,483,647: training it needs 1,788.6 GiB"),
    (["--n-hidden", "1000000000000"], r"2x1000000000000 lstm .* needs [\d.e+]+ GiB"),
    (["--n-layer", "10000000", "--n-hidden", "1"], r"n_layer must be at most 64"),
    (["--batch-size", "9223372036854775808"], r"batch-size must be at most 1,048,576"),
    (["--seq-len", "100000000"], r"seq-len must be at most 1,048,576"),
])
def test_train_refuses_sizes_up_front(options, pattern):
    t0 = time.monotonic()
    one_line(CliRunner().invoke(cli, ["train", "no-such-corpus.txt", *options]), pattern)
    assert time.monotonic() - t0 < 30  # refused before any corpus is looked at


def test_train_refuses_what_does_not_fit_in_memory(monkeypatch):
    monkeypatch.setenv("CHARLM_MEMORY_LIMIT", str(2**30))
    one_line(CliRunner().invoke(cli, ["train", "x.txt", "--n-hidden", "4096"]),
             r"training a 2x4096 lstm at 32 x 100 needs [\d.]+ GiB; 1.0 GiB is available")


def test_sample_refuses_overflowing_counts_and_takes_tiny_temperatures(hostile):
    good = str(hostile["good"])
    one_line(CliRunner().invoke(cli, ["sample", good, "--top-k", str(2**63)]),
             r"top_k must be an integer in \[0, 2\*\*63\)")
    one_line(CliRunner().invoke(cli, ["sample", good, "--length", str(2**64)]),
             r"max_new_chars must be an integer in \[0, 2\*\*63\)")
    # warnings are errors in this suite: a RuntimeWarning would fail the command
    r = CliRunner().invoke(cli, ["sample", good, "--distribution", "--temperature", "1e-320",
                                 "--top-n", "2"])
    assert r.exit_code == 0, r.output
    assert "1.0000" in r.output and "0.0000" in r.output  # the limit: one-hot


# ---------------------------------------------------------------------------------------------
# the service under gunicorn


@pytest.fixture(scope="module")
def server(tmp_path_factory, hostile):
    """gunicorn, 2 workers, the key "null", unknown characters dropped, short deadlines; it
    serves a small model, a 2x256 one, and the hostile checkpoints (which it must skip)."""
    d = tmp_path_factory.mktemp("served-hostile")
    make_checkpoint(d / "default.npz", CHARS, seed=1)
    make_checkpoint(d / "big.npz", CHARS, seed=3, n_hidden=256)
    for name in ("layers_10m", "layers_100k", "surrogate", "bomb", "no_train_loss"):
        (d / f"{name}.npz").write_bytes(hostile[name].read_bytes())
    port = free_port()
    env = {**os.environ, "CHARLM_CHECKPOINTS": str(d), "CHARLM_MAX_CONCURRENCY": str(CAP),
           "CHARLM_API_KEY": KEY, "CHARLM_UNKNOWN_CHARS": "drop", "CHARLM_KERNEL_THREADS": "1",
           "CHARLM_MAX_NEW_TOKENS": "20480",
           "CHARLM_MAX_ACTIVATIONS": "2", "CHARLM_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
           "CHARLM_WRITE_TIMEOUT": str(WRITE_TIMEOUT), "CHARLM_BODY_TIMEOUT": str(BODY_TIMEOUT)}
    log_path = d / "gunicorn.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(gunicorn_argv("127.0.0.1", port, workers=2), env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() - t0 < 120, "gunicorn did not become healthy"
                try:
                    status, _, _ = call(port, "GET", "/health", timeout=5)
                    if status == 200 and len(children(proc.pid)) == 2:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            yield port, proc.pid, log_path, d
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def call(port, method, path, body=None, headers=None, timeout=30, raw_body=None):
    """(status, headers, body bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw_body if raw_body is not None else (
            None if body is None else json.dumps(body))
        h = {**AUTH, **({"Content-Type": "application/json"} if data is not None else {}),
             **(headers or {})}
        conn.request(method, path, data, h)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw(port, request: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send bytes as they are; read the answer to the end: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        return read_answer(s)


def read_answer(s: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while True:
        try:
            part = s.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def assert_json_error(status, headers, body, want_status, want_type):
    assert status == want_status, (status, body)
    assert headers["Content-Type"].startswith("application/json"), headers
    err = strict_json(body)
    assert set(err) == {"error", "error_type"} and err["error_type"] == want_type, err
    assert "\n" not in err["error"] and len(err["error"]) <= 300
    return err


def test_slow_heads_do_not_stall_health_checks(server):
    """50 connections that drip a header byte at a time: /health answers all along, and each
    slow one gets a 408 in JSON at the head deadline."""
    port = server[0]
    slow = []
    t_open = time.monotonic()
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT + 10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(s)
    probes = []
    try:
        while time.monotonic() - t_open < HEADER_TIMEOUT - 1.5:
            for s in slow:
                s.sendall(b"a")  # a byte each: every one of them is still sending its head
            t0 = time.monotonic()
            status, _, body = call(port, "GET", "/health", timeout=HEADER_TIMEOUT)
            probes.append(time.monotonic() - t0)
            assert status == 200 and strict_json(body) == {"status": "ok"}
            time.sleep(0.3)
        assert len(probes) >= 2
        status, headers, body = read_answer(slow[0])  # past the deadline
        assert_json_error(status, headers, body, 408, "request_timeout")
        waited = time.monotonic() - t_open
        assert HEADER_TIMEOUT - 1 < waited < HEADER_TIMEOUT + 5
    finally:
        for s in slow:
            s.close()
    print(f"/health with 50 slow heads open: {len(probes)} probes, slowest "
          f"{max(probes) * 1000:.1f} ms; the slow ones answered 408 after {waited:.1f} s")


# the request asked for 2,048 characters, whose 2.3 MB of events loopback's buffers
# may take whole; ten times that surely fills them, so the write timeout is what ends it
STREAM = {"inputs": "a", "parameters": {"max_new_tokens": 20480, "top_n_tokens": 20,
                                        "details": True, "do_sample": True}}


def test_clients_that_never_read_free_their_slots(server):
    """70 streams asked for and never read: the write timeout ends every one of them, while
    their sockets are still open, and frees its slot."""
    port, _, log_path, _ = server
    log_from = len(log_path.read_text())
    body = json.dumps(STREAM).encode()
    request = (b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer null\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
               ) + body

    def log() -> str:
        return log_path.read_text()[log_from:]

    idle = []
    try:
        for _ in range(70):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that never reads
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            idle.append(s)
        t0 = time.monotonic()

        def refused() -> int:
            return log().count('"POST /generate_stream HTTP/1.1" 429')

        # each request is answered at once, a 429 or a stream in a slot; on a loaded machine
        # "at once" may take seconds, so wait until all but two workers' slots are refused
        while refused() < 70 - 2 * CAP and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        time.sleep(0.5)
        admitted = 70 - refused()
        assert CAP <= admitted <= 2 * CAP, admitted  # a worker's slots at least were all held
        # each admitted stream fills the socket's buffers, then its write times out
        while log().count("the client stopped reading") < admitted:
            assert time.monotonic() - t0 < WRITE_TIMEOUT + 40, log()[-2000:]
            time.sleep(0.2)
        freed = time.monotonic() - t0
        status, _, answer = call(port, "POST", "/generate",
                                 {"inputs": "a", "parameters": {"max_new_tokens": 2}})
        assert status == 200, answer  # and the slots are free again, the 70 sockets still open
    finally:
        for s in idle:
            s.close()
    print(f"70 clients that never read: {admitted} streams held slots, all ended by the write "
          f"timeout ({WRITE_TIMEOUT} s) {freed:.1f} s after the requests")


def test_activations_floods_meet_the_slot_cap(server):
    port, master, _, _ = server
    workers = children(master)
    text = "".join(CHARS[k % len(CHARS)] for k in range(488))  # the 2x256 model's longest
    before = [rss_kb(pid) for pid in workers]

    def one(_):
        return call(port, "POST", "/activations", {"text": text, "model": "big"})

    first_byte = []

    def stream_during():
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/generate_stream", json.dumps(
            {"inputs": "a", "parameters": {"max_new_tokens": 5}}),
            {**AUTH, "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.readline()
        first_byte.append((resp.status, time.monotonic() - t0))
        conn.close()

    with ThreadPoolExecutor(61) as pool:
        flood = pool.map(one, range(60))
        time.sleep(0.05)
        pool.submit(stream_during)
        answers = list(flood)
    after = [rss_kb(pid) for pid in workers]
    counts = {s: sum(1 for a in answers if a[0] == s) for s in {a[0] for a in answers}}
    assert set(counts) <= {200, 429} and counts.get(200) and counts.get(429), counts
    for status, headers, body in answers:
        if status == 429:
            assert_json_error(status, headers, body, 429, "overloaded")
        else:
            out = strict_json(body)
            assert out["n_layer"] == 2 and len(out["text"]) == 488
    grown = max(a - b for a, b in zip(after, before, strict=True)) / 1024
    assert grown < 300, (before, after)  # MiB: a few answers at a time, not sixty
    print(f"60 /activations at once: {counts}; a stream's first byte after "
          f"{first_byte[0][1] * 1000:.0f} ms (status {first_byte[0][0]}); worker RSS grew at "
          f"most {grown:.0f} MiB")


def test_health_is_public_and_says_nothing_else(server):
    port, _, _, d = server
    status, _, body = call(port, "GET", "/health", headers={"Authorization": ""})
    assert status == 200 and strict_json(body) == {"status": "ok"}
    # the details are behind the key: the skipped files, by name, one line each, no paths
    assert_json_error(*call(port, "GET", "/info", headers={"Authorization": ""}), 401,
                      "unauthorized")
    status, _, body = call(port, "GET", "/info")
    skipped = strict_json(body)["skipped"]
    assert set(skipped) == {"layers_10m.npz", "layers_100k.npz", "surrogate.npz", "bomb.npz"}
    for message in skipped.values():
        assert "\n" not in message and len(message) <= 300 and str(d) not in message
    # a served model whose history has rows without losses: its plot skips them
    status, _, body = call(port, "GET", "/history?model=no_train_loss")
    assert status == 200 and strict_json(body)["train"] == [[20, 2.0]]


def test_the_key_is_taken_literally_and_head_is_get(server):
    port = server[0]
    no_key = {"Authorization": ""}
    assert_json_error(*call(port, "POST", "/generate", {"inputs": "a"}, no_key), 401,
                      "unauthorized")
    assert call(port, "POST", "/generate", {"inputs": "a", "parameters": {
        "max_new_tokens": 3}})[0] == 200
    for method in ("GET", "HEAD"):  # the page is public either way
        status, headers, _ = call(port, method, "/", headers=no_key)
        assert status == 200 and headers["Content-Type"].startswith("text/html"), method


def test_post_bodies_must_be_json(server):
    port = server[0]
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
        assert_json_error(*call(port, "POST", "/generate", headers=headers,
                                raw_body='{"inputs": "a"}'), 415, "unsupported_media_type")


@pytest.mark.parametrize("route, body", [
    ("/generate", {"inputs": "a", "parameters": {"top_k": 2**63}}),
    ("/generate_stream", {"inputs": "a", "parameters": {"top_k": 2**63}}),
    ("/generate", {"inputs": "a", "parameters": {"top_k": 2**64 + 5}}),
    ("/v1/completions", {"prompt": "a", "top_k": 2**63}),
    ("/next", {"prompt": "a", "top_n": 2**63}),
    ("/generate", {"inputs": "a", "parameters": {"truncate": 2**63}}),
    ("/next", {"prompt": "a", "temperature": 5e-324}),
    ("/next", {"prompt": "a", "temperature": 1e-4}),
    # a lone surrogate (dropped as unknown by this server) in a prompt, or a stop string
    ("/generate_stream", {"inputs": "ab\ud800c"}),
    ("/v1/completions", {"prompt": "ab\ud800c", "echo": True, "stream": True}),
    ("/generate", {"inputs": "a", "parameters": {"stop": ["\udfff"]}}),
    ("/activations", {"text": "a\ud800"}),
])
def test_bad_numbers_and_strings_are_422_before_anything_starts(server, route, body):
    if route.startswith("/v1/"):  # OpenAI's shape, and its 400
        status, headers, raw_body = call(server[0], "POST", route, body)
        assert status == 400 and headers["Content-Type"].startswith("application/json")
        err = strict_json(raw_body)["error"]
        assert err["code"] == "validation" and err["message"].startswith("`")
        return
    err = assert_json_error(*call(server[0], "POST", route, body), 422, "validation")
    assert err["error"].startswith("`")


def test_tiny_temperatures_give_valid_json(server):
    status, _, body = call(server[0], "POST", "/next", {"prompt": "a", "temperature": 1e-3})
    assert status == 200
    dist = strict_json(body)["distribution"]
    assert all(math.isfinite(d["logprob"]) for d in dist) and dist[0]["prob"] == 1.0


def chunked(port, chunks: list[bytes], raw_tail: bytes = b"0\r\n\r\n"):
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer null\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return raw(port, head + body + raw_tail)


def test_chunked_bodies(server):
    port = server[0]
    ok = json.dumps({"inputs": "a", "parameters": {"max_new_tokens": 2}}).encode()
    status, _, body = chunked(port, [ok[:10], ok[10:]])  # the control: a good chunked body
    assert status == 200 and "generated_text" in strict_json(body)
    # over the limit: 413, not a body cut at the limit
    big = b'{"inputs": "' + b"a" * 70000 + b'"}'
    assert_json_error(*chunked(port, [big[k:k + 8192] for k in range(0, len(big), 8192)]),
                      413, "payload_too_large")
    # a malformed chunk size: 400
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer null\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert_json_error(*raw(port, head + b"zz\r\n{}\r\n0\r\n\r\n"), 400, "bad_request")


def test_a_body_that_never_arrives_is_408(server):
    port = server[0]
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 10) as s:
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer null\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inp")
        t0 = time.monotonic()
        answer = read_answer(s)
        assert BODY_TIMEOUT - 1 < time.monotonic() - t0 < BODY_TIMEOUT + 5
    assert_json_error(*answer, 408, "request_timeout")


@pytest.mark.parametrize("request_bytes, status, error_type", [
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % k for k in range(60))
     + b"\r\n", 431, "headers_too_large"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431,
     "headers_too_large"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"y" * 8000 + b"\r\n" * 1
     + b"".join(b"X-%d: " % k + b"y" * 8000 + b"\r\n" for k in range(4)), 431,
     "headers_too_large"),  # a head past 32 KiB that never ends
    (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
    (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n", 400, "bad_request"),
])
def test_gunicorns_own_errors_are_json(server, request_bytes, status, error_type):
    assert_json_error(*raw(server[0], request_bytes), status, error_type)


# ---------------------------------------------------------------------------------------------
# the API key, read from the environment


@pytest.mark.parametrize("key", ["null", "true", "1e5", "[1,2]", '"quoted"', "0"])
def test_the_key_is_the_variables_text(checkpoint_dir, monkeypatch, key):
    from service import create_app

    monkeypatch.setenv("CHARLM_CHECKPOINTS", str(checkpoint_dir / "small.npz"))
    monkeypatch.setenv("CHARLM_LOAD", "sync")
    monkeypatch.setenv("CHARLM_API_KEY", key)
    c = create_app().test_client()
    assert c.get("/info").status_code == 401
    assert c.get("/info", headers={"Authorization": "Bearer " + json.dumps(key)}
                 ).status_code == (200 if key == json.dumps(key) else 401)
    assert c.get("/info", headers={"Authorization": f"Bearer {key}"}).status_code == 200


@pytest.mark.parametrize("key", ["two words", " lead", "ключ", "tab\tkey", "é"])
def test_keys_no_client_could_send_are_refused(checkpoint_dir, monkeypatch, key):
    from service import create_app

    monkeypatch.setenv("CHARLM_CHECKPOINTS", str(checkpoint_dir / "small.npz"))
    monkeypatch.setenv("CHARLM_API_KEY", key)
    with pytest.raises(CharlmError, match="CHARLM_API_KEY must be printable ASCII without "
                                          "spaces"):
        create_app()


def test_kept_alive_connections_still_work(server):
    """A connection kept alive between requests has its next head read by the main loop too."""
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=10)
    try:
        for k in range(3):
            conn.request("POST", "/generate", json.dumps({"inputs": "a", "parameters": {
                "max_new_tokens": 2}}), {**AUTH, "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and "generated_text" in strict_json(resp.read())
            time.sleep(0.5 * k)
    finally:
        conn.close()


@pytest.mark.parametrize("value", ["soon", "0", "-1", "1e9", "nan"])
def test_bad_deadlines_stop_the_server_with_one_line(value):
    code = "import service.worker"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "CHARLM_WRITE_TIMEOUT": value}, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("error: CHARLM_WRITE_TIMEOUT must be a number of seconds in "
                                f"(0, 3600], got {value!r}")


def test_clients_that_never_close_do_not_stall_the_main_loop(server):
    """30 answered connections whose clients never close their side: gthread's graceful close
    waited 2 s for each in the main loop (a minute for these); they linger in the poller."""
    port = server[0]
    quiet = []
    try:
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            quiet.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        for _ in range(3):
            status, _, body = call(port, "GET", "/health", timeout=5)
            assert status == 200 and strict_json(body) == {"status": "ok"}
        took = time.monotonic() - t0
        answer = read_answer(quiet[0])  # each got its answer, then the server's FIN
        assert answer[0] == 200 and strict_json(answer[2]) == {"status": "ok"}
    finally:
        for s in quiet:
            s.close()
    print(f"3 /health probes with 30 unclosed connections: {took * 1000:.0f} ms")
