"""Small helpers views share for reading requests."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.exceptions import UnsupportedMediaType
from rest_framework.request import Request

from pzls_site.exceptions import BadRequest
from pzls_site.json import is_blank, read_body


def json_object(request: Request) -> dict[str, Any]:
    """The request body, which must be a JSON object."""
    data = request.data
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


def raw_json_body(request: Request) -> bytes | bytearray:
    """The request body as bytes, for views that decode JSON themselves (a push).

    Same rules as the JSON parser: a body needs a JSON content type (else 415)
    and may not pass PZLS_MAX_BODY_MB (else 413).
    """
    length = int(request.META.get("CONTENT_LENGTH") or 0)  # checked by ApiBoundaryMiddleware
    body = read_body(request.stream, settings.PZLS_MAX_BODY_BYTES, length)
    if not is_blank(body) and request.content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(request.content_type)
    return body


def client_ip(request: Request) -> str:
    """The client's address; X-Forwarded-For is believed only for PZLS_TRUSTED_PROXIES hops."""
    hops = settings.PZLS_TRUSTED_PROXIES
    if hops > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR", "") or "unknown"
