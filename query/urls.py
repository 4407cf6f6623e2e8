"""Query API URLs; a trailing slash is accepted as the original's router did."""

from django.urls import re_path

from query import views

urlpatterns = [
    re_path(r"^query/?$", views.QueryView.as_view()),
]
