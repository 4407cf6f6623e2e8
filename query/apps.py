"""Query: safe remote SQL on PostgreSQL and MySQL/MariaDB for Pazator's pipelines."""

from django.apps import AppConfig


class QueryConfig(AppConfig):
    name = "query"
