"""gzip for clients that accept it: whole answers at once, streams event by event.

flask-compress was the library to use, but its streams go through a compressor that is never
flushed until the end, so server-sent events would wait in its buffer; and it does not gzip
streams at all. Here each chunk a stream yields is compressed and sync-flushed: the client can
decode every event as soon as it arrives, for a few bytes of deflate framing per write.
Answers under COMPRESS_MIN_BYTES, errors of other kinds than JSON, and anything already
encoded go as they are. The work is bounded: answers are bounded by the request limits.
"""

import zlib
from collections.abc import Iterable, Iterator

from flask import Flask, Response, current_app, request

TYPES = {"application/json", "text/event-stream", "text/plain", "text/html", "text/css",
         "text/javascript", "application/javascript", "image/svg+xml"}
LEVEL = 6  # zlib's default: most of level 9's ratio at a fraction of its time
STREAM_LEVEL = 1  # per event: the events are small and latency matters more than bytes


def accepts_gzip(header: str) -> bool:
    """Whether Accept-Encoding allows gzip (q=0 refuses it; * stands for it)."""
    quality: dict[str, float] = {}
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[coding.strip().lower()] = q
    q = quality.get("gzip", quality.get("x-gzip", quality.get("*", 0.0)))
    return q > 0


def gzip_stream(chunks: Iterable[bytes], inner: object) -> Iterator[bytes]:
    """Each chunk compressed and flushed, so it can be decoded as soon as it arrives; inner,
    the iterable the chunks come from, is closed with it."""
    z = zlib.compressobj(STREAM_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    try:
        for chunk in chunks:
            if chunk:
                yield z.compress(chunk) + z.flush(zlib.Z_SYNC_FLUSH)
        yield z.flush()
    finally:
        for source in (chunks, inner):  # the events' own cleanup runs when the client leaves
            close = getattr(source, "close", None)
            if close is not None:
                close()


def init_app(app: Flask) -> None:
    @app.after_request
    def compress(resp: Response) -> Response:
        if (request.method == "HEAD" or not 200 <= resp.status_code < 300
                or resp.status_code in (204, 206)):  # a range's bytes are of the plain file
            return resp
        resp.vary.add("Accept-Encoding")
        if ("Content-Encoding" in resp.headers or resp.mimetype not in TYPES
                or not accepts_gzip(request.headers.get("Accept-Encoding", ""))):
            return resp
        if resp.is_streamed:
            resp.response = gzip_stream(resp.iter_encoded(), resp.response)
            resp.headers.pop("Content-Length", None)
        else:
            data = resp.get_data()
            if len(data) < current_app.config["COMPRESS_MIN_BYTES"]:
                return resp
            resp.set_data(zlib.compress(data, LEVEL, wbits=16 + zlib.MAX_WBITS))
        resp.direct_passthrough = False
        resp.headers["Content-Encoding"] = "gzip"
        etag, weak = resp.get_etag()
        if etag and not weak:
            # the same content in another encoding: a weak validator still matches it
            resp.set_etag(etag, weak=True)
        return resp
