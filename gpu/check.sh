#!/usr/bin/env bash
# The one prepared GPU check (make gpu-check): on a machine with a GPU and one Python that holds JAX or
# PyTorch (TensorFlow not needed), install what stage one still lacks from the wheels carried in
# gpu/wheels (make gpu-wheels, on a machine with the package index), then run `pipeline gpu-check`.
# Results: $OUT (default data/gpu-check)/gpu-check.json and .md. Extra arguments go to gpu-check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
backend=${KERAS_BACKEND:-$($PY -c 'import importlib.util as u; print(next((b for b in ("jax", "torch") if u.find_spec(b)), "tensorflow"))')}
missing=$($PY -c '
import importlib.util as u
need = {"keras": "keras", "cv2": "opencv-python-headless", "h5py": "h5py", "tqdm": "tqdm", "numpy": "numpy"}
print(" ".join(pkg for mod, pkg in need.items() if u.find_spec(mod) is None))')
if [ -n "$missing" ]; then
  echo "gpu-check: installing $missing from gpu/wheels" >&2
  $PY -m pip install --quiet --no-index --find-links gpu/wheels $missing
fi
echo "gpu-check: backend $backend; $(nvidia-smi -L 2>/dev/null | head -1 || echo 'no nvidia-smi')" >&2
KERAS_BACKEND=$backend PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} exec $PY -m pipeline gpu-check --out-dir "${OUT:-data/gpu-check}" "$@"
