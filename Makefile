# pytest-evalchemy: `make test` and `make demo` create their own environments.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Every dependency at its declared lower bound (tools/lower-bounds.txt).
LOWER_VENV ?= .venv-lower

include Makefile.vllm

.PHONY: test lint demo perf clean

$(VENV)/.installed: pyproject.toml
	sh tools/system-deps.sh $(PYTHON) venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --group test -e .
	touch $@

# The package alone (no development group), its dependencies at their lower bounds.
$(LOWER_VENV)/.installed: pyproject.toml tools/lower-bounds.txt
	sh tools/system-deps.sh $(PYTHON) venv
	$(PYTHON) -m venv $(LOWER_VENV)
	$(LOWER_VENV)/bin/pip install -q --upgrade pip
	$(LOWER_VENV)/bin/pip install -q -c tools/lower-bounds.txt -e .
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The vllm-marked tests start the real vLLM (CPU build) on the tiny model; the browser tests need
# Debian's chromium, installed here when missing (as root; otherwise the command to run is printed).
# Then the lower-bound tests again with every dependency at its declared minimum, so a lower
# bound cannot silently go false.
test: lint $(VLLM_VENV)/.installed $(VLLM_VENV)/.hf-reference $(TINY_MODEL)/.stamp $(LOWER_VENV)/.installed
	sh tools/system-deps.sh $(PYTHON) browser
	EVALCHEMY_VLLM_PYTHON=$(abspath $(VLLM_PY)) EVALCHEMY_TINY_MODEL=$(abspath $(TINY_MODEL)) \
		$(BIN)/python -m pytest tests -n 2 --dist loadgroup -q -rs
	$(LOWER_VENV)/bin/python -m pytest tests/test_plugin.py tests/test_dependency_bounds.py \
		-m lower_bounds -n 2 --dist loadgroup -q -rs

# The main job on the built-in tiny model: vLLM on the CPU, the offline benchmarks (and mini_arc
# with the model's chat template), 2 workers.
demo: $(VENV)/.installed $(VLLM_VENV)/.installed $(TINY_MODEL)/.stamp
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=$(abspath .cache/hf) \
		$(BIN)/python -m pytest --evalchemy-serve=$(abspath $(TINY_MODEL)) \
		--evalchemy-vllm-python=$(abspath $(VLLM_PY)) \
		--evalchemy-config=configs/demo_config.json -n 2 -rs

# The performance figures, written to perf/RESULTS.md (~10-15 min; not part of `make test`). The
# real-vLLM row uses what `make test` built (or EVALCHEMY_VLLM_PYTHON / EVALCHEMY_TINY_MODEL)
# and is skipped with a note when neither is there.
perf: $(VENV)/.installed
	EVALCHEMY_VLLM_PYTHON=$${EVALCHEMY_VLLM_PYTHON:-$(abspath $(VLLM_PY))} \
		EVALCHEMY_TINY_MODEL=$${EVALCHEMY_TINY_MODEL:-$(abspath $(TINY_MODEL))} \
		$(BIN)/python perf/run_perf.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LOWER_VENV) .cache results models
