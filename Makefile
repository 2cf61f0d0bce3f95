# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.semisup-installed
# torch is pinned here (not in pyproject) so that pip takes the build that lies on this machine's disk
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/semisup demo

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15 --cov=semisup --cov-branch --cov-report=term-missing:skip-covered

lint: $(STAMP)
	$(VENV)/bin/ruff check semisup tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .coverage runs/demo
