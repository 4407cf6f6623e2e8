"""Small helpers views share for reading requests."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request

from pzls_site.exceptions import BadRequest


def json_object(request: Request) -> dict[str, Any]:
    """The request body, which must be a JSON object."""
    data = request.data
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


def client_ip(request: Request) -> str:
    """The client's address; X-Forwarded-For is believed only for PZLS_TRUSTED_PROXIES hops."""
    hops = settings.PZLS_TRUSTED_PROXIES
    if hops > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR", "") or "unknown"
