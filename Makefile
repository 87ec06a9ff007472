# recbandit — the front door. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= recbandit-data
PROTO_OUT := server/_proto

.DEFAULT_GOAL := help
.PHONY: help install test demo serve bench bench-quality protos check-protos export-log evaluate mlflow-ui clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install recbandit with its dev tools

test: $(STAMP)  ## run every test (installs first when needed)
	$(PY) -m pytest -q

demo: $(STAMP)  ## start a server on embedded defaults and drive a simulated storefront through it
	$(VENV)/bin/recbandit demo

serve: $(STAMP)  ## serve on port 50051 with the data directory DATA (default recbandit-data)
	$(VENV)/bin/recbandit serve --data-dir $(DATA)

bench: $(STAMP)  ## serving benchmark against the gRPC ceiling (plaintext and TLS), the event log's bytes per decision, the edge under abuse, then embeddings
	$(PY) -m server.bench
	$(PY) -m server.bench_log
	$(PY) -m server.bench_scale
	$(PY) -m server.bench_edge
	$(PY) -m training.bench_embeddings
	$(PY) -m server.bench_ann

bench-quality: $(STAMP)  ## every exploration algorithm and peer against the oracle (recbandit's on 3 seeds); then portraits in a world with history
	$(PY) -m training.bench_quality
	$(PY) -m training.bench_quality --world history --out build/bench-quality/history

export-log: $(STAMP)  ## write the joined event log of DATA (default recbandit-data) to DATA/events.jsonl
	$(VENV)/bin/recbandit export-log --data-dir $(DATA) --out $(DATA)/events.jsonl

evaluate: $(STAMP)  ## replay candidate policies on the log of DATA (default recbandit-data), track them in MLflow, register the best
	$(VENV)/bin/recbandit evaluate --data-dir $(DATA)

mlflow-ui: $(STAMP)  ## open the MLflow UI on the tracking store of DATA (default recbandit-data; http://127.0.0.1:5000)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(DATA))/mlflow.db

protos: $(STAMP)  ## regenerate the gRPC modules from protos/
	$(PY) -m grpc_tools.protoc -I$(PROTO_OUT)=protos \
		--python_out=. --pyi_out=. --grpc_python_out=. \
		protos/recbandit/v1/recbandit.proto

check-protos: $(STAMP)  ## fail if the committed gRPC modules differ from what protos/ generates
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -I$(PROTO_OUT)=protos \
		--python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp \
		protos/recbandit/v1/recbandit.proto && \
	for f in recbandit_pb2.py recbandit_pb2.pyi recbandit_pb2_grpc.py; do \
		cmp -s $$tmp/$(PROTO_OUT)/recbandit/v1/$$f $(PROTO_OUT)/recbandit/v1/$$f || \
		{ echo "$(PROTO_OUT)/recbandit/v1/$$f is stale: run 'make protos'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated modules match protos/"

clean:  ## remove the virtualenv and caches (keeps data directories)
	rm -rf $(VENV) .pytest_cache *.egg-info
