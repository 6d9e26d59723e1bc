# Two commands for a user:  make run  (set up, then run the pipeline)   make test  (set up, then the tests)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

# No telemetry from the stack, ever.
export DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint bench clean

# torch first and pinned: a loose `torch` requirement pulls several GB of CUDA wheels.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

run: $(BIN)/.installed
	dvc repro
	python -m tasks.summary

test: $(BIN)/.installed
	python -m pytest -q

lint: $(BIN)/.installed
	ruff check .

bench: $(BIN)/.installed
	python -m bench.ingest_encode

clean:
	rm -rf data/raw data/interim data/encoded reports
