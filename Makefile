# Every target does its own set-up on a fresh machine: venv, install, offline data.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= .cache/data
export GLA_DATA_DIR := $(abspath $(DATA))
# Two cores: keep every thread pool at one thread per worker process.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export POLARS_MAX_THREADS ?= 2

.PHONY: install data browser demo test lint bench clean

$(BIN)/gla: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision: the exact pair these machines serve from local disk (constraints.txt).
	$(BIN)/pip install -q -c constraints.txt -e '.[extract,dev]'
	# animal-mnist ships its images as package data; its own deps (tensorflow) are not needed.
	$(BIN)/pip install -q --no-deps 'animal-mnist==0.4'
	touch $(BIN)/gla

install: $(BIN)/gla

# Real labelled images, fetched at set-up time only: Debian's Fashion-MNIST package,
# unpacked without root.
$(DATA)/fashion-mnist/train-images-idx3-ubyte.gz:
	bash .ci/fetch-fashion-mnist.sh $(DATA)

data: install $(DATA)/fashion-mnist/train-images-idx3-ubyte.gz

# Headless Chromium for the report rendering test.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: data
	$(BIN)/gla demo

test: data browser
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: data
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .cache demo-store
