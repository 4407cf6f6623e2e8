"""Sync endpoints (PROTOCOL.md §3), and the admin API's users list with each user's repository (§6).

Pulls are conditional and compressed, additions to the protocol that old
clients ignore: every pull carries an ``ETag``; ``If-None-Match`` with the
current one answers 304 with no body; a client that accepts gzip gets the
body compressed (compressed once per repository version, see ``sync.pullcache``).
"""

from __future__ import annotations

import re

import orjson
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
from pzls_site.exceptions import BadRequest
from pzls_site.health import server_version
from pzls_site.requests import client_ip, raw_json_body
from pzls_site.schema import (
    AUDIT_LIMIT,
    AUDIT_SINCE,
    CURSOR,
    CURSOR_DELETED,
    CURSOR_LIMIT,
    CURSOR_STORE,
    IF_MATCH,
    IF_NONE_MATCH,
    OPTIONAL_BEARER,
    PROTECTED,
    RECORD_ID,
    RECORD_IF_NONE_MATCH,
    RECORD_STORE,
    SINCE,
    WITH_BODY,
    body,
    errors,
    ok,
)
from sync import audit, services
from sync.backends import PullSource
from sync.records import AuditContext

_GZIP_SUFFIX = "-gz"


def _actor(request: Request) -> AuditContext:
    """Who makes a change, as the audit log names them."""
    return AuditContext(user_id=str(request.user.pk), username=request.user.username, ip=client_ip(request))


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
        result = services.repository_push(
            user_id=str(request.user.pk), body=raw_json_body(request), actor=_actor(request)
        )
        answer = {
            "version": result.version,
            "added": result.added,
            "modified": result.modified,
            "message": f"Sync successful. {result.added} added, {result.modified} modified.",
        }
        if result.skipped:  # only then: a first-edition answer stays exactly what it was
            answer["skipped"] = result.skipped
        return Response(answer)


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


class OpsView(APIView):
    @extend_schema(
        summary="Apply a batch of ops (create, update, delete) as one commit; conflicts are results",
        request=body("Ops"),
        responses={200: ok("OpsResult"), **errors(*WITH_BODY, *PROTECTED)},
    )
    def post(self, request: Request) -> Response:
        answer = services.repository_ops(
            user_id=str(request.user.pk), body=raw_json_body(request), actor=_actor(request)
        )
        return Response(answer)

    @extend_schema(
        summary="The caller's own entries of the audit log",
        parameters=[AUDIT_SINCE, AUDIT_LIMIT],
        responses={200: ok("AuditPage"), **errors(400, *PROTECTED)},
    )
    def get(self, request: Request) -> Response:
        since = params.position(request.query_params, "since")
        limit = params.count(request.query_params, "limit", default=audit.PAGE_DEFAULT, cap=audit.PAGE_MAX)
        return Response(services.own_audit(user_id=str(request.user.pk), since=since, limit=limit))


def _versions(header: str) -> list[int]:
    """The versions an If-Match header names (``"3"``, ``W/"3"``, ``3``, a list); ``[]`` for ``*``; else 400."""
    if header.strip() == "*":
        return []
    versions = []
    for part in header.split(","):
        tag = part.strip().removeprefix("W/").strip()
        if len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tag = tag[1:-1]
        if not (tag.isascii() and tag.isdigit() and len(tag) <= 18):
            raise BadRequest('If-Match must name record versions, such as "3", or be *')
        versions.append(int(tag))
    return versions


class RecordView(APIView):
    @extend_schema(
        summary="One record",
        parameters=[RECORD_STORE, RECORD_ID, RECORD_IF_NONE_MATCH],
        responses={
            200: ok("Record"),
            304: OpenApiResponse(description="Not modified."),
            **errors(400, 404, *PROTECTED),
        },
    )
    def get(self, request: Request, store: str, record_id: str) -> HttpResponseBase:
        record = services.record_get(user_id=str(request.user.pk), store=store, record_id=record_id)
        etag = f'"{record.version}"'
        if_none_match = request.headers.get("If-None-Match", "")
        if if_none_match and _matches(if_none_match, str(record.version)):
            not_modified = HttpResponse(status=304)
            not_modified["ETag"] = etag
            return not_modified
        response = Response(
            {"store": store, "id": record_id, "version": record.version, "data": orjson.Fragment(record.text)}
        )
        response["ETag"] = etag
        return response

    @extend_schema(
        summary="Create or replace one record (If-Match, If-None-Match: *)",
        parameters=[RECORD_STORE, RECORD_ID, IF_MATCH, RECORD_IF_NONE_MATCH],
        request=body("RecordBody"),
        responses={
            200: ok("RecordWritten"),
            **errors(*WITH_BODY, *PROTECTED),
            **errors(412, body="PreconditionFailed"),
        },
    )
    def put(self, request: Request, store: str, record_id: str) -> Response:
        if_match = request.headers.get("If-Match")
        version = services.record_put(
            user_id=str(request.user.pk),
            store=store,
            record_id=record_id,
            body=raw_json_body(request),
            if_match=None if if_match is None else _versions(if_match),
            if_none_match=request.headers.get("If-None-Match", "").strip() == "*",
            actor=_actor(request),
        )
        response = Response({"store": store, "id": record_id, "version": version})
        response["ETag"] = f'"{version}"'
        return response

    @extend_schema(
        summary="Delete one record, leaving a tombstone (If-Match)",
        parameters=[RECORD_STORE, RECORD_ID, IF_MATCH],
        responses={
            200: ok("RecordWritten"),
            **errors(400, *PROTECTED),
            **errors(412, body="PreconditionFailed"),
        },
    )
    def delete(self, request: Request, store: str, record_id: str) -> Response:
        if_match = request.headers.get("If-Match")
        version = services.record_delete(
            user_id=str(request.user.pk),
            store=store,
            record_id=record_id,
            if_match=None if if_match is None else _versions(if_match),
            actor=_actor(request),
        )
        return Response({"store": store, "id": record_id, "version": version})


class CursorView(APIView):
    @extend_schema(
        summary="Incremental pull: records in the order of their last change, from a cursor",
        parameters=[CURSOR, CURSOR_LIMIT, CURSOR_STORE, CURSOR_DELETED],
        responses={200: ok("CursorPage"), **errors(400, *PROTECTED)},
    )
    def get(self, request: Request) -> HttpResponse:
        query = request.query_params
        store = query.get("store") or None
        return HttpResponse(
            services.repository_cursor(
                user_id=str(request.user.pk),
                cursor=query.get("cursor") or None,
                limit=params.count(
                    query, "limit", default=services.CURSOR_LIMIT_DEFAULT, cap=services.CURSOR_LIMIT_MAX
                ),
                store=store,
                deleted=params.flag(query, "deleted"),
            ),
            content_type="application/json",
        )


class StoresView(APIView):
    @extend_schema(summary="Live records per store", responses={200: ok("Stores"), **errors(*PROTECTED)})
    def get(self, request: Request) -> Response:
        return Response(services.repository_stores(user_id=str(request.user.pk)))
