"""`charlm bench serve`: the HTTP service under gunicorn on loopback, at 1, 8 and 32 streams.

Reports the time to first character (request sent to first event read), chars/s per stream,
and total chars/s. The clients are sockets of this process, driven by one thread on the same
machine, so on a small machine they take some of the CPU the server would otherwise have.
It sits in the service package, beside the launcher it uses: charlm/ never imports service.
"""

import http.client
import json
import os
import selectors
import signal
import socket
import statistics
import string
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from charlm.errors import CharlmError

from .launch import gunicorn_argv, serve_env

DEFAULT = Path("checkpoints/default.npz")
LEVELS = (1, 8, 32)
TARGET_TTFC_MS = 5.0  # at one stream
TARGET_SPEEDUP = 5.0  # total chars/s at 32 streams over one stream's


def random_checkpoint(d: Path) -> Path:
    """A 2x256 model with random weights, for when no trained default exists yet."""
    from charlm.checkpoint import save_checkpoint
    from charlm.model import CharLSTM, ModelConfig

    chars = list("\n !'(),-.:;?" + string.ascii_letters)
    model = CharLSTM(ModelConfig(vocab_size=len(chars), n_embd=64, n_hidden=256, n_layer=2))
    path = d / "default.npz"
    save_checkpoint(path, model, chars, {})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn with the project's config on 127.0.0.1, started and stopped by a with block."""

    def __init__(self, checkpoints: Path, workers: int = 1, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.port = free_port()
        self.argv = gunicorn_argv("127.0.0.1", self.port, workers, log_level="warning")
        self.env = {**os.environ, **serve_env(checkpoints, max_concurrency=64), **(env or {})}
        self.log = log or Path(tempfile.mkstemp(prefix="charlm-serve-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 180.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise CharlmError(f"gunicorn exited: {self.log.read_text()[-2000:]}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/health")
                resp = conn.getresponse()
                body = json.loads(resp.read())
                if resp.status == 200:
                    return
                if body.get("status") == "failed":  # the reason is on /info
                    conn.close()
                    conn.request("GET", "/info")
                    reason = json.loads(conn.getresponse().read()).get("error")
                    raise CharlmError(f"the service cannot load: {reason}")
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        raise CharlmError(f"the service was not healthy after {timeout:g} s")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Stream:
    """One /generate_stream request on a non-blocking socket, read as its bytes arrive."""

    def __init__(self, port: int, body: bytes) -> None:
        self.request = (f"POST /generate_stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        f"Connection: close\r\n\r\n").encode() + body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.head = b""  # the response's status line and headers, until they are complete
        self.tail = b""  # the last bytes of the body: an event marker may straddle two reads
        self.events = 0
        self.t0 = self.first = self.end = 0.0

    def send(self, blocking: bool) -> None:
        self.t0 = time.perf_counter()
        self.sock.sendall(self.request)
        self.sock.setblocking(blocking)

    def read(self) -> bool:
        """Take what has arrived; False once the server has closed the connection."""
        data = self.sock.recv(1 << 16)
        if not data:
            self.end = time.perf_counter()
            self.sock.close()
            if not self.head.startswith(b"HTTP/1.1 200"):
                raise CharlmError(f"the server answered {self.head[:200]!r}")
            return False
        if not self.head.endswith(b"\r\n\r\n"):
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return True
            self.head, data = self.head.split(b"\r\n\r\n", 1)
            self.head += b"\r\n\r\n"
        joined = self.tail + data
        n = joined.count(b"data: ") - self.tail.count(b"data: ")
        if n and not self.events:
            self.first = time.perf_counter()
        self.events += n
        self.tail = joined[-8:]
        return True


def level(port: int, streams: int, chars: int, seed: int, prompt: str) -> dict:
    """streams clients at once, each streaming `chars` characters; their figures together.

    One thread drives every connection through a selector and counts events in the raw bytes
    rather than parsing each: the client shares the machine's cores with the server, so it
    should take as little of them as it can.
    """
    clients = []
    for k in range(streams):
        body = json.dumps({"inputs": prompt, "parameters": {
            "max_new_tokens": chars, "do_sample": True, "temperature": 0.8,
            "seed": seed + k}}).encode()
        clients.append(Stream(port, body))
    t0 = time.perf_counter()
    if streams == 1:  # blocking reads: waiting in select as well would cost a system call
        clients[0].send(blocking=True)
        while clients[0].read():
            pass
    else:
        with selectors.DefaultSelector() as sel:
            for c in clients:
                c.send(blocking=False)
                sel.register(c.sock, selectors.EVENT_READ, c)
            while sel.get_map():
                ready = sel.select(timeout=60)
                if not ready:
                    raise CharlmError(f"no byte for 60 s at {streams} streams")
                for key, _ in ready:
                    if not key.data.read():
                        sel.unregister(key.fileobj)
    wall = time.perf_counter() - t0
    for c in clients:
        if c.events != chars:
            raise CharlmError(f"a stream at {streams} streams sent {c.events} events, not {chars}")
    return {"ttfc": [c.first - c.t0 for c in clients],
            "per_stream": [chars / (c.end - c.t0) for c in clients],
            "total": streams * chars / wall}


def run_serve_bench(json_out: bool = False, checkpoint: Path | None = None, workers: int = 1,
                    chars: int = 500, rounds: int = 3, levels: tuple[int, ...] = LEVELS,
                    kernel_threads: int | None = None) -> list[dict]:
    """Start gunicorn on loopback, measure each level `rounds` times, print and return the
    medians, and whether the targets are met."""
    with tempfile.TemporaryDirectory(prefix="charlm-bench-") as tmp:
        if checkpoint is None:
            checkpoint = DEFAULT if DEFAULT.is_file() else random_checkpoint(Path(tmp))
        checkpoint = Path(checkpoint)
        from charlm.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        cfg = ckpt.config
        # "The " when the model can read it, else the start of its vocabulary
        prompt = "The " if set("The ") <= set(ckpt.vocab) else "".join(ckpt.vocab[:4])
        env = {"CHARLM_KERNEL_THREADS": str(kernel_threads)} if kernel_threads else {}
        with Server(checkpoint, workers, env, log=Path(tmp) / "gunicorn.log") as server:
            # warm-up: connections, threads, caches
            for _ in range(3):
                level(server.port, 4, 50, 0, prompt)
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/info")
            threads = json.loads(conn.getresponse().read())["models"][0]["kernel_threads"]
            conn.close()
            rows = []
            ttfc_one = []
            for _ in range(30):  # time to first character, alone, many times
                ttfc_one.append(level(server.port, 1, 1, 1, prompt)["ttfc"][0])
            for n in levels:
                runs = [level(server.port, n, chars, 100 * r, prompt) for r in range(rounds)]
                ttfc = [x for r in runs for x in r["ttfc"]]
                if n == 1:
                    ttfc = ttfc + ttfc_one
                rows.append({
                    "what": "serve", "model": f"{cfg.n_layer}x{cfg.n_hidden}",
                    "vocab_size": cfg.vocab_size, "workers": workers,
                    "kernel_threads": threads, "streams": n,
                    "chars_per_stream": chars,
                    "ttfc_ms_median": round(statistics.median(ttfc) * 1e3, 2),
                    "ttfc_ms_p90": round(float(np.percentile(ttfc, 90)) * 1e3, 2),
                    "chars_per_s_per_stream": round(statistics.median(
                        x for r in runs for x in r["per_stream"])),
                    "total_chars_per_s": round(statistics.median(r["total"] for r in runs)),
                })
    base = rows[0]["total_chars_per_s"]
    for row in rows:
        row["speedup"] = round(row["total_chars_per_s"] / base, 2)
    load = os.getloadavg()[0]  # other work on the machine skews every figure above
    for row in rows:
        row["load_avg_1min"] = round(load, 2)
    checks = {"ttfc_ms_at_1": rows[0]["ttfc_ms_median"], "ttfc_target_ms": TARGET_TTFC_MS,
              "ttfc_ok": rows[0]["ttfc_ms_median"] <= TARGET_TTFC_MS,
              "speedup_at_max": rows[-1]["speedup"], "speedup_target": TARGET_SPEEDUP,
              "speedup_ok": rows[-1]["speedup"] >= TARGET_SPEEDUP}
    if json_out:
        for row in rows:
            print(json.dumps(row), flush=True)
        print(json.dumps({"what": "serve-targets", **checks}), flush=True)
    else:
        print(f"serve {rows[0]['model']} (vocab {rows[0]['vocab_size']}) on {workers} gunicorn "
              f"worker(s), {rows[0]['kernel_threads']} kernel thread(s), {chars} chars per "
              f"stream, {checkpoint}; {os.cpu_count()} cores, "
              f"load average {load:.2f} at the end")
        print(f"{'streams':>8} {'ttfc ms (p50/p90)':>18} {'chars/s/stream':>15} "
              f"{'total chars/s':>14} {'speedup':>8}")
        for r in rows:
            print(f"{r['streams']:>8} {r['ttfc_ms_median']:>8.2f} / {r['ttfc_ms_p90']:<7.2f} "
                  f"{r['chars_per_s_per_stream']:>15,} {r['total_chars_per_s']:>14,} "
                  f"{r['speedup']:>7.2f}x")
        print(f"targets: ttfc {checks['ttfc_ms_at_1']:.2f} ms <= {TARGET_TTFC_MS:g} ms "
              f"{'ok' if checks['ttfc_ok'] else 'MISSED'}; speedup at {rows[-1]['streams']} "
              f"streams {checks['speedup_at_max']:.2f}x >= {TARGET_SPEEDUP:g}x "
              f"{'ok' if checks['speedup_ok'] else 'MISSED'}", flush=True)
    return rows
