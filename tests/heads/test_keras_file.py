import json
import zipfile

import numpy as np
import pytest

from conftest import rewrite_zip, set_layer_class

from pipeline.errors import PipelineError
from pipeline.heads.keras_file import head_model, read_head, write_head


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def parts():
    rng = np.random.default_rng(0)
    return {"kernel": rng.normal(size=(6, 3)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32),
            "dropout": 0.25, "mean": rng.normal(size=6).astype(np.float32),
            "variance": rng.uniform(0.5, 2, size=6).astype(np.float32)}


def test_standardising_head_loads_in_keras_and_means_what_it_says(parts, tmp_path):
    import keras
    write_head(str(tmp_path / "h.keras"), **parts)
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    want = softmax(((x - parts["mean"]) / np.sqrt(parts["variance"])) @ parts["kernel"] + parts["bias"])
    model = keras.saving.load_model(str(tmp_path / "h.keras"))
    assert [type(layer).__name__ for layer in model.layers] == ["Normalization", "Dropout", "Dense"]
    np.testing.assert_allclose(np.asarray(model.predict(x, verbose=0)), want, rtol=1e-5, atol=1e-6)
    got = read_head(str(tmp_path / "h.keras"))
    assert got["dropout"] == 0.25 and all(np.array_equal(got[k], parts[k]) for k in ("kernel", "bias", "mean", "variance"))
    np.testing.assert_allclose(np.asarray(head_model(got).predict(x, verbose=0)), want, rtol=1e-5, atol=1e-6)


rewrite, layer_class = rewrite_zip, set_layer_class


@pytest.mark.parametrize("change,needle", [
    (lambda m: m.update({"extra.py": b"import os"}), "holds ["),
    (lambda m: layer_class(m, 3, "Lambda"), "not a head this project writes"),
    (lambda m: layer_class(m, 0, "TFSMLayer"), "not a head this project writes"),
    (lambda m: m.update({"config.json": b"{not json"}), "not a readable .keras file"),
    (lambda m: m.update({"model.weights.h5": b"garbage"}), "its layers or weights are not a head's"),
    (lambda m: m.update({"model.weights.h5": m["model.weights.h5"].replace(b"SNOD", bytes(4))}),   # h5py: RuntimeError
     "its layers or weights are not a head's"),
])
def test_anything_else_is_refused(parts, tmp_path, change, needle):
    path = str(tmp_path / "h.keras")
    write_head(path, **parts)
    rewrite(path, change)
    with pytest.raises(PipelineError) as e:
        read_head(path)
    assert needle in str(e.value) and "re-run train-head" in str(e.value)


def test_not_a_zip_and_non_finite_weights(parts, tmp_path):
    (tmp_path / "x.keras").write_bytes(b"plain text")
    with pytest.raises(PipelineError, match="not a readable .keras file"):
        read_head(str(tmp_path / "x.keras"))
    write_head(str(tmp_path / "n.keras"), **{**parts, "bias": np.array([0, np.nan, 0], np.float32)})
    with pytest.raises(PipelineError, match="not finite"):
        read_head(str(tmp_path / "n.keras"))


def weights_h5(make) -> bytes:
    import io
    import h5py
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        v = f.create_group("layers/dense/vars")
        make(v)
    return buf.getvalue()


def refused(path, needle):
    with pytest.raises(PipelineError) as e:
        read_head(path)
    assert needle in str(e.value) and "re-run train-head" in str(e.value), str(e.value)


def test_weights_from_elsewhere_or_too_big_are_refused_before_reading(parts, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(18, np.float32).tobytes())
    path = str(tmp_path / "h.keras")
    cases = {
        "external storage": lambda v: (v.create_dataset("0", (6, 3), "f4", external=[(str(secret), 0, 72)]),
                                       v.create_dataset("1", data=np.zeros(3, np.float32))),
        "not in the file": lambda v: (v.create_dataset("0", (10 ** 5, 10 ** 4), "f4"),
                                      v.create_dataset("1", data=np.zeros(3, np.float32))),
        "expected ['layers/dense/vars/0'": lambda v: v.create_dataset("0", data=np.zeros((6, 3), np.float32)),
        "at most": lambda v: (v.create_dataset("0", data=np.zeros((1, 3), np.float32)),
                              v.create_dataset("1", data=np.zeros((3, 3), np.float32))),
    }
    for needle, make in cases.items():
        write_head(path, **parts)
        rewrite(path, lambda m: m.update({"model.weights.h5": weights_h5(make)}))
        refused(path, needle)


def test_zip_bombs_and_deep_json_are_refused(parts, tmp_path):
    path = str(tmp_path / "h.keras")
    write_head(path, **parts)
    rewrite_zip(path, lambda m: m.update({"model.weights.h5": m["model.weights.h5"] + bytes(300 << 20)}),
                zipfile.ZIP_DEFLATED)                                     # 300 MB of zeros in ~300 KB
    refused(path, "model.weights.h5 declares")
    write_head(path, **parts)
    rewrite(path, lambda m: m.update({"config.json": b"[" * 100_000 + b"]" * 100_000}))
    refused(path, "nested too deeply")


@pytest.mark.parametrize("change,needle", [
    ({"mean": np.full(6, np.inf, np.float32)}, "non-finite mean"),
    ({"variance": -np.ones(6, np.float32)}, "negative"),
    ({"dropout": 1.5}, "dropout rate is 1.5"),
])
def test_impossible_numbers_are_refused(parts, tmp_path, change, needle):
    write_head(str(tmp_path / "h.keras"), **{**parts, **change})
    refused(str(tmp_path / "h.keras"), needle)


def _set_layer_config(members, i, key, value):
    cfg = json.loads(members["config.json"])
    cfg["config"]["layers"][i]["config"][key] = value
    members["config.json"] = json.dumps(cfg).encode()


def _swap_weights(path, parts, **changed):
    """Rewrite path's model.weights.h5 as write_head would for parts updated by `changed`."""
    other = path + ".other"
    write_head(other, **{**parts, **changed})
    with zipfile.ZipFile(other) as z:
        weights = z.read("model.weights.h5")
    rewrite(path, lambda m: m.update({"model.weights.h5": weights}))


@pytest.fixture
def hidden_parts(parts):
    rng = np.random.default_rng(2)
    return {**parts, "hidden_kernel": rng.normal(size=(6, 4)).astype(np.float32),
            "hidden_bias": rng.normal(size=4).astype(np.float32), "kernel": rng.normal(size=(4, 3)).astype(np.float32)}


def test_a_hidden_layer_head_loads_in_keras_and_means_what_it_says(hidden_parts, tmp_path):
    import keras
    p = hidden_parts
    write_head(str(tmp_path / "h.keras"), **p)
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    h = np.maximum(((x - p["mean"]) / np.sqrt(p["variance"])) @ p["hidden_kernel"] + p["hidden_bias"], 0)
    want = softmax(h @ p["kernel"] + p["bias"])
    model = keras.saving.load_model(str(tmp_path / "h.keras"))
    assert [type(layer).__name__ for layer in model.layers] == ["Normalization", "Dropout", "Dense", "Dropout", "Dense"]
    np.testing.assert_allclose(np.asarray(model.predict(x, verbose=0)), want, rtol=1e-5, atol=1e-6)
    got = read_head(str(tmp_path / "h.keras"))
    assert all(np.array_equal(got[k], p[k]) for k in ("hidden_kernel", "hidden_bias", "kernel", "bias"))
    np.testing.assert_allclose(np.asarray(head_model(got).predict(x, verbose=0)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change,needle", [
    (lambda m: _set_layer_config(m, 3, "activation", "linear"), "not a head this project writes"),
    (lambda m: _set_layer_config(m, 4, "rate", 0.9), "not a head this project writes"),
    (lambda m: set_layer_class(m, 4, "GaussianNoise"), "not a head this project writes"),
])
def test_a_hidden_layer_head_unlike_ours_is_refused(hidden_parts, tmp_path, change, needle):
    path = str(tmp_path / "h.keras")
    write_head(path, **hidden_parts)
    rewrite(path, change)
    with pytest.raises(PipelineError, match=needle):
        read_head(path)


def test_hidden_layer_weights_that_do_not_fit_together_are_refused(hidden_parts, parts, tmp_path):
    path = str(tmp_path / "h.keras")
    write_head(path, **hidden_parts)
    _swap_weights(path, hidden_parts, kernel=np.ones((5, 3), np.float32))        # 5 inputs after 4 hidden units
    with pytest.raises(PipelineError, match="inconsistent shapes"):
        read_head(path)
    write_head(path, **hidden_parts)
    _swap_weights(path, parts)                                                    # one Dense where two belong
    with pytest.raises(PipelineError, match="model.weights.h5 refused: holds datasets"):
        read_head(path)


def test_a_head_is_read_only_as_the_bytes_its_run_hashed(parts, tmp_path):
    """read_head(path, sha256): the file's bytes must hash to it (one read: the bytes checked are the bytes
    parsed); another well-formed head of the same shape is refused; None reads any (an older run)."""
    import hashlib
    path = tmp_path / "h.keras"
    write_head(str(path), **parts)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(read_head(str(path), digest)["kernel"], parts["kernel"])
    write_head(str(path), **{**parts, "kernel": parts["kernel"][:, ::-1].copy()})
    with pytest.raises(PipelineError, match="it changed after its run wrote it"):
        read_head(str(path), digest)
    assert np.array_equal(read_head(str(path))["kernel"], parts["kernel"][:, ::-1])
