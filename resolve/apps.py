"""Resolve: Jaro-Winkler entity resolution over a user's people and organisations."""

from django.apps import AppConfig


class ResolveConfig(AppConfig):
    name = "resolve"
