.PHONY: install format lint type test bench
install:
	python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'
format:
	.venv/bin/ruff format skialith_langgraph skialith tests benchmarks
lint:
	.venv/bin/ruff check skialith_langgraph skialith tests benchmarks
type:
	.venv/bin/mypy
test:
	.venv/bin/python -m pytest
bench:
	.venv/bin/python -m benchmarks
