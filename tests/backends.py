"""The backends the contract suites run against. A new backend joins by being listed here."""

TOKEN_BACKENDS = [
    "accounts.backends.json_file.JSONFileTokenStore",
]

REPOSITORY_BACKENDS = [
    "sync.backends.json_file.JSONFileRepositoryStore",
]
