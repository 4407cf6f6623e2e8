"""Query: safe remote SQL on PostgreSQL and MySQL/MariaDB for Pazator's pipelines."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks


class QueryConfig(AppConfig):
    name = "query"

    def ready(self) -> None:
        checks.register(check_query_settings, "pzls")


def check_query_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A malformed PZLS_QUERY_ALLOWED_HOSTS or an unknown role is reported at start-up
    (``migrate`` runs the checks before ``make run`` serves), not at the first query."""
    from django.conf import settings

    from accounts.models import Role
    from query import hosts

    problems: list[checks.CheckMessage] = []
    for item in settings.PZLS_QUERY_ALLOWED_HOSTS:
        if item.strip() == "*":
            continue
        try:
            hosts.parse_pattern(item)
        except hosts.HostError as exc:
            problems.append(checks.Error(f"PZLS_QUERY_ALLOWED_HOSTS: {exc}", id="pzls.E401"))
    unknown = sorted(set(settings.PZLS_QUERY_ROLES) - set(Role.values))
    if unknown:
        problems.append(
            checks.Warning(
                f"PZLS_QUERY_ROLES names unknown roles: {', '.join(unknown)}",
                hint=f"Roles are {', '.join(Role.values)}.",
                id="pzls.W402",
            )
        )
    return problems
