# The two front-door commands are `make demo` and `make test`; both set up a fresh machine first.
.PHONY: setup demo test lint down clean

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/lakeward demo

test: setup
	.venv/bin/pytest -q

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

down:
	.venv/bin/lakeward demo --down

clean: down
	rm -rf .lakeward
