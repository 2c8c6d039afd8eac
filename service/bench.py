"""`charlm bench serve`: the HTTP service under gunicorn on loopback, at 1, 8 and 32 streams.

Reports, per number of concurrent streams, the total chars/s served, the chars/s of the step
kernel alone at the same batch size measured in the same run (kernel_alone: no HTTP, no
Python per character), their ratio, and the p50/p90 time to first character (request sent to
first event read). The text output adds chars per CPU second of the server's processes and of
the kernel's (their ratio is the share of the server's compute that is kernel work, a figure
that holds on a machine shared with other work, where wall-clock rates swing). The clients
are sockets of this process, driven by one thread on the same machine, so on a small machine
they take some of the CPU the server would otherwise have.
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
TARGET_TTFC_MS = 5.0  # median time to first character at one stream
TARGET_RATIO = 0.7  # served chars/s over the kernel's own at the most streams
TARGET_TTFC_P90_MS = 20.0  # p90 time to first character at the most streams


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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process pid and its children's processes so far (Linux's
    /proc; 0 elsewhere): what the server spent, whoever else shares the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
        for p in pids:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    except (OSError, ValueError):
        return 0.0
    return total


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
        try:
            self.wait_healthy()
        except BaseException:  # __exit__ is not called when __enter__ fails: stop it here
            self.__exit__()
            raise
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


def level(port: int, streams: int, chars: int, seed: int, prompt: str,
          server_pid: int | None = None) -> dict:
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
    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
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
            "total": streams * chars / wall,
            "cpu": cpu_seconds(server_pid) - cpu0 if server_pid else 0.0}


def kernel_alone(checkpoint: Path, streams: int, steps: int, threads: int | None,
                 prompt: str, start=None) -> tuple[int, float, float]:
    """The step kernel alone at a batch of `streams`: (characters drawn, seconds, CPU seconds).

    A Batch of the checkpoint's model stepped in a loop by advance(): the kernel and the
    serial/threaded choice the server's engine makes, with no HTTP and no Python per
    character. Run in a process of its own (see kernel_rate), like a gunicorn worker; start,
    if given, is waited on (a barrier) once the model is loaded and warmed.
    """
    from charlm.checkpoint import load_checkpoint
    from charlm.generate import Batch, PackedModel, SampleSettings
    from charlm.warmup import warmup

    warmup(train=False, forward=False)
    ckpt = load_checkpoint(checkpoint)
    packed = PackedModel(ckpt.model(), ckpt.vocab, threads)
    batch = Batch(packed, capacity=streams)
    primed = packed.read(prompt)
    for k in range(streams):
        batch.add(primed, SampleSettings(temperature=0.8, seed=k, max_new_chars=10**9))
    for _ in range(min(steps, 200)):  # the kernel choice settles, caches fill
        batch.advance()
    if start is not None:
        start.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        batch.advance()
    return streams * steps, time.perf_counter() - t0, time.process_time() - cpu0


def _kernel_worker(args: tuple, start, out) -> None:
    try:
        out.put(kernel_alone(*args, start=start))
    except BaseException as e:  # the parent reports it; a broken barrier frees the others
        start.abort()
        out.put(f"{type(e).__name__}: {e}")


def kernel_rate(checkpoint: Path, streams: int, steps: int, workers: int, threads: int | None,
                prompt: str) -> tuple[float, float]:
    """chars/s of the step kernel alone, in `workers` processes that step at once, with the
    streams shared among them as the server's workers share connections; and chars per CPU
    second."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: numba's thread pool is not fork-safe
    shares = [streams // workers + (w < streams % workers) for w in range(workers)]
    shares = [n for n in shares if n]
    start, out = ctx.Barrier(len(shares)), ctx.Queue()  # the workers time from one moment
    env = {"NUMBA_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers)),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # what gunicorn.conf.py gives each worker (the children inherit it)
    try:
        procs = [ctx.Process(target=_kernel_worker, daemon=True,
                             args=((checkpoint, n, steps, threads, prompt), start, out))
                 for n in shares]
        for p in procs:
            p.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        results = [out.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    failed = [r for r in results if isinstance(r, str)]
    if failed:
        raise CharlmError(f"the kernel alone failed: {failed[0]}")
    chars = sum(r[0] for r in results)
    return chars / max(r[1] for r in results), chars / max(sum(r[2] for r in results), 1e-9)


def run_serve_bench(json_out: bool = False, checkpoint: Path | None = None, workers: int = 1,
                    chars: int = 500, rounds: int = 3, levels: tuple[int, ...] = LEVELS,
                    kernel_threads: int | None = None) -> list[dict]:
    """Start gunicorn on loopback, measure each level `rounds` times, and the kernel alone at
    each level in the same run, interleaved; print and return the medians, and whether the
    targets are met."""
    with tempfile.TemporaryDirectory(prefix="charlm-bench-") as tmp:
        if checkpoint is None:
            checkpoint = DEFAULT if DEFAULT.is_file() else random_checkpoint(Path(tmp))
        checkpoint = Path(checkpoint)
        from charlm.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        cfg = ckpt.config
        # "The " when the model can read it, else the start of its vocabulary
        prompt = "The " if set("The ") <= set(ckpt.vocab) else "".join(ckpt.vocab[:4])
        if workers > 1 and kernel_threads is None:
            kernel_threads = 1  # one kernel thread per worker: the workers share the cores
        env = {"CHARLM_KERNEL_THREADS": str(kernel_threads)} if kernel_threads else {}
        with Server(checkpoint, workers, env, log=Path(tmp) / "gunicorn.log") as server:
            # warm-up: connections, threads, caches
            for _ in range(3):
                level(server.port, 4, 50, 0, prompt)
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/info")
            threads = json.loads(conn.getresponse().read())["models"][0]["kernel_threads"]
            conn.close()
            rows, cpu_ratios = [], []
            ttfc_one = []
            for _ in range(30):  # time to first character, alone, many times
                ttfc_one.append(level(server.port, 1, 1, 1, prompt)["ttfc"][0])
            for n in levels:
                # served and kernel alone in turns, so a change in the machine's load falls
                # on both (the server is idle while the kernel runs)
                runs, kernel = [], []
                for r in range(rounds):
                    runs.append(level(server.port, n, chars, 100 * r, prompt, server.proc.pid))
                    kernel.append(kernel_rate(checkpoint, n, chars, workers,
                                              kernel_threads, prompt))
                ttfc = [x for r in runs for x in r["ttfc"]]
                if n == 1:
                    ttfc = ttfc + ttfc_one
                served = statistics.median(r["total"] for r in runs)
                alone = statistics.median(k[0] for k in kernel)
                # per CPU second: what the server's work costs, however busy the machine is
                per_cpu = statistics.median(n * chars / r["cpu"] for r in runs) if all(
                    r["cpu"] for r in runs) else 0.0
                cpu_ratios.append((per_cpu, statistics.median(k[1] for k in kernel)))
                rows.append({
                    "what": "serve", "workers": workers, "streams": n,
                    "served_chars_per_s": round(served),
                    "kernel_chars_per_s": round(alone),
                    "served_over_kernel": round(served / alone, 3),
                    "ttfc_ms_p50": round(statistics.median(ttfc) * 1e3, 2),
                    "ttfc_ms_p90": round(float(np.percentile(ttfc, 90)) * 1e3, 2),
                })
    load = os.getloadavg()[0]  # other work on the machine skews every figure above
    if json_out:
        for row in rows:
            print(json.dumps(row), flush=True)
        return rows
    by = {r["streams"]: r for r in rows}
    print(f"serve {cfg.n_layer}x{cfg.n_hidden} (vocab {cfg.vocab_size}) on {workers} gunicorn "
          f"worker(s), {threads} kernel thread(s) each, {chars} chars per stream, "
          f"{checkpoint}; {os.cpu_count()} cores, load average {load:.2f} at the end")
    print(f"{'streams':>8} {'served chars/s':>15} {'kernel chars/s':>15} {'served/kernel':>14} "
          f"{'ttfc ms p50/p90':>16}   {'per CPU-s: served / kernel = ratio':>34}")
    for r, (served_cpu, kernel_cpu) in zip(rows, cpu_ratios, strict=True):
        cpu = (f"{served_cpu:>10,.0f} / {kernel_cpu:>8,.0f} = {served_cpu / kernel_cpu:.3f}"
               if served_cpu else "")
        print(f"{r['streams']:>8} {r['served_chars_per_s']:>15,} "
              f"{r['kernel_chars_per_s']:>15,} {r['served_over_kernel']:>14.3f} "
              f"{r['ttfc_ms_p50']:>7.2f} / {r['ttfc_ms_p90']:<7.2f}   {cpu}")
    checks = []
    if 1 in by:
        checks.append(f"ttfc at 1 stream {by[1]['ttfc_ms_p50']:.2f} ms <= {TARGET_TTFC_MS:g} ms "
                      f"{'ok' if by[1]['ttfc_ms_p50'] <= TARGET_TTFC_MS else 'MISSED'}")
    top = rows[-1]
    ratio = top["served_over_kernel"]
    checks.append(f"served/kernel at {top['streams']} streams {ratio:.2f} >= {TARGET_RATIO:g} "
                  f"{'ok' if ratio >= TARGET_RATIO else 'MISSED'}")
    checks.append(f"p90 ttfc at {top['streams']} streams {top['ttfc_ms_p90']:.2f} ms <= "
                  f"{TARGET_TTFC_P90_MS:g} ms "
                  f"{'ok' if top['ttfc_ms_p90'] <= TARGET_TTFC_P90_MS else 'MISSED'}")
    print("targets (one worker): " + "; ".join(checks), flush=True)
    return rows
