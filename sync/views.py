"""Sync endpoints (PROTOCOL.md §3)."""

from __future__ import annotations

from django.http import HttpResponse
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import optional_user
from accounts.models import User
from pzls_site.requests import json_object
from sync import services


class SyncView(APIView):
    def get(self, request: Request) -> HttpResponse:
        body = services.repository_pull_bytes(user_id=str(request.user.pk))
        return HttpResponse(body, content_type="application/json")

    def post(self, request: Request) -> Response:
        result = services.repository_push(user_id=str(request.user.pk), body=json_object(request))
        return Response(
            {
                "version": result.version,
                "added": result.added,
                "modified": result.modified,
                "message": f"Sync successful. {result.added} added, {result.modified} modified.",
            }
        )


def _since(raw: str | None) -> int:
    """The protocol's ``since``: a missing or non-numeric value means 0."""
    try:
        value = int(float(raw)) if raw is not None else 0
    except (ValueError, OverflowError):
        return 0
    return max(value, 0)


class ChangesView(APIView):
    def get(self, request: Request) -> Response:
        since = _since(request.query_params.get("since"))
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

    def get(self, request: Request) -> Response:
        user = optional_user(request)
        account = None
        if user is not None:
            summary = services.repository_summary(user_id=str(user.pk))
            account = {
                "username": user.username,
                "role": user.role,
                "version": summary.version,
                "stores": summary.stores,
                "records": summary.records,
                "dataSizeBytes": summary.data_size_bytes,
                "totalSyncs": summary.total_syncs,
                "lastSync": summary.last_sync,
            }
        from pzls_site.health import server_version

        return Response(
            {
                "server": "PZLS",
                "serverVersion": server_version(),
                "uptime": services.uptime_seconds(),
                "registeredUsers": User.objects.count(),
                "account": account,
            }
        )
