"""The API's outer boundary, for what happens before or around DRF.

- A body whose Content-Length is over PZLS_MAX_BODY_MB is refused with 413
  before a byte of it is read (the parser catches bodies without a length).
- An error raised outside a DRF view under /api/ still answers JSON.
- Every /api/ answer carries Access-Control-Allow-Origin, also to clients
  that sent no Origin header, when every origin is allowed.
"""

from __future__ import annotations

import logging
from typing import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from pzls_site.exceptions import BodyTooLarge, PZLSError, json_error

logger = logging.getLogger("pzls")

API_PREFIX = "/api/"


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIX) or path == "/api"


class ApiBoundaryMiddleware:
    """See the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_api_path(request.path_info):
            return self.get_response(request)
        response = self._early_refusal(request) or self.get_response(request)
        if settings.CORS_ALLOW_ALL_ORIGINS and "Access-Control-Allow-Origin" not in response:
            response["Access-Control-Allow-Origin"] = "*"
        return response

    def _early_refusal(self, request: HttpRequest) -> HttpResponse | None:
        raw = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw)
        except ValueError:
            return json_error(400, "Invalid Content-Length header")
        if length > settings.PZLS_MAX_BODY_BYTES:
            return json_error(413, BodyTooLarge().message)
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_path(request.path_info):
            return None
        if isinstance(exception, PZLSError) and exception.status_code < 500:
            return json_error(exception.status_code, exception.message, exception.headers)
        logger.error("Unhandled error on %s %s", request.method, request.path_info, exc_info=exception)
        return json_error(500, "Internal server error")
