# The two commands a newcomer needs are `make run` and `make test`.
.PHONY: setup run test bench clean

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/serve.sh

test:
	@bash scripts/setup.sh --test
	@bash scripts/test.sh

bench: setup
	@.venv/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf .venv .pytest_cache .hypothesis
