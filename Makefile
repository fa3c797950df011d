# dgmbench: `make bench` sets up .venv and runs the default pipeline; `make test` sets up .venv, lints (ruff), checks
# the import layers (lint-imports, contracts in pyproject.toml) and runs the tests.
PYTHON ?= python3
VENV := .venv
# On the development and CI machines MNIST sits in ../shared; elsewhere set DGMBENCH_DATA_ROOT yourself
# (or run `dgmbench download mnist`).
ifeq ($(DGMBENCH_DATA_ROOT),)
ifneq ($(wildcard ../shared/data/mnist/MNIST/raw),)
export DGMBENCH_DATA_ROOT := $(abspath ../shared/data/mnist)
endif
endif
STAMP := $(VENV)/.installed

.PHONY: venv bench test clean-results

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade-strategy only-if-needed -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/local

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest

clean-results:
	rm -rf results/runs results/metrics.csv reports/tables
