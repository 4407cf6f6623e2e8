"""Sync endpoints (PROTOCOL.md §3), and the admin API's users list with each user's repository (§6).

Pulls are conditional and compressed, additions to the protocol that old
clients ignore: every pull carries an ``ETag``; ``If-None-Match`` with the
current one answers 304 with no body; a client that accepts gzip gets the
body compressed (compressed once per repository version, see ``sync.pullcache``).
"""

from __future__ import annotations

import re

from django.http import FileResponse, HttpResponse, HttpResponseBase
from django.utils.cache import patch_vary_headers
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import optional_user
from accounts.services import user_count, user_list
from accounts.views import IsAdmin, user_json
from pzls_site import params
from pzls_site.clock import iso
from pzls_site.health import server_version
from pzls_site.requests import raw_json_body
from pzls_site.schema import (
    IF_NONE_MATCH,
    OPTIONAL_BEARER,
    PROTECTED,
    SINCE,
    WITH_BODY,
    body,
    errors,
    ok,
)
from sync import services
from sync.backends import PullSource

_GZIP_SUFFIX = "-gz"


def _etag(tag: str, gzip: bool = False) -> str:
    return f'"{tag}{_GZIP_SUFFIX if gzip else ""}"'


def _matches(if_none_match: str, tag: str) -> bool:
    """Whether If-None-Match names this tag (in either encoding) or is ``*``."""
    for candidate in if_none_match.split(","):
        stripped = candidate.strip()
        if stripped == "*":
            return True
        if stripped.removeprefix("W/").strip('"').removesuffix(_GZIP_SUFFIX) == tag:
            return True
    return False


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            quality = re.search(r"q\s*=\s*([0-9.]+)", params)
            return quality is None or float(quality.group(1) or 0) > 0
    return False


def _send(request: Request, source: PullSource, *, gzip: bool) -> HttpResponseBase:
    """Send a pull body: a file with sendfile under gunicorn, else the bytes."""
    if source.file is not None and request.META.get("wsgi.file_wrapper"):
        response: HttpResponseBase = FileResponse(source.file, content_type="application/json")
        if response.has_header("Content-Disposition"):
            del response["Content-Disposition"]
    else:
        response = HttpResponse(source.read(), content_type="application/json")
    if gzip:
        response["Content-Encoding"] = "gzip"
    response["ETag"] = _etag(source.tag, gzip=gzip)
    return response


class SyncView(APIView):
    @extend_schema(
        summary="Pull the whole repository",
        parameters=[IF_NONE_MATCH],
        responses={
            200: ok("Pull", "The repository; gzip-compressed for clients that accept it."),
            304: OpenApiResponse(description="If-None-Match named the current ETag: no body."),
            **errors(*PROTECTED),
        },
    )
    def get(self, request: Request) -> HttpResponseBase:
        user_id = str(request.user.pk)
        if_none_match = request.headers.get("If-None-Match", "")
        if if_none_match:
            tag = services.repository_pull_tag(user_id=user_id)
            if _matches(if_none_match, tag):
                not_modified = HttpResponse(status=304)
                not_modified["ETag"] = _etag(tag)
                patch_vary_headers(not_modified, ("Accept-Encoding",))
                return not_modified
        gzip = _accepts_gzip(request.headers.get("Accept-Encoding", ""))
        if gzip:
            source = services.repository_pull_gzip(user_id=user_id)
        else:
            source = services.repository_pull(user_id=user_id)
        response = _send(request, source, gzip=gzip)
        patch_vary_headers(response, ("Accept-Encoding",))
        return response

    @extend_schema(
        summary="Push records (all or nothing; never deletes)",
        request=body("Push"),
        responses={200: ok("PushResult"), **errors(*WITH_BODY, *PROTECTED)},
    )
    def post(self, request: Request) -> Response:
        result = services.repository_push(user_id=str(request.user.pk), body=raw_json_body(request))
        return Response(
            {
                "version": result.version,
                "added": result.added,
                "modified": result.modified,
                "message": f"Sync successful. {result.added} added, {result.modified} modified.",
            }
        )


# The largest integer a JavaScript client reads exactly; a larger ``since``
# (no version ever reaches it) is echoed as this, not as a number JSON output
# cannot hold.
_SINCE_MAX = 2**53 - 1


class ChangesView(APIView):
    @extend_schema(
        summary="Changelog entries after a version (the last 50 of them)",
        parameters=[SINCE],
        responses={200: ok("Changes"), **errors(*PROTECTED)},
    )
    def get(self, request: Request) -> Response:
        asked = params.version(request.query_params, "since", cap=_SINCE_MAX)
        page = services.repository_changes(user_id=str(request.user.pk), since=asked.whole)
        since = asked.resolved(page.current_version)
        if since != asked.whole:
            page = services.repository_changes(user_id=str(request.user.pk), since=since)
        return Response(
            {
                "currentVersion": page.current_version,
                "clientVersion": since,
                "pendingChanges": page.pending,
                "changes": page.entries,
            }
        )


class StatusView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Server status; with a valid token, the caller's repository too",
        auth=OPTIONAL_BEARER,
        responses={200: ok("Status")},
    )
    def get(self, request: Request) -> Response:
        user = optional_user(request)
        account = None
        if user is not None:
            summary = services.repository_summary(user_id=str(user.pk))
            account = {"username": user.username, "role": user.role, **summary.as_json()}
        return Response(
            {
                "server": "PZLS",
                "serverVersion": server_version(),
                "uptime": services.uptime_seconds(),
                "registeredUsers": user_count(),
                "account": account,
            }
        )


class AdminUsersView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        summary="Every user with their repository (admin)", responses={200: ok("AdminUsers"), **errors(*PROTECTED)}
    )
    def get(self, request: Request) -> Response:
        users = user_list()
        summaries = services.repository_summaries(user_ids=[str(u.pk) for u in users])
        rows = []
        for user in users:
            summary = summaries[str(user.pk)]
            rows.append(
                {
                    **user_json(user),
                    "disabled": not user.is_active,
                    "lastLogin": iso(user.last_login) if user.last_login else None,
                    "version": summary.version,
                    "records": summary.records,
                    "lastSync": summary.last_sync,
                }
            )
        return Response({"users": rows})
