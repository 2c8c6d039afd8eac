"""gunicorn's gthread worker with deadlines: request heads read in the main loop, bodies and
writes with timeouts, and gunicorn's own errors in the service's JSON shape.

gthread hands a connection to a pool thread as soon as a byte arrives, and the thread then
reads the request head with no time limit: fifty clients sending a header byte every few
seconds hold fifty threads, and nothing else is answered (slowloris). Here the main loop reads
each head, without blocking, into a buffer until the blank line that ends it, and only a whole
head goes to a thread; a head not whole within HEADER_TIMEOUT seconds, or larger than
HEADER_BYTES, is answered 408 or 431 and closed. The thread then reads the body with a deadline
(BODY_TIMEOUT) and writes with a timeout (WRITE_TIMEOUT), so a client that stops reading frees
its thread and its generation slot.
"""

import contextlib
import errno
import json
import os
import selectors
import socket
import time
from collections import deque
from functools import partial

from gunicorn import util
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise SystemExit(f"error: {name} must be a number of seconds in (0, 3600], got {raw!r}")
    return value


HEADER_TIMEOUT = _seconds("CHARLM_HEADER_TIMEOUT", 10.0)  # from the first byte to the blank line
BODY_TIMEOUT = _seconds("CHARLM_BODY_TIMEOUT", 30.0)  # for the whole body, once the head is in
WRITE_TIMEOUT = _seconds("CHARLM_WRITE_TIMEOUT", 30.0)  # for each write to go out
HEADER_BYTES = 32 * 1024  # a request head larger than this is answered 431
LINGER = 2.0  # seconds a closed connection waits for its client to close (as gthread's)


def json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """An error answer in the service's shape, {"error", "error_type"}, then close."""
    from .errors import HTTP_TYPES, one_line
    from .requestid import fresh

    body = json.dumps({"error": one_line(message) or reason,
                       "error_type": HTTP_TYPES.get(status, "http_error")}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-Id: {fresh()}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


class _DeadlineReads:
    """The socket as the request parser reads it: each recv waits at most until a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic()

    def recv(self, n: int) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request body did not arrive in time")
        self.sock.settimeout(left)
        try:
            return self.sock.recv(n)
        finally:
            self.sock.settimeout(WRITE_TIMEOUT)


def _deadline_reads(conn, seconds: float) -> None:
    """From now on the connection's parser reads its socket with a deadline `seconds` away."""
    unreader = conn.parser.unreader
    if not hasattr(unreader, "sock"):
        return
    if not isinstance(unreader.sock, _DeadlineReads):
        unreader.sock = _DeadlineReads(unreader.sock)
    unreader.sock.deadline = time.monotonic() + seconds


class Worker(ThreadWorker):
    """gthread, with each request head read whole by the main loop before a thread sees it."""

    def init_process(self) -> None:
        self.heads: deque = deque()  # connections whose head is arriving, oldest first
        self.lingering: deque = deque()  # closed for writing, draining until the client closes
        # gunicorn writes its own errors (a bad request line, a header too large) as HTML
        util.write_error = json_error
        super().init_process()

    def _buffered(self, client) -> bool:
        """Whether this worker reads heads itself: not under TLS or HTTP/2 prior knowledge,
        whose handshakes gthread does in the thread."""
        return not self.cfg.is_ssl and not negotiation.prior_knowledge_allowed(self.cfg, client)

    # -- heads, read in the main loop ------------------------------------------------------

    def accept(self, listener) -> None:
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, sock, client, listener.getsockname())  # non-blocking
        if self._buffered(client):
            self._wait_for_head(conn)
        else:
            sock.setblocking(True)
            self.enqueue_req(conn)

    def on_client_socket_readable(self, conn, client) -> None:
        """A kept-alive connection has a new request coming: read its head here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        if self._buffered(conn.client):
            self._wait_for_head(conn)
        else:
            self.enqueue_req(conn)

    def _wait_for_head(self, conn) -> None:
        conn.head = bytearray()
        conn.head_deadline = time.monotonic() + HEADER_TIMEOUT
        self.heads.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn, sock) -> None:
        try:
            data = sock.recv(HEADER_BYTES + 1 - len(conn.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client left before its request was whole
            self._drop_head(conn)
            return
        conn.head += data
        whole = b"\r\n\r\n" in conn.head or b"\n\n" in conn.head
        if not whole and len(conn.head) > HEADER_BYTES:
            self._refuse_head(conn, 431, "Request Header Fields Too Large",
                              f"the request head is over {HEADER_BYTES} bytes")
            return
        if not whole:
            return
        self.poller.unregister(sock)
        self.heads.remove(conn)
        sock.setblocking(True)
        conn.init()  # the parser; it reads the buffered head before the socket
        _deadline_reads(conn, HEADER_TIMEOUT)  # should the parser want more of the head
        conn.parser.unreader.unread(bytes(conn.head))
        conn.data_ready = True
        conn.head = None
        self.enqueue_req(conn)

    def _drop_head(self, conn) -> None:
        self.poller.unregister(conn.sock)
        self.heads.remove(conn)
        self.nr_conns -= 1
        conn.close()

    def _refuse_head(self, conn, status: int, reason: str, message: str) -> None:
        with contextlib.suppress(OSError):
            json_error(conn.sock, status, reason, message)
            # take in what the client has sent already: closing on unread bytes resets the
            # connection, and the client could lose the answer
            for _ in range(64):
                if not conn.sock.recv(65536):
                    break
        self._drop_head(conn)

    # -- closing, without blocking the main loop -----------------------------------------------

    def finish_request(self, conn, fs) -> None:
        """As gthread's, but a connection to close lingers in the poller: gthread's graceful
        close waits up to 2 s in the main loop for the client to close its side, and a client
        that never does (one that stopped reading) stalled every other connection that long."""
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:
            result = False
        if result:  # kept alive, deferred, or more to read: as gthread does it
            super().finish_request(conn, fs)
            return
        self.nr_conns -= 1
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # the FIN: the answer is whole
            conn.sock.setblocking(False)
        except OSError:
            conn.close()
            return
        conn.linger_deadline = time.monotonic() + LINGER
        self.lingering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))

    def _drain(self, conn, sock) -> None:
        """Read and drop what the client still sends; close once it has closed too."""
        try:
            if sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._end_linger(conn)

    def _end_linger(self, conn) -> None:
        self.poller.unregister(conn.sock)
        self.lingering.remove(conn)
        conn.close()

    def murder_pending(self) -> None:
        """Also close the connections whose head is late, and those that lingered long enough
        (the main loop calls this each second)."""
        super().murder_pending()
        now = time.monotonic()
        while self.lingering and self.lingering[0].linger_deadline <= now:
            self._end_linger(self.lingering[0])
        while self.heads and self.heads[0].head_deadline <= now:
            conn = self.heads[0]
            self.log.info("closing %s: no whole request head in %g s", conn.client[0],
                          HEADER_TIMEOUT)
            self._refuse_head(conn, 408, "Request Timeout",
                              f"the request head did not arrive within {HEADER_TIMEOUT:g} s")

    # -- bodies and writes, with deadlines, in the threads ---------------------------------

    def handle_request(self, req, conn):
        # each write must go out whole in this time: a Python timeout bounds all of sendall
        # (the kernel's SO_SNDTIMEO bounds each send only, and 64 streams that never read
        # went on for minutes with it, each send moving a little)
        conn.sock.settimeout(WRITE_TIMEOUT)
        _deadline_reads(conn, BODY_TIMEOUT)
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            # the client stopped reading (or sending): its thread and slot are freed
            self.log.warning("closing %s %s: the client stopped reading for %g s",
                             req.method, req.path, WRITE_TIMEOUT)
            return False
