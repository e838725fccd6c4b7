# The two set-up commands of the README. Both create .venv/ on first use.
.PHONY: setup demo test lint

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/curate demo

test: setup
	.venv/bin/python -m pytest -q --durations=15 -n auto --dist loadfile

lint: setup
	.venv/bin/ruff check curate tests benchmarks scripts
