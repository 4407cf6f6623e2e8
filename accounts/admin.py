"""The admin site's user pages, as far as accounts go.

Users page: every account with its role and state at a glance, and bulk
actions (make admin or analyst, disable, enable, sign out everywhere, delete
with all data). User page: role and active flag, a password reset, and the
user's sessions with a revoke button each. The repository columns and the
repository part of the user page are sync's (``sync.admin`` registers a
subclass of this one): accounts knows nothing of repositories.

Tokens are not database rows with the file storage, so everything beyond
the User row is read through services and the token store's interface.
Every rule (the last active admin stays, disabling signs out, a reset
password signs out) lives in ``accounts.services``, shared with the API and
the shell; this module only shows and asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from accounts import services
from accounts.authentication import request_user
from accounts.forms import UserAdminChangeForm, UserAdminCreationForm, UserPasswordResetForm
from accounts.models import Role, User, username_key
from pzls_site.exceptions import PZLSError

admin.site.site_header = "PZLS administration"
admin.site.site_title = "PZLS admin"
admin.site.index_title = "Users and their data"
# PZLS serves no pages at "/", so the admin has no "View site" link to offer.
admin.site.site_url = None
# PZLS has roles, not groups or per-model permissions.
if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserAdminChangeForm
    add_form = UserAdminCreationForm
    change_password_form = UserPasswordResetForm
    change_form_template = "admin/accounts/user/change_form.html"
    change_user_password_template = "admin/accounts/user/change_password.html"

    list_display: tuple[str, ...] = ("username", "role", "is_active", "created_at", "last_login")
    list_filter = ("role", "is_active")
    search_fields = ("username",)
    ordering = ("created_at",)
    filter_horizontal = ()
    readonly_fields = ("id", "created_at", "last_login")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Access", {"fields": ("role", "is_active")}),
        ("Record", {"fields": ("id", "created_at", "last_login")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("username", "role", "password1", "password2")}),)
    actions = ["make_admin", "make_analyst", "disable", "enable", "sign_out_everywhere", "delete_selected"]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[User], search_term: str
    ) -> tuple[QuerySet[User], bool]:
        # Regardless of case on every database, as usernames are unique: on
        # MySQL the username columns compare in binary (ExactCharField), so a
        # search by the folded key, not LIKE on the name.
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(username_key__contains=username_key(term)), False

    # --- actions ---------------------------------------------------------------

    def _apply(
        self, request: HttpRequest, queryset: QuerySet[User], change: Callable[[User], object], done: str
    ) -> None:
        """Apply ``change`` to each user; report how many it worked for and why others were refused."""
        changed = 0
        for user in queryset.order_by("created_at"):
            try:
                change(user)
            except PZLSError as exc:
                self.message_user(request, f"{user.username}: {exc.message}", messages.ERROR)
            else:
                changed += 1
        if changed:
            self.message_user(request, f"{done}: {changed} user{'s' if changed != 1 else ''}.", messages.SUCCESS)

    @admin.action(description="Make selected users admins")
    def make_admin(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self._apply(request, queryset, lambda u: services.user_set_access(user=u, role=Role.ADMIN), "Made admin")

    @admin.action(description="Make selected users analysts")
    def make_analyst(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self._apply(request, queryset, lambda u: services.user_set_access(user=u, role=Role.ANALYST), "Made analyst")

    @admin.action(description="Disable selected users (signs them out)")
    def disable(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self._apply(request, queryset, lambda u: services.user_set_access(user=u, is_active=False), "Disabled")

    @admin.action(description="Enable selected users")
    def enable(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self._apply(request, queryset, lambda u: services.user_set_access(user=u, is_active=True), "Enabled")

    @admin.action(description="Sign selected users out everywhere")
    def sign_out_everywhere(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        revoked = 0
        for user in queryset:
            revoked += services.user_revoke_tokens(user_id=str(user.pk))
        self.message_user(
            request, f"Signed out {queryset.count()} users everywhere ({revoked} sessions revoked).", messages.SUCCESS
        )

    @admin.action(description="Delete selected users with all their data", permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[User]) -> HttpResponse | None:
        # Refuse before Django's confirmation page, not after the admin has confirmed.
        for user in queryset:
            refusal = self._delete_refusal(request, user)
            if refusal:
                self.message_user(request, f"{user.username}: {refusal}", messages.ERROR)
                return None
        return django_delete_selected(self, request, queryset)

    # --- deleting ------------------------------------------------------------------

    def _delete_refusal(self, request: HttpRequest, user: User) -> str | None:
        if user.pk == request.user.pk:
            return "You cannot delete your own account"
        if user.is_staff and not User.objects.filter(role=Role.ADMIN, is_active=True).exclude(pk=user.pk).exists():
            return services.LAST_ACTIVE_ADMIN
        return None

    def has_delete_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        if obj is not None and self._delete_refusal(request, obj):
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        services.user_delete_with_data(user=obj, actor=request_user(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            services.user_delete_with_data(user=user, actor=request_user(request))

    # --- saving the user page ----------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        # Role and active go through the service, which holds the last-admin
        # rule under a lock and signs out a disabled user.
        obj.save(update_fields=["username"])
        services.user_set_access(user=obj, role=obj.role, is_active=obj.is_active)

    # --- the user page: sessions (and what subclasses add) ---------------------------------

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<path:object_id>/sessions/revoke/",
                self.admin_site.admin_view(self.revoke_session_view),
                name="accounts_user_revoke_session",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        user = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if user is not None:
            context.update(self.user_overview(user))
        return super().change_view(request, object_id, form_url, context)

    def user_overview(self, user: User) -> dict[str, Any]:
        """What the user page shows below the form (template context); subclasses add theirs."""
        return {"sessions": services.user_sessions(user_id=str(user.pk))}

    @method_decorator(require_POST)
    def revoke_session_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Revoke one session (by its public id) or, with ``session=all``, every session of the user."""
        user = self.get_object(request, unquote(object_id))
        if user is None:
            raise Http404("No such user")
        if not self.has_change_permission(request, user):
            raise PermissionDenied
        session = request.POST.get("session", "")
        if session == "all":
            count = services.user_revoke_tokens(user_id=str(user.pk))
            self.message_user(request, f"Signed {user.username} out everywhere ({count} sessions revoked).")
        elif session and services.user_revoke_session(user_id=str(user.pk), public_id=session):
            self.message_user(request, f"Session {session} of {user.username} revoked.")
        else:
            self.message_user(
                request, f"No session {session!r} of {user.username}: it was already gone.", messages.WARNING
            )
        return HttpResponseRedirect(reverse("admin:accounts_user_change", args=(user.pk,)))
