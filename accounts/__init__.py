"""PZLS accounts: users, tokens and authentication (PROTOCOL.md §2)."""
