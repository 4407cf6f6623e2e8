"""PZLS sync: per-user repositories (PROTOCOL.md §3)."""
