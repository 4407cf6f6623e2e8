"""Forms of the admin site's user pages.

They validate with the same rules as the API (``accounts.services``), so an
admin cannot create in the browser an account the API would have refused:
usernames unique regardless of case, passwords of at least 6 characters, and
never a server without an active admin.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.forms import AdminPasswordChangeForm, BaseUserCreationForm, UserChangeForm, UsernameField
from django.core.exceptions import ValidationError

from accounts import services
from accounts.models import Role, User, username_key
from pzls_site.exceptions import PZLSError


def _clean_username(value: str, *, instance: User | None) -> str:
    try:
        value = services.validate_username(value)
    except PZLSError as exc:
        raise ValidationError(exc.message) from None
    taken = User.objects.filter(username_key=username_key(value))
    if instance is not None and instance.pk is not None:
        taken = taken.exclude(pk=instance.pk)
    if taken.exists():
        raise ValidationError("Username already taken")
    return value


def _clean_password(value: str) -> str:
    try:
        return services.validate_password(value)
    except PZLSError as exc:
        raise ValidationError(exc.message) from None


class UserAdminChangeForm(UserChangeForm):
    """The user page: username, role and active flag; the password only through its own page."""

    # Not UserChangeForm.Meta's subclass: its fields is "__all__", which typing holds to a string.
    class Meta:
        model = User
        fields = ("username", "password", "role", "is_active")
        field_classes = {"username": UsernameField}

    def clean_username(self) -> str:
        return _clean_username(self.cleaned_data["username"], instance=self.instance)

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if self.instance.pk is not None and "role" in cleaned and "is_active" in cleaned:
            stored = User.objects.get(pk=self.instance.pk)
            try:
                services.user_check_access_change(user=stored, role=cleaned["role"], is_active=cleaned["is_active"])
            except PZLSError as exc:
                raise ValidationError(exc.message) from None
        return cleaned


class UserAdminCreationForm(BaseUserCreationForm):
    """The add-user page: username, role and a password typed twice."""

    class Meta(BaseUserCreationForm.Meta):
        model = User
        fields = ("username", "role")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"].initial = Role.ANALYST
        self.fields["password1"].help_text = f"At least {services.PASSWORD_MIN_LENGTH} characters."

    def clean_username(self) -> str:
        return _clean_username(self.cleaned_data["username"], instance=None)

    def clean_password1(self) -> str:
        return _clean_password(self.cleaned_data["password1"])


class UserPasswordResetForm(AdminPasswordChangeForm):
    """Django's admin password form, held to the API's password rule.

    PZLS has no other way to log in than a password, so the choice Django
    offers to disable password authentication is left out (disable the
    account instead). Saving signs the user out everywhere.
    """

    def __init__(self, user: User, *args: Any, **kwargs: Any) -> None:
        super().__init__(user, *args, **kwargs)
        self.fields.pop("usable_password", None)
        self.fields["password1"].required = True
        self.fields["password2"].required = True
        self.fields[
            "password1"
        ].help_text = f"At least {services.PASSWORD_MIN_LENGTH} characters. Saving signs the user out of every session."

    def clean_password1(self) -> str:
        return _clean_password(self.cleaned_data["password1"])

    def save(self, commit: bool = True) -> User:
        services.user_set_password(user=self.user, password=self.cleaned_data["password1"])
        return self.user
