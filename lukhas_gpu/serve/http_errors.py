"""What each failure answers: one mapping from exceptions to HTTP status, message, headers."""
from __future__ import annotations

import asyncio

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ..store.layout import CorruptStoreError, StoreError
from .batcher import QueueFull
from .limits import BodyTooLarge

__all__ = ["ApiError", "describe"]


class ApiError(Exception):
    """A refusal with its status (and headers) decided where it is raised."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def _validation_message(e) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        got = err.get("input")
        got = f" (got {got!r:.80})" if isinstance(got, (int, float, str, bool)) and "input" in err else ""
        parts.append(f"{loc}: {err.get('msg')}{got}" if loc else f"{err.get('msg')}{got}")
    return "; ".join(parts)


def describe(e: BaseException, metrics, options) -> tuple[int, str, dict]:
    """``(status, message, headers)`` for ``e``; counts refusals in ``metrics``. Re-raises what
    is not a known refusal (a bug: the server answers 500)."""
    if isinstance(e, ApiError):
        return e.status, str(e), e.headers
    if isinstance(e, QueueFull):
        metrics.rejected.labels("queue_full").inc()
        return 429, str(e), {"Retry-After": str(e.retry_after)}
    if isinstance(e, BodyTooLarge):
        metrics.rejected.labels("too_large").inc()
        return 413, str(e), {"Connection": "close"}
    if isinstance(e, asyncio.TimeoutError):
        metrics.rejected.labels("timeout").inc()
        return 503, f"the search was not answered within {options.timeout_s} s (--timeout-s)", {"Retry-After": "1"}
    if isinstance(e, CorruptStoreError):  # a damaged file of the store: the server's fault, named
        return 500, str(e), {}
    if isinstance(e, (ValidationError, RequestValidationError)):
        return 422, _validation_message(e), {}
    if isinstance(e, (ValueError, TypeError)):
        return 422, str(e), {}
    if isinstance(e, StoreError):
        return 409, str(e), {}
    raise e
