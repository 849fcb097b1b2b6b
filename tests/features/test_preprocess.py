import numpy as np
import pytest

from pipeline.features.preprocess import INTERPOLATION, preprocess, upscale


@pytest.mark.parametrize("interp", sorted(INTERPOLATION))
def test_upscale_any_size_to_square(interp):
    imgs = [np.full((32, 32, 3), 200, np.uint8), np.zeros((45, 37, 3), np.uint8)]
    out = upscale(imgs, 64, interp)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8 and (out[0] == 200).all()


def test_preprocess_is_vgg19s_caffe_mode():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 255  # pure red
    x = preprocess([img], 32, "cubic")
    # BGR order, ImageNet means subtracted: blue, green, red = 0-103.939, 0-116.779, 255-123.68
    np.testing.assert_allclose(x[0, 0, 0], [-103.939, -116.779, 131.32], atol=1e-3)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_preprocessing_inside_the_model_is_the_host_arithmetic_exactly(precision):
    """Stage one sends uint8 pixels; the model's own float32 layers turn them into exactly what the host
    preprocessing gave (bit for bit), whatever dtype the backbone computes in."""
    import keras

    from pipeline.features.preprocess import keras_preprocessing
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    inp = keras.Input((16, 16, 3), dtype="uint8")
    model = keras.Model(inp, keras_preprocessing(keras, inp))
    got = np.asarray(model.predict_on_batch(pixels))
    assert got.dtype == np.float32 and np.array_equal(got, preprocess(list(pixels), 16, "cubic"))
