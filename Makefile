# Quick start: `make demo` and `make test` work on a fresh machine (Python 3.11+ and make).
# `make demo` installs blockipc alone (the demo needs nothing else); `make test`, `lint`
# and `bench` install the dev set on top. Each install has its own stamp, redone only
# when pyproject.toml changes, so `make demo` then `make test` works and a repeated run
# installs nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
VENV_STAMP := $(VENV)/.created
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP  := $(VENV)/.installed-dev

.PHONY: install demo test bench soak fuzz lint docs clean

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

$(BASE_STAMP): pyproject.toml | $(VENV_STAMP)
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(VENV_STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(DEV_STAMP)

demo: $(BASE_STAMP)
	$(BIN)/python examples/demo.py

# two workers (pytest-xdist), one per core of the 2-core machines this runs on
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2

bench: $(DEV_STAMP)
	$(BIN)/python -m blockipc bench --suite all --plot docs/img
	$(BIN)/python -m blockipc bench --suite cache
	$(BIN)/python benchmarks/bench_remote.py
	$(BIN)/python benchmarks/bench_floor.py
	$(BIN)/python benchmarks/bench_patterns.py
	$(BIN)/python benchmarks/bench_inbox.py
	$(BIN)/python benchmarks/bench_stats.py --plot docs/img/growth.png
	$(BIN)/python benchmarks/bench_scale.py --plot docs/img/scale.png

# chaos soak: 8 worker processes doing every operation with checksums while random ones
# are kill -9ed and restarted, 10 minutes; then no leak (benchmarks/soak.py --help)
soak: $(DEV_STAMP)
	$(BIN)/python benchmarks/soak.py --seconds 600 --workers 8

# 100,000 malformed, random and mutated frames at a live coordinator while a good client
# verifies its work (benchmarks/fuzz.py --help)
fuzz: $(DEV_STAMP)
	$(BIN)/python benchmarks/fuzz.py --frames 100000

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

# the documentation site (mkdocs-material + mkdocstrings, from the docstrings) into site/;
# --strict: a broken link or reference fails the build (tests/test_docs.py does the same)
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
