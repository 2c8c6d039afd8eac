"""JSON errors: {"error": message, "error_type": kind}, TGI's shape; under /v1, OpenAI's
{"error": {"message", "type", "param", "code"}} with OpenAI's status codes, so the openai
client raises its typed errors (BadRequestError, NotFoundError ...) with our message."""

import re

from flask import Flask, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

# status -> error_type for the errors werkzeug raises itself
HTTP_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 408: "request_timeout", 411: "length_required",
              413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
              417: "expectation_failed", 431: "headers_too_large", 500: "internal",
              501: "not_implemented"}
MAX_MESSAGE = 300  # characters: an error is one line, whatever a client or a file put in it
# OpenAI's error types by status; 422 is TGI's validation status, 400 with OpenAI
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "invalid_request_error",
                408: "timeout_error", 413: "invalid_request_error",
                415: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_error", 503: "server_error"}
PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)")  # a message names its field first, in backticks


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

    def openai_body(self) -> dict:
        """OpenAI's shape: our error_type is the code, the field the message names the param."""
        param = PARAM.search(self.message) if self.status in (400, 404, 422) else None
        return {"error": {"message": self.message,
                          "type": OPENAI_TYPES.get(self.status, "server_error"),
                          "param": param.group(1) if param else None, "code": self.error_type}}

    def response(self):
        if is_openai():
            resp = jsonify(self.openai_body())
            resp.status_code = 400 if self.status == 422 else self.status
        else:
            resp = jsonify(self.body())
            resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp


def is_openai() -> bool:
    """Whether this request is to OpenAI's routes, which answer errors in OpenAI's shape."""
    return has_request_context() and request.path.startswith("/v1/")


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
