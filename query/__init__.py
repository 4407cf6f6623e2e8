"""Query: remote SQL (PROTOCOL.md §5)."""
