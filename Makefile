# Two commands for a user:  make run  (set up, then run the pipeline)   make test  (set up, then the tests)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

# No telemetry from the stack, ever.
export DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint bench flow serve compare clean

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

# On a quiet machine. aim_overhead reads what `make run` wrote (encoded data, gates).
bench: $(BIN)/.installed
	python -m bench.ingest_encode
	python -m bench.aim_overhead

# The pipeline as a Prefect flow, one task per DVC stage (no server needed: Prefect starts an ephemeral one).
#   make flow ARGS='--no-search'            make flow ARGS="-S retrain.dropout=0.1 --experiment drop-0.1"
flow: $(BIN)/.installed
	python -m flows.aim_pipeline $(ARGS)

# The scheduled deployments of prefect.yaml (nightly retrain, weekly research), served from this process.
serve: $(BIN)/.installed
	python -m flows.serve

# A grid of configs as DVC experiments, then their test AUC side by side (reports/compare/).
#   make compare GRID="-S 'search.grda.c=0.02,0.05'" TARGET=retrain JOBS=1
GRID ?= -S 'search.grda.c=0.02,0.05' -S 'retrain.dropout=0.1,0.2'
compare: $(BIN)/.installed
	python -m tasks.compare $(GRID) $(if $(TARGET),--target $(TARGET)) --jobs $(or $(JOBS),1)

clean:
	rm -rf data/raw data/interim data/encoded reports
