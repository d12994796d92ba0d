# fedsim: every target sets the project up on first use (.venv with the tested versions of
# constraints.txt; pyproject.toml only gives lower bounds).
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
SCENARIO ?= scenarios/default.yaml
OUT      ?= results/$(basename $(notdir $(SCENARIO)))
RESULTS  ?= results/concurrency

.PHONY: setup simulate test bench clean plots experiment

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e ".[train,ray,dev,tune]"
	touch $(STAMP)

simulate: $(STAMP)
	$(VENV)/bin/fedsim run $(SCENARIO) --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_resources.py
	$(PY) benchmarks/bench_behaviour.py
	$(PY) benchmarks/bench_optimize.py

plots: $(STAMP)
	$(VENV)/bin/fedsim plot $(RESULTS)

# optimised routing and concurrency against AsyncSGD, every setting at its own tuned step size,
# real training (docs/optimization.md, "The accuracy experiment"); EXPERIMENT_ARGS adds flags
# (python analysis/experiment.py --help), e.g. EXPERIMENT_ARGS="--seeds 5 --models mlp"
experiment: $(STAMP)
	$(PY) analysis/experiment.py --workers 2 --out results/experiment $(EXPERIMENT_ARGS)

clean:
	rm -rf results .pytest_cache
