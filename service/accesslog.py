"""gunicorn's access log as one JSON object a line (CHARLM_LOG_FORMAT=json), for log shippers.

json.dumps escapes whatever a client put in its request line or headers, so no request can
break a line or forge another; the text format's atoms are quoted only.
"""

import json
import os
import time

from gunicorn.glogging import Logger


class JsonLogger(Logger):
    """gunicorn's logger, with each access line a JSON object."""

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        headers = {k.lower(): v for k, v in resp.headers}  # gunicorn's: (name, value) pairs
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or None,
            "status": int(str(resp.status).split()[0]),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "request_id": headers.get("x-request-id"),
            "pid": os.getpid(),
        }
        try:
            self.access_log.info(json.dumps(line, ensure_ascii=False))
        except Exception:
            self.exception("cannot write an access log line")
