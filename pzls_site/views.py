"""The server's own endpoint, health, and the JSON answers under /api/ for URLs
no app claims and for Django's error handlers."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views import defaults
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pzls_site import health
from pzls_site.exceptions import json_error
from pzls_site.middleware import is_api_path
from pzls_site.schema import NO_AUTH, ok


# GET /api/auth/health; pzls_site.health decides. (A docstring here would be
# published as the operation's description in the OpenAPI document.)
class HealthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Whether the data directory is writable and the database answers",
        auth=NO_AUTH,
        responses={200: ok("Health"), 503: ok("HealthUnavailable", "The server cannot do its job.")},
    )
    def get(self, request: Request) -> Response:
        problem = health.problem()
        if problem:
            return Response({"status": "unavailable", "error": problem}, status=503)
        return Response({"status": "ok", "server": "PZLS", "version": health.server_version()})


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
