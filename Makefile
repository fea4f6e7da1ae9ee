# pgvision: `make demo` runs the demo on a throwaway server, `make test` the suite.
# Both set up everything first; every step is idempotent and quick when nothing changed.

PG_MAJOR   ?= 15
PG_CONFIG  ?= /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config
# The version is kept in one place, default_version in extension/pgvision.control; build.py
# reads it, and each Python package gets it as a _version.py written from it (below).
VERSION    := $(shell python3 extension/build.py --print-version)
VERSION_PY := python_udf/pgvision_runtime/_version.py client/pgvision_client/_version.py
# The runtime folder PL/Python loads: versioned, outside /root, readable by postgres.
RUNTIME_PATH ?= /usr/local/lib/pgvision/$(VERSION)
DEV_VENV   ?= build/venv
MODEL_DIR  := build/model
PYTEST_ARGS ?=

.PHONY: all deps runtime extension model install dev test parity demo demo-sql bench bench-venv clean

all: install

# apt packages, pgvector, and the runtime folder's virtual environment
deps:
	PG_MAJOR=$(PG_MAJOR) bash scripts/deps.sh
	install -d -m 755 $(RUNTIME_PATH) $(RUNTIME_PATH)/models
	bash scripts/venv.sh $(RUNTIME_PATH)/venv -r python_udf/requirements.txt

# each package's __init__ and pyproject.toml ([tool.setuptools.dynamic]) read it from here
$(VERSION_PY): extension/pgvision.control
	printf '# written by make from extension/pgvision.control; do not edit\n__version__ = "%s"\n' '$(VERSION)' > $@

# the runtime package with its pinned dependencies
runtime: deps python_udf/pgvision_runtime/_version.py
	bash scripts/venv.sh $(RUNTIME_PATH)/venv --no-deps ./python_udf
	chmod -R a+rX $(RUNTIME_PATH)

extension: deps
	$(MAKE) -s -C extension PG_CONFIG=$(PG_CONFIG) RUNTIME_PATH=$(RUNTIME_PATH) install

dev: deps $(VERSION_PY)
	bash scripts/venv.sh $(DEV_VENV) -r requirements-dev.txt
	bash scripts/venv.sh $(DEV_VENV) --no-deps -e ./python_udf
	bash scripts/venv.sh $(DEV_VENV) --no-deps -e ./client

# the default model, built from the published weights with numpy + onnx, its 8-bit
# versions, quantized with onnxruntime on photos from Debian's packages, and its variant
# with features of length 1 (models/variants.py; the same graph, linked)
INT8_MODELS = efficientnet_lite0_int8 efficientnet_lite0_int8_normalized
model: dev
	$(DEV_VENV)/bin/python models/build.py --out $(MODEL_DIR)
	install -m 644 $(MODEL_DIR)/efficientnet_lite0.onnx $(MODEL_DIR)/efficientnet_lite0.json $(RUNTIME_PATH)/models/
	install -m 644 $(MODEL_DIR)/imagenet_classes.txt $(RUNTIME_PATH)/models/efficientnet_lite0.labels.txt
	$(DEV_VENV)/bin/python models/quantize.py --model-dir $(MODEL_DIR)
	# (an older install linked efficientnet_lite0_int8_normalized's files to the int8 model's:
	# install would write through the links)
	for v in $(INT8_MODELS); do \
	    for f in $$v.onnx $$v.labels.txt; do \
	        if [ -L $(RUNTIME_PATH)/models/$$f ]; then rm -f $(RUNTIME_PATH)/models/$$f; fi; \
	    done; \
	    install -m 644 $(MODEL_DIR)/$$v.onnx $(MODEL_DIR)/$$v.json $(RUNTIME_PATH)/models/ && \
	    install -m 644 $(MODEL_DIR)/imagenet_classes.txt $(RUNTIME_PATH)/models/$$v.labels.txt || exit 1; \
	done
	$(DEV_VENV)/bin/python models/variants.py --model-dir $(MODEL_DIR)
	install -m 644 $(MODEL_DIR)/efficientnet_lite0_normalized.json $(RUNTIME_PATH)/models/
	ln -sfn efficientnet_lite0.onnx $(RUNTIME_PATH)/models/efficientnet_lite0_normalized.onnx
	ln -sfn efficientnet_lite0.labels.txt $(RUNTIME_PATH)/models/efficientnet_lite0_normalized.labels.txt

install: deps runtime extension model

test: install dev
	PGVISION_MODEL_DIR=$(MODEL_DIR) PG_CONFIG=$(PG_CONFIG) \
	  $(DEV_VENV)/bin/python -m pytest tests --basetemp=/tmp/pgvision-pytest $(PYTEST_ARGS)

# Live parity of the built model with torch (CPU build 2.13.0, about 1 GB; not part of
# `make test`, which checks parity against the committed torch reference fixture).
TORCH_VENV ?= build/torch-venv
parity: model
	bash scripts/venv.sh $(TORCH_VENV) -r requirements-dev.txt torch==2.13.0
	bash scripts/venv.sh $(TORCH_VENV) --no-deps efficientnet-lite-pytorch==0.1.0
	PGVISION_MODEL_DIR=$(MODEL_DIR) $(TORCH_VENV)/bin/python -m pytest tests/test_model_build.py \
	  --noconftest -p no:cacheprovider -v -rs $(PYTEST_ARGS)

# the main job: `pgvision demo` on a throwaway server (Fashion-MNIST sample, searches,
# precision@10, contact sheet); demo-sql runs the seed SQL scripts in sql/ instead.
# SERVE=1 keeps it running and serves the demo's table (`pgvision serve`, it prints the URL;
# SERVE_PORT, default 8000) until ctrl-c.
DEMO_ARGS ?=
SERVE ?=
SERVE_PORT ?= 8000
demo: install dev
	PG_CONFIG=$(PG_CONFIG) $(DEV_VENV)/bin/pgvision demo $(DEMO_ARGS) $(if $(SERVE),--serve --serve-port $(SERVE_PORT))

demo-sql: install
	PG_CONFIG=$(PG_CONFIG) bash scripts/demo.sh

# Benchmarks (BENCHMARKS.md): each bench/*.py prints its figures and writes
# bench/results/NAME.{json,md,png}; bench/report.py assembles BENCHMARKS.md from them.
# BENCH runs a subset, e.g. `make bench BENCH="inference memory"`; BENCH_ARGS go to each script.
BENCH ?= inference ingest search quality preprocess memory int8 projection copies shards
BENCH_ARGS ?=
bench-venv: dev
	bash scripts/venv.sh $(DEV_VENV) -r requirements-dev.txt -r requirements-bench.txt

bench: install bench-venv
	set -e; for b in $(BENCH); do \
	  echo "== bench/$$b.py"; PG_CONFIG=$(PG_CONFIG) $(DEV_VENV)/bin/python bench/$$b.py $(BENCH_ARGS); \
	done
	$(DEV_VENV)/bin/python bench/report.py

clean:
	$(MAKE) -s -C extension clean
	rm -rf build $(VERSION_PY)
