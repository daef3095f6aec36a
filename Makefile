# The README's two commands: `make demo` (the main job) and `make test`. Both set up .venv first
# (idempotent: a no-op when pyproject.toml, constraints.txt and scripts/setup.sh are unchanged).
PY := .venv/bin/python
DEMO := results/demo

# One torch thread for the demo and the tests: on a shared or small machine torch's default (one thread per core) makes each
# training step wait for descheduled OpenMP threads, 4-10x slower under load (docs/demo_profile.md);
# a fixed count also keeps runs bitwise reproducible.
demo test: export OMP_NUM_THREADS := 1

.PHONY: setup demo test perf
setup:
	@bash scripts/setup.sh

# bench/suites/demo.yaml says what the demo measures; it ends with the MAE reconstructions figure
# (the paper's Fig. 2 layout) of the demo's MAE checkpoint on held-out digits.
demo: setup
	@echo "make demo: about 10 minutes on 2 CPU cores (+ setup on a fresh machine); interrupt and re-run to continue"
	$(PY) -m bench.cli run bench/suites/demo.yaml --out $(DEMO)
	$(PY) -m bench.cli visualize --checkpoint $(DEMO)/work/mae/pretrain/pretrain.pth --images digits --n 6 \
		--out $(DEMO)/mae_reconstructions.png

test: setup
	$(PY) -m pytest -q

perf: setup
	$(PY) -m bench.cli perf pretrain --baseline
