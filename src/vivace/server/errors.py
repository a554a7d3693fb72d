"""Errors the API turns into problem+json responses with a stable ``code``."""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Gone(ApiError):
    status, code = 410, "gone"


class Invalid(ApiError):
    status, code = 422, "invalid"


class TooLarge(ApiError):
    status, code = 413, "too_large"


class VersionMismatch(ApiError):
    status, code = 426, "version_mismatch"


class SpendLimited(ApiError):
    """A spend limit is reached: nothing new may start (ResourceExhaustedError in the SDK)."""

    status, code = 429, "spend_limit"
