"""Typed errors of the sidecar's status codes, and the retry policy of the clients."""

import random
from typing import Optional

import grpc

__all__ = ["SidecarError", "NotFound", "Aborted", "ResourceExhausted", "error_from",
           "retry_pause"]


class SidecarError(grpc.RpcError):
    """A call the sidecar refused or could not serve. Still a grpc.RpcError with `code()`
    and `details()`, so code written against the raw stubs keeps working."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class NotFound(SidecarError):
    """NOT_FOUND: the session does not exist (or has expired)."""


class Aborted(SidecarError):
    """ABORTED: `expected_version` was not the session's version; re-read and retry."""


class ResourceExhausted(SidecarError):
    """RESOURCE_EXHAUSTED: a rate limit, the sidecar's load limit or a size limit; wait and
    retry later."""


_TYPED = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def error_from(error: grpc.RpcError) -> SidecarError:
    """The typed error of a failed call."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    return _TYPED.get(code, SidecarError)(code, details or "")


# Retries of UNAVAILABLE (sidecar restarting, not yet listening, connection reset): full
# jitter over an exponential bound, so that many bots do not retry in step.
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 2.0


def retry_pause(error: grpc.RpcError, retry: bool, attempt: int, retries: int,
                remaining: float) -> Optional[float]:
    """How long to sleep before retry `attempt` (1, 2, ...) of a call that failed with
    `error`, or None when it must not be retried: not a retryable call, not UNAVAILABLE,
    out of retries, or no room left before the deadline."""
    if not retry or error.code() != grpc.StatusCode.UNAVAILABLE or attempt > retries:
        return None
    pause = random.uniform(0, min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** attempt))
    return pause if pause < remaining else None
