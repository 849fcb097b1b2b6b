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


def test_what_a_batch_can_make_the_reader_hold_is_capped(cifar_dir, monkeypatch):
    """A batch file larger than its cap (the official images' pixels plus a quarter) is refused having read
    no more than the cap; a pickle of more operations than MAX_PICKLE_OPS (a list of many labels) is
    refused as it is read. The memory these stop is measured in test_crafted_memory."""
    import pipeline.features.cifar_batches as cb
    assert cb.max_batch_bytes("data_batch_1") == cb.max_batch_bytes("test") == 10_000 * 3072 * 5 // 4 + (1 << 20)
    assert cb.max_batch_bytes("train") == 50_000 * 3072 * 5 // 4 + (1 << 20)           # CIFAR-100's one train file
    size = max(os.path.getsize(os.path.join(cifar_dir, "cifar-10-batches-py", f"data_batch_{i}")) for i in range(1, 6))
    monkeypatch.setattr(cb, "max_batch_bytes", lambda fname: size - 1)
    with pytest.raises(PipelineError, match=f"data_batch_.: refused, larger than {size - 1:,} bytes"):
        load_cifar_batches(cifar_dir, ("train",))
    monkeypatch.setattr(cb, "max_batch_bytes", lambda fname: size)                        # the files are this size
    assert len(load_cifar_batches(cifar_dir, ("train",)).splits["train"]) == 30
    import io
    monkeypatch.setattr(cb, "MAX_PICKLE_OPS", 100)
    few, many = (pickle.dumps({b"labels": list(range(n))}, protocol=2) for n in (80, 120))   # ~1 operation a label
    assert cb.safe_unpickle(io.BytesIO(few), "b", 1 << 20) == {b"labels": list(range(80))}
    with pytest.raises(PipelineError, match=r"^b: refused, not a plain CIFAR batch \(it holds more than 100 pickle "):
        cb.safe_unpickle(io.BytesIO(many), "b", 1 << 20)


def test_a_tarball_of_many_members_keeps_only_the_official_names(cifar_dir, tmp_path):
    """The headers of other members are read and dropped (tarfile would keep each one: a crafted archive
    of millions is gigabytes); the batches among them are read as from the folder."""
    import io
    import tarfile
    out = tmp_path / "many.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for i in range(2000):
            info = tarfile.TarInfo(f"cifar-10-batches-py/extra/{i}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        tar.add(os.path.join(cifar_dir, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    a = load_cifar_batches(cifar_dir, ("train", "test"))
    b = load_cifar_batches(str(out), ("train", "test"))
    assert all(np.array_equal(a.splits[s].images, b.splits[s].images) for s in ("train", "test"))
    assert a.class_names == b.class_names


def test_a_batch_linked_out_of_the_folder_is_refused_and_one_inside_is_read(cifar_dir, tmp_path):
    """A crafted folder whose data_batch_2 is a link to a file outside it (here a good batch, so the link
    alone decides) is refused in one line naming both; a link that stays inside the folder is followed."""
    import shutil
    src = os.path.join(cifar_dir, "cifar-10-batches-py")
    want = load_cifar_batches(cifar_dir, ("train",)).splits["train"]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(os.path.join(src, "data_batch_2"), outside / "data_batch_2")
    os.symlink(outside / "data_batch_2", os.path.join(src, "data_batch_2"))
    with pytest.raises(PipelineError, match=r"data_batch_2: a link out of the data_dir \(to .*elsewhere/data_batch_2\)"):
        load_cifar_batches(cifar_dir, ("train",))
    os.remove(os.path.join(src, "data_batch_2"))
    shutil.move(outside / "data_batch_2", os.path.join(src, "kept"))
    os.symlink("kept", os.path.join(src, "data_batch_2"))
    got = load_cifar_batches(cifar_dir, ("train",)).splits["train"]
    assert np.array_equal(got.images, want.images) and np.array_equal(got.labels, want.labels)
