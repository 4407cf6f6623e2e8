"""Account and admin API URLs; a trailing slash is accepted as the original's router did."""

from django.urls import re_path

from accounts import views

urlpatterns = [
    re_path(r"^auth/register/?$", views.RegisterView.as_view()),
    re_path(r"^auth/login/?$", views.LoginView.as_view()),
    re_path(r"^auth/logout/?$", views.LogoutView.as_view()),
    re_path(r"^auth/me/?$", views.MeView.as_view()),
    re_path(r"^auth/change-password/?$", views.ChangePasswordView.as_view()),
    re_path(r"^admin/users/(?P<user_id>[^/]+)/?$", views.AdminUserView.as_view()),
]
