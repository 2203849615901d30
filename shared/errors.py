"""The one error table: each error knows its HTTP status and OpenAI error ``type``.

Views and workers raise these; the API renders them as ``{"error": {...}}``. Workers send them to
the API inside an :class:`shared.events.ErrorEvent`, so a worker-side 400 stays a 400.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ModelyardError(Exception):
    """Base of every error a client may see."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's error envelope."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ModelyardError):
    """The request is malformed or asks for something the model cannot do."""

    status = 400
    type = "invalid_request_error"
    default_code = "invalid_value"


class AuthenticationFailed(ModelyardError):
    """API keys are configured and the request's key is missing or wrong."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(ModelyardError):
    """Unknown model, route or job."""

    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    """The ``model`` named in the request is not served here."""

    default_code = "model_not_found"


class MethodNotAllowed(ModelyardError):
    """The route exists but not for this HTTP method."""

    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(ModelyardError):
    """The request body is over the configured limit."""

    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(ModelyardError):
    """Too much work queued; retry after ``retry_after`` seconds."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(ModelyardError):
    """The model is configured but cannot serve now (no live worker, Redis down)."""

    status = 503
    type = "service_unavailable_error"
    default_code = "model_unavailable"


class DeadlineExceeded(ModelyardError):
    """The request's deadline passed before its result was ready."""

    status = 504
    type = "timeout_error"
    default_code = "deadline_exceeded"


class InternalError(ModelyardError):
    """A bug or a failing model; never caused by the request alone."""


_BY_STATUS: dict[int, type[ModelyardError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest,
        AuthenticationFailed,
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge,
        RateLimited,
        ServiceUnavailable,
        DeadlineExceeded,
        InternalError,
    )
}


def error_for_status(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    retry_after: int | None = None,
) -> ModelyardError:
    """Rebuild an error received from another process."""
    cls = _BY_STATUS.get(status, InternalError)
    return cls(message, param=param, code=code, retry_after=retry_after)


class Cancelled(ModelyardError):
    """The job was cancelled (its client went away, or someone stopped it); nobody reads this error."""

    status = 499
    type = "cancelled"
    default_code = "cancelled"


_BY_STATUS[Cancelled.status] = Cancelled
