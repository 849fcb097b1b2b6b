"""predict's end-to-end model agrees with the head applied to the cached features."""
import os

import numpy as np
import pytest
from conftest import SMALL, run_cli

from pipeline.cache import load_cache


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    from conftest import write_image_folders
    root = tmp_path_factory.mktemp("p")
    data = write_image_folders(str(root / "imgs"), per_class=8)
    assert run_cli("features", "--data-dir", data, "--cache-dir", root / "c", "--precision", "float32", *SMALL) == 0
    cache = [os.path.join(root / "c", f) for f in os.listdir(root / "c") if f.endswith(".h5")][0]
    return root, data, cache


def train(root, cache, head, name):
    args = ["--head", head, "--epochs", "3", "--val-fraction", "0.2"] if head == "softmax" else ["--head", head]
    assert run_cli("train-head", "--cache", cache, "--runs-dir", root / "runs", "--name", name, *args) == 0
    return str(root / "runs" / name)


@pytest.mark.parametrize("head", ["softmax", "logreg"])
def test_predict_agrees_with_head_on_cached_features(cached, capsys, head):
    root, data, cache = cached
    run = train(root, cache, head, f"run-{head}")
    X, y, meta = load_cache(cache)["test"]
    paths = [os.path.join(data, i.decode() if isinstance(i, bytes) else i) for i in meta["ids"]]
    capsys.readouterr()
    assert run_cli("predict", "--run", run, *paths, "--export", root / f"{head}.keras") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(paths)
    from pipeline.predict import head_as_keras, read_run
    info = read_run(run)
    want = np.asarray(head_as_keras(head, info["head_file"]).predict(X, verbose=0))
    names = meta["class_names"]
    for line, p, w in zip(lines, paths, want):
        path, cls, prob = line.split("\t")
        assert path == p and cls == names[int(w.argmax())]
        assert float(prob) == pytest.approx(float(w.max()), abs=2e-4)
    if head == "logreg":  # the folded logreg equals scikit-learn's own probabilities
        import joblib
        np.testing.assert_allclose(want, joblib.load(info["head_file"]).predict_proba(X), atol=1e-4)
    import keras
    exported = keras.saving.load_model(str(root / f"{head}.keras"))
    from pipeline.preprocess import upscale
    from pipeline.sources import decode_image
    x = upscale([decode_image(p) for p in paths], 32, "cubic").astype(np.float32)
    np.testing.assert_allclose(np.asarray(exported.predict(x, verbose=0)), want, atol=1e-5)   # weights kept


def test_predict_bad_inputs(cached, tmp_path, capsys):
    root, data, cache = cached
    run = train(root, cache, "logreg", "run-bad")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert run_cli("predict", "--run", run, tmp_path / "bad.png") == 1
    assert "cannot read image" in capsys.readouterr().err
    assert run_cli("predict", "--run", run, tmp_path / "missing.png") == 1
    assert "no such file" in capsys.readouterr().err
    os.remove(os.path.join(run, "head.joblib"))
    assert run_cli("predict", "--run", run, tmp_path / "bad.png") == 1
    assert "missing head.joblib" in capsys.readouterr().err
    assert run_cli("predict", "--run", tmp_path, tmp_path / "bad.png") == 1
    assert "no metrics.json" in capsys.readouterr().err
