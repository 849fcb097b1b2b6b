import os

import pytest

from pipeline.features import weights
from pipeline.errors import PipelineError


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    os.makedirs(tmp_path / "kh" / "models")
    return tmp_path / "kh"


def test_identity_of_random_weights_is_how_they_are_drawn():
    r0, r1 = weights.weights_identity("random", 0, True), weights.weights_identity("random", 1, True)
    assert r0 != r1 and r0 == {"kind": "random", "seed": 0, "init": weights.RANDOM_INIT}


def test_imagenet_identity_is_the_files_sha256_not_its_name(keras_home, tmp_path):
    """Another file under Keras' standard name is another identity (so never a cache hit)."""
    path = keras_home / "models" / weights.KERAS_WEIGHTS_FILE[False]
    path.write_bytes(b"abc")
    a = weights.weights_identity("imagenet", 0, False, str(tmp_path / "c"))
    assert a == {"kind": "imagenet", "file": weights.KERAS_WEIGHTS_FILE[False], "sha256": weights.file_sha256(str(path))}
    assert a["sha256"].startswith("ba7816bf")
    path.write_bytes(b"abd")
    assert weights.weights_identity("imagenet", 0, False, str(tmp_path / "c"))["sha256"] != a["sha256"]


def test_imagenet_offline_names_the_file(keras_home, monkeypatch):
    import keras

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(PipelineError) as e:
        weights.imagenet_file(True)
    msg = str(e.value)
    assert "vgg19_weights_tf_dim_ordering_tf_kernels.h5" in msg and "weights=PATH" in msg and "[Errno -3]" in msg
    assert str(keras_home / "models") in msg and "\n" not in msg


def test_imagenet_download_goes_through_keras_with_its_checksum(keras_home, monkeypatch):
    import keras
    seen = {}

    def fake(name, url, cache_subdir, file_hash):
        seen.update(name=name, url=url, sub=cache_subdir, md5=file_hash)
        return "/somewhere/" + name
    monkeypatch.setattr(keras.utils, "get_file", fake)
    assert weights.imagenet_file(False) == "/somewhere/" + weights.KERAS_WEIGHTS_FILE[False]
    assert seen == {"name": weights.KERAS_WEIGHTS_FILE[False], "url": weights.KERAS_WEIGHTS_URL + weights.KERAS_WEIGHTS_FILE[False],
                    "sub": "models", "md5": "253f8cb515780f3b799900260a226db6"}
