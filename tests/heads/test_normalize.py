"""The normalize step: per layer block, in both heads, in head.keras (as a Keras layer) and in Keras."""
import numpy as np
import pytest

from pipeline.heads import SoftmaxHead
from pipeline.heads.keras_file import head_model, read_head, write_head
from pipeline.heads.logreg import LogRegHead
from pipeline.heads.linear import normalized
from pipeline.heads.normalize import blocks_of, check_blocks, transform

BLOCKS = [6, 3, 11]


def data(seed=0, n=300):
    from pipeline.features.synthetic import make_features
    X, y = make_features(n, sum(BLOCKS), 3, seed=seed, separation=0.6)
    X[:, :6] *= 40                                    # blocks on very different scales
    X[:5, 6:9] = 0                                    # a block of zeros stays zeros
    X[:, 9] -= 1.5                                    # and negative values keep their sign
    return X.astype(np.float32), y


@pytest.mark.parametrize("mode", ["l2", "sqrt-l2"])
def test_each_block_has_unit_norm_and_signs_are_kept(mode):
    X, _ = data()
    Z = transform(X.copy(), BLOCKS, mode)
    for a, b in ((0, 6), (6, 9), (9, 20)):                    # 1, or 0 for a block of zeros
        want = (np.abs(X[:, a:b]).sum(1) > 0).astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(Z[:, a:b].astype(np.float64), axis=1), want, rtol=1e-5)
    assert np.all(Z[:5, 6:9] == 0)
    assert np.array_equal(np.sign(Z), np.sign(X))
    if mode == "sqrt-l2":                              # within a block: proportional to sqrt|x|
        r = np.sqrt(np.abs(X[7, 9:])) / np.abs(Z[7, 9:]).clip(1e-30)
        np.testing.assert_allclose(r[np.abs(X[7, 9:]) > 1e-3], r[np.abs(X[7, 9:]) > 1e-3][0], rtol=1e-4)
    assert np.array_equal(transform(X.copy(), BLOCKS, "none"), X)


def test_float16_features_stay_float16_and_blocks_are_checked():
    X, _ = data()
    Z = normalized(X.astype(np.float16), BLOCKS, "l2", rows=np.arange(10, 20))
    assert Z.dtype == np.float16 and Z.shape == (10, 20)
    np.testing.assert_allclose(Z.astype(np.float32), transform(X[10:20].astype(np.float16).astype(np.float32), BLOCKS, "l2"),
                               atol=1e-3)
    assert check_blocks(None, 20) == [20]
    for bad in ([6, 3, 10], [6, -3, 17], [6.5, 2.5, 11]):
        with pytest.raises(ValueError, match="adding up to 20"):
            check_blocks(bad, 20)


def test_blocks_come_from_the_caches_layer_list():
    prov = {"settings": {"layer": "block4_pool:avg2x2,block4_pool:max,block5_pool:flatten", "image_size": 128}}
    assert blocks_of(prov, 2048 + 512 + 8192) == [2048, 512, 8192]
    assert blocks_of(prov, 999) == [999]                               # widths that do not add up: one block
    assert blocks_of({"settings": {"layer": "synthetic"}}, 16) == [16]  # a synthetic cache
    assert blocks_of({}, 16) == [16]
    prov["settings"]["image_size"] = "32+64"                           # several sizes: size after size
    assert blocks_of(prov, 2 * 2048 + 2 * 512 + 512 + 2048) == [2048, 512, 512, 2048, 512, 2048]


@pytest.mark.parametrize("Head,kw", [(SoftmaxHead, {"epochs": 3, "batch_size": 50}), (LogRegHead, {})])
@pytest.mark.parametrize("mode", ["l2", "sqrt-l2"])
def test_a_normalising_head_is_the_head_on_normalised_features(Head, kw, mode):
    X, y = data()
    a = Head(normalize=mode, blocks=BLOCKS, **kw).fit(X[:240], y[:240], X[240:], y[240:])
    pre = transform(X.copy(), BLOCKS, mode)
    b = Head(**kw).fit(pre[:240], y[:240], pre[240:], y[240:])
    np.testing.assert_allclose(a.predict_proba(X[240:]), b.predict_proba(pre[240:]), rtol=1e-4, atol=1e-6)
    assert a.blocks_ == BLOCKS and a.get_params()["normalize"] == mode


@pytest.mark.parametrize("Head,kw", [(SoftmaxHead, {"epochs": 3, "batch_size": 50}), (LogRegHead, {})])
def test_head_keras_applies_the_step_and_loads_in_keras(Head, kw, tmp_path):
    import keras
    X, y = data(1)
    head = Head(normalize="sqrt-l2", blocks=BLOCKS, **kw).fit(X, y)
    path = str(tmp_path / "head.keras")
    write_head(path, **head.head_file())
    read = read_head(path)
    assert read["normalize"] == "sqrt-l2" and read["blocks"] == BLOCKS
    want = head.predict_proba(X[:40])
    np.testing.assert_allclose(np.asarray(head_model(read).predict(X[:40], verbose=0)), want, rtol=1e-4, atol=1e-5)
    import pipeline.heads.layers  # noqa: F401  (registers BlockNormalization, as a user does before load_model)
    loaded = keras.saving.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers][0] == "BlockNormalization"
    np.testing.assert_allclose(np.asarray(loaded.predict(X[:40], verbose=0)), want, rtol=1e-4, atol=1e-5)


def test_a_crafted_normalize_step_is_refused(tmp_path):
    import json
    import shutil
    from conftest import rewrite_zip
    from pipeline.errors import PipelineError
    X, y = data(2)
    head = LogRegHead(normalize="l2", blocks=BLOCKS).fit(X, y)
    path = str(tmp_path / "head.keras")
    write_head(path, **head.head_file())
    def crafted(change_layer):
        bad = str(tmp_path / "bad.keras")
        shutil.copy(path, bad)

        def change(members):
            config = json.loads(members["config.json"])
            change_layer(config["config"]["layers"][1])
            members["config.json"] = json.dumps(config).encode()
        rewrite_zip(bad, change)
        return bad
    for change, needle in ((lambda c: c.update(mode="exec"), "mode"), (lambda c: c.update(blocks=[10, 10, 1]), "blocks"),
                           (lambda c: c.update(blocks=[0, 20]), "blocks"), (lambda c: c.update(blocks="20"), "blocks"),
                           (lambda c: c.update(blocks=[True] * 20), "blocks")):
        with pytest.raises(PipelineError, match=needle):
            read_head(crafted(lambda layer: change(layer["config"])))
    with pytest.raises(PipelineError, match="not a head this project writes"):    # any other module or class
        read_head(crafted(lambda layer: layer.update(module="os")))
    with pytest.raises(PipelineError, match="not a head this project writes"):
        read_head(crafted(lambda layer: layer.update(class_name="Lambda")))


def test_validation_during_training_sees_the_step_once():
    """The per-epoch validation figures are those of the finished head (the step applied once, not
    again to rows already through it: sqrt-l2 twice is not sqrt-l2)."""
    X, y = data(3)
    head = SoftmaxHead(normalize="sqrt-l2", blocks=BLOCKS, epochs=2, batch_size=50, refit=False).fit(X[:240], y[:240],
                                                                                                  X[240:], y[240:])
    acc = float((head.predict(X[240:]) == y[240:]).mean())
    assert head.history_[-1]["val_accuracy"] == pytest.approx(acc)
