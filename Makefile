# The README's two commands: `make demo` (the main job) and `make test`. Each sets up .venv first,
# idempotently (a no-op when pyproject.toml, constraints.txt and the set-up scripts are unchanged):
# `make demo` only the light part it uses (torch and pure-Python packages); `make test` / `make setup`
# also the dense libraries (mmcv ops, mmsegmentation, mmdet, detectron2), which compile for a while.
PY := .venv/bin/python
DEMO := results/demo

# One torch thread for the demo and the tests: on a shared or small machine torch's default (one thread per core) makes each
# training step wait for descheduled OpenMP threads, 4-10x slower under load (docs/demo.md);
# a fixed count also keeps runs bitwise reproducible. Set per command, not exported for the target,
# so the set-up's compilers never see it.
ONE_THREAD := OMP_NUM_THREADS=1

.PHONY: setup setup-light demo test perf gpu-smoke
setup:
	@bash scripts/setup.sh full

setup-light:
	@bash scripts/setup.sh light

# bench/suites/demo.yaml says what the demo measures; it ends with the MAE reconstructions figure
# (the paper's Fig. 2 layout) of the demo's MAE checkpoint on held-out digits. --rerun-changed: after
# an update that changed the demo's recipe, its cells run again instead of keeping the old rows.
demo: setup-light
	@echo "make demo: about 820 CPU-seconds (7 min on 2 idle cores), spread over the cores (+ the light set-up on a fresh machine); interrupt and re-run to continue"
	$(ONE_THREAD) $(PY) -m bench.cli run bench/suites/demo.yaml --out $(DEMO) --rerun-changed
	$(ONE_THREAD) $(PY) -m bench.cli visualize --checkpoint $(DEMO)/work/mae/pretrain/pretrain.pth --images digits --n 6 \
		--out $(DEMO)/mae_reconstructions.png

# one pytest worker per core (pytest-xdist), each test file on one worker (its module fixtures built once)
test: setup
	$(ONE_THREAD) $(PY) -m pytest -q -n auto --dist loadfile

perf: setup-light
	$(PY) -m bench.cli perf pretrain --baseline

# every GPU path once on one GPU, on generated data (docs/scaling.md)
gpu-smoke: setup
	bash scripts/gpu_smoke.sh
