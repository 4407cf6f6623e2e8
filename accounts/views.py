"""Account endpoints (PROTOCOL.md §2) and the admin API's user deletion (§6).

The admin API's users list shows each user's repository, so it is sync's
(``sync.views.AdminUsersView``); ``user_json`` and ``IsAdmin`` serve it too.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.authentication import request_token_digest, request_user
from accounts.models import User
from pzls_site.clock import iso
from pzls_site.requests import client_ip, json_object
from pzls_site.schema import NO_AUTH, PROTECTED, WITH_BODY, body, errors, ok


def user_json(user: User) -> dict[str, Any]:
    """The protocol's user object: never a hash, never a token."""
    return {"id": str(user.pk), "username": user.username, "role": user.role, "createdAt": iso(user.created_at)}


def _signed_in(token: str, user: User) -> Response:
    """The answer to a registration or a login: the new token and the user."""
    return Response({"token": token, "user": user_json(user)})


class IsAdmin(BasePermission):
    message = "Admin role required"

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return isinstance(user, User) and user.is_admin


class RegisterView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Create an account (the first one is admin) and log in",
        auth=NO_AUTH,
        request=body("Registration"),
        responses={
            200: ok("TokenAndUser"),
            **errors(
                *WITH_BODY,
                403,
                409,
                429,
                e403="Registration is closed.",
                e409="Username taken.",
                e429="Too many logins and registrations from this address; Retry-After says when to try again.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        body = json_object(request)
        return _signed_in(
            *services.user_register(
                username=body.get("username"), password=body.get("password"), client_ip=client_ip(request)
            )
        )


class LoginView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Log in",
        auth=NO_AUTH,
        request=body("Credentials"),
        responses={
            200: ok("TokenAndUser"),
            **errors(*WITH_BODY, 401, 403, 429, e401="Invalid username or password.", e403="Account disabled."),
        },
    )
    def post(self, request: Request) -> Response:
        body = json_object(request)
        return _signed_in(
            *services.user_login(
                username=body.get("username"), password=body.get("password"), client_ip=client_ip(request)
            )
        )


class LogoutView(APIView):
    @extend_schema(summary="Revoke this token", request=None, responses={200: ok("Success"), **errors(*PROTECTED)})
    def post(self, request: Request) -> Response:
        services.user_logout(user=request_user(request), digest=request_token_digest(request))
        return Response({"success": True})


class MeView(APIView):
    @extend_schema(summary="The caller's account", responses={200: ok("Me"), **errors(*PROTECTED)})
    def get(self, request: Request) -> Response:
        return Response({"user": user_json(request_user(request))})


class ChangePasswordView(APIView):
    @extend_schema(
        summary="Change the password; every other token of the user is revoked",
        request=body("PasswordChange"),
        responses={
            200: ok("Success"),
            **errors(*WITH_BODY, *PROTECTED, e403="Wrong current password, or the account is disabled."),
        },
    )
    def post(self, request: Request) -> Response:
        body = json_object(request)
        services.user_change_password(
            user=request_user(request),
            current_password=body.get("currentPassword"),
            new_password=body.get("newPassword"),
            keep_digest=request_token_digest(request),
        )
        return Response({"success": True})


class AdminUserView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        summary="Delete a user with their tokens, repository and changelog (admin)",
        responses={
            200: ok("Success"),
            **errors(
                400,
                *PROTECTED,
                404,
                409,
                e400="You cannot delete your own account.",
                e404="No user with that id.",
                e409="The last active admin cannot be deleted.",
            ),
        },
    )
    def delete(self, request: Request, user_id: str) -> Response:
        services.user_delete(actor=request_user(request), user_id=user_id)
        return Response({"success": True})
