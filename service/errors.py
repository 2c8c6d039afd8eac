"""JSON errors: every failure a client sees is {"error": message, "error_type": kind}."""

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

# status -> error_type for the errors werkzeug raises itself
HTTP_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 408: "request_timeout", 411: "length_required",
              413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
              417: "expectation_failed", 431: "headers_too_large", 500: "internal",
              501: "not_implemented"}
MAX_MESSAGE = 300  # characters: an error is one line, whatever a client or a file put in it


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """text on one line of at most limit characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ApiError(Exception):
    """A request the service refuses, with the status code and error_type to send back."""

    def __init__(self, status: int, message: str, error_type: str = "validation",
                 headers: dict[str, str] | None = None) -> None:
        message = one_line(message)
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": self.message, "error_type": self.error_type}

    def response(self):
        resp = jsonify(self.body())
        resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp


class ClientGoneError(Exception):
    """The client closed its connection before its answer was ready: nobody reads a reply."""


def validation(message: str) -> ApiError:
    return ApiError(422, message, "validation")


def register_error_handlers(app: Flask) -> None:
    """Turn ApiError, werkzeug's HTTP errors and anything unexpected into JSON errors."""

    @app.errorhandler(ApiError)
    def api_error(e: ApiError):
        return e.response()

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        status = e.code or 500
        if status == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            message = f"the request body is over the limit of {limit} bytes"
        else:
            message = e.description or e.name
        err = ApiError(status, message, HTTP_TYPES.get(status, "http_error"))
        resp = err.response()
        if status == 405 and e.get_response().headers.get("Allow"):
            resp.headers["Allow"] = e.get_response().headers["Allow"]
        return resp

    @app.errorhandler(ClientGoneError)
    def client_gone(e: ClientGoneError):
        # nginx's "client closed request": for the access log, since nobody reads it
        return jsonify({"error": "the client closed the connection",
                        "error_type": "client_closed"}), 499

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        app.logger.exception("unhandled error")
        return ApiError(500, f"internal error: {type(e).__name__}", "internal").response()
