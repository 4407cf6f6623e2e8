"""The one exception hierarchy of PZLS and the one handler that answers errors.

Services and backends raise a ``PZLSError`` subclass; views let it pass. The
handler turns it, DRF's own exceptions and Django's (404, PermissionDenied,
oversized bodies) into the protocol's ``{"error": "..."}`` body, keeps
``WWW-Authenticate: Bearer`` on every 401, and logs anything unexpected before
answering ``500 {"error": "Internal server error"}``. Management commands
turn it into their error message with ``command_errors``. A full or read-only
disk under any error (``storage_refusal``) is answered as such, not as a 500.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.management.base import CommandError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger("pzls")


class PZLSError(Exception):
    """Base of every error PZLS answers on purpose: a status and a message."""

    status_code = 500
    default_message = "Internal server error"

    def __init__(
        self, message: str | None = None, *, headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        # More fields of the error body beside "error" (a 412's serverVersion and serverData).
        self.extra = extra or {}
        super().__init__(self.message)


class BadRequest(PZLSError):
    status_code = 400
    default_message = "Bad request"


class MalformedJSON(BadRequest):
    def __init__(self, detail: str) -> None:
        super().__init__(f"Malformed JSON: {detail}")


class NotAuthenticated(PZLSError):
    """The token is missing, unknown, revoked or expired: the client must log in again."""

    status_code = 401
    default_message = "Authentication required"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(PZLSError):
    status_code = 403
    default_message = "Forbidden"


class NotFound(PZLSError):
    status_code = 404
    default_message = "Not found"


class Conflict(PZLSError):
    status_code = 409
    default_message = "Conflict"


class PreconditionFailed(PZLSError):
    """An ``If-Match`` or ``If-None-Match`` that the record does not meet; the body says what it is now."""

    status_code = 412
    default_message = "Precondition failed"


class BodyTooLarge(PZLSError):
    status_code = 413

    def __init__(self) -> None:
        from django.conf import settings

        mb = settings.PZLS_MAX_BODY_MB
        mb_text = f"{mb:g}"
        super().__init__(f"Request body too large (limit {mb_text} MiB)")


class TooManyRequests(PZLSError):
    status_code = 429
    default_message = "Too many requests"

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after)))})


class StorageError(PZLSError):
    """A backend could not read or write its storage: a 500, whose details are logged, not shown."""


class InsufficientStorage(PZLSError):
    """The disk (or quota) that holds the data is full; the write that needed it changed nothing."""

    status_code = 507
    default_message = "Not enough disk space on the server"


class ReadOnlyStorage(PZLSError):
    status_code = 503
    default_message = "The server's storage is read-only"


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# SQLite's primary result codes (extended codes keep them in the low byte).
_SQLITE_READONLY, _SQLITE_FULL = 8, 13
# SQLSTATE disk_full (PostgreSQL).
_SQLSTATE_DISK_FULL = "53100"


def storage_refusal(exc: BaseException) -> PZLSError | None:
    """The clear error for a full or read-only disk behind ``exc`` (itself or what caused it); else None.

    One place for every kind of storage: an ``OSError`` (ENOSPC, EDQUOT,
    EROFS) from the file stores, SQLite's "database or disk is full" and
    "attempt to write a readonly database", PostgreSQL's disk_full.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError):
            if cause.errno in _FULL_ERRNOS:
                return InsufficientStorage()
            if cause.errno == errno.EROFS:
                return ReadOnlyStorage()
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
            return InsufficientStorage()
        if isinstance(code, int) and code & 0xFF == _SQLITE_READONLY:
            return ReadOnlyStorage()
        if _SQLSTATE_DISK_FULL in (getattr(cause, "sqlstate", None), getattr(cause, "pgcode", None)):
            return InsufficientStorage()
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return None


@contextlib.contextmanager
def command_errors() -> Iterator[None]:
    """In a management command: a refusal (PZLSError) is printed as its message, without a traceback."""
    try:
        yield
    except Exception as exc:
        refusal = storage_refusal(exc)
        if refusal is not None:
            raise CommandError(refusal.message) from exc
        if isinstance(exc, PZLSError):
            raise CommandError(exc.message) from None
        raise


def error_body(message: str) -> dict[str, str]:
    """The protocol's error body."""
    return {"error": message}


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JsonResponse:
    """An error answer for code paths outside DRF (middleware, Django's handlers)."""
    response = JsonResponse(error_body(message), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


_DRF_MESSAGES = {
    drf.MethodNotAllowed: "Method not allowed",
    drf.NotFound: "Not found",
    drf.NotAuthenticated: "Authentication required",
}


def _drf_message(exc: drf.APIException) -> str:
    for cls, message in _DRF_MESSAGES.items():
        if isinstance(exc, cls):
            return message
    detail: Any = exc.detail
    # Validation errors arrive as nested lists and dicts; the protocol wants one sentence.
    while isinstance(detail, (list, dict)) and detail:
        if isinstance(detail, dict):
            key, detail = next(iter(detail.items()))
            if key != "non_field_errors" and isinstance(detail, list) and detail:
                return f"{key}: {detail[0]}"
        else:
            detail = detail[0]
    return str(detail) if detail else "Bad request"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every error becomes ``{"error": ...}``."""
    refusal = storage_refusal(exc)
    if refusal is not None:
        logger.error("%s: %s", refusal.message, exc, exc_info=exc)
        return Response(error_body(refusal.message), status=refusal.status_code)
    if isinstance(exc, PZLSError):
        if exc.status_code >= 500:
            logger.error("%s: %s", type(exc).__name__, exc.message, exc_info=exc.__cause__ or exc)
            return Response(error_body("Internal server error"), status=exc.status_code, headers=exc.headers)
        return Response({**error_body(exc.message), **exc.extra}, status=exc.status_code, headers=exc.headers)
    if isinstance(exc, Http404):
        return Response(error_body("Not found"), status=404)
    if isinstance(exc, DjangoPermissionDenied):
        return Response(error_body(str(exc) or "Forbidden"), status=403)
    if isinstance(exc, RequestDataTooBig):
        too_large = BodyTooLarge()
        return Response(error_body(too_large.message), status=413)
    if isinstance(exc, drf.APIException):
        headers = {}
        if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
            headers["WWW-Authenticate"] = "Bearer"
        # Throttled keeps the seconds to wait (rounded up, or None) in .wait, which its stubs do not declare.
        wait = getattr(exc, "wait", None) if isinstance(exc, drf.Throttled) else None
        if wait:
            headers["Retry-After"] = str(int(wait))
        return Response(error_body(_drf_message(exc)), status=exc.status_code, headers=headers)
    # DRF calls this handler with the exception rather than from inside its
    # except block, so the traceback is passed explicitly.
    logger.error(
        "Unhandled error in %s",
        context.get("view").__class__.__name__ if context.get("view") else "view",
        exc_info=exc,
    )
    return Response(error_body("Internal server error"), status=500)
