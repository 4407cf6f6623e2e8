"""Query: safe remote SQL on PostgreSQL and MySQL/MariaDB for Pazator's pipelines.

PZLS_QUERY_ALLOWED_HOSTS and PZLS_QUERY_ROLES are checked with the rest of the
environment at start-up, by pzls_site.env.
"""

from __future__ import annotations

from django.apps import AppConfig


class QueryConfig(AppConfig):
    name = "query"
