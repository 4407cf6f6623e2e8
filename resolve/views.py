"""Entity resolution endpoint (PROTOCOL.md §4)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TOKEN_OR_ANONYMOUS_ACCOUNT, request_user
from pzls_site.schema import PROTECTED, THRESHOLD, errors, ok
from resolve import services


class ResolveView(APIView):
    # Pazator calls this URL without a token: PZLS_ANONYMOUS_USER may stand in (README).
    authentication_classes = TOKEN_OR_ANONYMOUS_ACCOUNT

    @extend_schema(
        summary="Likely duplicates among humans and others",
        parameters=[THRESHOLD],
        responses={200: ok("Resolution"), **errors(400, *PROTECTED, e400="threshold is not a number in [0, 1].")},
    )
    def get(self, request: Request) -> Response:
        threshold = services.threshold_parse(query=request.query_params)
        resolution = services.matches_find(user_id=str(request_user(request).pk), threshold=threshold)
        return Response(resolution.as_dict())
