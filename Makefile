# Every target does its own set-up on a fresh machine: venv, install, offline data.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= .cache/data
# Wheels of the analysis install's dependencies, for the offline clean-venv install test.
WHEELHOUSE ?= .cache/wheelhouse
export GLA_DATA_DIR := $(abspath $(DATA))
# Two cores: keep every thread pool at one thread per worker process.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export POLARS_MAX_THREADS ?= 2
# No pip cache: torch's CUDA wheels would be copied into it (several GB on a small disk).
export PIP_NO_CACHE_DIR := 1

.PHONY: install data wheelhouse browser demo test lint bench docs clean

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

# The runtime dependencies of a plain `pip install gla-pipeline` (no extras), at the
# versions this venv runs, downloaded once here so that tests/test_wheel_install.py can
# install the built wheel into a fresh venv with --no-index (no network at test time).
$(WHEELHOUSE)/.complete: pyproject.toml constraints.txt | $(BIN)/gla
	mkdir -p $(WHEELHOUSE)
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > $(WHEELHOUSE)/requirements.txt
	$(BIN)/pip list --format=freeze --exclude-editable > $(WHEELHOUSE)/versions.txt
	$(BIN)/pip download -q -d $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt -c $(WHEELHOUSE)/versions.txt
	touch $@

wheelhouse: $(WHEELHOUSE)/.complete

# Headless Chromium for the report rendering test.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: data
	$(BIN)/gla demo

test: data browser wheelhouse
	$(BIN)/python -m pytest

# The reference pages generated from the code (docs/config.md, docs/cli.md, the
# result-table part of docs/store.md); tests/test_docs.py fails when they are stale.
docs: install
	$(BIN)/python -m gla.pipeline.docgen docs

lint: install
	$(BIN)/ruff check .

bench: data
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .cache demo-store
