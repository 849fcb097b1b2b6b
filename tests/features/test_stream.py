import numpy as np
import pytest

from pipeline.features.stream import BackgroundWriter, extract_range, preparer
from pipeline.features.dataset import Split


def make_split(n=23):
    rng = np.random.default_rng(0)
    return Split("train", np.arange(n) % 3, np.arange(n), images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))


def mean_model(x):
    return x.reshape(len(x), -1, 3).mean(axis=1).astype(np.float32)


def test_every_row_once_in_order_for_any_range():
    split, saved = make_split(), []
    writer = BackgroundWriter(lambda a, b, f: saved.append((a, b, f)))
    t = extract_range(split, 5, 21, mean_model, writer, batch_size=4, prepare=preparer(16, "cubic"), quiet=True)
    assert [(a, b) for a, b, _ in saved] == [(5, 9), (9, 13), (13, 17), (17, 21)]
    assert t["images"] == 16 and t["model_s"] >= 0 and set(t) >= {"read_upscale_s", "wait_input_s", "write_s"}
    from pipeline.features.preprocess import upscale
    want = mean_model(upscale(split.images[5:21], 16, "cubic"))           # the model gets uint8 pixels
    assert np.array_equal(np.concatenate([f for _, _, f in saved]), want)


def test_writer_error_reaches_the_caller():
    def save(a, b, f):
        raise OSError(28, "No space left on device")
    writer = BackgroundWriter(save)
    with pytest.raises(OSError):
        extract_range(make_split(), 0, 23, mean_model, writer, batch_size=4, prepare=preparer(8, "area"), quiet=True)


def test_model_error_still_flushes_finished_batches():
    saved, calls = [], []

    def model(x):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return mean_model(x)
    with pytest.raises(KeyboardInterrupt):
        extract_range(make_split(), 0, 23, model, BackgroundWriter(lambda a, b, f: saved.append((a, b))),
                      batch_size=4, prepare=preparer(8, "nearest"), quiet=True)
    assert saved == [(0, 4), (4, 8)]
