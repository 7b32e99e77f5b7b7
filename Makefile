# autoglm-serve: `make up` starts the stack, `make test` runs the tests. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
BUNDLE ?= models/default
# `pip install` runs again only when pyproject.toml changes.
INSTALLED := $(VENV)/.installed
# Written by `autoglm quantize` last, so its presence means a complete checkpoint; it is
# made once (order-only on the bundle), never again because a file changed.
GPTQ := $(BUNDLE)/decoder-gptq/quantize_config.json

.PHONY: up test test-fast env bundle quantize protos lint bench device-check clean

# An imported checkpoint (its bundle.json names an architecture) is quantized only when asked,
# `make quantize BUNDLE=...`: GPTQ of a 9B model takes hours; until then it is served as it is.
IMPORTED := $(shell grep -qs '"architecture"' $(BUNDLE)/bundle.json && echo yes)

up: env bundle $(if $(IMPORTED),,quantize)
	$(BIN)/autoglm up --bundle $(BUNDLE)

test: env
	$(BIN)/pytest -q

# Everything but the tests marked `stack` (those that start processes), one pytest-xdist worker
# per CPU (each with one torch thread): under a minute on two cores.
test-fast: env
	$(BIN)/pytest -q -m "not stack" -n auto

env: $(INSTALLED)

# Open-AutoGLM's client, for the tests, goes in last: it declares Python >= 3.12 but runs on 3.11 (see
# pyproject.toml); a no-op where the extras already installed it.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps --ignore-requires-python phone-agent==0.1.1
	touch $@

bundle: $(BUNDLE)/bundle.json

quantize: $(GPTQ)

# Order-only on the environment: reinstalling packages does not rebuild the bundle.
$(BUNDLE)/bundle.json: | $(INSTALLED)
	$(BIN)/autoglm bundle init $(BUNDLE)

$(GPTQ): | $(BUNDLE)/bundle.json
	$(BIN)/autoglm quantize $(BUNDLE) --bits 4 --group-size 128

protos: env
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos protos/autoglm/v1/*.proto

lint: env
	$(BIN)/ruff check .
	$(BIN)/mypy $(wildcard services gateway bundle quantize bench testkit)

bench: env
	$(BIN)/python -m bench

# The accelerator paths (bitsandbytes, int4 kernels, services on cuda:N); see bench/device_check.
device-check: env
	$(BIN)/python -m bench.device_check

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
