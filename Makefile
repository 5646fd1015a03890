# The two commands of the README. Both run the same idempotent set-up first.
.PHONY: setup up test lint

setup:
	@bash scripts/setup.sh

up: setup
	.venv/bin/unirec up

test: setup
	.venv/bin/python -m pytest -q --durations=15

lint: setup
	.venv/bin/ruff check .
