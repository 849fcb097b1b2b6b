"""Stage one on two Keras backends: the same images give the same features to float rounding, each
backend's cache is its own file, and the provenance says which backend made it."""
import os
import subprocess
from importlib.util import find_spec

import numpy as np
import pytest
from conftest import PY, ROOT

from pipeline.features.cache import load_cache, read_provenance


@pytest.mark.skipif(find_spec("jax") is None, reason="JAX not installed (make installs it with the dev extra)")
def test_tensorflow_and_jax_features_agree(cifar_dir, tmp_path):
    args = ["-m", "pipeline", "features", "--data-dir", cifar_dir, "--splits", "test", "--weights", "random",
            "--image-size", "64", "--layer", "block4_pool:avg2x2,block5_pool", "--precision", "float32", "--quiet",
            "--cache-dir", str(tmp_path)]
    paths = {}
    for backend in ("tensorflow", "jax"):
        proc = subprocess.run([PY, *args], env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        paths[backend] = proc.stdout.strip().splitlines()[-1]
    assert paths["tensorflow"] != paths["jax"]                                   # each backend its own cache
    tf, jx = (load_cache(paths[b])["test"][0] for b in ("tensorflow", "jax"))
    assert tf.shape == jx.shape and np.abs(tf).max() > 0
    # float32 convolutions summed in another order: agreement to ~1e-5 of the features' scale
    np.testing.assert_allclose(jx, tf, rtol=1e-4, atol=1e-4 * np.abs(tf).max())
    for backend, path in paths.items():
        meta = read_provenance(path)
        assert meta["versions"]["backend"] == backend and meta["extraction"]["device"] == f"{backend} on cpu:0"
        assert ("backend" in meta["key_payload"]) == (backend != "tensorflow")      # TensorFlow keys as before
