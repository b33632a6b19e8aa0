# Two commands: `make demo` compiles the embedded example, `make test` runs the test suite.
# Both create .venv and install pinned dependencies on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `model torchvision(...)` builds with torchvision's own builders; its wheel pins another torch, so
# it is installed without dependencies next to the pinned CPU torch (see adl/models/torchvision_import.py)
TORCHVISION := torchvision==0.28.0

.PHONY: demo demo-quick demo-fashion demo-onnx demo-hpo test test-fast lint install bench-deps bench-status fashion-mnist clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(TORCHVISION)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# Every pass: nas -> train (L2O, TernGrad) -> amc -> haq -> lower (tuned), about 10 minutes.
demo: $(STAMP)
	$(BIN)/adl compile examples/digits.adl -o build/digits
	$(BIN)/adl data examples/digits.adl --split test -o build/digits.test.npz
	$(BIN)/adl run build/digits --input build/digits.test.npz

# The quick path: a fixed CNN trained and lowered, under a minute.
demo-quick: $(STAMP)
	$(BIN)/adl compile examples/digits_fixed.adl -o build/digits_fixed
	$(BIN)/adl data examples/digits_fixed.adl --split test -o build/digits_fixed.test.npz
	$(BIN)/adl run build/digits_fixed --input build/digits_fixed.test.npz

# Fashion-MNIST (60,000 training and 10,000 test images; Debian's dataset-fashion-mnist, installed
# as root by the fashion-mnist target) through every pass, budgets that bind; see the README.
demo-fashion: $(STAMP) fashion-mnist
	$(BIN)/adl compile examples/fashion.adl -o build/fashion
	$(BIN)/adl data examples/fashion.adl --split test -o build/fashion.test.npz
	$(BIN)/adl run build/fashion --input build/fashion.test.npz --expect-accuracy

# A network brought as an ONNX file: examples/onnx/export.py writes it, the spec compiles it (under a minute).
demo-onnx: $(STAMP)
	$(BIN)/python examples/onnx/export.py
	$(BIN)/adl compile examples/onnx/digits_onnx.adl -o build/digits_onnx

# The training hyperparameters searched by the hpo stage (Optuna TPE, two worker processes), then lowered.
demo-hpo: $(STAMP)
	$(BIN)/adl compile examples/digits_hpo.adl -o build/digits_hpo

test: lint
	$(BIN)/python -m pytest -q --durations=15

# The rules a change must keep: ruff's lint and format check, and the layer contract (docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check --quiet .
	$(BIN)/ruff format --check --quiet .
	$(BIN)/lint-imports --no-cache

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench-deps: $(STAMP) fashion-mnist
	$(BIN)/pip install --quiet --disable-pip-version-check -r bench/requirements.txt

# Fashion-MNIST from Debian's package dataset-fashion-mnist (the `fashion_mnist` source's default folder).
FASHION_MNIST := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null); \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)" >&2; exit 1; \
	fi

# Committed bench/results/*.json measured before the last change to the code they measure (exit 1 if any).
bench-status: $(STAMP)
	$(BIN)/python -m bench.status

clean:
	rm -rf build .pytest_cache
