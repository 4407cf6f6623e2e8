"""The API's outer boundary, for what happens before or around DRF.

- A body whose Content-Length is over PZLS_MAX_BODY_MB is refused with 413
  before a byte of it is read. A chunked body (no Content-Length, which
  Django would read as empty) is read here up to the limit and handed on as
  an ordinary body, or refused with 413 once it passes the limit.
- An error raised outside a DRF view under /api/ still answers JSON.
- No /api/ URL is subject to Django's CSRF check: the API never
  authenticates by cookie, so there is nothing for the check to protect,
  and its refusal is an HTML page. Exempting the whole prefix here, rather
  than view by view (DRF's views are exempt, a plain view is not), keeps
  every /api/ URL, the 404 catch-all included, JSON for every method. The
  admin site keeps the check.
- ``Allow`` on /api/ answers lists the methods a client can use: not
  ``OPTIONS``, which the API answers only as a CORS preflight (any other
  OPTIONS request is 405 like any unserved method).
- Every /api/ answer carries Access-Control-Allow-Origin, also to clients
  that sent no Origin header, when every origin is allowed.
- Every answer carries the security headers (SecurityHeadersMiddleware).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from pzls_site.exceptions import BodyTooLarge, PZLSError, json_error
from pzls_site.json import read_body

logger = logging.getLogger("pzls")

API_PREFIX = "/api/"


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIX) or path == "/api"


class ApiBoundaryMiddleware:
    """See the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        # Early refusals never reach corsheaders (it sits inside this middleware);
        # they get its headers from here, so narrowed origins can read them too.
        self._cors = CorsMiddleware(get_response)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_api_path(request.path_info):
            return self.get_response(request)
        # CsrfViewMiddleware's own switch for requests it must not check
        # (it also serves Django's test client); see the module docstring.
        request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
        refusal = self._early_refusal(request)
        if refusal is not None:
            self._cors.add_response_headers(request, refusal)
        response = refusal or self.get_response(request)
        if settings.CORS_ALLOW_ALL_ORIGINS and "Access-Control-Allow-Origin" not in response:
            response["Access-Control-Allow-Origin"] = "*"
        if "Allow" in response:
            methods = [m.strip() for m in response["Allow"].split(",")]
            response["Allow"] = ", ".join(m for m in methods if m and m.upper() != "OPTIONS")
        return response

    def _early_refusal(self, request: HttpRequest) -> HttpResponse | None:
        limit = settings.PZLS_MAX_BODY_BYTES
        raw = request.META.get("CONTENT_LENGTH")
        if not raw and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            try:
                body = read_body(request.META["wsgi.input"], limit)
            except BodyTooLarge as exc:
                return json_error(413, exc.message)
            except Exception:
                # The server's chunked reader (gunicorn's ParseException
                # subclasses, OSError for a cut-off body) refuses a bad chunk
                # size or a missing CRLF: the body cannot be read.
                return json_error(400, "Malformed chunked request body")
            request.META["CONTENT_LENGTH"] = str(len(body))
            request._stream = io.BytesIO(body)  # what Django reads the body from
            return None
        try:
            length = int(raw or "0")
        except ValueError:
            return json_error(400, "Invalid Content-Length header")
        if length > limit:
            return json_error(413, BodyTooLarge().message)
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_path(request.path_info):
            return None
        if isinstance(exception, PZLSError) and exception.status_code < 500:
            return json_error(exception.status_code, exception.message, exception.headers)
        logger.error("Unhandled error on %s %s", request.method, request.path_info, exc_info=exception)
        return json_error(500, "Internal server error")


# A JSON answer, rendered by a browser anyway, may run nothing and load nothing.
CSP_API = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The admin site and the API's docs page: only this server's own scripts,
# styles and images, never framed. Inline styles are allowed (Django's
# change list and Swagger UI's page carry one <style> each); inline scripts
# are not, which is what stops injected markup from running.
CSP_PAGES = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
PAGES_PREFIXES = ("/admin/", "/api/docs")


class SecurityHeadersMiddleware:
    """Security headers on every answer, the early refusals of ApiBoundaryMiddleware included.

    ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy`` (Django's
    SecurityMiddleware sets them only on what passes through it), and a
    Content-Security-Policy: a strict one for the admin site and /api/docs,
    "nothing at all" for everything else. Headers a view set itself are kept.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if settings.SECURE_REFERRER_POLICY:
            response.headers.setdefault("Referrer-Policy", settings.SECURE_REFERRER_POLICY)
        pages = request.path_info.startswith(PAGES_PREFIXES)
        response.headers.setdefault("Content-Security-Policy", CSP_PAGES if pages else CSP_API)
        return response
