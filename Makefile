# Two commands do everything on a fresh machine: `make` (set-up + the main job) and `make test`.
PYTHON ?= python3
# Keras backend for every command (tensorflow, jax or torch); on a host where nvidia-smi works, `make`
# installs that backend's CUDA build (pipeline/device.py decides the pip extras)
BACKEND ?= $(or $(KERAS_BACKEND),tensorflow)
export KERAS_BACKEND := $(BACKEND)
EXTRAS  = $(shell $(PYTHON) pipeline/device.py extras --backend $(BACKEND))
VENV   := .venv
PY     := $(VENV)/bin/python
ARGS   ?=
STAMP  := $(VENV)/.installed
KERNELS := $(VENV)/.kernels

.PHONY: all install install-ray kernels features caches runs train-head sweep study ensemble bench test clean gpu-wheels gpu-check
all: features train-head

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

install-ray: $(STAMP)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'

# stage two's Numba kernels, compiled once (~1.5 min: float32 and float16 features) and cached next to
# the source; again when it changes
$(KERNELS): pipeline/heads/kernels.py $(STAMP)
	$(PY) -m pipeline.heads.kernels
	touch $(KERNELS)

kernels: $(KERNELS)

features: $(STAMP)
	$(PY) -m pipeline features $(ARGS)

caches: $(STAMP)
	$(PY) -m pipeline caches $(ARGS)

runs: $(STAMP)
	$(PY) -m pipeline runs $(ARGS)

train-head: $(KERNELS)
	$(PY) -m pipeline train-head $(ARGS)

sweep: $(KERNELS)
	$(PY) -m pipeline sweep $(ARGS)

study: $(KERNELS)
	$(PY) -m pipeline study $(ARGS)

ensemble: $(KERNELS)
	$(PY) -m pipeline ensemble $(ARGS)

bench: $(KERNELS)
	$(PY) -m pipeline bench $(ARGS)

# the suite on TensorFlow, then stage one, predict, export and the hidden-layer head again on JAX (a second Keras backend)
SECOND_BACKEND_TESTS := tests/features/test_backbone.py tests/features/test_preprocess.py tests/test_predict.py \
	tests/features/test_extract.py tests/heads/test_hidden.py
test: $(KERNELS)
	$(PY) -m pytest -q
	KERAS_BACKEND=jax $(PY) -m pytest -q -p no:cacheprovider $(SECOND_BACKEND_TESTS) -k "not sigkill and not ray"

# stage one where a GPU is, in one prepared run (gpu/check.sh): on a GPU machine without the package
# index, first `make gpu-wheels` here (for that machine's Python: GPU_PYTHON=3.x) and carry gpu/wheels along
GPU_PYTHON ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
gpu-wheels:   # ~60 MB: within what travels with the tree (numpy is left out: JAX and PyTorch bring it)
	rm -rf gpu/wheels
	$(PYTHON) -m pip download --quiet --only-binary=:all: --python-version $(GPU_PYTHON) -d gpu/wheels \
		keras 'opencv-python-headless<4.11' h5py tqdm
	rm -f gpu/wheels/numpy-*.whl

gpu-check:
	bash gpu/check.sh $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info pipeline/__pycache__ pipeline/*/__pycache__
