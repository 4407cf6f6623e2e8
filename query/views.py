"""The remote SQL endpoint (PROTOCOL.md §5)."""

from __future__ import annotations

import orjson
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TOKEN_OR_ANONYMOUS_ACCOUNT, request_user
from pzls_site.json import ORJSONRenderer
from pzls_site.requests import json_object
from pzls_site.schema import body, errors, ok
from query import services


class QueryView(APIView):
    """``POST /api/query {connectionString, query}``."""

    # The rows arrive as an orjson.Fragment, which only orjson can write.
    renderer_classes = [ORJSONRenderer]
    # Pazator calls this URL without a token: PZLS_ANONYMOUS_USER may stand in (README).
    authentication_classes = TOKEN_OR_ANONYMOUS_ACCOUNT

    @extend_schema(
        summary="Run one SQL statement on an external PostgreSQL or MySQL/MariaDB server",
        request=body("Query"),
        responses={
            200: ok("QueryResult"),
            **errors(
                400,
                403,
                body="QueryFailure",
                e400="A bad request, an unreachable server, a login failure, an SQL error or a timeout.",
                e403="The query policy forbids it (role, host), or the account is disabled.",
            ),
            **errors(401, 413, 415),
        },
    )
    def post(self, request: Request) -> Response:
        body = json_object(request)
        result = services.query_run(
            user=request_user(request), connection_string=body.get("connectionString"), query=body.get("query")
        )
        return Response(
            {
                "success": True,
                # Already JSON, encoded while the rows were read (PZLS_QUERY_MAX_BYTES).
                "rows": orjson.Fragment(result.rows_json),
                "rowCount": result.row_count,
                "fields": result.fields,
                "truncated": result.truncated,
                "elapsedMs": result.elapsed_ms,
            }
        )

    def handle_exception(self, exc: Exception) -> Response:
        # §5: a refused (403) or failed (400) query answers {"success": false,
        # "error": ...}, which Pazator's connector reads. Everything else keeps
        # the generic body; above all 401, on which Pazator logs out.
        response = super().handle_exception(exc)
        if response.status_code in (400, 403) and isinstance(response.data, dict) and set(response.data) == {"error"}:
            response.data = {"success": False, "error": response.data["error"]}
        return response
