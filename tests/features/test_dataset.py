import numpy as np

from pipeline.features.dataset import Split, stratified_indices


def test_limit_is_stratified_and_deterministic():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(labels, 10)
    assert list(np.bincount(labels[idx])) == [5, 3, 2]
    assert np.array_equal(idx, stratified_indices(labels, 10))
    assert list(idx[:5]) == [0, 1, 2, 3, 4]  # the first images of each class
    assert len(stratified_indices(labels, 7)) == 7
    assert len(stratified_indices(labels, 1000)) == 100


def test_subset_keeps_every_per_image_field():
    s = Split("train", np.array([0, 1, 2]), np.array(["a", "b", "c"], dtype=object), paths=["pa", "pb", "pc"],
              max_pixels=7)
    t = s.subset([2, 0])
    assert list(t.labels) == [2, 0] and list(t.ids) == ["c", "a"] and t.paths == ["pc", "pa"]
    assert t.max_pixels == 7 and len(t) == 2
