import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.heads.data import load_training_data, validation_split


def test_validation_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(4), [40, 30, 20, 10])
    train, val = validation_split(y, 0.1, seed=3)
    assert len(val) == 10 and list(np.bincount(y[val])) == [4, 3, 2, 1]
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    assert np.array_equal(val, validation_split(y, 0.1, seed=3)[1]) and not np.array_equal(val, validation_split(y, 0.1, 4)[1])
    assert len(validation_split(y, 0.0, 3)[1]) == 0


def test_too_few_rows_for_a_hold_out_is_one_line():
    with pytest.raises(PipelineError, match="RunOptions.val_fraction: 0.1: cannot hold out a stratified 10% of 12 rows"):
        validation_split(np.arange(12) % 6, 0.1, 0)


def test_training_data_maps_the_cache(syn):
    data = load_training_data(syn, 0.1, 0)
    assert not data.X.flags.writeable and data.X.shape == (600, 32) and len(data.rows_val) == 60
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"] and data.provenance["dataset"] == "synthetic"
    assert set(data.splits()) == {"train", "val", "test"}


def test_views_are_rows_and_validation_never_shares_an_image_with_training(syn_views):
    data = load_training_data(syn_views, 0.2, 0)
    assert data.views == 3 and data.X.shape == (1200, 16) and data.X.dtype == np.float16 and len(data.y) == 1200
    train_images, val_images = set(data.rows_train // 3), set(data.rows_val // 3)
    assert not train_images & val_images and len(val_images) == 80 and len(data.rows_train) == 320 * 3
    assert (data.rows_val % 3 == 0).all() and len(data.splits()["test"][2]) == 100
    proba = np.tile(np.eye(4)[[0, 1, 2]], (100, 1))        # views 0, 1, 2 vote 0, 1, 2: the mean is a tie of 1/3
    assert np.allclose(data.tta(proba, data.splits()["test"][2])[:, :3], 1 / 3)


def test_train_head_reports_test_time_augmentation(syn_views, tmp_path, capsys):
    import json

    from conftest import run_captured
    code, out, err = run_captured(capsys, "train-head", "--cache", syn_views, "--runs-dir", tmp_path, "--name", "r",
                                  "--epochs", "20", "--lr", "0.01")
    m = json.load(open(tmp_path / "r" / "metrics.json"))
    assert code == 0 and m["views"] == 3 and m["test"]["n"] == 100 and m["test"]["tta"]["n"] == 100
    assert m["test"]["tta"]["accuracy"] > 0.5 and "TTA acc" in err
    code, out, err = run_captured(capsys, "sweep", "--cache", syn_views, "--runs-dir", tmp_path, "--name", "s",
                                  "--epochs", "2", "--param", "dropout=0.2,0.5")
    assert code == 0 and "val_tta_accuracy" in open(tmp_path / "s" / "results.csv").readline()


def test_a_training_budget_is_taken_before_the_validation_split():
    """--train-images n: n images of the train split, stratified and seeded, validation carved from
    them, so a head refit on train + validation has seen exactly n images."""
    import numpy as np
    from pipeline.heads.data import split_images
    y = np.repeat(np.arange(5), 200)
    train, val = split_images(y, 0.1, 0, n=500)
    assert len(train) + len(val) == 500 and len(val) == 50 and not set(train) & set(val)
    assert np.bincount(y[np.concatenate([train, val])]).tolist() == [100] * 5            # stratified
    full_train, full_val = split_images(y, 0.1, 0)
    from pipeline.heads.data import validation_split
    assert [a.tolist() for a in (full_train, full_val)] == [a.tolist() for a in validation_split(y, 0.1, 0)]


def test_a_training_budget_beyond_the_split_takes_all_of_it_and_says_so(caplog):
    """--train-images larger than the train split: every image, as without it, and a line saying so (the run's
    train_n records the number used); exactly the split's size says nothing."""
    import numpy as np
    from pipeline.heads.data import split_images
    y = np.repeat(np.arange(5), 200)
    whole = [a.tolist() for a in split_images(y, 0.1, 0)]
    with caplog.at_level("WARNING", logger="pipeline.heads.data"):
        assert [a.tolist() for a in split_images(y, 0.1, 0, n=1000)] == whole and not caplog.records
        assert [a.tolist() for a in split_images(y, 0.1, 0, n=10 ** 20)] == whole
    assert [r.getMessage() for r in caplog.records] == [
        "train_images 100,000,000,000,000,000,000 is more than the 1,000 training images there are; all of them are used"]


def test_only_features_from_a_verified_load_skip_the_heads_finiteness_pass(syn):
    """load_training_data's features passed the cache's own SHA-256 and finiteness check, so the head
    commands run under scikit-learn's assume_finite; TrainingData built any other way keeps the check."""
    import dataclasses

    from sklearn import get_config
    data = load_training_data(syn, 0.1, 0)
    assert data.verified and data.with_train_images(100, 0, 0.1).verified
    with data.checked():
        assert get_config()["assume_finite"]
    assert not get_config()["assume_finite"]            # restored after
    with dataclasses.replace(data, verified=False).checked():
        assert not get_config()["assume_finite"]
