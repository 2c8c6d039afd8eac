"""The optional API key (Authorization: Bearer) and CORS, by hand, preflight included."""

import hmac

from flask import Flask, Response, current_app, request

from charlm.errors import CharlmError

from .errors import ApiError

OPEN = {"/health"}  # load balancers probe it without a key
METHODS = "GET, POST, OPTIONS"


def allowed_origin(origin: str | None) -> str | None:
    """The value for Access-Control-Allow-Origin, or None if origin may not read responses."""
    origins = current_app.config["CORS_ORIGINS"]
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def is_page(path: str, method: str) -> bool:
    """The playground page and its files: public, so a browser can load it and ask for a key
    (HEAD as GET: it is a GET without the body)."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith("/playground/"))


def check_key(key: object) -> str | None:
    """CHARLM_API_KEY as the service uses it: None (no key) or a string a client can send.

    The key is the variable's text, taken literally: "null", "true" or "1e5" are keys like any
    other. It must be printable ASCII without spaces, since a header carries it and the
    Bearer scheme ends at a space; anything else is refused rather than never matching.
    """
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise CharlmError(f"CHARLM_API_KEY must be a string, got {type(key).__name__}")
    if not all("!" <= ch <= "~" for ch in key):
        raise CharlmError("CHARLM_API_KEY must be printable ASCII without spaces (a client "
                          "sends it in a header)")
    return key


def init_app(app: Flask) -> None:
    @app.before_request
    def preflight_and_key():
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            # a preflight carries no credentials: answer it before the key check
            return Response(status=204)
        key = current_app.config["API_KEY"]
        if not key or request.path in OPEN or is_page(request.path, request.method):
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 key.encode()):
            raise ApiError(401, "a valid `Authorization: Bearer <key>` header is required",
                           "unauthorized", {"WWW-Authenticate": "Bearer"})
        return None

    @app.after_request
    def cors_headers(resp: Response) -> Response:
        allow = allowed_origin(request.headers.get("Origin"))
        if current_app.config["CORS_ORIGINS"]:
            resp.vary.add("Origin")
        if allow is None:
            return resp
        resp.headers["Access-Control-Allow-Origin"] = allow
        if request.method == "OPTIONS":
            resp.headers["Access-Control-Allow-Methods"] = METHODS
            resp.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type")
            resp.headers["Access-Control-Max-Age"] = "600"
        return resp
