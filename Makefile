# The two commands of the README: `make run` and `make test`. Both install what they need.
.PHONY: setup run test lint types bench

setup:
	deploy/setup

run: setup
	deploy/demo

test: setup
	.venv/bin/tox -e lint,types,tests

lint: setup
	.venv/bin/tox -e lint

types: setup
	.venv/bin/tox -e types

# On demand, not part of `make test`: ~15 minutes of load on both cores (bench/README.md).
bench: setup
	bench/run
