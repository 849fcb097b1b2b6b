import os

import pytest

from pipeline.config import PipelineError
from pipeline.fingerprint import fingerprint
from pipeline.sources import open_dataset


def fp_of(path, **kw):
    ds = open_dataset("cifar10", path, ("train", "test"), None)
    return fingerprint(ds, **kw), ds


def test_same_data_same_fingerprint_folder_or_tarball(cifar_dir):
    assert fp_of(cifar_dir)[0] == fp_of(cifar_dir)[0]


def test_one_pixel_or_one_label_changes_it(folder_dir):
    import cv2
    base, _ = fp_of(folder_dir)
    path = os.path.join(folder_dir, "test", "dog", "000.png")
    img = cv2.imread(path)
    img[0, 0, 0] ^= 1
    cv2.imwrite(path, img)
    changed, _ = fp_of(folder_dir)
    assert changed != base
    os.rename(path, os.path.join(folder_dir, "test", "frog", "zzz.png"))  # same pixels, other label
    assert fp_of(folder_dir)[0] not in (base, changed)


def test_limit_changes_it(cifar_dir):
    a = fingerprint(open_dataset("cifar10", cifar_dir, ("train",), None))
    b = fingerprint(open_dataset("cifar10", cifar_dir, ("train",), 10))
    assert a != b


def test_bad_image_fails_or_is_skipped_and_listed(folder_dir):
    bad = os.path.join(folder_dir, "train", "cat", "bad.jpg")
    open(bad, "wb").close()
    with pytest.raises(PipelineError, match=r"bad image .*bad.jpg: zero-byte file.*--on-bad-image skip"):
        fp_of(folder_dir)
    fp, ds = fp_of(folder_dir, on_bad_image="skip")
    assert ds.skipped == [{"split": "train", "path": "train/cat/bad.jpg", "reason": "zero-byte file"}]
    assert "train/cat/bad.jpg" not in list(ds.splits["train"].ids)
    os.remove(bad)
    assert fp_of(folder_dir)[0] == fp  # skipping leaves exactly the good images
