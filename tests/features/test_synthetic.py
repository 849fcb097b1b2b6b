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
