"""PostgreSQL for the test run: Django's backend, with a test database that can always be dropped."""
