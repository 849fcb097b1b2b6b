import numpy as np

from pipeline.features.cifar_batches import CIFAR10_CLASSES
from pipeline.features.sources import open_dataset
from pipeline.features.synthetic import write_cifar_batches


def test_cifar_batches_read_as_the_official_layout(tmp_path):
    """The benchmarks' random CIFAR-10: the train images spread over the five batches (an uneven count
    too), the test batch, the class names from batches.meta, labels cycling through the classes."""
    root = write_cifar_batches(str(tmp_path / "c"), 23, 7)
    batches = tmp_path / "c" / "cifar-10-batches-py"
    assert sorted(p.name for p in batches.iterdir()) == ["batches.meta", *[f"data_batch_{i}" for i in range(1, 6)], "test_batch"]
    data = open_dataset("cifar10", root, ("train", "test"), None)
    train, test = data.splits["train"], data.splits["test"]
    assert train.images.shape == (23, 32, 32, 3) and test.images.shape == (7, 32, 32, 3)
    assert list(data.class_names) == list(CIFAR10_CLASSES)
    assert set(np.unique(train.labels)) == set(range(10))


def test_cifar_batches_are_as_long_as_official_ones_and_read_under_the_readers_cap(tmp_path, monkeypatch):
    """Written as upstream's Python 2 pickles hold pixels (raw, not Python 3's protocol-2 latin-1 text, ~1.5x as
    long): bench --full's 60,000 images as the python tarball stopped at "larger than ... the official file can
    be". A batch of 300 here is its pixels plus labels and framing; it reads under a cap scaled to its size."""
    import pickletools

    from pipeline.features import cifar_batches
    root = write_cifar_batches(str(tmp_path / "c"), 1500, 300)
    batch = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_1"
    size, pixels = batch.stat().st_size, 300 * 3072
    assert pixels < size < pixels + 300 * 5 + 1024
    ops = {op.name for op, _, _ in pickletools.genops(batch.read_bytes())}
    assert "BINSTRING" in ops and "BINBYTES" not in ops and "SHORT_BINBYTES" not in ops
    assert b"_codecs" not in batch.read_bytes()
    monkeypatch.setattr(cifar_batches, "max_batch_bytes", lambda name, *a, **k: pixels * 5 // 4 + (1 << 20) // 64)
    assert open_dataset("cifar10", root, ("train", "test"), None).splits["train"].images.shape == (1500, 32, 32, 3)
