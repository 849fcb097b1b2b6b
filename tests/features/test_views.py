import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.features.views import canonical, parse_views, render


def test_view_specs():
    assert parse_views("none") == ["orig"] and parse_views("flip,shift2") == ["orig", "flip", "shift0", "shift1"]
    assert canonical(parse_views("shift3, flip")) == "flip,shift3" and canonical(parse_views("none")) == "none"
    for bad in ("mirror", "shift0", "flip,flip", "shift2,shift3", "none,flip"):
        with pytest.raises(PipelineError, match="FeatureConfig.views"):
            parse_views(bad)


def test_views_are_flips_and_seeded_shifts_of_the_small_image():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    names = parse_views("flip,shift3")
    a = render(images, names, 0.125, 7, "train", 10)
    assert [len(v) for v in a] == [5] * 5 and a[0][2] is images[2]
    assert np.array_equal(a[1][0], images[0][:, ::-1])
    for k in (2, 3, 4):
        assert all(v.shape == (32, 32, 3) for v in a[k]) and not all(np.array_equal(v, o) for v, o in zip(a[k], images))
    again = render(images[2:], names, 0.125, 7, "train", 12)           # another batching: the same views per row
    assert all(np.array_equal(x, y) for k in range(5) for x, y in zip(a[k][2:], again[k]))
    other = render(images, names, 0.125, 8, "train", 10)
    assert not all(np.array_equal(x, y) for x, y in zip(a[2], other[2]))
    shifted = a[2][0]                                                  # a shift by at most 4 px keeps most pixels
    best = min(np.abs(np.roll(images[0], (dy, dx), (0, 1)).astype(int) - shifted)[4:-4, 4:-4].sum()
               for dy in range(-4, 5) for dx in range(-4, 5) for images[0] in (images[0], images[0][:, ::-1]))
    assert best == 0
