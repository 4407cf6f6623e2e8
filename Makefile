# The two commands a newcomer needs are `make run` and `make test`.
# `make run` installs only what the server needs (requirements.txt); `make test`
# and `make bench` also what the tests, the benchmark and the tools need
# (requirements-dev.txt), `make test` Chromium too.
.PHONY: setup run test bench clean

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/serve.sh

# Set-up, then the checks, then the tests: checks that need no server (lint,
# types) go between the two lines.
test:
	@bash scripts/setup.sh --test
	@bash scripts/test.sh

bench:
	@bash scripts/setup.sh --dev
	@.venv/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf .venv .pytest_cache .hypothesis

# A longer, random run of the schema-driven fuzz tests than `make test` does
# (PZLS_FUZZ_EXAMPLES per role and mode; a failure prints its seed to reproduce).
.PHONY: fuzz
fuzz:
	@bash scripts/setup.sh --test
	@PZLS_FUZZ_EXAMPLES=$${PZLS_FUZZ_EXAMPLES:-1500} PZLS_FUZZ_RANDOM=1 bash scripts/test.sh -m fuzz
