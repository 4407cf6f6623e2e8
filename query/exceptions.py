"""The errors of remote SQL, in the project's one hierarchy (pzls_site/exceptions.py).

The query view answers them as ``{"success": false, "error": ...}``
(PROTOCOL.md §5); their messages never contain the connection's password.
"""

from __future__ import annotations

from pzls_site.exceptions import BadRequest, Forbidden


class QueryFailed(BadRequest):
    """400: the remote server could not be reached, refused the login, or the statement failed."""

    default_message = "Query failed"


class QueryTimeout(QueryFailed):
    """400: the statement ran past PZLS_QUERY_TIMEOUT_S and was cancelled."""

    default_message = "Query exceeded the time limit and was cancelled"


class QueryForbidden(Forbidden):
    """403: the policy (role, allowed hosts, the server's own database) forbids this query."""

    default_message = "This query is not allowed"
