import numpy as np
import pytest

from pipeline.features import backbone

BLOCK5, FC2 = [("block5_pool", "flatten")], [("fc2", None)]
from pipeline.errors import PipelineError
from pipeline.features.weights import model_weights_sha256


def test_backbone_precision_stays_local_to_the_backbone():
    """A bfloat16 backbone changes no process-wide state: Keras' dtype policy and the random seeds are
    as before, and a model built afterwards computes in float32."""
    import keras
    before_policy, before_np = keras.config.dtype_policy().name, np.random.get_state()[1].copy()
    m = backbone.build_backbone(BLOCK5, 32, "random", 0, "bfloat16")
    assert m.layers[1].dtype_policy.name == "mixed_bfloat16" and m.output["block5_pool"].dtype == "bfloat16"
    assert keras.config.dtype_policy().name == before_policy == "float32"
    assert np.array_equal(np.random.get_state()[1], before_np)
    later = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert later.layers[0].compute_dtype == "float32"
    f32 = backbone.build_backbone(BLOCK5, 32, "random", 0, "float32")
    assert model_weights_sha256(m) == model_weights_sha256(f32)        # same weights, only the compute dtype differs


def test_random_weights_are_reproducible_and_glorot():
    a = backbone.build_backbone(BLOCK5, 32, "random", 3, "float32")
    b = backbone.build_backbone(BLOCK5, 32, "random", 3, "float32")
    c = backbone.build_backbone(BLOCK5, 32, "random", 4, "float32")
    assert model_weights_sha256(a) == model_weights_sha256(b) != model_weights_sha256(c)
    kernel, bias = (np.asarray(w) for w in a.get_layer("block3_conv1").weights)
    limit = np.sqrt(6 / (9 * (128 + 256)))                        # Glorot-uniform of a 3x3, 128 -> 256 conv
    assert kernel.shape == (3, 3, 128, 256) and np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
    assert abs(kernel.std() - limit / np.sqrt(3)) < 0.01 * limit and not bias.any()


def test_fc2_at_224_has_the_notebook_shape():
    m = backbone.build_backbone(FC2, 224, "random", 0, "float32")
    assert tuple(m.output["fc2"].shape) == (None, 4096) and not m.trainable
    assert [layer.name for layer in m.layers][-3:] == ["flatten", "fc1", "fc2"]


def test_weights_file_that_does_not_fit(tmp_path):
    import keras
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = str(tmp_path / "other.weights.h5")
    other.save_weights(path)
    with pytest.raises(PipelineError, match="does not fit VGG19"):
        backbone.build_backbone(BLOCK5, 32, path, 0, "float32")


def test_weights_file_that_fits_loads(tmp_path):
    a = backbone.build_backbone(BLOCK5, 32, "random", 5, "float32")
    path = str(tmp_path / "mine.weights.h5")
    a.save_weights(path)
    b = backbone.build_backbone(BLOCK5, 32, path, 0, "float32")
    assert model_weights_sha256(a) == model_weights_sha256(b)


def test_weights_file_changed_since_keyed_is_refused(tmp_path):
    a = backbone.build_backbone(BLOCK5, 32, "random", 5, "float32")
    path = str(tmp_path / "mine.weights.h5")
    a.save_weights(path)
    with pytest.raises(PipelineError, match="changed since the cache was keyed"):
        backbone.build_backbone(BLOCK5, 32, path, 0, "float32", sha256="0" * 64)
    with pytest.raises(PipelineError, match="is gone"):
        backbone.build_backbone(BLOCK5, 32, str(tmp_path / "gone.weights.h5"), 0, "float32")


def raw_maps(model, x):
    """The backbone's raw layer outputs for uint8 images `x` (fed_pixels without the pooling)."""
    import keras
    from pipeline.features.preprocess import keras_preprocessing
    inp = keras.Input(x.shape[1:], dtype="uint8")
    raw = keras.Model(inp, model(keras_preprocessing(keras, inp))).predict_on_batch(x)
    return {k: np.asarray(v, np.float32) for k, v in raw.items()}


def test_one_pass_gives_every_layer_pooled_as_asked():
    """Several layers and poolings from one forward pass, pooled on the device: each output equals the raw
    layer pooled with NumPy."""
    from pipeline.features import pooling
    specs = pooling.parse_layers("block4_pool:avg2x2,block5_pool,block3_pool:max", "avg")
    model = backbone.build_backbone(specs, 64, "random", 0, "float32")
    assert sorted(model.output) == ["block3_pool", "block4_pool", "block5_pool"]
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    raw = raw_maps(model, x)
    fed = backbone.fed_pixels(model, specs)
    f16, f32 = backbone.Backbone(fed, [(specs[1:2], "float16"), (specs, "float32")])(x)
    assert f16.dtype == np.float16 and f16.shape == (2, 512) and f32.shape == (2, 4 * 512 + 512 + 256)
    b4 = raw["block4_pool"]                                         # 4 x 4 x 512 at 64 px
    np.testing.assert_allclose(f32[:, :512], b4[:, :2, :2].mean((1, 2)), rtol=1e-5)          # top-left quadrant
    np.testing.assert_allclose(f32[:, 3 * 512:4 * 512], b4[:, 2:, 2:].mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(f32[:, -256:], raw["block3_pool"].max((1, 2)), rtol=1e-6)
    np.testing.assert_allclose(f16, raw["block5_pool"].mean((1, 2)), rtol=1e-3)
    views = backbone.Backbone(fed, [(specs, "float32")])(np.stack([x, x[:, :, ::-1]]))[0]
    assert views.shape == (2, 2, f32.shape[1]) and np.allclose(views[:, 0], f32, rtol=1e-5, atol=1e-5)


def test_a_bfloat16_backbone_pools_its_maps_in_float32():
    """The maps are computed in bfloat16 and pooled in float32 on the device: the features are the bfloat16
    maps' means and maxima, not means rounded to bfloat16."""
    from pipeline.features import pooling
    specs = pooling.parse_layers("block3_pool:avg,block3_pool:max", "avg")
    model = backbone.build_backbone(specs, 32, "random", 0, "bfloat16")
    x = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    raw = raw_maps(model, x)["block3_pool"]                  # bfloat16 values, widened
    f = backbone.Backbone(backbone.fed_pixels(model, specs), [(specs, "float32")])(x)[0]
    np.testing.assert_allclose(f[:, :256], raw.mean((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f[:, 256:], raw.max((1, 2)))


def test_a_short_last_batch_is_padded_to_the_batch_size_and_its_padding_dropped():
    """One shape reaches the compiled forward pass (a new one is a new trace or XLA compilation), and the
    short batch's features are its own rows' (as without the padding)."""
    from pipeline.features import pooling
    specs = pooling.parse_layers("block3_pool:avg2x2,block4_pool", "avg")
    fed = backbone.fed_pixels(backbone.build_backbone(specs, 32, "random", 0, "float32"), specs)

    class Recording:
        shapes = []

        def predict_on_batch(self, x):
            self.shapes.append(x.shape)
            return fed.predict_on_batch(x)
    x = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    padded = backbone.Backbone(Recording(), [(specs, "float32")], batch_size=5)
    whole, short = padded(x)[0], padded(x[:3])[0]
    views = padded(np.stack([x[:2], x[2:4]]))[0]
    assert set(Recording.shapes) == {(5, 32, 32, 3)} and len(Recording.shapes) == 4
    alone = backbone.Backbone(fed, [(specs, "float32")])(x[:3])[0]
    assert short.shape == alone.shape == (3, 4 * 256 + 512) and views.shape == (2, 2, 4 * 256 + 512)
    np.testing.assert_allclose(short, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(short, whole[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(views[:, 1], whole[2:4], rtol=1e-5, atol=1e-6)


class _Failing:
    """A model whose backend fails on the batches after the first `good` (a kernel the dtype lacks: good=0)."""
    def __init__(self, good=0):
        self.good = good

    def predict_on_batch(self, x):
        if self.good <= 0:
            raise RuntimeError("Graph execution error:\n\nOperation received an exception:Status: 3, message: could not "
                               "create a primitive descriptor for the convolution\n\t [[{{node conv}}]] [Op:step]")
        self.good -= 1
        return {"part": np.zeros((len(x), 2), np.float32)}


def test_a_first_batch_that_fails_in_half_precision_is_said_as_the_precision_in_one_line(monkeypatch):
    """TensorFlow with oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) has no bfloat16 convolutions: `--precision bfloat16`
    ended in a 135-line traceback from the first batch."""
    monkeypatch.setattr(backbone.pooling, "part_name", lambda *part: "part")
    x = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(PipelineError, match=r"first batch computing in bfloat16 \(RuntimeError: Operation received an "
                       r"exception:Status: 3, message: could not create a primitive .*--precision auto"):
        backbone.Backbone(_Failing(), [([("b",)], "float32")], precision="bfloat16")(x)
    with pytest.raises(RuntimeError, match="primitive descriptor"):      # float32 has nothing to fall back to
        backbone.Backbone(_Failing(), [([("b",)], "float32")], precision="float32")(x)
    later = backbone.Backbone(_Failing(good=1), [([("b",)], "float32")], precision="bfloat16")
    assert later(x)[0].shape == (2, 2)
    with pytest.raises(RuntimeError, match="primitive descriptor"):      # after a good batch: not the precision's
        later(x)
