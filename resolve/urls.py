"""Resolve API URLs."""

from django.urls import re_path

from resolve import views

urlpatterns = [
    re_path(r"^resolve/?$", views.ResolveView.as_view()),
]
