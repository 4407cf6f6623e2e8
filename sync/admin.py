"""Each user's repository on the admin site's user pages.

accounts' ``UserAdmin`` shows accounts only; sync, which keeps the
repositories, registers this subclass in its place: the users page gains
repository version, record count and last sync per user, and the user page
the repository summary and the newest changelog entries (its template fills
the ``user_data`` block of accounts' user page). Django imports the admin
modules in INSTALLED_APPS order, so accounts' registration comes first.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.template.defaultfilters import filesizeformat

from accounts.admin import UserAdmin
from accounts.models import User
from pzls_site.exceptions import PZLSError
from sync import services
from sync.backends import RepositorySummary

CHANGELOG_SHOWN = 50


def _summary(user: User) -> RepositorySummary | None:
    """The user's repository summary, read once per row (three columns use it)."""
    row = vars(user)
    if "_pzls_summary" not in row:
        try:
            row["_pzls_summary"] = services.repository_summary(user_id=str(user.pk))
        except PZLSError:
            row["_pzls_summary"] = None
    return row["_pzls_summary"]


class RepositoryUserAdmin(UserAdmin):
    change_form_template = "admin/sync/user_change_form.html"
    list_display = (*UserAdmin.list_display, "repository_version", "record_count", "last_sync")

    # --- users page columns --------------------------------------------------

    @admin.display(description="repo version")
    def repository_version(self, user: User) -> Any:
        summary = _summary(user)
        return summary.version if summary else "?"

    @admin.display(description="records")
    def record_count(self, user: User) -> Any:
        summary = _summary(user)
        return summary.records if summary else "?"

    @admin.display(description="last sync")
    def last_sync(self, user: User) -> Any:
        summary = _summary(user)
        if summary is None:
            return "?"
        return summary.last_sync or self.get_empty_value_display()

    # --- the user page: repository and changelog ---------------------------------

    def user_overview(self, user: User) -> dict[str, Any]:
        overview = super().user_overview(user)
        user_id = str(user.pk)
        try:
            summary = services.repository_summary(user_id=user_id)
            repository = services.repository_load(user_id=user_id)
            page = services.repository_changes(user_id=user_id, since=0)
        except PZLSError:
            overview["repository_error"] = "The repository could not be read; the server log has the details."
            return overview
        overview.update(
            repository=summary,
            repository_size=filesizeformat(summary.data_size_bytes),
            repository_stores=sorted((name, len(records)) for name, records in repository.data.items()),
            changelog=[
                {
                    **entry,
                    "added_count": len(entry.get("added") or []),
                    "modified_count": len(entry.get("modified") or []),
                }
                for entry in reversed(page.entries[-CHANGELOG_SHOWN:])
            ],
            changelog_total=page.pending,
        )
        return overview


admin.site.unregister(User)
admin.site.register(User, RepositoryUserAdmin)
