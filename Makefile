# Two commands do everything on a fresh machine: `make` (set-up + the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ARGS   ?=
STAMP  := $(VENV)/.installed

.PHONY: all install install-ray features train-head sweep bench test clean
all: features train-head

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

install-ray: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,ray]'

features: $(STAMP)
	$(PY) -m pipeline features $(ARGS)

train-head: $(STAMP)
	$(PY) -m pipeline train-head $(ARGS)

sweep: $(STAMP)
	$(PY) -m pipeline sweep $(ARGS)

bench: $(STAMP)
	$(PY) -m pipeline bench $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
