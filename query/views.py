"""The remote SQL endpoint (PROTOCOL.md §5)."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pzls_site.requests import json_object
from query import services


class QueryView(APIView):
    """``POST /api/query {connectionString, query}``."""

    def post(self, request: Request) -> Response:
        body = json_object(request)
        result = services.query_run(
            user=request.user, connection_string=body.get("connectionString"), query=body.get("query")
        )
        return Response(
            {
                "success": True,
                "rows": result.rows,
                "rowCount": result.row_count,
                "fields": result.fields,
                "truncated": result.truncated,
                "elapsedMs": result.elapsed_ms,
            }
        )

    def handle_exception(self, exc: Exception) -> Response:
        # §5: failures answer {"success": false, "error": ...}. A 401 stays the
        # generic answer: Pazator logs out on it, whatever the endpoint.
        response = super().handle_exception(exc)
        if response.status_code != 401 and isinstance(response.data, dict) and set(response.data) == {"error"}:
            response.data = {"success": False, "error": response.data["error"]}
        return response
