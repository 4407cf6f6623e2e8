"""Resolve: entity resolution (PROTOCOL.md §4)."""
