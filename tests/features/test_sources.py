"""Which source a run reads, and CIFAR through Keras' cache read with this project's own reader."""
import os
import subprocess

import numpy as np
import pytest
from conftest import PY, ROOT, write_cifar10

from pipeline.features import sources
from pipeline.errors import PipelineError
from pipeline.features.sources import open_dataset


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    return tmp_path / "kh"


def test_cifar_from_keras_cache_is_read_by_the_batch_reader(keras_home, cifar_dir):
    target = os.path.dirname(sources.keras_cifar_folder("cifar10"))
    write_cifar10(target)
    a = open_dataset("cifar10", None, ("train", "test"), None)
    b = open_dataset("cifar10", cifar_dir, ("train", "test"), None)
    assert a.name == "cifar10" and np.array_equal(a.splits["train"].images, b.splits["train"].images)


def test_download_goes_through_keras_and_failure_is_one_line(keras_home, monkeypatch):
    import keras
    calls = []

    def fake_get_file(fname, origin, extract, file_hash):   # what keras.utils.get_file leaves behind
        calls.append((fname, origin, file_hash))
        write_cifar10(str(keras_home / "datasets" / fname))
        return str(keras_home / "datasets" / fname)
    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    ds = open_dataset("cifar10", None, ("test",), None)
    assert len(ds.splits["test"]) == 6 and calls[0][1].endswith("cifar-10-python.tar.gz") and len(calls[0][2]) == 64
    monkeypatch.setattr(keras.utils, "get_file", lambda **k: (_ for _ in ()).throw(Exception("URL fetch failure -- [Errno -3]")))
    with pytest.raises(PipelineError, match=r"could not download cifar100 .*\[Errno -3\].*fetch cifar-100-python.tar.gz elsewhere and pass it as --data-dir \(FeatureConfig's data_dir\)"):
        open_dataset("cifar100", None, ("test",), None)


def test_a_hit_on_the_default_dataset_imports_no_keras(keras_home, tmp_path):
    """The README's promise: a cache hit never imports Keras, also with --dataset cifar10 (no --data-dir)."""
    write_cifar10(os.path.dirname(sources.keras_cifar_folder("cifar10")))
    env = {**os.environ, "PYTHONPATH": ROOT, "KERAS_HOME": str(keras_home)}
    args = ["features", "--cache-dir", str(tmp_path / "c"), "--weights", "random", "--image-size", "32",
            "--precision", "float32", "--splits", "test", "--quiet"]
    subprocess.run([PY, "-m", "pipeline", *args], env=env, check=True, capture_output=True)
    probe = ("import sys; from pipeline.cli import main; code = main(sys.argv[1:]); "
             "print('keras imported' if 'keras' in sys.modules else 'no keras'); sys.exit(code)")
    out = subprocess.run([PY, "-c", probe, *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "cache hit" in out.stderr and out.stdout.strip().endswith("no keras"), out.stderr


def test_limit_and_splits_select_the_dataset(cifar_dir):
    ds = open_dataset("cifar10", cifar_dir, ("test",), 3)
    assert list(ds.splits) == ["test"] and len(ds.splits["test"]) == 3
