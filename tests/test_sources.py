import os
import pickle

import numpy as np
import pytest
from conftest import CLASSES, make_tar, write_cifar10

from pipeline.config import PipelineError
from pipeline.sources import decode_image, open_dataset, stratified_indices


def test_cifar10_folder_reads_official_layout(cifar_dir):
    ds = open_dataset("cifar10", cifar_dir, ("train", "test"), None)
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
    a = open_dataset("cifar10", cifar_dir, ("train",), None).splits["train"]
    b = open_dataset("cifar10", tar, ("train",), None).splits["train"]
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def test_cifar100_layout(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 8), ("test", 4)):
        pickle.dump({b"fine_labels": list(range(n)), b"coarse_labels": [0] * n,
                     b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, open(d / name, "wb"), protocol=2)
    pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, open(d / "meta", "wb"), protocol=2)
    ds = open_dataset("cifar10", str(tmp_path), ("train", "test"), None)
    assert ds.name == "cifar100" and len(ds.class_names) == 100
    assert len(ds.splits["train"]) == 8 and list(ds.splits["test"].labels) == [0, 1, 2, 3]


def test_image_folders_any_mode_and_size_become_rgb(folder_dir):
    from PIL import Image
    Image.new("P", (17, 23), color=5).save(os.path.join(folder_dir, "train", "cat", "palette.png"))
    ds = open_dataset("cifar10", folder_dir, ("train", "test"), None)
    assert ds.class_names == ["cat", "dog", "frog"]
    train = ds.splits["train"]
    assert len(train) == 13 and "train/cat/palette.png" in list(train.ids)
    for img in train.read(0, len(train)):
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    shapes = {img.shape for img in train.read(0, len(train))}
    assert (45, 37, 3) in shapes and (20, 28, 3) in shapes and (23, 17, 3) in shapes


def test_image_folder_tarball_with_top_folder(folder_dir, tmp_path):
    tar = make_tar(folder_dir, str(tmp_path / "imgs.tar.gz"), "wrapped")
    a = open_dataset("cifar10", folder_dir, ("test",), None).splits["test"]
    b = open_dataset("cifar10", tar, ("test",), None, sources_dir=str(tmp_path / "src")).splits["test"]
    assert list(a.ids) == list(b.ids)
    assert all(np.array_equal(x, y) for x, y in zip(a.read(0, len(a)), b.read(0, len(b))))


def test_limit_is_stratified_and_deterministic():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(labels, 10)
    assert list(np.bincount(labels[idx])) == [5, 3, 2]
    assert np.array_equal(idx, stratified_indices(labels, 10))
    assert list(idx[:5]) == [0, 1, 2, 3, 4]  # the first images of each class
    assert len(stratified_indices(labels, 7)) == 7
    assert len(stratified_indices(labels, 1000)) == 100


# --- bad input: one clear PipelineError naming the file -------------------------------------
def test_empty_data_dir(tmp_path):
    with pytest.raises(PipelineError, match="empty"):
        open_dataset("cifar10", str(tmp_path), ("train",), None)


def test_missing_split(folder_dir):
    import shutil
    shutil.rmtree(os.path.join(folder_dir, "test"))
    with pytest.raises(PipelineError, match="no 'test' folder"):
        open_dataset("cifar10", folder_dir, ("train", "test"), None)


def test_empty_class_folder(folder_dir):
    os.makedirs(os.path.join(folder_dir, "train", "empty"))
    with pytest.raises(PipelineError, match="empty class folder"):
        open_dataset("cifar10", folder_dir, ("train",), None)


def test_missing_batch_file(cifar_dir):
    os.remove(os.path.join(cifar_dir, "cifar-10-batches-py", "test_batch"))
    with pytest.raises(PipelineError, match="test_batch: missing"):
        open_dataset("cifar10", cifar_dir, ("train", "test"), None)


def test_labels_out_of_range(tmp_path):
    write_cifar10(str(tmp_path), labels=[0, 1, 2, 3, 4, 12])
    with pytest.raises(PipelineError, match="labels out of range"):
        open_dataset("cifar10", str(tmp_path), ("train",), None)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_batch_that_runs_code_is_refused(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = os.path.join(cifar_dir, "cifar-10-batches-py", "data_batch_2")
    pickle.dump({b"data": _Evil(), b"labels": [0]}, open(path, "wb"), protocol=2)
    with pytest.raises(PipelineError, match="refused.*os.*system|refused.*posix.*system"):
        open_dataset("cifar10", cifar_dir, ("train",), None)
    assert not os.path.exists(tmp_path / "PWNED")


@pytest.mark.parametrize("content,reason", [(b"", "zero-byte"), (b"not an image at all", "truncated JPEG")])
def test_bad_image_files(tmp_path, content, reason):
    p = tmp_path / "x.jpg"
    p.write_bytes(content)
    with pytest.raises(Exception, match=reason):
        decode_image(str(p))


def test_truncated_png_and_garbage(tmp_path):
    import cv2
    ok, buf = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "t.png").write_bytes(buf.tobytes()[:-30])
    with pytest.raises(Exception, match="truncated PNG"):
        decode_image(str(tmp_path / "t.png"))
    (tmp_path / "g.bmp").write_bytes(b"BM garbage")
    with pytest.raises(Exception, match="not a readable image"):
        decode_image(str(tmp_path / "g.bmp"))
