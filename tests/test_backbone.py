import numpy as np
import pytest

from pipeline import backbone as bb
from pipeline.config import PipelineError


@pytest.mark.parametrize("cuda,flags,want", [
    (True, {"avx2", "avx512_bf16"}, "float16"),       # a CUDA GPU wins
    (False, {"avx2", "fma", "avx512f"}, "float32"),    # no native bf16 (bf16 would be emulated, slower)
    (False, {"avx512f", "avx512_bf16"}, "bfloat16"),   # AVX512-BF16
    (False, {"amx_tile", "amx_bf16"}, "bfloat16"),     # AMX
])
def test_auto_precision_on_each_kind_of_machine(cuda, flags, want):
    assert bb.resolve_precision("auto", cuda=cuda, flags=flags) == want
    assert bb.resolve_precision("float32", cuda=cuda, flags=flags) == "float32"   # an explicit choice stays


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nflags\t: other\n")
    assert bb.cpu_flags(str(tmp_path / "cpuinfo")) == {"fpu", "avx2", "avx512_bf16"}
    assert bb.cpu_flags(str(tmp_path / "missing")) == set()


def test_backbone_precision_stays_local_to_the_backbone():
    """A bfloat16 backbone changes no process-wide state: Keras' dtype policy and the random seeds are
    as before, and a model built afterwards computes in float32."""
    import keras
    before_policy, before_np = keras.config.dtype_policy().name, np.random.get_state()[1].copy()
    m = bb.build_backbone("block5_pool", 32, "random", 0, "bfloat16")
    assert m.layers[1].dtype_policy.name == "mixed_bfloat16" and m.output.dtype == "bfloat16"
    assert keras.config.dtype_policy().name == before_policy == "float32"
    assert np.array_equal(np.random.get_state()[1], before_np)
    later = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert later.layers[0].compute_dtype == "float32"
    f32 = bb.build_backbone("block5_pool", 32, "random", 0, "float32")
    assert bb.weights_sha256(m) == bb.weights_sha256(f32)        # same weights, only the compute dtype differs


def test_weights_identity_is_cheap_and_specific(tmp_path):
    r0, r1 = bb.weights_identity("random", 0, "fc2"), bb.weights_identity("random", 1, "fc2")
    assert r0 != r1 and r0["kind"] == "random" and r0["init"] == bb.RANDOM_INIT
    assert bb.weights_identity("imagenet", 0, "fc2")["file"] == "vgg19_weights_tf_dim_ordering_tf_kernels.h5"
    p = tmp_path / "w.h5"
    p.write_bytes(b"abc")
    assert bb.weights_identity(str(p), 0, "fc2")["sha256"].startswith("ba7816bf")


def test_random_weights_are_reproducible_and_glorot():
    a = bb.build_backbone("block5_pool", 32, "random", 3, "float32")
    b = bb.build_backbone("block5_pool", 32, "random", 3, "float32")
    c = bb.build_backbone("block5_pool", 32, "random", 4, "float32")
    assert bb.weights_sha256(a) == bb.weights_sha256(b) != bb.weights_sha256(c)
    kernel, bias = (np.asarray(w) for w in a.get_layer("block3_conv1").weights)
    limit = np.sqrt(6 / (9 * (128 + 256)))                        # Glorot-uniform of a 3x3, 128 -> 256 conv
    assert kernel.shape == (3, 3, 128, 256) and np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
    assert abs(kernel.std() - limit / np.sqrt(3)) < 0.01 * limit and not bias.any()


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
