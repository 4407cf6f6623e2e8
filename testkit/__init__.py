"""What the test suite and the benchmark share to drive a real PZLS server.

- ``testkit.server``: start servers as ``make run`` does (files or database
  storage, any settings, any number of workers) and stop them all again;
- ``testkit.client``: one HTTP client with the calls Pazator makes
  (register, login, push, pull, ...);
- ``testkit.database``: throwaway PostgreSQL databases for the database storage.

Nothing here imports from ``tests/`` or ``bench/``, nor needs pytest.
"""
