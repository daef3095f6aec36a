# The README's two commands: `make demo` (the main job) and `make test`. Both set up .venv first
# (idempotent: a no-op when pyproject.toml, constraints.txt and scripts/setup.sh are unchanged).
PY := .venv/bin/python

.PHONY: setup demo test perf
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m bench.cli run bench/suites/demo.yaml --out results/demo

test: setup
	$(PY) -m pytest -q

perf: setup
	$(PY) -m bench.cli perf pretrain --baseline
