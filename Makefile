# Two commands do everything on a fresh machine: `make` (set-up + the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ARGS   ?=
STAMP  := $(VENV)/.installed
KERNELS := $(VENV)/.kernels

.PHONY: all install install-ray kernels features train-head sweep study bench test clean
all: features train-head

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

install-ray: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,ray]'

# stage two's Numba kernels, compiled once (~40 s: float32 and float16 features) and cached next to
# the source; again when it changes
$(KERNELS): pipeline/heads/kernels.py $(STAMP)
	$(PY) -m pipeline.heads.kernels
	touch $(KERNELS)

kernels: $(KERNELS)

features: $(STAMP)
	$(PY) -m pipeline features $(ARGS)

train-head: $(KERNELS)
	$(PY) -m pipeline train-head $(ARGS)

sweep: $(KERNELS)
	$(PY) -m pipeline sweep $(ARGS)

study: $(KERNELS)
	$(PY) -m pipeline study $(ARGS)

bench: $(KERNELS)
	$(PY) -m pipeline bench $(ARGS)

test: $(KERNELS)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info pipeline/__pycache__ pipeline/*/__pycache__
