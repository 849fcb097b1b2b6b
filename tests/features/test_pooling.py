import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.features import pooling


def test_specs_parse_with_the_default_pooling_and_write_it_out():
    layers = pooling.parse_layers("block4_pool:avg2x2, block5_pool,fc2", "avg")
    assert layers == [("block4_pool", "avg2x2"), ("block5_pool", "avg"), ("fc2", None)]
    assert pooling.canonical(layers) == "block4_pool:avg2x2,block5_pool:avg,fc2" and pooling.needs_top(layers)
    assert pooling.slug(pooling.parse_layers("block4_pool:avg2x2,block5_pool", "flatten")) == "block4_pool-avg2x2+block5_pool"
    assert pooling.feature_dim(pooling.parse_layers("block4_pool:avg2x2,block5_pool", "flatten"), 128) == 2048 + 4 * 4 * 512


@pytest.mark.parametrize("spec,default_pooling,needle", [("block9_pool", "avg", "expected a comma list"),
                                                 ("fc2:avg", "avg", "expected a comma list"),
                                                 ("block5_pool:mean", "avg", "pooling expected one of"),
                                                 ("block5_pool", "sum", "FeatureConfig.pooling: expected one of"),
                                                 ("block5_pool,block5_pool:flatten", "flatten", "twice")])
def test_bad_specs_are_one_line(spec, default_pooling, needle):
    with pytest.raises(PipelineError, match=needle):
        pooling.parse_layers(spec, default_pooling)


def numpy_pool(outputs: dict, layers: list) -> np.ndarray:
    """What each pooling means, in NumPy (float32): the reference for the Keras layers."""
    parts = []
    for name, p in layers:
        x = np.asarray(outputs[name], np.float32)
        if p is None or p == "flatten":
            parts.append(x.reshape(len(x), -1))
        elif p in ("avg", "max"):
            parts.append(x.mean((1, 2)) if p == "avg" else x.max((1, 2)))
        else:                                          # avg2x2: top-left, top-right, bottom-left, bottom-right
            h, w = x.shape[1] // 2, x.shape[2] // 2
            parts += [x[:, :h, :w].mean((1, 2)), x[:, :h, w:].mean((1, 2)), x[:, h:, :w].mean((1, 2)),
                      x[:, h:, w:].mean((1, 2))]
    return np.concatenate(parts, 1)


def test_keras_pooling_equals_numpy_pooling():
    """Stage one's mapper and predict's end-to-end model pool with Keras' own layers as the NumPy reference
    does; keras_parts gives each part under its name, keras_pool them concatenated in the spec's order."""
    import keras
    layers = pooling.parse_layers("block4_pool:avg2x2,block4_pool:max,block5_pool:flatten,block5_pool:avg", "avg")
    rng = np.random.default_rng(0)
    raw = {"block4_pool": rng.normal(size=(3, 5, 5, 8)).astype(np.float32),   # odd size: quadrants 2 and 3 wide
           "block5_pool": rng.normal(size=(3, 2, 2, 8)).astype(np.float32)}
    inputs = {k: keras.Input(v.shape[1:], name=k) for k, v in raw.items()}
    model = keras.Model(inputs, pooling.keras_pool(keras, inputs, layers))
    want = numpy_pool(raw, layers)
    np.testing.assert_allclose(np.asarray(model.predict(raw, verbose=0)), want, rtol=1e-5, atol=1e-6)
    parts = keras.Model(inputs, pooling.keras_parts(keras, inputs, layers)).predict(raw, verbose=0)
    names = [pooling.part_name(*p) for p in layers]         # a dict's order is the backend's (JAX sorts keys)
    assert names == ["block4_pool:avg2x2", "block4_pool:max", "block5_pool:flatten", "block5_pool:avg"]
    assert sorted(parts) == sorted(names)
    np.testing.assert_allclose(np.concatenate([np.asarray(parts[n]) for n in names], 1), want, rtol=1e-5, atol=1e-6)
