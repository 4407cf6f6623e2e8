# The two commands a newcomer needs are `make run` and `make test`.
# `make run` installs only what the server needs (requirements.txt); `make test`
# and `make bench` also what the tests, the benchmark and the tools need
# (requirements-dev.txt), `make test` Chromium too.
.PHONY: setup run test lint format bench clean fuzz

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/serve.sh

# The static checks (ruff and mypy, see scripts/lint.sh) come first: a lint or
# type error fails `make test` before the suite starts.
test:
	@bash scripts/setup.sh --test
	@bash scripts/lint.sh
	@bash scripts/test.sh

# The static checks alone.
lint:
	@bash scripts/setup.sh --dev
	@bash scripts/lint.sh

# Applies ruff's formatting and import order; it changes no code otherwise.
format:
	@bash scripts/setup.sh --dev
	@$${PZLS_VENV:-.venv}/bin/ruff check --select I --fix .
	@$${PZLS_VENV:-.venv}/bin/ruff format .

bench:
	@bash scripts/setup.sh --dev
	@.venv/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf .venv .pytest_cache .hypothesis .mypy_cache .ruff_cache

# A longer, random run of the schema-driven fuzz tests than `make test` does
# (PZLS_FUZZ_EXAMPLES per role and mode; a failure prints its seed to reproduce).
fuzz:
	@bash scripts/setup.sh --test
	@PZLS_FUZZ_EXAMPLES=$${PZLS_FUZZ_EXAMPLES:-1500} PZLS_FUZZ_RANDOM=1 bash scripts/test.sh -m fuzz
