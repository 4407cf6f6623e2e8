"""Answers for URLs no app claims, and Django's error handlers, as JSON under /api/."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views import defaults

from pzls_site.exceptions import json_error
from pzls_site.middleware import is_api_path


def api_not_found(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    """Any /api/ URL that no app routes, whatever the method."""
    return json_error(404, "Not found")


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path_info):
        return json_error(404, "Not found")
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path_info):
        return json_error(500, "Internal server error")
    return defaults.server_error(request)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path_info):
        return json_error(400, "Bad request")
    return defaults.bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path_info):
        return json_error(403, "Forbidden")
    return defaults.permission_denied(request, exception)
