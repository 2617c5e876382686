# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean runners runners-flink

$(STAMP): setup.py
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.demo

test: $(STAMP) runners
	infra/ensure_services.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

# Beam's real runners at the SDK's version, into .cache/runners (docs/runners.md): Prism needs Go,
# the Flink job server needs Maven. Idempotent; nothing is downloaded when a pipeline runs.
runners: $(STAMP)
	$(PY) -m infra.runners install

runners-flink: $(STAMP)
	$(PY) -m infra.runners install --no-prism --flink

bench: $(STAMP)
	$(PY) -m pytest tests/benchmarks -m benchmark -s

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo_output
