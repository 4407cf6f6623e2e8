"""Resolve API URLs."""

urlpatterns: list = []
