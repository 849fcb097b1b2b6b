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
    with pytest.raises(PipelineError, match="--val-fraction 0.1: cannot hold out a stratified 10% of 12 rows"):
        validation_split(np.arange(12) % 6, 0.1, 0)


def test_training_data_maps_the_cache(syn):
    data = load_training_data(syn, 0.1, 0)
    assert not data.X.flags.writeable and data.X.shape == (600, 32) and len(data.rows_val) == 60
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"] and data.provenance["dataset"] == "synthetic"
    assert set(data.splits()) == {"train", "val", "test"}
