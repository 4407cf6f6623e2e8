"""Entity resolution endpoint (PROTOCOL.md §4)."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resolve import services


class ResolveView(APIView):
    def get(self, request: Request) -> Response:
        threshold = services.threshold_parse(raw=request.query_params.get("threshold"))
        resolution = services.matches_find(user_id=str(request.user.pk), threshold=threshold)
        return Response(resolution.as_dict())
