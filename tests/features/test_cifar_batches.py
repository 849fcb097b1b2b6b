import os
import pickle

import numpy as np
import pytest
from conftest import CLASSES, make_tar

from pipeline.features.cifar_batches import load_cifar_batches
from pipeline.errors import PipelineError


def test_cifar10_folder_reads_official_layout(cifar_dir):
    ds = load_cifar_batches(cifar_dir, ("train", "test"))
    assert ds.name == "cifar10" and ds.class_names == CLASSES
    train, test = ds.splits["train"], ds.splits["test"]
    assert len(train) == 30 and len(test) == 6
    assert train.images.shape == (30, 32, 32, 3) and train.images.dtype == np.uint8
    assert list(train.ids[:3]) == [0, 1, 2]
    # the channel-major 3072 row becomes HxWx3: red plane first
    raw = pickle.load(open(os.path.join(cifar_dir, "cifar-10-batches-py", "data_batch_1"), "rb"), encoding="bytes")
    assert np.array_equal(train.images[0, :, :, 0].reshape(-1), raw[b"data"][0, :1024])


def test_cifar10_tarball_equals_folder(cifar_dir, tmp_path):
    tar = make_tar(os.path.join(cifar_dir, "cifar-10-batches-py"), str(tmp_path / "c.tar.gz"), "cifar-10-batches-py")
    a = load_cifar_batches(cifar_dir, ("train",)).splits["train"]
    b = load_cifar_batches(tar, ("train",)).splits["train"]
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def test_cifar100_layout(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 8), ("test", 4)):
        pickle.dump({b"fine_labels": list(range(n)), b"coarse_labels": [0] * n,
                     b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, open(d / name, "wb"), protocol=2)
    pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, open(d / "meta", "wb"), protocol=2)
    ds = load_cifar_batches(str(tmp_path), ("train", "test"))
    assert ds.name == "cifar100" and len(ds.class_names) == 100
    assert len(ds.splits["train"]) == 8 and list(ds.splits["test"].labels) == [0, 1, 2, 3]


def test_other_content_is_not_cifar(folder_dir):
    assert load_cifar_batches(folder_dir, ("train",)) is None


def test_missing_batch_file(cifar_dir):
    os.remove(os.path.join(cifar_dir, "cifar-10-batches-py", "test_batch"))
    with pytest.raises(PipelineError, match="test_batch: missing"):
        load_cifar_batches(cifar_dir, ("train", "test"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


class _BigBytes:
    def __reduce__(self):
        return (bytes, (10 ** 12,))


@pytest.mark.parametrize("payload,needle", [(_Evil(), r"refused.*(os|posix)\.system"),
                                            (_BigBytes(), "refused.*bytes\\(\\) with other arguments")])
def test_batch_that_runs_code_is_refused(cifar_dir, tmp_path, monkeypatch, payload, needle):
    monkeypatch.chdir(tmp_path)
    path = os.path.join(cifar_dir, "cifar-10-batches-py", "data_batch_2")
    pickle.dump({b"data": payload, b"labels": [0]}, open(path, "wb"), protocol=2)
    with pytest.raises(PipelineError, match=needle):
        load_cifar_batches(cifar_dir, ("train",))
    assert not os.path.exists(tmp_path / "PWNED")


def rewrite(cifar_dir, name, **fields):
    path = os.path.join(cifar_dir, "cifar-10-batches-py", name)
    batch = pickle.load(open(path, "rb"), encoding="bytes")
    batch.update({k.encode(): v for k, v in fields.items()})
    pickle.dump(batch, open(path, "wb"), protocol=2)
    return f"{name}:"


@pytest.mark.parametrize("fields,needle", [
    ({"data": None}, "no 'data' in the batch"),
    ({"labels": None}, "no 'labels' in the batch"),
    ({"data": np.full((6, 3072), 300, np.int64)}, "pixel values out of 0..255 (got 300..300)"),
    ({"data": np.full((6, 3072), -1, np.int16)}, "pixel values out of 0..255"),
    ({"data": np.zeros((6, 100), np.uint8)}, "expected N x 3072 integer pixels, got uint8 (6, 100)"),
    ({"data": np.zeros((6, 3072), np.float32)}, "expected N x 3072 integer pixels, got float32"),
    ({"labels": [0.9, 1.7, 2, 3, 4, 5]}, "expected a list of integer labels, got float64"),
    ({"labels": [0, 1]}, "6 images but 2 labels"),
    ({"labels": [0, 1, 2, 3, 4, 12]}, "labels out of range: expected 0..9, got 0..12"),
])
def test_bad_batch_content_is_one_clear_line(cifar_dir, fields, needle):
    where = rewrite(cifar_dir, "data_batch_3", **fields)
    with pytest.raises(PipelineError) as e:
        load_cifar_batches(cifar_dir, ("train",))
    assert needle in str(e.value) and where in str(e.value) and "\n" not in str(e.value)


def test_protocol_2_batch_with_an_empty_array_is_read(cifar_dir):
    """An empty array pickled with protocol 2 needs bytes(): allowed (no false refusal), and a split
    whose batches hold no images at all gets one line at features time."""
    rewrite(cifar_dir, "data_batch_2", data=np.zeros((0, 3072), np.uint8), labels=[])
    assert len(load_cifar_batches(cifar_dir, ("train",)).splits["train"]) == 24
    rewrite(cifar_dir, "test_batch", data=np.zeros((0, 3072), np.uint8), labels=[])
    with pytest.raises(PipelineError, match="the test split holds no images"):
        load_cifar_batches(cifar_dir, ("test",))


def test_bad_class_names_in_meta(cifar_dir):
    pickle.dump({b"label_names": None}, open(os.path.join(cifar_dir, "cifar-10-batches-py", "batches.meta"), "wb"))
    with pytest.raises(PipelineError, match="expected a list of class names"):
        load_cifar_batches(cifar_dir, ("train",))
