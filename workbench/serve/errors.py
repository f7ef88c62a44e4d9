"""OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..errors import CapacityError, ContextLengthError, EngineClosedError, WorkbenchError

# The `type` OpenAI's API gives each status (the official clients pick their exception by status).
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
               503: "service_unavailable_error"}


class APIError(Exception):
    """A request the server answers with an error (raised by routes, turned into JSON by the app)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def from_workbench(e: WorkbenchError) -> APIError:
    """A request the engine refused when it was submitted: the client's fault (400), unless the
    engine is shutting down (503)."""
    if isinstance(e, EngineClosedError):
        return APIError(503, f"the engine is not running: {e}")
    if isinstance(e, ContextLengthError):
        return APIError(400, str(e), None, "context_length_exceeded")
    if isinstance(e, CapacityError):  # the KV cache could never hold this request, however long it waited
        return APIError(400, str(e), None, "context_length_exceeded")
    return APIError(400, str(e))
