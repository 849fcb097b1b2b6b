import numpy as np
import pytest

from pipeline import backbone as bb
from pipeline.config import PipelineError


def test_precision_resolution():
    assert bb.resolve_precision("bfloat16") == "bfloat16"
    assert bb.resolve_precision("auto") in ("float32", "bfloat16", "float16")


def test_weights_identity_is_cheap_and_specific(tmp_path):
    r0, r1 = bb.weights_identity("random", 0, "fc2"), bb.weights_identity("random", 1, "fc2")
    assert r0 != r1 and r0["kind"] == "random" and "keras" in r0 and "backend" in r0
    assert bb.weights_identity("imagenet", 0, "fc2")["file"] == "vgg19_weights_tf_dim_ordering_tf_kernels.h5"
    p = tmp_path / "w.h5"
    p.write_bytes(b"abc")
    assert bb.weights_identity(str(p), 0, "fc2")["sha256"].startswith("ba7816bf")


def test_random_weights_are_reproducible():
    a = bb.build_backbone("block5_pool", 32, "random", 3, "float32")
    b = bb.build_backbone("block5_pool", 32, "random", 3, "float32")
    assert bb.weights_sha256(a) == bb.weights_sha256(b)


def test_fc2_at_224_has_the_notebook_shape():
    m = bb.build_backbone("fc2", 224, "random", 0, "float32")
    assert tuple(m.output.shape) == (None, 4096) and not m.trainable
    assert [layer.name for layer in m.layers][-3:] == ["flatten", "fc1", "fc2"]


def test_weights_file_that_does_not_fit(tmp_path):
    import keras
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = str(tmp_path / "other.weights.h5")
    other.save_weights(path)
    with pytest.raises(PipelineError, match="does not fit VGG19"):
        bb.build_backbone("block5_pool", 32, path, 0, "float32")


def test_weights_file_that_fits_loads(tmp_path):
    a = bb.build_backbone("block5_pool", 32, "random", 5, "float32")
    path = str(tmp_path / "mine.weights.h5")
    a.save_weights(path)
    b = bb.build_backbone("block5_pool", 32, path, 0, "float32")
    assert bb.weights_sha256(a) == bb.weights_sha256(b)


def test_imagenet_offline_names_the_file(monkeypatch, tmp_path):
    import keras
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.vgg19.file_utils.get_file", offline, raising=False)
    with pytest.raises(PipelineError) as e:
        bb.build_backbone("fc2", 224, "imagenet", 0, "float32")
    msg = str(e.value)
    assert "vgg19_weights_tf_dim_ordering_tf_kernels.h5" in msg and "--weights PATH" in msg
    assert str(tmp_path / "models") in msg and "\n" not in msg


def test_backbone_callable_casts_to_store_dtype():
    m = bb.Backbone(bb.build_backbone("block5_pool", 32, "random", 0, "float32"), "float16")
    out = m(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 512) and out.dtype == np.float16
